"""The "Open as notebook" download every page draws: the page's recipe as a .ipynb file."""
from __future__ import annotations

import streamlit as st

from sparsekit.recipes import Recipe


def notebook_button(recipe: Recipe, *, key: str) -> None:
    """A download of ``recipe`` as a notebook, with a caption saying what it holds. The file is written
    when clicked (nbformat's first use costs about a second; a page run should not pay it)."""
    st.download_button(
        "Open as notebook (.ipynb)", recipe.to_ipynb, recipe.file_name(), mime="application/x-ipynb+json",
        key=key, on_click="ignore", icon=":material/code:",
        help="A Jupyter notebook that repeats what this page shows with sparsekit's public API: the same "
             "model, settings and figures. Its last cell prints the headline values as one JSON line.")


def upload_digest(loaded) -> str:
    """The sha256 of weights uploaded in the browser ("" for a model loaded by its spec)."""
    return str(getattr(loaded, "info", {}).get("upload_sha256", ""))

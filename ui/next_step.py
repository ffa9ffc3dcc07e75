"""A visible next step: a link to another page of the app (Model's tour to Sparsify, Masks back to it)."""
from __future__ import annotations

import streamlit as st
from streamlit.errors import StreamlitAPIException


def next_step(page: str, label: str, icon: str | None = None) -> None:
    """A link to ``page`` (``views/<name>.py``). Run outside the app's navigation (a single page driven
    by a test harness) the page is unknown to Streamlit: the step is then named in a caption."""
    try:
        st.page_link(page, label=label, icon=icon)
    except StreamlitAPIException:
        st.caption(f"Next: {label}.")

"""A page's whole sparsity setting in its link, so a copied or reloaded URL shows the same view.

The Sparsify form's widgets are bound to the URL, but Streamlit writes a bound widget's value into the
URL only when it differs from the widget's default, and the form's defaults are the session's current
setting: once the page is left and opened again (Sparsify -> Masks -> Sparsify), every widget is at its
default and the URL holds no setting at all, so a copy of it, or a reload, showed 2:4 magnitude. The
page therefore also keeps the whole setting in one parameter of its own (``config_link_value``).
"""
from __future__ import annotations

import streamlit as st

from sparsekit.config import SparsifyConfig
from ui.widgets import apply_linked_config, config_link_value

_WRITTEN = "_config_link_written"  # param -> the value this session last wrote into its own URL


def apply_config_link(param: str) -> None:
    """Make the setting a link carries in ``param`` the current one (``apply_linked_config``), unless it
    is the value this session wrote itself (that one is the current setting already, or a pending one
    waiting for Apply that must not become the shown setting)."""
    raw = st.query_params.get(param)
    if raw is not None and raw != st.session_state.get(_WRITTEN, {}).get(param):
        apply_linked_config(param)


def keep_config_in_link(param: str, config: SparsifyConfig) -> None:
    """Write ``config`` into the page's URL as ``param`` (left out at the defaults: a clean URL)."""
    value = config_link_value(config)
    st.session_state.setdefault(_WRITTEN, {})[param] = value
    if value == config_link_value(SparsifyConfig()):
        if param in st.query_params:
            del st.query_params[param]
    elif st.query_params.get(param) != value:
        st.query_params[param] = value

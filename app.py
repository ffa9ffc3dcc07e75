"""Sparsity Lab: the entry point only declares navigation and draws the shared model picker.

The page scripts live in ``views/``, not ``pages/``: Streamlit treats a ``pages/`` folder next to the
entry file as its legacy multipage app until ``st.navigation`` first runs, which on a fresh server
undid the first model pick and showed its own file-name sidebar on a first deep link.
"""
import streamlit as st

from ui.state import sidebar_model

st.set_page_config(page_title="Sparsity Lab", page_icon=":material/grid_on:", layout="wide")

pages = [
    st.Page("views/model.py", title="Model", icon=":material/model_training:", default=True),
    st.Page("views/sparsify.py", title="Sparsify", icon=":material/content_cut:"),
    st.Page("views/masks.py", title="Masks", icon=":material/grid_on:"),
    st.Page("views/attention.py", title="Attention", icon=":material/visibility:"),
    st.Page("views/training.py", title="Training & topology", icon=":material/timeline:"),
    st.Page("views/compare.py", title="Compare", icon=":material/compare_arrows:"),
    st.Page("views/attribution.py", title="Attribution", icon=":material/insights:"),
    st.Page("views/benchmarks.py", title="Benchmarks", icon=":material/speed:"),
]
loaded, key = sidebar_model()
page = st.navigation(pages)
st.session_state["_loaded"] = loaded
st.session_state["_model_key"] = key
page.run()

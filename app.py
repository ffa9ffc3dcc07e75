"""Sparsity Lab: the entry point only declares navigation and draws the shared model picker."""
import streamlit as st

from ui.state import sidebar_model

st.set_page_config(page_title="Sparsity Lab", page_icon=":material/grid_on:", layout="wide")

pages = [
    st.Page("pages/model.py", title="Model", icon=":material/model_training:", default=True),
    st.Page("pages/sparsify.py", title="Sparsify", icon=":material/content_cut:"),
    st.Page("pages/masks.py", title="Masks", icon=":material/grid_on:"),
    st.Page("pages/attention.py", title="Attention", icon=":material/visibility:"),
    st.Page("pages/training.py", title="Training & topology", icon=":material/timeline:"),
    st.Page("pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
    st.Page("pages/attribution.py", title="Attribution", icon=":material/insights:"),
    st.Page("pages/benchmarks.py", title="Benchmarks", icon=":material/speed:"),
]
loaded, key = sidebar_model()
page = st.navigation(pages)
link = st.session_state.pop("_deep_link", None)
if link:  # see ui.state.ensure_shell
    st.switch_page(link)
st.session_state["_loaded"] = loaded
st.session_state["_model_key"] = key
page.run()

"""Sparsity Lab: the entry point only declares navigation and draws the shared model picker.

The page scripts live in ``views/``, not ``pages/``: Streamlit treats a ``pages/`` folder next to the
entry file as its legacy multipage app until ``st.navigation`` first runs, which on a fresh server
undid the first model pick and showed its own file-name sidebar on a first deep link.
"""
import logging
import os

# Before torch loads: OpenMP threads that wait at a barrier sleep instead of spinning. On a small
# machine shared with the browser, spinning made a MiniLM quality pass 2-3x slower (2.0 s vs 1.3 s
# with one core busy; 0.70 vs 0.82 s when quiet; benchmarks/bench_browser.py has the page figures).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import time  # noqa: E402

import streamlit as st  # noqa: E402

from ui.state import TIMING_LOG, sidebar_model, warm_up  # noqa: E402
from ui.widgets import note_unapplied_link_values  # noqa: E402

if os.environ.get("SPARSEKIT_LOG_TIMINGS") == "1" and not TIMING_LOG.handlers:
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    TIMING_LOG.addHandler(_handler)
    TIMING_LOG.setLevel(logging.INFO)
    TIMING_LOG.propagate = False


def _title(page) -> str:
    try:
        return page.title
    except AttributeError:  # a Page that navigation never set up (bare mode)
        return "?"


def main() -> None:
    started = time.perf_counter()
    st.set_page_config(page_title="Sparsity Lab", page_icon=":material/grid_on:", layout="wide")

    pages = [
        st.Page("views/model.py", title="Model", icon=":material/model_training:", default=True),
        st.Page("views/sparsify.py", title="Sparsify", icon=":material/content_cut:"),
        st.Page("views/masks.py", title="Masks", icon=":material/grid_on:"),
        st.Page("views/attention.py", title="Attention", icon=":material/visibility:"),
        st.Page("views/training.py", title="Training & topology", icon=":material/timeline:"),
        st.Page("views/compare.py", title="Compare", icon=":material/compare_arrows:"),
        st.Page("views/sensitivity.py", title="Sensitivity", icon=":material/tune:"),
        st.Page("views/recovery.py", title="Recovery", icon=":material/healing:"),
        st.Page("views/study.py", title="Studies", icon=":material/science:"),
        st.Page("views/attribution.py", title="Attribution", icon=":material/insights:"),
        st.Page("views/benchmarks.py", title="Benchmarks", icon=":material/speed:"),
    ]
    loaded, key = sidebar_model()
    page = st.navigation(pages)
    st.session_state["_loaded"] = loaded
    st.session_state["_model_key"] = key
    try:
        page.run()
        note_unapplied_link_values()  # bound widgets of every page: a link value none of them took
    finally:  # also after st.stop() / a rerun request, which end the page with an exception
        TIMING_LOG.info("page %s %.3f s", _title(page), time.perf_counter() - started)
        # Once per server started by scripts/serve.py: the other pages' imports and the Sparsify page's
        # default setting, in the background after this first page (ui.preload).
        warm_up(loaded, key)


# A process that a study's pool spawns re-runs the main module as ``__mp_main__`` (Streamlit makes the
# page script ``__main__``): nothing of the app may be drawn or loaded there.
if __name__ != "__mp_main__":
    main()

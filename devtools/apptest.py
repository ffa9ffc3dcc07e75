"""Drive one page with Streamlit's AppTest (tests and benchmarks), and read its figures back.

AppTest re-runs of an ``st.navigation`` app drop the entry script's sidebar widgets (a limitation
of the test runner, not of the served app), so this harness draws the same sidebar and then runs a
single page file, which AppTest can re-run any number of times.
"""
from __future__ import annotations

import base64
import json

import numpy as np
from streamlit.testing.v1 import AppTest

from devtools import ROOT

# A process pool that a page (or a later test) starts spawns workers that import the main module as
# ``__mp_main__``; AppTest can leave this script as ``__main__``, so it must draw nothing there (as app.py).
_HARNESS = """
import runpy, sys
if __name__ != "__mp_main__":
    sys.path.insert(0, {root!r})
    import streamlit as st
    from ui.state import sidebar_model
    loaded, key = sidebar_model()
    st.session_state["_loaded"] = loaded
    st.session_state["_model_key"] = key
    runpy.run_path({page!r}, run_name="__page__")
"""


def page_app(page: str, source: str = "digits:mlp", timeout: float = 120, **state) -> AppTest:
    """An AppTest of ``views/<page>.py`` with ``source`` picked in the sidebar (not yet run).

    Extra keyword arguments are put into session state before the first run.
    """
    script = _HARNESS.format(root=str(ROOT), page=str(ROOT / "views" / f"{page}.py"))
    at = AppTest.from_string(script, default_timeout=timeout)
    at.session_state["model_source"] = source
    for key, value in state.items():
        at.session_state[key] = value
    return at


def figures(at: AppTest) -> list[dict]:
    """The plotly figure specs (JSON) of every chart on the page, in order."""
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def decode(arr) -> np.ndarray:
    """A plotly array as floats: plotly ships numbers as lists or as base64 typed arrays."""
    if isinstance(arr, dict):
        shape = tuple(int(x) for x in str(arr.get("shape", "-1")).split(","))
        return np.frombuffer(base64.b64decode(arr["bdata"]), dtype=arr["dtype"]).reshape(shape).astype(float)
    return np.asarray(arr, dtype=float)

"""Figures the pages draw on every run, built once per input: Streamlit runs a whole page script on
each interaction, and rebuilding an unchanged plotly figure cost 0.05-0.3 s of a rerun (the Masks
page's N:M group figure alone about 0.25 s on MiniLM; benchmarks/bench_browser.py --goals).

``figure("layer_kept_figure", key, report)`` calls ``sparsekit.viz.layer_kept_figure(report)`` the
first time and returns that same ``Figure`` for the same ``(name, key)`` afterwards, in every session
(``st.plotly_chart`` only reads it). ``key`` must name everything the arguments hold (the model key,
the config's JSON, the layer, the zoom...); the arguments themselves are not hashed.
"""
from __future__ import annotations

from typing import Any

import streamlit as st

from sparsekit import viz


@st.cache_resource(show_spinner=False, max_entries=128)
def _built(name: str, key: str, _args: tuple, _kwargs: dict) -> Any:
    return getattr(viz, name)(*_args, **_kwargs)


def figure(name: str, key: str, *args: Any, **kwargs: Any) -> Any:
    """``sparsekit.viz.<name>(*args, **kwargs)``, built once per ``(name, key)``.

    Raises:
        AttributeError: ``sparsekit.viz`` has no figure of that name.
    """
    if not callable(getattr(viz, name, None)):
        raise AttributeError(f"sparsekit.viz has no figure builder named {name!r}")
    return _built(name, key, args, kwargs)

"""Every ``st.cache_data`` / ``st.cache_resource`` wrapper of a library call the pages make, in one place.

Arguments whose name starts with ``_`` are not hashed by Streamlit: each such function takes a string
key (the model key, a config's JSON, a stamp) that names what the unhashed arguments hold. A cached
function may not draw anything (Streamlit cannot replay element calls made inside one), so progress
is drawn by the callers. The shared result store of sparsified models, which draws progress while it
computes, is ``ui.state``'s.
"""
from __future__ import annotations

import os
import time
from typing import Callable

import streamlit as st

import sparsekit
from ui import preload

# The Attention, Training and Attribution libraries are imported by the functions that use them: the
# sidebar imports this module on every page, and the first page (Model) needs none of them (a cold
# start paid their imports before its page was drawn; tests/test_latency_mechanics.py).

# ---------------------------------------------------------------------------------------------
# Models and their quality (every page)


@st.cache_resource(show_spinner=False, max_entries=6)
def loaded_model(spec: str, weights_digest: str = "", _weights: bytes | None = None):
    """The model of ``spec`` (with uploaded ``_weights``, named by their digest), shared by every session."""
    # The digest is the cache key for uploads; the bytes themselves are not hashed by Streamlit.
    # Browser users may reach the hub only when the server allows it explicitly.
    # (No progress callback: Streamlit cannot replay element calls made inside a cached function.)
    if not weights_digest and (ready := preload.take(spec)) is not None:
        return ready
    return sparsekit.load_model(spec, weights=_weights, allow_hub=os.environ.get("SPARSEKIT_ALLOW_HUB") == "1")


@st.cache_data(show_spinner=False, max_entries=256)
def model_quality(model_key: str, config_json: str, _loaded, _result,
                  _measured: Callable[[float], None] | None = None) -> dict[str, float]:
    """The quality of a sparsified model (a small dict, kept for many configs); ``_measured`` gets the
    seconds the pass took when it ran (not on a cache hit)."""
    start = time.perf_counter()
    quality = _loaded.quality(_result.model)
    if _measured is not None:
        _measured(time.perf_counter() - start)
    return quality


# ---------------------------------------------------------------------------------------------
# Attention page


@st.cache_resource(show_spinner=False, max_entries=16)
def attention_capture(model_key: str, input_key: str, _loaded, _inputs):
    from sparsekit.attention import capture_attention

    return capture_attention(_loaded, _inputs)


@st.cache_resource(show_spinner=False, max_entries=64)
def attention_quality(model_key: str, pattern_json: str, _loaded, _pattern, layers: tuple | None,
                      heads: tuple | None):
    from sparsekit.attention.apply import attention_quality as _attention_quality

    return _attention_quality(_loaded, _pattern, layers=None if layers is None else list(layers),
                              heads=None if heads is None else list(heads))


@st.cache_resource(show_spinner=False, max_entries=4)
def attention_calibration(model_key: str, count: int, _loaded):
    from sparsekit.attention.capture import calibration_captures

    return calibration_captures(_loaded, count)


@st.cache_resource(show_spinner=False)
def digits_data():
    """The digits train/test split (the Attention page's held-out images)."""
    from sparsekit.models.digits import digits_split

    return digits_split()


# ---------------------------------------------------------------------------------------------
# Training page


@st.cache_resource(show_spinner=False, max_entries=32)
def training_run(run_id: str, stamp: str):
    """A saved training run and its SAD report."""
    # The stamp (status, time, name, epochs) changes whenever the entry is rewritten, so a stale copy
    # is never served. Shared read-only between sessions, with its SAD report computed once.
    from sparsekit import training

    rec = training.load_run(run_id)
    return rec, rec.sad()


# ---------------------------------------------------------------------------------------------
# Attribution page


@st.cache_resource(show_spinner=False, max_entries=8)
def image_maps(model_key: str, config_json: str, steps: int, count: int, _dense, _sparse):
    from sparsekit import attribution as attr

    images, labels = attr.digits_examples(count)
    return attr.image_attribution(_dense, _sparse, images, labels, n_steps=steps)


@st.cache_resource(show_spinner=False, max_entries=16)
def pair_maps(model_key: str, config_json: str, steps: int, a: str, b: str, _dense, _sparse, _tokenizer):
    from sparsekit import attribution as attr

    return attr.pair_attribution(_dense, _sparse, _tokenizer, a, b, n_steps=steps)


@st.cache_resource(show_spinner=False, max_entries=8)
def pair_set(model_key: str, config_json: str, steps: int, count: int, _dense, _sparse, _tokenizer):
    from sparsekit import attribution as attr

    return attr.text_agreement(_dense, _sparse, _tokenizer, attr.DEFAULT_PAIRS[:count], n_steps=steps)

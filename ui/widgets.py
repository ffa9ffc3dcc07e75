"""The sparsity config form, shared by the Sparsify and Masks pages; and the one warning that names the
values of a shared link (URL query parameters) that were ignored, and why."""
from __future__ import annotations

import json
from dataclasses import fields
from typing import Any, Callable, TypeVar

import streamlit as st

from sparsekit.config import (CALIBRATION_ORDERS, MAX_M, MAX_OWL_LAMBDA, MAX_OWL_M, MAX_SPARSITY, NM_PRESETS as NM_PAIRS,
                              SparsifyConfig, nm_label)
from sparsekit.methods import REGISTRY

PATTERN_LABELS = {"nm": "N:M (keep N of every M)", "unstructured": "Unstructured", "dense": "Dense (no pruning)"}
METHOD_HELP = "  \n".join(
    f"**{m.name}**: {m.help}" + (" (uses calibration inputs: digits training images or the built-in sentences)"
                                 if m.needs_calibration else "") for m in REGISTRY.values())
ORDER_LABELS = {"block": "Block (papers' order)", "layer": "Layer by layer"}
ORDER_HELP = ("block: each transformer block's layers are all pruned on inputs from one forward of that block, "
              "the blocks before it already pruned (the Wanda and SparseGPT reference code). layer: each layer is "
              "pruned on inputs through every already-pruned layer, those of its own block too. Models without "
              "transformer blocks use layer order either way.")
NM_PRESETS = [nm_label(n, m) for n, m in NM_PAIRS]
OTHER_NM = "other N:M…"
LAYER_LABELS = {"all": "All Linear/Conv", "mlp": "MLP (feed-forward) only", "attention": "Attention projections only"}
ALLOCATION_LABELS = {"uniform": "Uniform (every layer the same)", "owl": "OWL (outlier-weighted)"}
OWL_UNIT_LABELS = {"block": "per transformer block", "layer": "per layer"}
ALLOCATION_HELP = ("uniform: every pruned layer gets the pattern. OWL (Yin et al. 2023): layers with more outlier "
                   "activations |w|·‖x‖ > M × their mean are pruned less, within ±λ of the target, and the overall "
                   "share pruned (counted by weight over the pruned layers) stays the requested one; under N:M "
                   "each layer gets an n:M level of the same M. Sensitivity-guided allocation is on the "
                   "Sensitivity page (it needs a scan).")


T = TypeVar("T")
_LINK_RUN = "_link_run"
_LINK_SEEN = "_link_seen"


def start_link_notice() -> None:
    """Start a run's notice of ignored link values: note the link's parameters and reserve, where this is
    called (the top of the main area: ``ui.state.sidebar_model``), the place of its one warning."""
    try:
        raw = {k: st.query_params.get(k) for k in st.query_params}
    except Exception:  # bare mode (no script run): no link
        raw = {}
    st.session_state[_LINK_RUN] = {"slot": st.empty(), "notes": {}, "raw": raw}


def _first_look(param: str, value: str) -> bool:
    """Whether this session checks the link value ``param=value`` for the first time (a value is checked
    once: a later run may still see it in the URL before the widget's new value replaces it)."""
    seen = st.session_state.setdefault(_LINK_SEEN, set())
    first = (param, value) not in seen
    seen.add((param, value))
    return first


def note_ignored_link_value(param: str, value: str, reason: str) -> None:
    """Name a link value that was not applied in this run's one warning."""
    run = st.session_state.get(_LINK_RUN)
    if run is None:
        start_link_notice()
        run = st.session_state[_LINK_RUN]
    run["notes"][param] = f"`{param}={value}` ignored: {reason}"
    lines = "\n".join(f"- {note}" for note in run["notes"].values())
    run["slot"].warning("This link carries settings that were not applied (the page uses its defaults for "
                        f"them):\n{lines}", icon=":material/link_off:")


def _same(raw: str, value: Any, shown: Callable[[Any], Any] | None) -> bool:
    """Whether the widget took the link's ``raw`` value (a link names an option by its label)."""
    if raw == str(value) or (shown is not None and raw == str(shown(value))):
        return True
    if isinstance(value, bool):  # a checkbox: the URL spells it true/false
        return raw.lower() == str(value).lower()
    try:
        return float(raw) == float(value)
    except (TypeError, ValueError):
        return False


def linked(key: str, url: bool, reason: str, draw: Callable[[], T], shown: Callable[[Any], Any] | None = None) -> T:
    """``draw()`` a widget bound to the URL parameter ``key``; a link value it did not take is named with
    ``reason`` in the run's warning (Streamlit drops such a value silently).

    Args:
        key: the widget's key, which is the query parameter's name.
        url: whether the widget is bound to the URL (False: just ``draw()``).
        reason: why a value is refused (``sparsity must be between 0 and 99 %``).
        draw: draws the widget, returns its value.
        shown: the widget's ``format_func`` (the label a link carries), if any.
    """
    raw = st.query_params.get(key) if url else None
    value = draw()
    if raw is not None and _first_look(key, raw) and not _same(raw, value, shown):
        note_ignored_link_value(key, raw, reason)
    return value


def note_unapplied_link_values() -> None:
    """After a page ran: name every link parameter of a bound widget that the widget did not take (a
    page's own checks, with their reasons, come first; this catches the other pages' bound widgets)."""
    run = st.session_state.get(_LINK_RUN)
    if run is None:
        return
    for key, raw in run["raw"].items():
        if raw is None or key not in st.session_state or not _first_look(key, raw) or st.query_params.get(key) == raw:
            continue  # not a widget's, checked already, or still in the URL (taken)
        value = st.session_state[key]
        if not _same(raw, value, None) and not (isinstance(value, (list, tuple)) and raw in map(str, value)):
            note_ignored_link_value(key, raw, f"not a value this page offers (it shows {value!r})")


def config_link_value(config: SparsifyConfig) -> str:
    """A config as a short link value: the JSON of its fields that differ from the defaults."""
    default = SparsifyConfig()
    data = {f.name: getattr(config, f.name) for f in fields(config) if getattr(config, f.name) != getattr(default, f.name)}
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def apply_linked_config(param: str) -> None:
    """Make the config a link carries in ``param`` (``config_link_value``) the current one, once per link
    value: a shared link shows the sender's setting, not the receiver's own. A bad value is named in the
    run's warning and the current config stays."""
    raw = st.query_params.get(param)
    if raw is None or not _first_look(param, raw):
        return
    try:
        config = SparsifyConfig.from_json(raw)
        config.validate()
    except (ValueError, TypeError) as err:  # bad JSON is a ValueError; an unknown field a TypeError
        note_ignored_link_value(param, raw if len(raw) <= 80 else raw[:80] + "…",
                                f"not a sparsity setting ({err})")
        return
    st.session_state["config_json"] = config.to_json()


def current_config() -> SparsifyConfig:
    """The config last applied on the Sparsify page (kept in session state across pages)."""
    raw = st.session_state.get("config_json")
    return SparsifyConfig.from_json(raw) if raw else SparsifyConfig()


def config_form(prefix: str, initial: SparsifyConfig, *, compact: bool = False,
                url: bool = False) -> SparsifyConfig | None:
    """Widgets for a SparsifyConfig. Returns None (after showing why) when the settings are invalid.

    ``url``: keep the main choices in the page's URL (a reload or a shared link shows the same view).
    """
    bind = "query-params" if url else None
    cols = st.columns(3)
    with cols[0]:
        pattern = linked(f"{prefix}_pattern", url, "the pattern is one of " + ", ".join(PATTERN_LABELS.values()),
                         lambda: st.radio("Pattern", list(PATTERN_LABELS),
                                          index=list(PATTERN_LABELS).index(initial.pattern), format_func=PATTERN_LABELS.get,
                                          key=f"{prefix}_pattern", horizontal=compact, bind=bind), PATTERN_LABELS.get)
        method = linked(f"{prefix}_method", url, "not a scoring method (" + ", ".join(REGISTRY) + ")",
                        lambda: st.selectbox("Scoring", list(REGISTRY), index=list(REGISTRY).index(initial.method),
                                             key=f"{prefix}_method", help=METHOD_HELP, bind=bind))
        seed = initial.seed
        if REGISTRY[method].uses_seed:
            seed = int(st.number_input("Seed", 0, 2**31 - 1, initial.seed, key=f"{prefix}_seed"))
        order = initial.calibration_order
        if REGISTRY[method].calibration_order and not compact:
            order = st.radio("Calibration order", list(CALIBRATION_ORDERS), horizontal=True,
                             index=list(CALIBRATION_ORDERS).index(initial.calibration_order),
                             format_func=ORDER_LABELS.get, key=f"{prefix}_order", help=ORDER_HELP)
            st.caption("Block: a block's layers all see inputs from the block run dense, earlier blocks pruned "
                       "(as the papers' code). Layer: each layer sees inputs through every pruned layer before it.")
    n, m, sparsity, scope = initial.n, initial.m, initial.sparsity, initial.scope
    with cols[1]:
        if pattern == "nm":
            initial_nm = f"{initial.n}:{initial.m}"
            # One pick per pattern: with two number inputs, going from 2:4 to 4:8 computed 2:8 on the way.
            choice = linked(f"{prefix}_nm", url, f"N:M is one of {', '.join(NM_PRESETS)} or {OTHER_NM}", lambda: st.selectbox(
                "N:M (keep N of every M)", [*NM_PRESETS, OTHER_NM],
                index=[*NM_PRESETS, OTHER_NM].index(initial_nm if initial_nm in NM_PRESETS else OTHER_NM),
                key=f"{prefix}_nm", bind=bind, help="N counts the weights kept in each group of M "
                "(SR-STE convention); 2:4 is what NVIDIA's sparse tensor cores run"))
            if choice == OTHER_NM:
                m = int(linked(f"{prefix}_m", url, f"M is a whole number from 2 to {MAX_M}", lambda: st.number_input(
                    "M (group size)", 2, MAX_M, initial.m, key=f"{prefix}_m", bind=bind)))
                n = int(linked(f"{prefix}_n", url, f"N is a whole number from 1 to {MAX_M - 1}", lambda: st.number_input(
                    "N (kept per group)", 1, MAX_M - 1, min(initial.n, MAX_M - 1), key=f"{prefix}_n", bind=bind,
                    help="N counts the weights kept in each group of M (SR-STE convention)")))
            else:
                n, m = (int(v) for v in choice.split(":"))
            st.caption(f"Keeps {n} of every {m} weights along the input dimension: density {n / m:.1%} "
                       f"in each layer whose input width is a multiple of {m}.")
        elif pattern == "unstructured":
            top = int(MAX_SPARSITY * 100)
            pct = linked(f"{prefix}_sparsity", url, f"sparsity must be a whole number between 0 and {top} %",
                         lambda: st.slider("Sparsity (% pruned)", 0, top, int(round(initial.sparsity * 100)),
                                           key=f"{prefix}_sparsity", bind=bind))
            sparsity = pct / 100
            scope = linked(f"{prefix}_scope", url, "the scope is layer or global", lambda: st.radio(
                "Scope", ["layer", "global"], index=["layer", "global"].index(initial.scope), key=f"{prefix}_scope",
                horizontal=True, bind=bind,
                help="layer: every layer pruned to the sparsity; global: one ranking across layers"))
    with cols[2]:
        layers = linked(f"{prefix}_layers", url, "the layers are one of " + ", ".join(LAYER_LABELS.values()),
                        lambda: st.selectbox("Layers", list(LAYER_LABELS), index=list(LAYER_LABELS).index(initial.layers),
                                             format_func=LAYER_LABELS.get, key=f"{prefix}_layers", bind=bind),
                        LAYER_LABELS.get)
        if compact:
            include, exclude = initial.include, initial.exclude
            first, last, grouping = initial.keep_first_dense, initial.keep_last_dense, initial.conv_grouping
        else:
            include = linked(f"{prefix}_include", url, "a regex of at most 500 characters", lambda: st.text_input(
                "Include regex", initial.include, max_chars=500, key=f"{prefix}_include", bind=bind,
                placeholder="e.g. encoder\\.layer\\.[0-2]\\."))
            exclude = linked(f"{prefix}_exclude", url, "a regex of at most 500 characters", lambda: st.text_input(
                "Exclude regex", initial.exclude, max_chars=500, key=f"{prefix}_exclude", bind=bind))
            first = linked(f"{prefix}_first", url, "keep-first-dense is true or false", lambda: st.checkbox(
                "Keep first layer dense", initial.keep_first_dense, key=f"{prefix}_first", bind=bind))
            last = linked(f"{prefix}_last", url, "keep-last-dense is true or false", lambda: st.checkbox(
                "Keep last layer dense", initial.keep_last_dense, key=f"{prefix}_last", bind=bind))
            grouping = st.selectbox("Conv grouping", ["channel", "kernel"],
                                    index=["channel", "kernel"].index(initial.conv_grouping), key=f"{prefix}_grouping",
                                    help="channel: M input channels at one kernel position (NVIDIA ASP); "
                                         "kernel: along the flattened in×kh×kw axis (original SR-STE)")
        allocation, owl_m, owl_lambda, owl_unit = "uniform", initial.owl_m, initial.owl_lambda, initial.owl_unit
        if not compact and pattern != "dense" and scope == "layer":
            allocation = linked(f"{prefix}_allocation", url,
                                "the allocation is one of " + ", ".join(ALLOCATION_LABELS.values()),
                                lambda: st.selectbox("Allocation across layers", list(ALLOCATION_LABELS),
                                                     index=list(ALLOCATION_LABELS).index(initial.allocation)
                                                     if initial.allocation in ALLOCATION_LABELS else 0,
                                                     format_func=ALLOCATION_LABELS.get, key=f"{prefix}_allocation",
                                                     help=ALLOCATION_HELP, bind=bind), ALLOCATION_LABELS.get)
            if allocation == "owl":
                owl_m = float(st.number_input("OWL outlier threshold M (× layer mean)", 1.0, MAX_OWL_M,
                                              float(initial.owl_m), key=f"{prefix}_owl_m"))
                owl_lambda = float(st.number_input("OWL bound λ (± sparsity around the target)", 0.0, MAX_OWL_LAMBDA,
                                                   float(initial.owl_lambda if pattern != "nm" else max(
                                                       initial.owl_lambda, 0.25)), step=0.01, key=f"{prefix}_owl_l",
                                                   help="under N:M the levels are 1/M apart: λ below that leaves "
                                                        "every layer at N:M"))
                owl_unit = st.selectbox("OWL unit", list(OWL_UNIT_LABELS), format_func=OWL_UNIT_LABELS.get,
                                        index=list(OWL_UNIT_LABELS).index(initial.owl_unit)
                                        if initial.owl_unit in OWL_UNIT_LABELS else 0, key=f"{prefix}_owl_unit",
                                        help="block: one outlier ratio per transformer block over all its layers, "
                                             "one sparsity for the block (the authors' code); layer: each layer "
                                             "scored alone. Models without transformer blocks score layers.")
    config = SparsifyConfig(pattern=pattern, n=n, m=m, sparsity=sparsity, scope=scope, method=method, seed=seed,
                            layers=layers, include=include, exclude=exclude, keep_first_dense=first,
                            keep_last_dense=last, conv_grouping=grouping, calibration_order=order,
                            allocation=allocation, owl_m=owl_m, owl_lambda=owl_lambda, owl_unit=owl_unit)
    try:
        config.validate()
    except ValueError as err:
        st.error(f"Invalid settings: {err}")
        return None
    return config

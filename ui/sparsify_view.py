"""Streamlit pieces of the Sparsify page: when to wait for Apply, the M-fit banner, the report table."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from sparsekit.layers import fitting_group_sizes, group_widths, prunable_layers
from sparsekit.methods import REGISTRY
from sparsekit.sparsify import MAX_M, SparsifyConfig

LIVE_MAX_WEIGHTS = 50_000_000
"""Above this many prunable weights even magnitude/random wait for Apply (each change copies the model)."""
TINY_MAX_WEIGHTS = 1_000_000
"""At or below this, every method is live: a calibrated pass over such a model takes well under a second."""


def prunable_weights(loaded) -> int:
    return sum(int(m.weight.numel()) for _, m in prunable_layers(loaded.module))


def needs_apply(config: SparsifyConfig, weights: int) -> bool:
    """Whether this setting waits for an Apply click instead of computing on every change."""
    if config.pattern == "dense" or weights <= TINY_MAX_WEIGHTS:
        return False
    return REGISTRY[config.method].needs_calibration or weights > LIVE_MAX_WEIGHTS


def apply_gate(config: SparsifyConfig, weights: int, last_seconds: float | None) -> SparsifyConfig | None:
    """The config to show: ``config`` itself when it is live or was applied; else the last applied
    one (or None), after drawing the Apply button with an estimate."""
    applied = st.session_state.get("sp_applied")
    if not needs_apply(config, weights) or applied == config.to_json():
        st.session_state["sp_applied"] = config.to_json()
        return config
    label = REGISTRY[config.method].label
    estimate = (f"the last {label} run on this model took {last_seconds:.1f} s" if last_seconds is not None
                else f"first {label} run on this model: a progress bar shows each layer")
    c1, c2 = st.columns([1, 4], vertical_alignment="center")
    clicked = c1.button(f"Apply {config.label()}", type="primary", key="sp_apply")
    c2.caption(f"{label} on {weights / 1e6:,.1f} M prunable weights is computed when you press Apply ({estimate}). "
               "Magnitude and random update live on models up to "
               f"{LIVE_MAX_WEIGHTS / 1e6:.0f} M weights.")
    if clicked:
        st.session_state["sp_applied"] = config.to_json()
        return config
    if applied:
        shown = SparsifyConfig.from_json(applied)
        st.info(f"Showing **{shown.label()}**; press Apply to compute **{config.label()}**.")
        return shown
    return None


def fit_banner(loaded, config: SparsifyConfig, summary: dict, container) -> None:
    """A warning at the top when M does not divide the layers' widths (those layers stay dense)."""
    if config.pattern != "nm":
        return
    widths = group_widths(loaded.module, config.conv_grouping)
    unfit = {n: w for n, w in widths.items() if w % config.m}
    if not unfit:
        return
    counts = pd.Series(list(unfit.values())).value_counts().sort_index()
    listing = ", ".join(f"{w:,} ({c} layer{'s' if c > 1 else ''})" for w, c in counts.items())
    good = fitting_group_sizes(widths, MAX_M)
    fix = (f"M values that fit every layer: {', '.join(map(str, good))}." if good
           else "No M up to 32 fits every layer.")
    how = (f"{summary['layers_pruned']} of {summary['layers_total']} layers were pruned" if summary["layers_pruned"]
           else "**nothing was pruned**")
    container.warning(f"**M = {config.m} does not divide the input width of {len(unfit)} of {len(widths)} layers**, "
                      f"so they stay dense and {how}. Widths not divisible by {config.m}: {listing}. {fix}",
                      icon=":material/warning:")


REPORT_COLUMNS = {
    "name": st.column_config.TextColumn("layer", width="medium"),
    "kept_fraction": st.column_config.ProgressColumn("kept fraction", min_value=0.0, max_value=1.0, format="%.3f",
                                                     width="small"),
    "best KB": st.column_config.NumberColumn("cheapest (KB)", format="%.1f", width="small",
                                             help="the smallest of the dense, bitmask, CSR and N:M sizes"),
    "skipped_reason": st.column_config.TextColumn("left dense because", width="large"),
    "semi_structured": st.column_config.TextColumn("2:4 kernel (PyTorch, fp16 on CUDA)", width="large"),
}


def report_table(report, counting_help: str) -> None:
    """The per-layer report: the columns a reader needs first, sizes in KB, no empty rows."""
    frame = pd.DataFrame([r.as_row() for r in report])
    sizes = {"dense_bytes": "dense KB", "bitmask_bytes": "bitmask KB", "csr_bytes": "CSR KB", "nm_bytes": "N:M KB"}
    for col, label in sizes.items():
        frame[label] = frame[col].map(lambda b: None if b is None or pd.isna(b) else b / 1024)
    frame["best KB"] = frame[list(sizes.values())].min(axis=1)
    order = ["name", "kept_fraction", "best KB", *sizes.values(), "shape", "layer_type", "group", "kept",
             "skipped_reason", "semi_structured"]
    config = dict(REPORT_COLUMNS)
    config["kept_fraction"] = st.column_config.ProgressColumn(
        "kept fraction", min_value=0.0, max_value=1.0, format="%.3f", width="small", help=counting_help)
    for label in sizes.values():
        config[label] = st.column_config.NumberColumn(label, format="%.1f")
    height = min(38 + 35 * len(frame), 420)  # a 5-layer model gets 5 rows, not 5 rows and 10 blanks
    st.dataframe(frame[order], hide_index=True, height=height, column_config=config, width="stretch")

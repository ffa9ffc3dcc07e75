"""Streamlit pieces of the Sparsify page: when to wait for Apply, the M-fit banner, the report table."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from sparsekit.layers import fitting_group_sizes, group_widths, prunable_layers
from sparsekit.methods import REGISTRY
from sparsekit.sparsify import MAX_M, SparsifyConfig
from ui.format import change_text, metric_text, table_view
from ui.long_jobs import duration_text

LIVE_MAX_WEIGHTS = 50_000_000
"""Above this many prunable weights even magnitude/random wait for Apply (each change copies the model)."""
TINY_MAX_WEIGHTS = 1_000_000
"""At or below this every method updates live: each change takes well under a second."""


def prunable_weights(loaded) -> int:
    return sum(int(m.weight.numel()) for _, m in prunable_layers(loaded.module))


def is_fast(config: SparsifyConfig, weights: int) -> bool:
    """Magnitude or random on a model up to ``LIVE_MAX_WEIGHTS`` (no calibration pass)."""
    return not REGISTRY[config.method].needs_calibration and weights <= LIVE_MAX_WEIGHTS


def apply_gate(config: SparsifyConfig, weights: int, last_seconds: float | None,
               computed: bool = False, estimate: float | None = None,
               calibration: str = "") -> SparsifyConfig | None:
    """The config to show: ``config`` itself when it updates live or was applied; else the last
    applied one (or None), after drawing the Apply button with an estimate.

    Every method is live on tiny models. Above ``TINY_MAX_WEIGHTS`` a change waits for Apply
    (on 2 cores a MiniLM change takes 1.6 s from click to idle page, over the 1 s a live control
    should take); magnitude and random can be switched to live with a checkbox. The page's first
    view computes its setting at once when that setting is fast, and a setting already ``computed``
    (in the shared result store) shows without a click. ``estimate`` (seconds, from the model's
    measured speed) is shown before a method's first run on the model, with what it will run
    (``calibration``, e.g. ``1,287 calibration tokens (11 rows)``).
    """
    applied = st.session_state.get("sp_applied")
    live = weights <= TINY_MAX_WEIGHTS
    if not live and is_fast(config, weights):
        live = st.checkbox("Update live", key="sp_live", help="Recompute on every change of a magnitude or random "
                           "setting instead of waiting for Apply (each change prunes a copy and measures its quality).")
    first_view = applied is None and is_fast(config, weights)
    if config.pattern == "dense" or live or first_view or computed or applied == config.to_json():
        st.session_state["sp_applied"] = config.to_json()
        return config
    label = REGISTRY[config.method].label
    calibrated = REGISTRY[config.method].needs_calibration
    if last_seconds is not None:
        expect = f"the last {label} setting on this model took {last_seconds:.1f} s"
    elif estimate is not None:
        expect = (f"first {label} setting on this model, estimated {duration_text(estimate)} from its measured "
                  "speed" + (f" for {calibration}" if calibrated and calibration else "")
                  + ("; a progress bar shows each layer and the time left" if calibrated else ""))
    else:
        expect = f"first {label} setting on this model" + (": a progress bar shows each layer" if calibrated else "")
    c1, c2 = st.columns([1, 3], vertical_alignment="center")
    clicked = c1.button(f"Apply {config.label()}", type="primary", key="sp_apply")
    c2.caption(f"Computed when you press Apply: {weights / 1e6:,.1f} M prunable weights ({expect}).")
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
           else f"No M up to {MAX_M} fits every layer.")
    first = next(iter(widths))
    if first in unfit and not config.keep_first_dense and len(widths) > 1:
        rest = fitting_group_sizes({n: w for n, w in widths.items() if n != first}, MAX_M)
        if rest and config.m in rest:
            fix += f" Tick **keep first layer dense** to leave `{first}` dense on purpose: M = {config.m} fits the others."
        elif rest:
            fix += (f" With **keep first layer dense** (`{first}`), M = {', '.join(map(str, rest))} "
                    "fit all the other layers.")
    how = (f"{summary['layers_pruned']} of {summary['layers_total']} layers were pruned" if summary["layers_pruned"]
           else "**nothing was pruned**")
    container.warning(f"**M = {config.m} does not divide the input width of {len(unfit)} of {len(widths)} layers**, "
                      f"so they stay dense and {how}. Widths not divisible by {config.m}: {listing}. {fix}",
                      icon=":material/warning:")


REPORT_COLUMNS = {
    "name": st.column_config.TextColumn("layer", width="large"),
    "kept_fraction": st.column_config.ProgressColumn("kept fraction", min_value=0.0, max_value=1.0, format="%.3f",
                                                     width="small"),
    "best KB": st.column_config.NumberColumn("cheapest KB", format="%.1f", width="medium",
                                             help="the smallest of the dense, bitmask, CSR and N:M sizes"),
    "skipped_reason": st.column_config.TextColumn("left dense because", width="large"),
    "semi_structured": st.column_config.TextColumn("2:4 kernel", width="large",
                                                   help="PyTorch's semi-structured 2:4 kernel, fp16 on CUDA"),
}


def report_table(report, counting_help: str) -> None:
    """The per-layer report: the columns a reader needs first, sizes in KB, no empty rows."""
    frame = pd.DataFrame([r.as_row() for r in report])
    sizes = {"dense_bytes": "dense KB", "bitmask_bytes": "bitmask KB", "csr_bytes": "CSR KB", "nm_bytes": "N:M KB"}
    for col, label in sizes.items():
        frame[label] = frame[col].map(lambda b: None if b is None or pd.isna(b) else b / 1024)
    frame["best KB"] = frame[list(sizes.values())].min(axis=1)
    # What a reader looks for first sits left: how much survived, what it costs, and why a layer
    # stayed dense; the per-format sizes and counts follow.
    order = ["name", "kept_fraction", "best KB", "skipped_reason", "semi_structured", "shape", *sizes.values(),
             "layer_type", "group", "kept"]
    if not frame["skipped_reason"].fillna("").astype(str).str.strip().any():
        order.remove("skipped_reason")  # no layer was left dense: no wide empty column
    config = dict(REPORT_COLUMNS)
    config["kept_fraction"] = st.column_config.ProgressColumn(
        "kept fraction", min_value=0.0, max_value=1.0, format="%.3f", width="small", help=counting_help)
    for label in sizes.values():
        config[label] = st.column_config.NumberColumn(label, format="%.1f")
    height = min(38 + 35 * len(frame), 420)  # a 5-layer model gets 5 rows, not 5 rows and 10 blanks
    st.dataframe(**table_view(frame[order], config), hide_index=True, height=height, width="stretch")


def uniform_comparison_text(loaded, metric: str, allocated: dict[str, float], uniform: dict[str, float]) -> str:
    """One sentence: the non-uniform allocation's headline metric against uniform allocation of the
    same pattern and method (same overall count of pruned weights), and which is better."""
    name = loaded.metric_names.get(metric, metric)
    a, u = allocated[metric], uniform[metric]
    if a == u:
        verdict = "the same as"
    else:
        better = (a > u) == loaded.higher_is_better.get(metric, True)
        verdict = "better than" if better else "worse than"
    return (f"{name}: **{metric_text(a)}** with this allocation, **{metric_text(u)}** with every layer at the same "
            f"target (uniform allocation, same overall sparsity) – {verdict} uniform by "
            f"{change_text(abs(a - u), a).lstrip('+')}.")

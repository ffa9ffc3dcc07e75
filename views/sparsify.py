"""Sparsify: choose a pattern and layers, prune a copy, compare quality, download the result."""
from dataclasses import replace

import pandas as pd
import streamlit as st

from sparsekit.export import masks_safetensors, weights_safetensors
from sparsekit.methods.cost import calibration_text
from sparsekit.report import report_csv
from sparsekit.recipes.pages import sparsify_recipe
from ui.figures import figure
from ui.format import change_text, metric_text, size_text
from ui.links import apply_config_link, keep_config_in_link
from ui.notebook import notebook_button, upload_digest
from ui.sparsify import apply_gate, fit_banner, prunable_weights, report_table, uniform_comparison_text
from ui.state import estimated_duration, is_computed, last_duration, require_model, sparse_quality, sparsified
from ui.widgets import config_form, current_config

st.title("Sparsify")
st.markdown(
    "**N:M sparsity** keeps N weights in every group of M consecutive inputs (2:4 runs on NVIDIA "
    "sparse tensor cores); **unstructured** sparsity removes the smallest weights anywhere. "
    "Magnitude pruning keeps the largest |w|; random pruning is the honest baseline. The loaded "
    "model is never changed: every setting prunes a fresh copy."
)

COUNTING_HELP = ("Unstructured: sparsekit prunes round(s·count) weights of each unit it ranks within (the layer; "
                 "a row for Wanda; a block of 128 columns for SparseGPT). The authors' code prunes int(cols·s) per "
                 "row (Wanda) and int(count·s)+1 per block (SparseGPT): a few weights per layer apart, see "
                 "README 'Counting conventions' or sparsekit.conventions.pruned_counts.")

loaded, key = require_model()
banner = st.container()  # the M-fit warning goes above the form, where it is seen first

apply_config_link("sp_config")  # a shared link's whole setting (ui.links), before the form reads the current one
config = config_form("sp", current_config(), url=True)
if config is None:
    st.stop()
keep_config_in_link("sp_config", config)
config = apply_gate(config, prunable_weights(loaded), last_duration(key, config.method), is_computed(key, config),
                    estimated_duration(key, loaded, config), calibration_text(loaded.calibration))
if config is None:
    st.stop()
st.session_state["config_json"] = config.to_json()

try:
    result = sparsified(key, loaded, config)  # draws per-layer progress for the calibrated methods
except ValueError as err:
    st.error(f"Cannot apply these settings: {err}")
    st.stop()

dense = loaded.quality()
summary = result.summary()
fit_banner(loaded, config, summary, banner)
# The quality pass (most of a new setting's time on MiniLM) runs last: the per-layer report, figures and
# downloads below reach the browser first and are drawn while it runs; its numbers fill this place above them.
top = st.container()

st.subheader("Per-layer report")
report_table(result.report, COUNTING_HELP)
st.caption("Memory: dense = all values; bitmask = kept values + 1 bit per weight; CSR = kept values + int64 "
           "column index each + int64 row pointers (torch's layout); N:M = kept values + ⌈log₂M⌉ index bits "
           "per kept value (PyTorch's 2-bit metadata for 2:4). 1 KB = 1024 bytes.")
left, right = st.columns(2)
with left:
    st.plotly_chart(figure("layer_kept_figure", f"{key}|{config.to_json()}", result.report), width="stretch")
with right:
    if any(r.pruned for r in result.report):
        st.plotly_chart(figure("memory_figure", f"{key}|{config.to_json()}", result.report), width="stretch")

st.subheader("Downloads")
stem = f"{loaded.name}-{config.label()}".replace(" ", "_").replace(":", "-").replace("/", "_")
weights_bytes = sum(p.numel() * p.element_size() for p in result.model.state_dict().values())
d1, d2, d3 = st.columns(3)
# Files are built when clicked (on a thread of their own) and the page does not rerun afterwards.
d1.download_button("Masks (.safetensors)", lambda: masks_safetensors(result), f"{stem}-masks.safetensors",
                   mime="application/octet-stream", on_click="ignore")
d2.download_button(f"Pruned weights (.safetensors, {size_text(weights_bytes)})", lambda: weights_safetensors(result),
                   f"{stem}-weights.safetensors", mime="application/octet-stream", on_click="ignore")
d3.download_button("Report (.csv)", report_csv(result), f"{stem}-report.csv", mime="text/csv", on_click="ignore")

with top:
    try:
        with st.spinner("Measuring quality of the sparse model…"):
            quality = sparse_quality(key, loaded, config)
    except ValueError as err:
        st.error(f"Cannot apply these settings: {err}")
        st.stop()
    cols = st.columns(4)
    cols[0].metric("Layers with weights removed", f"{summary['layers_with_zeros']} / {summary['layers_total']}",
                   help="Linear/Conv layers that lost at least one weight (a layer the pattern cannot take stays dense; "
                        "0 % sparsity removes nothing)")
    cols[1].metric("Kept in pruned layers", f"{summary['kept_fraction_pruned_layers']:.1%}")
    headline = next(iter(quality))
    delta = quality[headline] - dense[headline]
    cols[2].metric(loaded.metric_names.get(headline, headline), metric_text(quality[headline]),
                   f"{change_text(delta, quality[headline])} vs dense" if delta else None,
                   delta_color="normal" if loaded.higher_is_better.get(headline, True) else "inverse",
                   help=f"measured on {loaded.info['eval_budget']}" if loaded.info.get("eval_budget") else None)
    cols[3].metric("Kept in all Linear/Conv", f"{summary['kept_fraction_all_layers']:.1%}")
    notebook_button(sparsify_recipe(loaded.spec, config, upload_sha256=upload_digest(loaded)), key="sp_notebook")
    if loaded.info.get("eval_budget"):
        st.caption(f"Quality measured on {loaded.info['eval_budget']}; the dense model's outputs are computed once "
                   "per model and reused for every setting.")
    if result.calibration_note:
        st.caption(f"Calibration order: {result.calibration_note}.")
    if result.allocation_note:
        st.caption(f"Allocation: {result.allocation_note}")
    if config.allocation != "uniform" and config.pattern != "dense":
        uniform = replace(config, allocation="uniform")
        try:
            with st.spinner(f"Measuring {uniform.label()} (uniform allocation) for comparison…"):
                uniform_quality = sparse_quality(key, loaded, uniform)
        except ValueError as err:
            st.caption(f"No uniform comparison: {err}")
        else:
            st.info(uniform_comparison_text(loaded, headline, quality, uniform_quality), icon=":material/balance:")

    st.subheader("Quality before and after")
    st.dataframe(pd.DataFrame([
        {"metric": loaded.metric_names.get(k, k), "dense": dense[k], "sparse": quality[k], "change": quality[k] - dense[k],
         "dense ": metric_text(dense[k]), "sparse ": metric_text(quality[k]), "change ": change_text(quality[k] - dense[k], dense[k])}
        for k in quality
    ]), hide_index=True, column_order=["metric", "dense ", "sparse ", "change "])

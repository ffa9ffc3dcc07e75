"""Sparsify: choose a pattern and layers, prune a copy, compare quality, download the result."""
import pandas as pd
import streamlit as st

from sparsekit import viz
from sparsekit.sparsify import masks_safetensors, report_csv, weights_safetensors
from ui.state import require_model, sparse_quality, sparsified
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

config = config_form("sp", current_config())
if config is None:
    st.stop()
st.session_state["config_json"] = config.to_json()

try:
    result = sparsified(key, loaded, config)  # draws per-layer progress for the calibrated methods
    with st.spinner("Measuring quality of the sparse model…"):
        quality = sparse_quality(key, loaded, config)
except ValueError as err:
    st.error(f"Cannot apply these settings: {err}")
    st.stop()

dense = loaded.quality()
summary = result.summary()
cols = st.columns(4)
cols[0].metric("Layers pruned", f"{summary['layers_pruned']} / {summary['layers_total']}")
cols[1].metric("Kept in pruned layers", f"{summary['kept_fraction_pruned_layers']:.1%}")
headline = next(iter(quality))
delta = quality[headline] - dense[headline]
cols[2].metric(loaded.metric_names.get(headline, headline), f"{quality[headline]:.4g}", f"{delta:+.4g} vs dense",
               delta_color="normal" if loaded.higher_is_better.get(headline, True) else "inverse")
cols[3].metric("Kept in all Linear/Conv", f"{summary['kept_fraction_all_layers']:.1%}")
if result.calibration_note:
    st.caption(f"Calibration order: {result.calibration_note}.")

st.subheader("Quality before and after")
st.dataframe(pd.DataFrame([
    {"metric": loaded.metric_names.get(k, k), "dense": dense[k], "sparse": quality[k], "change": quality[k] - dense[k]}
    for k in quality
]), hide_index=True)

st.subheader("Per-layer report")
rows = [r.as_row() for r in result.report]
frame = pd.DataFrame(rows)
for col in ("dense_bytes", "bitmask_bytes", "csr_bytes", "nm_bytes"):
    frame[col.replace("_bytes", " (KB)")] = frame[col].map(lambda b: None if b is None or pd.isna(b) else b / 1024)
frame = frame.drop(columns=["dense_bytes", "bitmask_bytes", "csr_bytes", "nm_bytes", "numel"])
st.dataframe(frame, hide_index=True, height=380, column_config={
    "kept_fraction": st.column_config.ProgressColumn(
        "kept fraction", min_value=0.0, max_value=1.0, format="%.3f", help=COUNTING_HELP),
    "semi_structured": st.column_config.TextColumn("2:4 kernel (PyTorch, fp16 on CUDA)"),
    "skipped_reason": st.column_config.TextColumn("left dense because"),
})
st.caption("Memory: dense = all values; bitmask = kept values + 1 bit per weight; CSR = kept values + int64 "
           "column index each + int64 row pointers (torch's layout); N:M = kept values + ⌈log₂M⌉ index bits "
           "per kept value (PyTorch's 2-bit metadata for 2:4).")
left, right = st.columns(2)
with left:
    st.plotly_chart(viz.layer_kept_figure(result.report), width="stretch")
with right:
    if any(r.pruned for r in result.report):
        st.plotly_chart(viz.memory_figure(result.report), width="stretch")

st.subheader("Downloads")
stem = f"{loaded.name}-{config.label()}".replace(" ", "_").replace(":", "-").replace("/", "_")
d1, d2, d3 = st.columns(3)
d1.download_button("Masks (.safetensors)", lambda: masks_safetensors(result), f"{stem}-masks.safetensors",
                   mime="application/octet-stream")
d2.download_button("Pruned weights (.safetensors)", lambda: weights_safetensors(result), f"{stem}-weights.safetensors",
                   mime="application/octet-stream")
d3.download_button("Report (.csv)", report_csv(result), f"{stem}-report.csv", mime="text/csv")

"""Compare: pruning methods x patterns x sparsity on the loaded model; channel permutation; export."""
import math

import pandas as pd
import streamlit as st

from sparsekit import compare as cmp
from sparsekit import viz
from sparsekit.export import export_files, export_zip
from sparsekit.sparsify import SparsifyConfig
from ui.state import require_model, sparsified

st.title("Compare methods")
st.markdown(
    "**Magnitude** pruning looks only at the weights. **Wanda** also weighs each weight by how large its "
    "input activations are, **SparseGPT** rewrites the kept weights to make up for the pruned ones, and "
    "**Taylor** asks how much a loss would move; all three learn from a small calibration set (digits "
    "training images, or built-in sentences for text). On LLaMA-2 at 2:4 the papers report Wanda and "
    "SparseGPT far ahead of magnitude: here you see what *this* model gives."
)

loaded, key = require_model()

NM_CHOICES = {"2:4": (2, 4), "4:8": (4, 8), "1:4": (1, 4)}
SPARSITY_CHOICES = [30, 50, 60, 70, 80, 90]
c1, c2, c3 = st.columns(3)
methods = c1.multiselect("Methods", list(cmp.DEFAULT_METHODS), default=list(cmp.DEFAULT_METHODS), key="cmp_methods")
nm = c2.multiselect("N:M patterns (keep N of every M)", list(NM_CHOICES), default=list(NM_CHOICES), key="cmp_nm")
pcts = c3.multiselect("Unstructured sparsity (% pruned)", SPARSITY_CHOICES, default=[50, 70], key="cmp_sparsity")
request = [sorted(methods), sorted(nm), sorted(pcts)]
try:
    configs = cmp.sweep_configs(methods, [NM_CHOICES[p] for p in nm], [p / 100 for p in pcts])
except ValueError as err:
    st.error(f"Cannot run this sweep: {err}")
    st.stop()

if st.button(f"Run comparison ({len(configs)} settings)", type="primary", key="cmp_run"):
    st.session_state["cmp_request"] = request
if st.session_state.get("cmp_request") != request:
    st.info(f"{len(configs)} settings: each prunes a fresh copy and measures it (results are cached on disk, so a "
            "sweep runs once per model). SparseGPT on MiniLM takes several seconds per setting.")
    st.stop()

bar = st.progress(0.0, text="Comparing…")
try:
    rows = cmp.compare(loaded, configs, progress=lambda f, msg: bar.progress(min(max(f, 0.0), 1.0), text=msg))
except ValueError as err:
    bar.empty()
    st.error(f"The comparison failed: {err}")
    st.stop()
bar.empty()
dense = cmp.dense_row(loaded)
all_rows = [dense, *rows]

metrics = list(loaded.quality())
metric = st.selectbox("Quality metric", metrics, format_func=lambda k: loaded.metric_names.get(k, k), key="cmp_metric")
label = loaded.metric_names.get(metric, metric)
higher = loaded.higher_is_better.get(metric, True)
ranking = cmp.best_first(rows, metric, higher_is_better=higher)
st.markdown(f"Dense: {dense['quality'][metric]:.4g} ({label}). Best first:  \n" + "  \n".join(
    f"**{pattern}**: " + ", ".join(f"{method} {value:.4g}" for method, value in ranked)
    for pattern, ranked in ranking.items()))

left, right = st.columns(2)
with left:
    st.plotly_chart(viz.compare_figure(all_rows, metric, x="sparsity", metric_label=label, higher_is_better=higher),
                    width="stretch", key="cmp_fig_sparsity")
with right:
    st.plotly_chart(viz.compare_figure(all_rows, metric, x="memory", metric_label=label, higher_is_better=higher),
                    width="stretch", key="cmp_fig_memory")
st.caption("Sparsity is the pruned share of all Linear/Conv weights (layers that cannot take a pattern stay dense, "
           "e.g. a conv with one input channel under N:M). Memory counts each layer in its cheapest format: dense, "
           "bitmask, CSR or N:M-compressed.")

patterns, cols, values = cmp.pivot(rows, metric)
st.subheader(f"{label} by setting and method")
st.dataframe(pd.DataFrame(values, index=patterns, columns=cols), width="stretch")
flat = pd.DataFrame(cmp.flat_rows(all_rows))
flat["best_KB"] = flat["best_bytes"] / 1024
with st.expander("All results"):
    st.dataframe(flat.drop(columns=["best_bytes", "dense_bytes"]), hide_index=True, width="stretch")
notes = {f"{r['setting']}: {layer}": note for r in rows for layer, note in r["notes"].items()}
if notes:
    st.caption("Notes: " + "; ".join(f"{k}: {v}" for k, v in list(notes.items())[:8]))
st.download_button("Results (.csv)", flat.to_csv(index=False), f"{loaded.name}-compare.csv".replace("/", "_"),
                   mime="text/csv", key="cmp_csv")

st.subheader("Channel permutation for N:M")
st.markdown(
    "Reordering a layer's input channels, and the producing layer's outputs with them, leaves the network's "
    "function unchanged but regroups the weights, so more magnitude survives N:M (Pool & Yu, NVIDIA ASP). The "
    "**recovered share** is how much of the gap in kept |w| between plain N:M and unstructured pruning at the "
    "same density the search closes."
)
pc1, pc2 = st.columns([1, 2])
perm_pattern = pc1.selectbox("Pattern", list(NM_CHOICES), key="cmp_perm_pattern")
if pc1.button("Search a permutation", key="cmp_perm_run"):
    st.session_state["cmp_perm_request"] = perm_pattern
prow = None
if st.session_state.get("cmp_perm_request") == perm_pattern:
    pn, pm = NM_CHOICES[perm_pattern]
    with st.spinner("Searching channel permutations (cached once done)…"):
        try:
            prow = cmp.permuted_nm_row(loaded, pn, pm, max_seconds_per_layer=10.0)
        except ValueError as err:
            st.error(f"Cannot permute this model: {err}")
if prow is not None:
    plain = next((r for r in rows if r["pattern"] == perm_pattern and r["method"] == "magnitude"), None)
    if plain is None:
        plain = cmp.evaluate(loaded, SparsifyConfig(pattern="nm", n=pn, m=pm))
    with pc2:
        a, b, c = st.columns(3)
        a.metric("Recovered share of the gap", "–" if not prow["layers"] else f"{prow['recovered_share']:.1%}")
        b.metric(f"{label}, magnitude {perm_pattern}", f"{plain['quality'][metric]:.4g}")
        c.metric(f"{label}, permuted", f"{prow['quality'][metric]:.4g}",
                 f"{prow['quality'][metric] - plain['quality'][metric]:+.4g}",
                 delta_color="normal" if higher else "inverse")
    if prow["layers"]:
        st.dataframe(pd.DataFrame(prow["layers"]), hide_index=True, width="stretch", column_config={
            "recovered_share": st.column_config.NumberColumn("recovered share", format="%.3f")})
    else:
        st.info("No layer of this model can be permuted without changing its function.")
    if prow["skipped"]:
        with st.expander(f"{len(prow['skipped'])} layers not permuted"):
            st.dataframe(pd.DataFrame([{"layer": k, "why": v} for k, v in prow["skipped"].items()]), hide_index=True)

st.subheader("Export")
st.markdown("The pruned model as `.safetensors`, its masks, and a JSON manifest (config, per-layer report, quality), "
            "in one zip. `sparsekit.export.reload_export(zip_bytes)` loads it back through the model loader.")
setting = st.selectbox("Setting", [r["setting"] for r in rows], key="cmp_export_setting")
chosen = next(r for r in rows if r["setting"] == setting)
config = SparsifyConfig.from_json(chosen["config"])


def export_bytes() -> bytes:
    result = sparsified(key, loaded, config)
    return export_zip(export_files(result, loaded, quality=chosen["quality"]))


stem = f"{loaded.name}-{setting}".replace(" ", "_").replace(":", "-").replace("/", "_").replace("%", "pct")
st.download_button("Export (.zip)", export_bytes, f"{stem}.zip", mime="application/zip", key="cmp_export")
if any(math.isnan(v) for r in rows for v in r["quality"].values() if isinstance(v, float)):
    st.warning("Some settings produced NaN quality (the pruned model's outputs broke down).")

"""Compare: pruning methods x patterns x sparsity on the loaded model; channel permutation; structure families
at equal cost; export."""
import math

import pandas as pd
import streamlit as st

from sparsekit import compare as cmp
from sparsekit import viz
from sparsekit.cache import get_cache, make_key
from sparsekit.export import export_files, export_zip
from sparsekit.recipes.compare import compare_headline, compare_recipe
from sparsekit.sparsify import SparsifyConfig
from ui.compare_families import families_section
from ui.format import change_text, metric_text, table_view
from ui.heavy import heavy_job
from ui.long_jobs import EstimatingProgress, job_buttons, job_state
from ui.notebook import notebook_button, upload_digest
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
PERM_SECONDS = 10.0  # search time limit per layer
# Methods get the wide column and every box wraps its chips, so no choice hides behind a scroll.
c1, c2, c3 = st.columns([2, 1, 1])
methods = c1.multiselect("Methods", list(cmp.DEFAULT_METHODS), default=list(cmp.DEFAULT_METHODS), key="cmp_methods",
                         wrap=True, bind="query-params")
nm = c2.multiselect("N:M (keep N of M)", list(NM_CHOICES), default=list(NM_CHOICES), key="cmp_nm", wrap=True,
                    bind="query-params")
pcts = c3.multiselect("Unstructured (% pruned)", SPARSITY_CHOICES, default=[50, 70], key="cmp_sparsity", wrap=True,
                      bind="query-params")
try:
    configs = cmp.sweep_configs(methods, [NM_CHOICES[p] for p in nm], [p / 100 for p in pcts])
except ValueError as err:
    configs = []
    st.error(f"Cannot run this sweep: {err}")
metrics = list(loaded.quality())
metric = st.selectbox("Quality metric", metrics, format_func=lambda k: loaded.metric_names.get(k, k), key="cmp_metric")
label = loaded.metric_names.get(metric, metric)
higher = loaded.higher_is_better.get(metric, True)
notebook_slot = st.empty()  # filled at the end, once the sweep and the permutation shown are known

# Only a click runs a sweep; what this model already ran (any session) comes from the disk cache, setting by
# setting: a stopped sweep shows its finished settings, and Continue computes only the rest.
rows = cmp.cached_rows(loaded, configs)
sweep = job_state("cmp_sweep_jobs", "|".join([key, *(c.to_json() for c in configs)]))
# On disk while this sweep is started and not finished, so that a reload shows it stopped and offers Continue.
started = make_key("page-compare-sweep", key, [c.to_json() for c in configs])
if configs and rows is None:
    have = {i: hit[0] for i, c in enumerate(configs) if (hit := cmp.cached_rows(loaded, [c]))}
    if sweep["status"] != "running":
        sweep["status"] = "stopped" if have and get_cache().get(started) else "idle"
    sweep_slot = job_buttons(sweep, st, "cmp", f"Run comparison ({len(configs)} settings)", "settings")
    if sweep["status"] == "running":
        get_cache()[started] = "1"
        bar = EstimatingProgress("Comparing")
        todo = [i for i in range(len(configs)) if i not in have]
        try:
            with heavy_job("sweep", loaded):
                for j, i in enumerate(todo):
                    if sweep["status"] != "running":  # the page's stop flag (a Stop press reruns the page instead)
                        break

                    def setting_progress(f: float, message: str, j: int = j, i: int = i) -> None:
                        bar((j + f) / len(todo), f"{configs[i].label()} ({len(have) + 1} of {len(configs)})")

                    # Each finished setting is stored on disk at once: a Stop press (a rerun) keeps it.
                    have[i] = cmp.compare(loaded, [configs[i]], progress=setting_progress)[0]
        except ValueError as err:
            sweep["status"] = "idle"
            st.error(f"The comparison failed: {err}")
        bar.empty()
        if sweep["status"] == "running":
            sweep["status"] = "done" if len(have) == len(configs) else "stopped"
        if sweep["status"] == "done":
            get_cache().delete(started)
        sweep_slot.empty()
        if sweep["status"] == "stopped":
            sweep_slot.button("Continue", key="cmp_continue", help="carry on from the settings already done")
    if sweep["status"] == "idle":
        st.info(f"{len(configs)} settings for {loaded.name}: each prunes a fresh copy and measures it (results are "
                "cached on disk, so a sweep runs once per model). SparseGPT on MiniLM takes several seconds per "
                "setting.")
    elif sweep["status"] == "stopped":
        st.warning(f"Stopped after {len(have)} of {len(configs)} settings (finished settings are kept on disk, "
                   "also from earlier sweeps); the figures and tables show them. Continue computes only the rest.")
    rows = [have[i] for i in sorted(have)] if sweep["status"] != "idle" else None
if rows:
    dense = cmp.dense_row(loaded)
    all_rows = [dense, *rows]
    sweep_head = compare_headline(metric, configs=configs, rows=rows, dense=dense, higher_is_better=higher)
    st.markdown(f"Dense: {metric_text(sweep_head['dense'])} ({label}). Best first:  \n" + "  \n".join(
        f"**{pattern}**: " + ", ".join(f"{method} {metric_text(value)}" for method, value in ranked)
        for pattern, ranked in sweep_head["best_first"].items()))
    left, right = st.columns(2)
    for col, x in ((left, "sparsity"), (right, "memory")):
        col.plotly_chart(viz.compare_figure(all_rows, metric, x=x, metric_label=label, higher_is_better=higher),
                         width="stretch", key=f"cmp_fig_{x}", theme="streamlit")
    st.caption("Marker symbols name the N:M pattern (hover a point for its values). Sparsity is the pruned share of "
               "all Linear/Conv weights (layers that cannot take a pattern stay dense, e.g. a conv with one input "
               "channel under N:M). Memory counts each layer in its cheapest format: dense, bitmask, CSR or "
               "N:M-compressed.")
    patterns, cols, values = cmp.pivot(rows, metric)
    st.subheader(f"{label} by setting and method")
    st.dataframe(**table_view(pd.DataFrame(values, index=pd.Index(patterns, name="setting"), columns=cols)),
                 width="stretch")
    flat = pd.DataFrame(cmp.flat_rows(all_rows))
    flat["best_KB"] = flat["best_bytes"] / 1024
    with st.expander("All results"):
        share = st.column_config.NumberColumn(format="percent")
        st.dataframe(**table_view(flat.drop(columns=["best_bytes", "dense_bytes"]), {
            "target_sparsity": share, "sparsity": share, "cached": "from cache",
            **{k: loaded.metric_names.get(k, k) for k in metrics}}), hide_index=True, width="stretch")
    notes = {f"{r.setting}: {layer}": note for r in rows for layer, note in r.notes.items()}
    if notes:
        st.caption("Notes: " + "; ".join(f"{k}: {v}" for k, v in list(notes.items())[:8]))
    st.download_button("Results (.csv)", flat.to_csv(index=False), f"{loaded.name}-compare.csv".replace("/", "_"),
                       mime="text/csv", key="cmp_csv")
    if any(math.isnan(v) for r in rows for v in r.quality.values() if isinstance(v, float)):
        st.warning("Some settings produced NaN quality (the pruned model's outputs broke down).")

st.subheader("Channel permutation for N:M")
st.markdown(
    "Reordering a layer's input channels, and the producing layer's outputs with them, leaves the network's "
    "function unchanged but regroups the weights, so more magnitude survives N:M (Pool & Yu, NVIDIA ASP). The "
    "**recovered share** is how much of the gap in kept |w| between plain N:M and unstructured pruning at the "
    "same density the search closes."
)
pc1, pc2 = st.columns([1, 2])
perm_pattern = pc1.selectbox("Pattern", list(NM_CHOICES), key="cmp_perm_pattern")
pn, pm = NM_CHOICES[perm_pattern]
job = job_state("cmp_perm_jobs", f"{key}|{perm_pattern}")
if job["status"] == "idle" and (hit := cmp.cached_permuted_row(loaded, pn, pm, max_seconds_per_layer=PERM_SECONDS)):
    job.update(status="done", result=hit)
stop_slot = job_buttons(job, pc1, "cmp_perm", "Search a permutation", "layers")
try:
    if job["status"] == "running":
        # Each finished layer lands in job["parts"] at once: a Stop press (a rerun) keeps them.
        bar = EstimatingProgress("Searching channel permutations")
        with heavy_job("permutation", loaded):
            job["result"] = cmp.permuted_nm_row(loaded, pn, pm, max_seconds_per_layer=PERM_SECONDS, progress=bar,
                                                on_layer=job["parts"].append, resume=job["parts"])
        job["status"] = "done"
        bar.empty()
        stop_slot.empty()
    elif job["status"] == "stopped" and job["result"] is None:
        job["result"] = cmp.permuted_nm_row(loaded, pn, pm, max_seconds_per_layer=PERM_SECONDS, resume=job["parts"],
                                            should_stop=lambda: True)
except ValueError as err:
    job.update(status="idle", parts=[], result=None)
    st.error(f"Cannot permute this model: {err}")
prow = job["result"]
if prow is not None:
    plain = cmp.compare(loaded, [SparsifyConfig(pattern="nm", n=pn, m=pm)], progress=False)[0]
    perm_head = compare_headline(metric, permuted=prow, plain=plain)
    if prow.stopped:
        pc1.warning(f"Stopped after {prow.layers_searched} layer(s); {len(prow.not_reached)} not searched "
                    "stay as they were. The numbers are for this partial permutation; Continue carries on.")
    with pc2:
        a, b, c = st.columns(3)
        share = perm_head["recovered_share"]
        a.metric("Recovered share of the gap", "–" if share is None else f"{share:.1%}")
        b.metric(f"{label}, magnitude {perm_pattern}", metric_text(perm_head["plain"]))
        change = perm_head["permuted"] - perm_head["plain"]
        c.metric(f"{label}, permuted", metric_text(perm_head["permuted"]),
                 change_text(change, perm_head["plain"]) if change else None,
                 delta_color="normal" if higher else "inverse")
    if prow.layers:
        st.dataframe(**table_view(pd.DataFrame(prow.layers).drop(columns=["perm"], errors="ignore"), {
            "recovered_share": st.column_config.NumberColumn("recovered share", format="%.3f")}),
            hide_index=True, width="stretch")
    elif not prow.stopped:
        st.info("No layer of this model can be permuted without changing its function.")
    if prow.skipped:
        with st.expander(f"{len(prow.skipped)} layers not permuted"):
            st.dataframe(**table_view(pd.DataFrame([{"layer": k, "why": v} for k, v in prow.skipped.items()])),
                         hide_index=True)

family_view = families_section(loaded, key, [NM_CHOICES[p] for p in nm], pcts, metric, label, higher)

st.subheader("Export")
st.markdown("A pruned model as `.safetensors`, its masks, and a JSON manifest (config, per-layer report, quality), "
            "in one zip. `sparsekit.export.reload_export(zip_bytes)` loads it back through the model loader.")
if not configs:
    st.caption("Choose at least one method and one pattern above to export a setting.")
else:
    by_setting = {f"{cmp.pattern_label(c)} {c.method}": c for c in configs}
    setting = st.selectbox("Setting", list(by_setting), key="cmp_export_setting")
    config = by_setting[setting]
    known = next((r.quality for r in rows or [] if r.setting == setting), None)

    def export_bytes() -> bytes:
        # Pruned (and measured, unless the sweep did) only when the button is pressed.
        return export_zip(export_files(sparsified(key, loaded, config), loaded, quality=known))

    stem = f"{loaded.name}-{setting}".replace(" ", "_").replace(":", "-").replace("/", "_").replace("%", "pct")
    st.download_button("Export (.zip)", export_bytes, f"{stem}.zip", mime="application/zip", key="cmp_export")

with notebook_slot.container():
    finished = prow is not None and not prow.stopped
    notebook_button(compare_recipe(
        loaded.spec, methods, [NM_CHOICES[p] for p in nm], [p / 100 for p in pcts], metric, swept=bool(rows),
        permutation=(pn, pm, PERM_SECONDS) if finished else None,
        permutation_note=("The page showed a permutation search that was stopped part way; it is left out here "
                          "(`cmp.permuted_nm_row` runs the whole search)." if prow is not None and not finished
                          else ""),
        upload_sha256=upload_digest(loaded), families=family_view[1] if family_view else None), key="cmp_notebook")

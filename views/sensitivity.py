"""Sensitivity: prune one layer (or one block's attention or MLP) at a time, see which ones the model can
spare, and spend a global budget unevenly from what the scan found."""


import pandas as pd
import streamlit as st

import sparsekit
from sparsekit import viz
from sparsekit.methods import REGISTRY
from sparsekit.recipes.sensitivity import ALLOCATIONS, allocation_row, sensitivity_headline, sensitivity_recipe
from sparsekit.sensitivity import GROUPINGS, SensitivityConfig, cached_scan, scan_units, sensitivity_scan
from sparsekit.sparsify import SparsifyConfig
from sparsekit.viz.sensitivity import layer_sparsity_figure
from ui.format import metric_text
from ui.heavy import heavy_job
from ui.long_jobs import ResumedProgress, job_buttons, job_state
from ui.notebook import notebook_button, upload_digest
from ui.state import require_model

st.title("Layer sensitivity")
st.markdown(
    "Which layers can take sparsity? Each **unit** (one Linear/Conv layer, or the attention or MLP layers of one "
    "transformer block) is pruned **alone**, the rest of the model dense, and the quality drop is recorded: the "
    "classic sensitivity plot. Next to it, a cheap **proxy**: the layer's own output error "
    "‖Wx − W′x‖² / ‖Wx‖² on the calibration inputs, and how well it ranks the units (Spearman ρ). The scan is "
    "measured on the same sentences or held-out digits the quality metric uses, so its drops are optimistic "
    "for unseen data."
)


loaded, key = require_model()
NM = {"2:4": (2, 4), "1:4": (1, 4), "4:8": (4, 8)}
FEW_UNITS = 5  # a Spearman ρ over fewer units says little: the caption says so
c1, c2, c3, c4 = st.columns(4)
method = c1.selectbox("Method", list(REGISTRY), format_func=lambda m: REGISTRY[m].label, key="sen_method")
pcts = c2.multiselect("Unstructured (% pruned)", [30, 50, 70, 90], default=[50, 70, 90], key="sen_pcts", wrap=True)
nms = c3.multiselect("N:M (keep N of M)", list(NM), default=["2:4"], key="sen_nm", wrap=True)
grouping = c4.selectbox("Unit", GROUPINGS, key="sen_grouping",
                        format_func={"layer": "one layer", "block-kind": "block: attention / MLP"}.get)
mode = st.radio("Measure", ["full", "proxy"], horizontal=True, key="sen_mode",
                format_func={"full": "quality drop and proxy (one evaluation per unit and setting)",
                             "proxy": "proxy only (no evaluation: seconds instead of minutes)"}.get)
try:
    config = SensitivityConfig(method=method, sparsities=tuple(p / 100 for p in pcts),
                               nm=tuple(NM[n] for n in nms), grouping=grouping, mode=mode)
    config.validate()
except ValueError as err:
    st.error(f"Cannot scan with these settings: {err}")
    st.stop()

scans = st.session_state.setdefault("sen_scans", {})
scan_key = (key, config.to_json())
job = job_state("sen_jobs", f"{key}|{config.to_json()}")
scan = scans.get(scan_key)  # complete scans only
try:
    if scan is None and job["status"] != "running":
        # A scan on disk shows at once, and so do the units of a stopped one; nothing is computed without a click.
        scan = cached_scan(loaded, config, partial=True)
except ValueError as err:
    st.error(f"Cannot scan this model: {err}")
    st.stop()
if scan is not None and job["status"] != "running":
    job["status"] = "done" if scan.complete else "stopped"
stop_slot = job_buttons(job, st, "sen", "Run scan", "units")
if job["status"] == "idle":
    st.info(f"{len(config.settings())} settings × every unit of {loaded.name}. A full scan of MiniLM's 36 layers "
            "at 3 settings takes minutes on 2 cores; the proxy alone takes seconds. Each finished unit is kept on "
            "disk: Stop shows the units done so far, and Continue computes only the rest.")
    st.stop()
if job["status"] == "running":
    bar = ResumedProgress("Scanning", len(scan_units(loaded.module, config)), "units")
    try:
        # Each unit is stored as it finishes: a Stop press (a rerun) or a closed tab keeps them.
        with heavy_job("scan", loaded):
            scan = sensitivity_scan(loaded, config, progress=bar)
    except ValueError as err:
        job["status"] = "idle"
        st.error(f"The scan failed: {err}")
        st.stop()
    bar.empty()
    job["status"] = "done" if scan.complete else "stopped"
    stop_slot.empty()
    if not scan.complete:  # the library's stop ended it: the next press carries on
        stop_slot.button("Continue", key="sen_continue", help="carry on from the units already done")
elif job["status"] == "stopped" and (scan is None or scan.complete):
    scan = cached_scan(loaded, config, partial=True)
if scan is None:  # stopped before the first unit finished
    st.info("The scan was stopped before its first unit finished; Continue starts it.")
    st.stop()
if scan.complete:
    scans[scan_key] = scan
else:
    st.warning(f"Stopped after {len(scan.units) - len(scan.not_reached)} of {len(scan.units)} units. The heatmap and "
               "the table show the finished units (the others are empty); Continue computes only the rest.")
value = "drop" if mode == "full" else "proxy"
head = sensitivity_headline(scan)
left, right = st.columns([3, 2])
left.plotly_chart(viz.sensitivity_heatmap(scan, value=value), width="stretch", key="sen_heat")
if mode == "full":
    right.plotly_chart(viz.sensitivity_proxy_figure(scan), width="stretch", key="sen_proxy")
    rho = ", ".join(f"{s}: {r}" for s, r in zip(head["settings"], head["spearman"]))
    right.caption(f"Spearman ρ of proxy vs measured drop across units: {rho} (1 = the proxy ranks units exactly as "
                  "the measured drop does)." + (f" ρ over {len(head['units'])} units: too few to judge."
                                                if len(head["units"]) < FEW_UNITS else ""))
label = loaded.metric_names.get(scan.metric, scan.metric)
st.subheader(f"Per unit: drop in {label} (positive = worse than dense {metric_text(head['dense_quality'])})")
table = pd.DataFrame({"unit": head["units"], "weights": head["weights"]})
for j, setting in enumerate(head["settings"]):
    if mode == "full":
        table[f"drop {setting}"] = [row[j] for row in head["drop"]]
    table[f"proxy {setting}"] = [row[j] for row in head["proxy"]]
st.dataframe(table.style.format(na_rep="—"), hide_index=True, width="stretch", height=min(38 + 35 * len(table), 420))
st.download_button("Scan (.csv)", scan.to_csv(), f"{loaded.name}-sensitivity.csv".replace("/", "_"), mime="text/csv",
                   on_click="ignore", key="sen_csv")
notebook_slot = st.empty()  # filled at the end: the notebook holds the comparison below when the page shows it

if not scan.complete:
    st.caption("Spending a budget by the scan needs every unit: Continue the scan first.")
    st.stop()
if mode != "full":
    with notebook_slot:
        notebook_button(sensitivity_recipe(loaded.spec, config, upload_sha256=upload_digest(loaded)), key="sen_notebook")
    st.stop()
st.subheader("Spend a budget unevenly")
st.markdown("With the scan, sparsekit can give the units that hurt least more sparsity and the sensitive ones less, "
            "at the same overall share pruned (counted by weight over the pruned layers), and compare with the "
            "same budget spread evenly.")
a1, a2 = st.columns(2)
target = a1.slider("Overall sparsity (% pruned)", 10, 90, 70, key="sen_target") / 100
compared = a2.button("Compare uniform and sensitivity-guided", key="sen_alloc")
if compared:
    rows = []
    with st.spinner("Pruning twice and measuring both…"):
        try:
            for allocation in ALLOCATIONS:
                cfg = SparsifyConfig(pattern="unstructured", sparsity=target, method=method, allocation=allocation)
                with heavy_job("allocation", loaded):
                    result = sparsekit.sparsify(loaded, cfg, sensitivity=scan if allocation == "sensitivity" else None,
                                                progress=False)
                row = allocation_row(allocation, result, loaded.quality(result.model), scan.metric)
                rows.append({label if k == "quality" else k: v for k, v in row.items()})
        except ValueError as err:
            st.error(f"Cannot allocate: {err}")
            st.stop()
    st.dataframe(pd.DataFrame([{k: v for k, v in r.items() if k != "per layer"} for r in rows]), hide_index=True,
                 width="stretch")
    per_layer = rows[1]["per layer"]
    if per_layer:
        st.plotly_chart(layer_sparsity_figure(per_layer, target), width="stretch", key="sen_alloc_fig")
with notebook_slot:
    notebook_button(sensitivity_recipe(loaded.spec, config, target=target if compared else None,
                                       upload_sha256=upload_digest(loaded)), key="sen_notebook")

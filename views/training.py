"""Training & topology: train sparse digits models from scratch and watch their masks move (SAD)."""
import pandas as pd
import streamlit as st

from sparsekit import training, viz
from sparsekit.recipes.training import training_recipe
from sparsekit.viz.training import run_colors
from ui.format import table_view
from ui.notebook import notebook_button
from ui.state import get_model
from ui.stopped_runs import continue_panel, start_batch, wait_for_interrupted
from ui.training import (fill_effect_preset, fit_warnings, flip_maps, load_selected, render_effect_note,
                         render_seed_study, saved_runs, train_with_progress, training_form, warn_at_chance)

MAX_COMPARE = 8

st.title("Training & topology")
st.markdown(
    "**STE** trains an N:M network from scratch: every forward keeps the N largest |w| of each group "
    "of M, and the gradient flows straight through to all the dense weights, so a pruned weight can "
    "grow back. **SR-STE** adds a small decay λ_w·(1−E)⊙W to the gradient of the pruned weights only, "
    "which keeps them from flickering across the threshold. **SAD** (Sparse Architecture Divergence) "
    "counts the weights whose keep/prune state differs between two snapshots: the SR-STE paper reports it "
    "falling lower under SR-STE than under STE as training goes on. What these small models show is below."
)


# ----------------------------------------------------------------------------- new runs

loaded, _ = get_model()
sidebar_arch = loaded.spec.split(":", 1)[1] if loaded is not None and loaded.spec.startswith("digits:") else "cnn"
runs_tab, study_tab = st.tabs(["Runs", "Seed study: SR-STE vs STE"])
with study_tab:
    render_seed_study(sidebar_arch)

with runs_tab:
    render_effect_note(fill_effect_preset)
    st.subheader("New runs")
    st.caption("Models are trained from scratch (fresh seeded weights), whatever the sidebar shows; every "
               "method × N:M pattern below becomes one run. Dense and gradual runs ignore the patterns (a "
               "dense run records the masks the first pattern *would* pick, without applying them). The "
               "choices are kept in the page's address: reload or share it to get them back.")
    configs, errors, prefix = training_form(sidebar_arch)
    for message in errors:
        st.error(f"Invalid settings: {message}")
    for message in [] if errors else fit_warnings(configs):
        st.warning(message, icon=":material/warning:")
    if not errors:
        steps = configs[0].epochs * configs[0].steps_per_epoch()
        st.caption(f"{len(configs)} run(s), {steps:,} optimiser steps each: " + "; ".join(c.label() for c in configs))

    go_col, stop_col = st.columns([1, 4])
    start = go_col.button("Train", type="primary", disabled=bool(errors), key="tr_go",
                          help="changing anything on the page while runs train stops them")
    wait_for_interrupted(start)
    # A stopped run of these settings (the Stop button, or found after a reload) keeps its last finished
    # epoch on disk: Continue trains only the rest.
    todo = configs if start else ([] if errors else continue_panel(configs))
    if start:
        start_batch(configs)

    if todo:
        # Any click while a run trains makes Streamlit interrupt the script at its next element call;
        # the run then saves itself as 'stopped' before the interruption goes on.
        stop_col.button("Stop", key="tr_stop", help="stops the current run; what it learnt so far is kept")
        before = st.session_state.get("tr_selected", [])
        new_ids = train_with_progress(todo, prefix)  # the new runs join the comparison after those already picked
        st.session_state["tr_selected"] = [r for r in before if r not in new_ids] + new_ids
        st.session_state["tr_selected"] = st.session_state["tr_selected"][-MAX_COMPARE:]

    # ----------------------------------------------------------------------------- saved runs

    st.subheader("Saved runs")
    by_id, labels = saved_runs()

    st.session_state["tr_selected"] = [r for r in st.session_state.get("tr_selected", list(by_id)[-4:]) if r in by_id]
    selected = st.multiselect("Runs to compare", list(by_id), format_func=labels.get, key="tr_selected", wrap=True,
                              max_selections=MAX_COMPARE)
    if not selected:
        st.info("Pick runs to compare.")
        st.stop()

    records, reports = load_selected(selected, by_id, labels)
    if not records:
        st.stop()

    st.subheader("Compare")
    unit = st.radio("SAD as", ["fraction of the weights", "number of weights"], horizontal=True, key="tr_sad_unit")
    fraction = unit.startswith("fraction")
    common = [n for n in records[0].history.layers if all(n in rec.history.shapes for rec in records)]
    layer_choice = st.selectbox("Layers", ["all sparse layers", *common], key="tr_sad_layer")
    layer = None if layer_choice == "all sparse layers" else layer_choice

    summary = training.sad_summary(records, reports, layer=layer, fraction=fraction)
    st.dataframe(**table_view(pd.DataFrame(summary)), hide_index=True)
    notebook_slot = st.container()  # filled once the run up close is known

    def offer_notebook(focus_id=None, flip_layer=None, pair=()) -> None:
        runs = [(rec.run_id, rec.config, rec.name) for rec in records]
        beside = pair[1].run_id if len(pair) > 1 else None
        with notebook_slot:
            notebook_button(training_recipe(runs, layer=layer, fraction=fraction, focus=focus_id,
                                            flip_layer=flip_layer, beside=beside), key="tr_notebook")
    warn_at_chance(records)
    for rec in records:
        if rec.dense_layers:
            st.caption(f"{rec.label}: left dense — " + "; ".join(f"{k} ({v})" for k, v in rec.dense_layers.items()))

    colors = run_colors(records)  # one colour per run in every figure below
    st.plotly_chart(viz.training_curves_figure(records, colors=colors), key="tr_curves")
    sparse_records = [rec for rec in records if rec.history.layers and len(rec.history) > 1]
    if not sparse_records:
        st.info("None of these runs has mask snapshots to compare.")
        offer_notebook()
        st.stop()
    # The layer choice lists only layers every run recorded, so each run has its series.
    sad_options = dict(layer=layer, fraction=fraction, reports=[reports[rec.run_id] for rec in sparse_records],
                       colors=colors)
    left, right = st.columns(2)
    left.plotly_chart(viz.sad_series_figure(sparse_records, kind="interval", **sad_options), key="tr_sad_int")
    right.plotly_chart(viz.sad_series_figure(sparse_records, kind="cumulative", **sad_options), key="tr_sad_cum")
    left, right = st.columns(2)
    left.plotly_chart(viz.sad_series_figure(sparse_records, kind="from_first", log_y=False, **sad_options),
                      key="tr_sad_first")
    right.plotly_chart(viz.sad_series_figure(sparse_records, kind="to_final", log_y=False, **sad_options),
                       key="tr_sad_final")

    st.subheader("One run up close")
    focus_id = st.selectbox("Run", [rec.run_id for rec in sparse_records], format_func=labels.get, key="tr_focus")
    focus = next(rec for rec in sparse_records if rec.run_id == focus_id)
    rep = reports[focus_id]
    st.plotly_chart(viz.sad_heatmap_figure(rep.layers, rep.epochs, rep.matrix("interval", fraction=fraction),
                                           fraction=fraction, title=f"{focus.label}: SAD per layer and interval"),
                    key="tr_heat")
    flip_layer, pair = flip_maps(focus, sparse_records, labels)
    offer_notebook(focus_id, flip_layer, pair)

    st.subheader("Export")
    d1, d2, d3 = st.columns(3)
    d1.download_button("Metrics per epoch (.csv)", training.metrics_csv(records), "training-metrics.csv",
                       mime="text/csv", key="tr_dl_metrics")
    d2.download_button("SAD per snapshot and layer (.csv)", training.sad_csv(records), "training-sad.csv",
                       mime="text/csv", key="tr_dl_sad")
    d3.download_button("Runs (.json)", training.runs_json(records), "training-runs.json", mime="application/json",
                       key="tr_dl_json")

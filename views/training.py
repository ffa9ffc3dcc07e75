"""Training & topology: train sparse digits models from scratch and watch their masks move (SAD)."""
import pandas as pd
import streamlit as st

from sparsekit import training, viz
from sparsekit.models.digits import ARCHITECTURES
from sparsekit.topology import flip_counts, matrix_view
from sparsekit.training import METHOD_LABELS, METHODS, TrainConfig
from ui.seed_study import render_seed_study
from ui.state import get_model
from ui.training_runs import load_selected, saved_runs, train_with_progress, wait_for_interrupted

MAX_COMPARE = 8
ARCH_LABELS = {"mlp": "Digits MLP", "cnn": "Digits CNN", "vit": "Digits ViT"}

st.title("Training & topology")
st.markdown(
    "**STE** trains an N:M network from scratch: every forward keeps the N largest |w| of each group "
    "of M, and the gradient flows straight through to all the dense weights, so a pruned weight can "
    "grow back. **SR-STE** adds a small decay λ_w·(1−E)⊙W to the gradient of the pruned weights only, "
    "which keeps them from flickering across the threshold. **SAD** (Sparse Architecture Divergence) "
    "counts the weights whose keep/prune state differs between two snapshots: in the SR-STE paper it "
    "stays high under STE and falls under SR-STE as training goes on."
)


# ----------------------------------------------------------------------------- new runs

loaded, _ = get_model()
sidebar_arch = loaded.spec.split(":", 1)[1] if loaded is not None and loaded.spec.startswith("digits:") else "cnn"
defaults = TrainConfig()
runs_tab, study_tab = st.tabs(["Runs", "Seed study: SR-STE vs STE"])
with study_tab:
    render_seed_study(sidebar_arch)

with runs_tab:

    st.subheader("New runs")
    st.caption("Models are trained from scratch (fresh seeded weights), whatever the sidebar shows; every "
               "method × N:M pattern below becomes one run. Dense and gradual runs ignore the patterns (a "
               "dense run records the masks the first pattern *would* pick, without applying them).")
    c1, c2, c3 = st.columns(3)
    with c1:
        arch = st.selectbox("Model", ARCHITECTURES, index=ARCHITECTURES.index(sidebar_arch), format_func=ARCH_LABELS.get,
                            key="tr_arch")
        methods = st.multiselect("Methods", METHODS, default=["ste", "srste"], format_func=METHOD_LABELS.get,
                                 key="tr_methods")
        patterns_text = st.text_input("N:M patterns (keep N of every M)", "2:4, 1:4", max_chars=100, key="tr_patterns",
                                      help="comma-separated, e.g. 2:4, 1:4, 2:8; N counts the kept weights")
        grouping = st.selectbox("Conv grouping", ["channel", "kernel"], key="tr_grouping",
                                help="channel: M input channels at one kernel position (NVIDIA ASP); "
                                     "kernel: along the flattened in×kh×kw axis (original SR-STE code)")
    with c2:
        lambda_w = st.number_input("λ_w: SR-STE decay of pruned weights", -1.0, 1.0, defaults.lambda_w, step=1e-4,
                                   format="%.2e", key="tr_lambda", disabled="srste" not in methods,
                                   help="the paper's code uses 2e-4; 0 turns SR-STE into STE")
        target = st.slider("Gradual: target sparsity (% pruned)", 5, 99, int(defaults.target_sparsity * 100),
                           key="tr_target", disabled="gradual" not in methods)
        window = st.slider("Gradual: pruning window (% of training)", 0, 100,
                           (int(defaults.prune_start * 100), int(defaults.prune_end * 100)), key="tr_window",
                           disabled="gradual" not in methods)
        prune_every = int(st.number_input("Gradual: Δt (steps between pruning steps)", 1, 10_000, defaults.prune_every,
                                          key="tr_every", disabled="gradual" not in methods))
    with c3:
        optimizer = st.selectbox("Optimiser", ["sgd", "adamw"], format_func={"sgd": "SGD + momentum", "adamw": "AdamW"}.get,
                                 key="tr_opt")
        lr = st.number_input("Learning rate (peak, cosine decay)", 0.0, 10.0, defaults.lr, step=0.01, format="%.4f",
                             key="tr_lr")
        epochs = int(st.number_input("Epochs", 0, 1000, defaults.epochs, key="tr_epochs"))
        batch_size = int(st.number_input("Batch size", 1, 100_000, defaults.batch_size, key="tr_batch"))
    with st.expander("More settings"):
        m1, m2, m3 = st.columns(3)
        momentum = m1.number_input("SGD momentum", 0.0, 0.999, defaults.momentum, step=0.05, key="tr_momentum")
        weight_decay = m1.number_input("Weight decay", 0.0, 1.0, defaults.weight_decay, step=1e-4, format="%.2e",
                                       key="tr_wd")
        schedule = m2.selectbox("Schedule", ["cosine", "constant"], key="tr_schedule")
        seed = int(m2.number_input("Seed", 0, 2**31 - 1, defaults.seed, key="tr_seed"))
        snapshot_unit = m3.radio("Mask snapshots every", ["epoch", "step"], horizontal=True, key="tr_unit")
        snapshot_every = int(m3.number_input(f"…this many {snapshot_unit}s", 1, 10_000, 1, key="tr_snap_every"))
        prefix = st.text_input("Name prefix (optional)", "", max_chars=40, key="tr_prefix")

    base = TrainConfig(arch=arch, conv_grouping=grouping, lambda_w=float(lambda_w), target_sparsity=target / 100,
                       prune_start=window[0] / 100, prune_end=window[1] / 100, prune_every=prune_every,
                       optimizer=optimizer, lr=float(lr), momentum=float(momentum), weight_decay=float(weight_decay),
                       schedule=schedule, epochs=epochs, batch_size=batch_size, seed=seed,
                       snapshot_unit=snapshot_unit, snapshot_every=snapshot_every)
    configs, errors = training.run_grid(methods, patterns_text, base)
    for message in errors:
        st.error(f"Invalid settings: {message}")
    if not errors:
        steps = configs[0].epochs * configs[0].steps_per_epoch()
        st.caption(f"{len(configs)} run(s), {steps:,} optimiser steps each: " + "; ".join(c.label() for c in configs))

    go_col, stop_col = st.columns([1, 4])
    start = go_col.button("Train", type="primary", disabled=bool(errors), key="tr_go",
                          help="changing anything on the page while runs train stops them")
    wait_for_interrupted(start)

    if start:
        # Any click while a run trains makes Streamlit interrupt the script at its next element call;
        # the run then saves itself as 'stopped' before the interruption goes on.
        stop_col.button("Stop", key="tr_stop", help="stops the current run; what it learnt so far is kept")
        new_ids = train_with_progress(configs, prefix)
        st.session_state["tr_selected"] = (st.session_state.get("tr_selected", []) + new_ids)[-MAX_COMPARE:]

    # ----------------------------------------------------------------------------- saved runs

    st.subheader("Saved runs")
    by_id, labels = saved_runs()

    st.session_state["tr_selected"] = [r for r in st.session_state.get("tr_selected", list(by_id)[-4:]) if r in by_id]
    selected = st.multiselect("Runs to compare", list(by_id), format_func=labels.get, key="tr_selected",
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
    st.dataframe(pd.DataFrame(summary), hide_index=True)
    for rec in records:
        if rec.dense_layers:
            st.caption(f"{rec.label}: left dense — " + "; ".join(f"{k} ({v})" for k, v in rec.dense_layers.items()))

    st.plotly_chart(viz.training_curves_figure(records), key="tr_curves")
    sparse_records = [rec for rec in records if rec.history.layers and len(rec.history) > 1]
    if not sparse_records:
        st.info("None of these runs has mask snapshots to compare.")
        st.stop()
    # The layer choice lists only layers every run recorded, so each run has its series.
    sad_options = dict(layer=layer, fraction=fraction, reports=[reports[rec.run_id] for rec in sparse_records])
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
    flip_layer = st.selectbox("Layer for the flip counts", focus.history.layers, key="tr_flip_layer")
    counts = flip_counts(focus.history, flip_layer)
    grid = matrix_view(counts, focus.config.conv_grouping)
    flipped = int((counts > 0).sum())
    st.caption(f"{flip_layer}: weight {tuple(counts.shape)} shown as {grid.shape[0]}×{grid.shape[1]} (rows = outputs, "
               f"N:M groups along each row). {flipped:,} of {counts.numel():,} weights changed state at least once "
               f"over {len(focus.history) - 1} intervals; most flips of one weight: {int(counts.max())}.")
    st.plotly_chart(viz.flip_count_figure(grid, title=f"{focus.label}: flips per weight of {flip_layer}"),
                    key="tr_flips")

    st.subheader("Export")
    d1, d2, d3 = st.columns(3)
    d1.download_button("Metrics per epoch (.csv)", training.metrics_csv(records), "training-metrics.csv",
                       mime="text/csv", key="tr_dl_metrics")
    d2.download_button("SAD per snapshot and layer (.csv)", training.sad_csv(records), "training-sad.csv",
                       mime="text/csv", key="tr_dl_sad")
    d3.download_button("Runs (.json)", training.runs_json(records), "training-runs.json", mime="application/json",
                       key="tr_dl_json")

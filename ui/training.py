"""Streamlit pieces of the Training page: the new-runs form (bound to the URL), the live-progress run
loop (stopped runs and Continue: ``ui.stopped_runs``), the saved runs (``ui.saved_runs``), at-chance warnings, the side-by-side flip maps, and the seed
study tab (SR-STE vs STE over K seeds, with intervals) with the note on where SR-STE's effect shows."""
from __future__ import annotations

import contextlib
import time
from typing import Callable, Mapping

import pandas as pd
import streamlit as st

from sparsekit import training, viz
from sparsekit.models.digits_nets import ARCH_LABELS as ARCH_NAMES
from sparsekit.models.digits_nets import ARCHITECTURES, build_digits_model
from sparsekit.recipes.training import flip_stats, flip_grid, seed_study_recipe, seed_summary_rows
from sparsekit.training import (DEFAULT_LAMBDA_W, EFFECT_LAMBDA_W, METHOD_LABELS, OPTIMIZERS, RunRecord, TrainConfig,
                                default_train_config)
from sparsekit.training import seedconfig
from sparsekit.training.seedconfig import SeedStudyConfig, parse_floats, parse_patterns
from sparsekit.training.seedresults import METRICS, SeedStudyResult
from sparsekit.training.seedstudy import cached_runs, run_seed_study
from sparsekit.training.ste import layer_plan
from sparsekit.viz.training import flip_maps_figure, run_colors
from ui.cached import training_run
from ui.format import table_view
from ui.heavy import heavy_job
from ui.notebook import notebook_button
from ui.saved_runs import SavedRuns
from ui.stopped_runs import finished

OPTIMIZER_LABELS = {"sgd": "SGD + momentum", "adamw": "AdamW"}
URL = "query-params"
_ARCH_FIELDS = {"tr_opt": "optimizer", "tr_lr": "lr", "tr_wd": "weight_decay", "tr_epochs": "epochs"}


def follow_arch_defaults(arch: str, fields: Mapping[str, str], marker: str) -> None:
    """Before a form's widgets are drawn: when the model changed, move each widget that still shows
    the previous model's default (widget key -> ``TrainConfig`` field) to the new model's default.

    Keyed widgets keep their value when their default changes, so without this a ViT would be
    offered the CNN's SGD at lr 0.1. ``marker`` is the session key remembering whose defaults show.
    """
    shown = st.session_state.get(marker)
    if shown is not None and shown != arch:
        old, new = default_train_config(shown), default_train_config(arch)
        for key, name in fields.items():
            if key in st.session_state and st.session_state[key] == getattr(old, name):
                st.session_state[key] = getattr(new, name)
    st.session_state[marker] = arch


def fill_effect_preset() -> None:
    """Button callback: the form's settings become ``srste_effect_config``'s, STE next to SR-STE."""
    cfg = training.srste_effect_config()
    st.session_state.update(
        tr_arch=cfg.arch, tr_methods=["ste", "srste"], tr_patterns=f"{cfg.n}:{cfg.m}", tr_grouping=cfg.conv_grouping,
        tr_lambda=cfg.lambda_w, tr_opt=cfg.optimizer, tr_lr=cfg.lr, tr_wd=cfg.weight_decay, tr_epochs=cfg.epochs,
        tr_batch=cfg.batch_size, tr_momentum=cfg.momentum, tr_schedule=cfg.schedule, tr_defaults_arch=cfg.arch)


def fit_warnings(configs: list[TrainConfig]) -> list[str]:
    """One line per N:M pattern whose M does not divide some layers' group axis (they train dense)."""
    out: list[str] = []
    seen = set()
    for config in configs:
        if not config.uses_nm or (config.arch, config.m, config.conv_grouping) in seen:
            continue
        seen.add((config.arch, config.m, config.conv_grouping))
        _, dense = layer_plan(build_digits_model(config.arch), config)
        if dense:
            listing = "; ".join(f"`{n}` ({why})" for n, why in dense.items())
            out.append(f"**M = {config.m} does not fit {len(dense)} layer{'s' if len(dense) > 1 else ''} of the "
                       f"{ARCH_NAMES[config.arch]}**, so "
                       f"{'they stay' if len(dense) > 1 else 'it stays'} dense in the {config.n}:{config.m} runs: "
                       f"{listing}.")
    return out


def training_form(sidebar_arch: str) -> tuple[list[TrainConfig], list[str], str]:
    """The new-runs form; its main choices live in the URL, so a reload or a shared link keeps them.

    Returns:
        ``(configs, errors, name prefix)`` as ``training.run_grid`` gives them.
    """
    c1, c2, c3 = st.columns(3)
    with c1:
        arch = st.selectbox("Digits model", ARCHITECTURES, index=ARCHITECTURES.index(sidebar_arch), key="tr_arch",
                            bind=URL, help="mlp, cnn or vit; the optimiser, learning rate and weight decay "
                                           "follow the model's defaults unless you change them")
        follow_arch_defaults(arch, _ARCH_FIELDS, "tr_defaults_arch")
        d = default_train_config(arch)
        methods = st.multiselect("Methods", training.METHODS, default=["ste", "srste"], format_func=METHOD_LABELS.get,
                                 key="tr_methods", wrap=True, bind=URL)
        patterns_text = st.text_input("N:M patterns (keep N of every M)", "2:4, 1:4", max_chars=100, key="tr_patterns",
                                      bind=URL, help="comma-separated, e.g. 2:4, 1:4, 2:8; N counts the kept weights")
        grouping = st.selectbox("Conv grouping", ["channel", "kernel"], key="tr_grouping", bind=URL,
                                help="channel: M input channels at one kernel position (NVIDIA ASP); "
                                     "kernel: along the flattened in×kh×kw axis (original SR-STE code)")
    with c2:
        lambda_w = st.number_input("λ_w: SR-STE decay of pruned weights", -1.0, 1.0, d.lambda_w, step=1e-4,
                                   format="%.2e", key="tr_lambda", disabled="srste" not in methods, bind=URL,
                                   help="the paper's code uses 2e-4; 0 turns SR-STE into STE")
        target = st.slider("Gradual: target sparsity (% pruned)", 5, 99, int(d.target_sparsity * 100),
                           key="tr_target", disabled="gradual" not in methods)
        window = st.slider("Gradual: pruning window (% of training)", 0, 100,
                           (int(d.prune_start * 100), int(d.prune_end * 100)), key="tr_window",
                           disabled="gradual" not in methods)
        prune_every = int(st.number_input("Gradual: Δt (steps between pruning steps)", 1, 10_000, d.prune_every,
                                          key="tr_every", disabled="gradual" not in methods))
    with c3:
        optimizer = st.selectbox("Optimiser", OPTIMIZERS, index=OPTIMIZERS.index(d.optimizer),
                                 format_func=OPTIMIZER_LABELS.get, key="tr_opt", bind=URL)
        lr = st.number_input("Learning rate (peak, cosine decay)", 0.0, 10.0, d.lr, step=0.001, format="%.4f",
                             key="tr_lr", bind=URL)
        epochs = int(st.number_input("Epochs", 0, 1000, d.epochs, key="tr_epochs", bind=URL))
        batch_size = int(st.number_input("Batch size", 1, 100_000, d.batch_size, key="tr_batch", bind=URL))
    with st.expander("More settings"):
        m1, m2, m3 = st.columns(3)
        momentum = m1.number_input("SGD momentum", 0.0, 0.999, d.momentum, step=0.05, key="tr_momentum")
        weight_decay = m1.number_input("Weight decay", 0.0, 1.0, d.weight_decay, step=1e-4, format="%.2e",
                                       key="tr_wd", bind=URL)
        schedule = m2.selectbox("Schedule", ["cosine", "constant"], key="tr_schedule")
        seed = int(m2.number_input("Seed", 0, 2**31 - 1, d.seed, key="tr_seed"))
        snapshot_unit = m3.radio("Mask snapshots every", ["epoch", "step"], horizontal=True, key="tr_unit")
        snapshot_every = int(m3.number_input(f"…this many {snapshot_unit}s", 1, 10_000, 1, key="tr_snap_every"))
        prefix = st.text_input("Name prefix (optional)", "", max_chars=40, key="tr_prefix")

    base = TrainConfig(arch=arch, conv_grouping=grouping, lambda_w=float(lambda_w), target_sparsity=target / 100,
                       prune_start=window[0] / 100, prune_end=window[1] / 100, prune_every=prune_every,
                       optimizer=optimizer, lr=float(lr), momentum=float(momentum), weight_decay=float(weight_decay),
                       schedule=schedule, epochs=epochs, batch_size=batch_size, seed=seed,
                       snapshot_unit=snapshot_unit, snapshot_every=snapshot_every)
    configs, errors = training.run_grid(methods, patterns_text, base)
    return configs, errors, prefix


def _progress_callback(i: int, box):
    bar = box.progress(0.0, text="starting…")
    # Full width, one below the other: side by side, each chart had half a column.
    warn, curves, sads = box.empty(), box.empty(), box.empty()
    last = {"t": 0.0}

    def on_progress(p) -> None:
        if p.event == "start":
            st.session_state["tr_training"] = p.record.run_id  # saved already: the first checkpoint
        now = time.perf_counter()
        if p.event == "step" and now - last["t"] < 0.25:
            return
        last["t"] = now
        bar.progress(min(p.step / p.total_steps, 1.0),
                     text=f"step {p.step:,}/{p.total_steps:,} · epoch {p.epoch:.2f} · loss {p.loss:.4f}")
        if p.event == "epoch":
            rec = p.record
            message = training.chance_warning(rec)
            if message:
                warn.warning(message + " Stop the run and change the settings.")
            else:
                warn.empty()
            colors = run_colors([rec])  # a run's colour is a function of the run: the same in the comparison
            curves.plotly_chart(viz.training_curves_figure([rec], colors=colors), key=f"tr_live_c{i}_{p.step}")
            if rec.history.layers and len(rec.history) > 1:
                sads.plotly_chart(viz.sad_series_figure([rec], fraction=True, colors=colors),
                                  key=f"tr_live_s{i}_{p.step}")

    return on_progress


def train_with_progress(configs: list[TrainConfig], prefix: str) -> list[str]:
    """Train and save each config in turn, with a live status box per run; returns the new run ids.

    A stopped run of a config is continued from its last finished epoch (``training.run_and_save``). Each
    run is drawn in its own colour (``viz.training.run_colors``), the one it has in the comparison below."""
    new_ids = []
    for i, cfg in enumerate(configs):
        name = f"{prefix.strip()} {cfg.label()}" if prefix.strip() else ""
        # Not used as a context manager: leaving the `with` block would mark the run complete.
        box = st.status(f"Run {i + 1} of {len(configs)}: {cfg.label()}", expanded=True)
        on_progress = _progress_callback(i, box)
        try:
            with heavy_job("training", label=name):
                rec = training.run_and_save(cfg, name=name, callback=on_progress, progress=False)
        except Exception as err:  # the run saved itself as 'failed'; the page carries on
            st.session_state.pop("tr_training", None)
            finished(cfg)
            box.update(label=f"Run {i + 1}: {cfg.label()} failed", state="error")
            st.error(f"{cfg.label()} failed ({type(err).__name__}): {err}")
            continue
        st.session_state.pop("tr_training", None)
        if rec.status != "stopped":
            finished(cfg)
        new_ids.append(rec.run_id)
        acc = f"{rec.final_accuracy:.2f}%" if rec.final_accuracy is not None else "n/a"
        if rec.status == "complete":
            message = training.chance_warning(rec)
            box.update(label=f"Run {i + 1}: {rec.label} — {acc} held-out accuracy in {rec.seconds:.1f} s",
                       state="complete", expanded=bool(message))  # open: its chance warning shows
        else:
            box.update(label=f"Run {i + 1}: {rec.label} — {rec.status}", state="error")
            st.warning(f"{rec.label}: {rec.message}")
    return new_ids


SAVED = SavedRuns("tr", training.delete_run, manage_key="tr_manage", manage_title="Rename or delete a run",
                  chosen_key="tr_selected", rename_run=training.rename_run)


def saved_runs() -> tuple[dict[str, dict], dict[str, str]]:
    """The saved-runs table with its rename/delete controls; returns (run id -> index entry, labels).

    Stops the page when there is no saved run."""
    SAVED.flash()
    runs = training.list_runs()
    if not runs:
        st.info("No saved runs yet: set up runs above and press Train. Runs are kept on disk across restarts.")
        st.stop()
    by_id = {r["run_id"]: r for r in runs}
    labels = {rid: f"{r['name'] or r['label']} · {r['status']} · {rid[:6]}" for rid, r in by_id.items()}
    table = pd.DataFrame([{
        "name": r["name"] or r["label"], "status": r["status"], "method": METHOD_LABELS[r["config"]["method"]],
        "N:M": f"{r['config']['n']}:{r['config']['m']}" if r["config"]["method"] != "gradual"
        else f"{r['config']['target_sparsity']:.0%} unstructured",
        "model": r["config"]["arch"], "epochs": r["epochs_done"], "accuracy (%)": r["final_accuracy"],
        "seconds": r["seconds"], "started": pd.Timestamp(r["created"], unit="s").strftime("%Y-%m-%d %H:%M"),
        "id": rid,
    } for rid, r in by_id.items()])
    SAVED.table(table, {"accuracy (%)": st.column_config.NumberColumn(format="%.2f"),
                        "seconds": st.column_config.NumberColumn("time (s)", format="%.1f")})
    SAVED.manage(list(by_id), labels)
    return by_id, labels


def load_selected(selected: list[str], by_id: dict[str, dict], labels: dict[str, str]):
    """The chosen runs and their SAD reports (run id -> report), skipping any that cannot be read."""
    def read(r: dict):
        return training_run(r["run_id"], f"{r['status']}|{r['seconds']}|{r['name']}|{r['epochs_done']}")

    pairs = SAVED.read([by_id[rid] for rid in selected], read, labels)
    return [rec for rec, _ in pairs], {rec.run_id: report for rec, report in pairs}


def warn_at_chance(records: list[RunRecord]) -> None:
    """A warning for each run that has learnt nothing (``training.chance_warning``)."""
    for rec in records:
        message = training.chance_warning(rec)
        if message:
            st.warning(message)


def _pair_default(focus: RunRecord, others: list[RunRecord]) -> int:
    # STE next to SR-STE (or any other method) is the comparison the page is about.
    for i, rec in enumerate(others, start=1):
        if rec.config.method != focus.config.method:
            return i
    return 1 if others else 0


def flip_maps(focus: RunRecord, candidates: list[RunRecord], labels: dict[str, str]) -> tuple[str, list[RunRecord]]:
    """The chosen layer's flips per weight for the focus run and, beside it, another run's on one
    colour scale; returns the layer and the runs shown (focus first)."""
    layer = st.selectbox("Layer for the flip counts", focus.history.layers, key="tr_flip_layer")
    shape = focus.history.shapes[layer]
    others = [r for r in candidates if r.run_id != focus.run_id and r.history.shapes.get(layer) == shape]
    choice = st.selectbox("Beside it, on the same colour scale", [None, *[r.run_id for r in others]],
                          index=_pair_default(focus, others), key="tr_flip_other",
                          format_func=lambda rid: "no other run" if rid is None else labels[rid])
    pair = [focus, *[r for r in others if r.run_id == choice]]
    grids = []
    for rec in pair:
        grids.append(flip_grid(rec, layer)[1])
        f = flip_stats(rec, layer)
        st.caption(f"{rec.label}, {layer}: weight {tuple(f['shape'])} shown as {f['grid'][0]}×{f['grid'][1]} "
                   f"(rows = outputs, N:M groups along each row). {f['changed']:,} of {f['weights']:,} "
                   f"weights changed state at least once over {f['intervals']} intervals; most flips of one "
                   f"weight: {f['most']}.")
    title = f"flips per weight of {layer}" + (" (one colour scale)" if len(pair) > 1 else f": {focus.label}")
    st.plotly_chart(flip_maps_figure(grids, [rec.label for rec in pair], title=title), key="tr_flips")
    return layer, pair


# ---------------------------------------------------------------------------------------------
# Seed study tab

ARCH_LABELS = {"mlp": "Digits MLP", "cnn": "Digits CNN", "vit": "Digits ViT"}
_SS_ARCH_FIELDS = {"ss_opt": "optimizer", "ss_lr": "lr", "ss_epochs": "epochs"}


def effect_study() -> SeedStudyConfig:
    """The study behind the effect note: the digits CNN's defaults, 2:4 and 1:4, 8 seeds, SR-STE at the
    paper's λ_w, and a λ_w sweep up to ``EFFECT_LAMBDA_W`` (``python -m sparsekit.seedstudy``)."""
    sweep = tuple(sorted({*seedconfig.DEFAULT_LAMBDA_SWEEP, EFFECT_LAMBDA_W}))
    return SeedStudyConfig(train=default_train_config("cnn"), patterns=((2, 4), (1, 4)), seeds=8, lambda_sweep=sweep)


def _fill_study(config: SeedStudyConfig) -> None:
    t = config.train
    st.session_state.update(
        ss_arch=t.arch, ss_patterns=", ".join(f"{n}:{m}" for n, m in config.patterns), ss_seeds=config.seeds,
        ss_epochs=t.epochs, ss_opt=t.optimizer, ss_lr=t.lr, ss_lambda=t.lambda_w,
        ss_sweep=", ".join(f"{v:g}" for v in config.lambda_sweep), ss_defaults_arch=t.arch)


def _cached_result(config: SeedStudyConfig) -> SeedStudyResult | None:
    # Read back only when every run is on disk: a partial study would train the rest here.
    found, _ = cached_runs(config)
    return run_seed_study(config, progress=False) if found == len(config.run_configs()) else None


def render_effect_note(fill_form: Callable[[], None]) -> None:
    """What one pair of runs at the defaults shows, the settings where SR-STE's effect shows, a button
    for each form, and the intervals of the seed study when it has been run."""
    cfg, study = training.srste_effect_config(), effect_study()
    st.markdown(
        f"**What to expect.** At the defaults (λ_w = {DEFAULT_LAMBDA_W:g}), one STE and one SR-STE run on these "
        "small models often show overlapping SAD curves: the difference is about as large as the spread from one "
        f"seed to the next. It shows in a single pair with **{cfg.epochs} epochs and λ_w = {cfg.lambda_w:g}** (2:4, "
        f"{ARCH_NAMES[cfg.arch]}; compare *SAD, second half* in the table), and reliably only over seeds: the "
        f"*Seed study* tab trains {study.seeds} paired seeds and gives intervals.")
    b1, b2 = st.columns(2)
    b1.button("Fill the form below with these settings", on_click=fill_form, key="tr_preset")
    b2.button(f"Fill the Seed study tab ({study.seeds} seeds, λ_w sweep)", on_click=_fill_study, args=(study,),
              key="ss_preset")
    result = _cached_result(study)
    if result is None:
        st.caption(f"No interval shown: that seed study ({len(study.run_configs())} runs) is not on disk yet. Fill "
                   "the Seed study tab and run it to see the intervals here.")
        return
    n, m = study.patterns[0]
    rows = {r.lambda_w: r.metrics["late_sad_pct"] for r in result.lambda_rows()}
    sweep = "; ".join(f"λ_w = {lam:g}{' (STE)' if lam == 0 else ''}: {iv.text()} %" for lam, iv in rows.items()
                      if lam in (0.0, study.lambda_w, cfg.lambda_w))
    st.success(f"From the seed study on disk ({ARCH_NAMES[study.train.arch]}, {study.train.epochs} epochs, {study.seeds} "
               f"seeds, mean [{study.confidence:.0%} interval]): late SAD at {n}:{m}, {sweep}.")
    for c in result.comparisons():
        if c.metric == "late_sad_pct":
            st.caption(c.sentence)


def _study_form(sidebar_arch: str) -> SeedStudyConfig | None:
    c1, c2, c3 = st.columns(3)
    arch = c1.selectbox("Model", ARCHITECTURES, index=ARCHITECTURES.index(sidebar_arch), format_func=ARCH_LABELS.get,
                        key="ss_arch")
    follow_arch_defaults(arch, _SS_ARCH_FIELDS, "ss_defaults_arch")
    defaults = default_train_config(arch)
    patterns_text = c1.text_input("N:M patterns (keep N of every M)", "2:4, 1:4", max_chars=60, key="ss_patterns")
    seeds = int(c2.number_input("Seeds K (paired)", 2, seedconfig.MAX_SEEDS, 8, key="ss_seeds",
                                help="every pattern trains one STE and one SR-STE run per seed, from the same "
                                     "initial weights and batch order"))
    epochs = int(c2.number_input("Epochs", 2, 200, defaults.epochs, key="ss_epochs"))
    optimizer = c2.selectbox("Optimiser", training.OPTIMIZERS, index=training.OPTIMIZERS.index(defaults.optimizer),
                             format_func=OPTIMIZER_LABELS.get, key="ss_opt")
    lr = c3.number_input("Learning rate (peak, cosine decay)", 0.0, 10.0, defaults.lr, step=0.001, format="%.4f",
                         key="ss_lr")
    lam = c3.number_input("SR-STE λ_w", 0.0, 1.0, DEFAULT_LAMBDA_W, step=1e-4, format="%.2e", key="ss_lambda",
                          help="the decay of the main comparison; the paper's code uses 2e-4")
    sweep_text = c3.text_input("λ_w sweep at the first pattern",
                               ", ".join(f"{v:g}" for v in seedconfig.DEFAULT_LAMBDA_SWEEP), max_chars=100,
                               key="ss_sweep", help="comma-separated; 0 is STE; empty for no sweep")
    try:
        config = SeedStudyConfig(
            train=default_train_config(arch, epochs=epochs, optimizer=optimizer, lr=float(lr), lambda_w=float(lam)),
            patterns=tuple(parse_patterns(patterns_text)), seeds=seeds,
            lambda_sweep=tuple(parse_floats(sweep_text)))
        config.validate()
    except ValueError as err:
        st.error(f"Invalid study settings: {err}")
        return None
    return config


def _summary_frame(rows) -> pd.DataFrame:
    return pd.DataFrame(seed_summary_rows(rows))


def _show_study(result) -> None:
    cfg = result.config
    st.markdown(f"**Result over {cfg.seeds} seeds** ({cfg.confidence:.0%} Student-t intervals; SAD and flips in % "
                "of the sparse weights; pp = percentage points):")
    for c in result.comparisons():
        if c.metric == "early_sad_pct":
            continue
        (st.info if c.paired.diff.includes_zero else st.success)(c.sentence)
    notebook_slot = st.container()
    metric = st.radio("Per-seed values of", list(METRICS), format_func=lambda k: METRICS[k][0], horizontal=True,
                      key="ss_metric")
    with notebook_slot:
        notebook_button(seed_study_recipe(cfg, metric), key="ss_notebook")
    st.plotly_chart(viz.seed_study_figure(result, metric), key="ss_fig_seeds")
    st.plotly_chart(viz.paired_difference_figure(result), key="ss_fig_paired")
    st.dataframe(**table_view(_summary_frame(result.summary())), hide_index=True)
    if result.lambda_rows():
        st.plotly_chart(viz.lambda_sweep_figure(result), key="ss_fig_lambda")
        st.caption("λ_w's effect also depends on the learning rate: the decay enters the gradient, so the pull on a "
                   "pruned weight per step is lr·λ_w·w.")
    d1, d2, d3 = st.columns(3)
    d1.download_button("Study (.json)", result.to_json(), "seed-study.json", mime="application/json", key="ss_dl_json")
    d2.download_button("Every run (.csv)", result.runs_csv(), "seed-study-runs.csv", mime="text/csv", key="ss_dl_csv")
    d3.download_button("Tables (.md)", result.markdown(), "seed-study.md", mime="text/markdown", key="ss_dl_md")


def render_seed_study(sidebar_arch: str) -> None:
    st.markdown(
        "One seed can make either method look better on a model this small. A **seed study** trains STE and "
        "SR-STE from the same K seeds (same initial weights, same batch order), per N:M pattern, and shows each "
        "method's mean with a confidence interval, and the paired difference SR-STE − STE. Where the interval of "
        "the difference includes zero, the study shows no difference. Runs are kept on disk: a stopped study "
        "resumes, and reopening one recomputes nothing. Same as `python -m sparsekit.seedstudy`.")
    config = _study_form(sidebar_arch)
    if config is None:
        return
    total = len(config.run_configs())
    cached, per_run = cached_runs(config)
    missing = total - cached
    if missing:
        estimate = f", about {missing * per_run:.0f} s" if per_run else ""
        st.caption(f"{total} training runs ({cached} already on disk; {missing} to train{estimate}).")
    else:
        st.caption(f"All {total} training runs of these settings are on disk: the study below is read back, "
                   "nothing is retrained.")
    start = st.button("Run study", type="primary", key="ss_go", disabled=not missing,
                      help="changing anything on the page while it runs stops it; finished runs are kept")
    if missing and not start:
        st.info(f"Press **Run study** to train the {missing} missing run(s).")
        return
    bar = st.progress(0.0, text="starting…") if missing else None

    def on_progress(p):
        if bar is not None:
            eta = f" · about {p.eta_s:.0f} s left" if p.eta_s is not None else ""
            bar.progress(p.done / p.total, text=f"run {p.done}/{p.total}: {p.message}{eta}")

    try:
        with heavy_job("seed_study") if missing else contextlib.nullcontext():  # (read back: light)
            result = run_seed_study(config, progress=on_progress)
    except ValueError as err:
        st.error(f"The study could not run: {err}")
        return
    if bar is not None:
        bar.empty()
    _show_study(result)

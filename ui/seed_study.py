"""The Training page's seed study section: SR-STE vs STE over K seeds, with intervals; and the note on
where SR-STE's effect shows, with the intervals of that study when it is on disk."""
from __future__ import annotations

from typing import Callable

import pandas as pd
import streamlit as st

from sparsekit import seedstudy, training, viz
from sparsekit.models.digits import ARCHITECTURES
from sparsekit.seedstudy import (METRICS, SeedStudyConfig, SeedStudyResult, cached_runs, parse_floats,
                                 parse_patterns, run_seed_study)
from sparsekit.training import DEFAULT_LAMBDA_W, EFFECT_LAMBDA_W, default_train_config
from ui.training_runs import OPTIMIZER_LABELS, follow_arch_defaults

ARCH_LABELS = {"mlp": "Digits MLP", "cnn": "Digits CNN", "vit": "Digits ViT"}
_ARCH_FIELDS = {"ss_opt": "optimizer", "ss_lr": "lr", "ss_epochs": "epochs"}


def effect_study() -> SeedStudyConfig:
    """The study behind the effect note: the digits CNN's defaults, 2:4 and 1:4, 8 seeds, SR-STE at the
    paper's λ_w, and a λ_w sweep up to ``EFFECT_LAMBDA_W`` (``python -m sparsekit.seedstudy``)."""
    sweep = tuple(sorted({*seedstudy.DEFAULT_LAMBDA_SWEEP, EFFECT_LAMBDA_W}))
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
    return run_seed_study(config) if found == len(config.run_configs()) else None


def render_effect_note(fill_form: Callable[[], None]) -> None:
    """What one pair of runs at the defaults shows, the settings where SR-STE's effect shows, a button
    for each form, and the intervals of the seed study when it has been run."""
    cfg, study = training.srste_effect_config(), effect_study()
    st.markdown(
        f"**What to expect.** At the defaults (λ_w = {DEFAULT_LAMBDA_W:g}), one STE and one SR-STE run on these "
        "small models often show overlapping SAD curves: the difference is about as large as the spread from one "
        f"seed to the next. It shows in a single pair with **{cfg.epochs} epochs and λ_w = {cfg.lambda_w:g}** (2:4, "
        f"{cfg.arch.upper()}; compare *SAD, second half* in the table), and reliably only over seeds: the "
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
    st.success(f"From the seed study on disk ({study.train.arch.upper()}, {study.train.epochs} epochs, {study.seeds} "
               f"seeds, mean [{study.confidence:.0%} interval]): late SAD at {n}:{m}, {sweep}.")
    for c in result.comparisons():
        if c.metric == "late_sad_pct":
            st.caption(c.sentence)


def _form(sidebar_arch: str) -> SeedStudyConfig | None:
    c1, c2, c3 = st.columns(3)
    arch = c1.selectbox("Model", ARCHITECTURES, index=ARCHITECTURES.index(sidebar_arch), format_func=ARCH_LABELS.get,
                        key="ss_arch")
    follow_arch_defaults(arch, _ARCH_FIELDS, "ss_defaults_arch")
    defaults = default_train_config(arch)
    patterns_text = c1.text_input("N:M patterns (keep N of every M)", "2:4, 1:4", max_chars=60, key="ss_patterns")
    seeds = int(c2.number_input("Seeds K (paired)", 2, seedstudy.MAX_SEEDS, 8, key="ss_seeds",
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
                               ", ".join(f"{v:g}" for v in seedstudy.DEFAULT_LAMBDA_SWEEP), max_chars=100,
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
    out = []
    for row in rows:
        item = {"N:M": f"{row.n}:{row.m}", "run": row.label, "seeds": row.metrics["accuracy"].n}
        for key, (name, unit, _) in METRICS.items():
            iv = row.metrics[key]
            item[f"{name} ({unit})"] = iv.mean
            item[f"{name} CI low"] = iv.low
            item[f"{name} CI high"] = iv.high
        out.append(item)
    return pd.DataFrame(out)


def _show(result) -> None:
    cfg = result.config
    st.markdown(f"**Result over {cfg.seeds} seeds** ({cfg.confidence:.0%} Student-t intervals; SAD and flips in % "
                "of the sparse weights; pp = percentage points):")
    for c in result.comparisons():
        if c.metric == "early_sad_pct":
            continue
        (st.info if c.paired.diff.includes_zero else st.success)(c.sentence)
    metric = st.radio("Per-seed values of", list(METRICS), format_func=lambda k: METRICS[k][0], horizontal=True,
                      key="ss_metric")
    st.plotly_chart(viz.seed_study_figure(result, metric), key="ss_fig_seeds")
    st.plotly_chart(viz.paired_difference_figure(result), key="ss_fig_paired")
    st.dataframe(_summary_frame(result.summary()), hide_index=True)
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
    config = _form(sidebar_arch)
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
        result = run_seed_study(config, progress=on_progress)
    except ValueError as err:
        st.error(f"The study could not run: {err}")
        return
    if bar is not None:
        bar.empty()
    _show(result)

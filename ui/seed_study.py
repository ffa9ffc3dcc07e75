"""The Training page's seed study section: SR-STE vs STE over K seeds, with intervals."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from sparsekit import seedstudy, viz
from sparsekit.models.digits import ARCHITECTURES
from sparsekit.seedstudy import (METRICS, SeedStudyConfig, cached_runs, parse_floats, parse_patterns,
                                 run_seed_study)
from sparsekit.training import DEFAULT_LAMBDA_W, TrainConfig

ARCH_LABELS = {"mlp": "Digits MLP", "cnn": "Digits CNN", "vit": "Digits ViT"}


def _form(sidebar_arch: str) -> SeedStudyConfig | None:
    defaults = TrainConfig()
    c1, c2, c3 = st.columns(3)
    arch = c1.selectbox("Model", ARCHITECTURES, index=ARCHITECTURES.index(sidebar_arch), format_func=ARCH_LABELS.get,
                        key="ss_arch")
    patterns_text = c1.text_input("N:M patterns (keep N of every M)", "2:4, 1:4", max_chars=60, key="ss_patterns")
    seeds = int(c2.number_input("Seeds K (paired)", 2, seedstudy.MAX_SEEDS, 8, key="ss_seeds",
                                help="every pattern trains one STE and one SR-STE run per seed, from the same "
                                     "initial weights and batch order"))
    epochs = int(c2.number_input("Epochs", 2, 200, defaults.epochs, key="ss_epochs"))
    optimizer = c2.selectbox("Optimiser", ["sgd", "adamw"], format_func={"sgd": "SGD + momentum",
                                                                         "adamw": "AdamW"}.get, key="ss_opt")
    lr = c3.number_input("Learning rate (peak, cosine decay)", 0.0, 10.0, defaults.lr, step=0.01, format="%.4f",
                         key="ss_lr")
    lam = c3.number_input("SR-STE λ_w", 0.0, 1.0, DEFAULT_LAMBDA_W, step=1e-4, format="%.2e", key="ss_lambda",
                          help="the decay of the main comparison; the paper's code uses 2e-4")
    sweep_text = c3.text_input("λ_w sweep at the first pattern", "0, 2e-5, 2e-4, 6e-4, 2e-3", max_chars=100,
                               key="ss_sweep", help="comma-separated; 0 is STE; empty for no sweep")
    try:
        config = SeedStudyConfig(
            train=TrainConfig(arch=arch, epochs=epochs, optimizer=optimizer, lr=float(lr), lambda_w=float(lam)),
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

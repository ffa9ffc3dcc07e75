"""The Recovery page's "Model soup" view: k fixed-mask recoveries of the Sparsify page's setting (seeds differ, so
the order of the training examples does), averaged into one soup per outer seed, against the best and the mean
ingredient (``sparsekit.study``, kind ``soup``). Every ingredient is a study cell kept on disk as it finishes:
Stop keeps the finished ones and Continue computes only the missing ones (a reload finds them too)."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from sparsekit import study, viz
from sparsekit.recipes.soup import soup_headline, soup_recipe
from sparsekit.recovery import default_recovery_config
from sparsekit.sparsify import SparsifyConfig
from sparsekit.study import SoupStudy, StudySpec
from sparsekit.study.soupstudy import soup_results, soup_study
from ui.heavy import heavy_job, prunable_weight_count
from ui.long_jobs import ResumedProgress, duration_text, job_buttons, job_state
from ui.notebook import notebook_button, upload_digest

LARGE_WEIGHTS = 50_000_000
"""Above this many prunable weights the view warns: every ingredient is a whole recovery run (MiniLM-sized
models take minutes each on a CPU, and each stored ingredient holds the model's weights)."""
HEAVY_WEIGHTS = 1_000_000
"""Above this many prunable weights the view notes the cost (MiniLM: 22 M weights, each stored ingredient ~120 MB,
a 2-step ingredient ~9 s on 2 CPU cores after a first one of ~26 s that also computes the distillation targets)."""
DEFAULT_INGREDIENTS = 3
DEFAULT_OUTER = 2
DEFAULT_STEPS = 50
"""Digits MLP: 3 × 2 ingredients of 50 steps take about 10-20 s on one CPU core."""


def pattern_text(config: SparsifyConfig) -> str:
    """The study pattern of a Sparsify setting (``2:4``, ``unstructured:0.7``)."""
    return f"{config.n}:{config.m}" if config.pattern == "nm" else f"unstructured:{config.sparsity:g}"


def soup_spec(loaded, config: SparsifyConfig, ingredients: int, steps: int, lr: float, outer: int) -> StudySpec:
    """The soup study of the view's inputs (validated; ``ValueError`` with a message otherwise)."""
    recovery = default_recovery_config(loaded.kind, mode="fixed", steps=steps, lr=lr,
                                       eval_every=min(default_recovery_config(loaded.kind).eval_every, steps))
    spec = StudySpec(name=f"soup {loaded.spec} {config.label()}", kind="soup", models=(loaded.spec,),
                     methods=(config.method,), patterns=(pattern_text(config),), seeds=tuple(range(outer)),
                     base=config, soup=SoupStudy(ingredients=ingredients, recovery=recovery))
    spec.validate()
    return spec


def soup_view(loaded, config: SparsifyConfig) -> None:
    """The view: inputs, Run / Stop / Continue, progress, the figure, the table, CSV and notebook downloads."""
    st.markdown(
        "A **model soup** (Zimmer et al. 2023, *Sparse Model Soups*) recovers the pruned model k times with the mask "
        "fixed, each run with its own seed (so its own order of the training examples), and averages the k weights "
        "into one model. Every ingredient keeps the mask, so the soup does too. Each outer seed makes one soup from "
        "fresh ingredients; the figure shows the soup against its **best** and **mean ingredient** with intervals "
        "over outer seeds. The best ingredient is picked on the split it is reported on, so it is optimistic.")
    defaults = default_recovery_config(loaded.kind)
    c1, c2, c3, c4 = st.columns(4)
    keep = dict(persist_state="page")
    k = int(c1.number_input("Ingredients per soup (k)", 2, 16, DEFAULT_INGREDIENTS, key="rs_k", **keep))
    steps = int(c2.number_input("Steps per ingredient", 1, 20000, DEFAULT_STEPS, key="rs_steps", **keep))
    lr = float(c3.number_input("Learning rate", 1e-6, 1.0, float(defaults.lr), format="%g", key="rs_lr", **keep))
    outer = int(c4.number_input("Outer seeds", 1, 10, DEFAULT_OUTER, key="rs_outer", **keep,
                                help="each outer seed makes one soup from its own k ingredients; the interval is "
                                     "taken over them (two or more for an interval)"))
    st.caption("One round: prune-more-then-soup rounds (`sparsekit.recovery.model_soup(..., rounds=r)`) start "
               "each round from the last soup, so their ingredients cannot be independent cells of this study.")
    try:
        spec = soup_spec(loaded, config, k, steps, lr, outer)
    except ValueError as err:
        st.error(f"Cannot make a soup of this setting: {err}")
        return
    total = spec.cell_count()
    weights = prunable_weight_count(loaded) or 0
    status = study.study_status(spec)
    done_records = [r for r in study.study_records(spec) if r.done]
    per = sum(r.seconds or 0.0 for r in done_records) / len(done_records) if done_records else None
    guess = (f" At {duration_text(per)} per finished ingredient so far, the rest takes "
             f"{duration_text(per * (total - status.done))}." if per and status.done < total else "")
    if HEAVY_WEIGHTS < weights <= LARGE_WEIGHTS:
        st.info(f"{loaded.name} has {weights / 1e6:,.1f} M prunable weights: each of the {total} ingredients is a "
                f"whole recovery run of {steps:,} steps, kept on disk with its weights (about "
                f"{int(getattr(loaded, 'n_params', weights)) * 4 * 1.4 / 2**20:,.0f} MB each).{guess}")
    if weights > LARGE_WEIGHTS:
        st.warning(f"{loaded.name} has {weights / 1e6:,.0f} M prunable weights: each of the {total} ingredients "
                   f"is a whole recovery run of {steps:,} steps (minutes each on a CPU), and each one is kept on "
                   f"disk with its weights. Try few steps, k = 2 and one outer seed first.{guess}")
    job = job_state("rs_jobs", spec.study_id)
    if job["status"] != "running":
        job["status"] = "done" if status.done >= total else ("stopped" if status.done else "idle")
    slot = job_buttons(job, st, "rs", f"Make soups ({total} ingredients of {steps:,} steps)", "ingredients")
    if job["status"] == "idle":
        return
    if job["status"] == "running":
        bar = ResumedProgress("Recovering ingredients", total, "ingredients")

        def progress(s: study.StudyStatus) -> None:
            bar(s.done / s.total if s.total else 1.0, s.message or f"{s.done} of {s.total} ingredients done")

        try:
            with heavy_job("recovery", loaded):
                result = soup_study(spec, "local", progress=progress, loaded=loaded)
        except ValueError as err:
            job["status"] = "idle"
            st.error(f"Cannot make the soup: {err}")
            return
        finally:
            bar.empty()
        failed = [r for r in study.study_records(spec) if not r.done]
        if failed:
            st.error(f"{len(failed)} ingredient(s) failed: {failed[0].error}")
        job["status"] = "done" if result.complete else "stopped"
        slot.empty()  # the Stop button drawn while the ingredients ran
        if not result.complete:
            slot.button("Continue", key="rs_continue", help="carry on from the ingredients already done")
    else:
        result = soup_results(spec, loaded=loaded)
    if not result.complete:
        st.warning(f"Stopped after {result.ingredients_done} of {result.ingredients_total} ingredients: "
                   f"{len(result.outcomes)} soup(s) complete. Continue computes only the missing ingredients.")
    else:
        st.success(f"{result.ingredients_total} of {result.ingredients_total} ingredients done, "
                   f"{len(result.outcomes)} soup(s).")
    show_soup(result, spec, upload_digest(loaded))


def level_table(rows: list[dict]) -> pd.DataFrame:
    """``SoupStudyResult.rows()`` turned on its side: one row per level or difference (its name with the unit),
    one column per pruned setting, so nine levels fit the page's width."""
    columns = {f"{r['model']} {r['pruned']}" if len({x["model"] for x in rows}) > 1 else str(r["pruned"]): r
               for r in rows}
    names = [k for k in rows[0] if k not in ("model", "pruned")]
    return pd.DataFrame([{"level": name, **{col: str(r[name]) for col, r in columns.items()}} for name in names])


def show_soup(result: study.SoupStudyResult, spec: StudySpec, upload_sha256: str) -> None:
    """The figure, the table (with units), the CSV download and "Open as notebook"."""
    if not result.groups:
        st.info("No soup yet: every ingredient of an outer seed must be done.")
        return
    st.plotly_chart(viz.soup_figure(result), width="stretch", key="rs_figure")
    head = soup_headline(result)
    st.dataframe(level_table(head["table"]), hide_index=True, width="stretch")
    st.caption(f"Each level: mean [{spec.confidence:.0%} t-interval] over outer seeds; soup − best and soup − mean "
               "are paired by outer seed (pp: percentage points).")
    left, right = st.columns(2)
    left.download_button("Download the table (CSV)", result.csv(), "model-soup.csv", mime="text/csv", key="rs_csv")
    with right:
        notebook_button(soup_recipe(spec, upload_sha256=upload_sha256), key="rs_notebook")

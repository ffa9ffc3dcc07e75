"""The Studies page's recipe: the same ``StudySpec`` (built from the page's widgets or uploaded), run with
``sparsekit.study.run_study`` on the local backend (cells already on disk are read, not recomputed), and
the results as the page shows them: intervals over seeds, the Pareto front, the best method per pattern,
paired differences.

``study_headline`` computes the page's tables and captions from the records; the page draws them from
it and the notebook prints it.
"""
from __future__ import annotations

from typing import Any, Sequence

from ..study import CellRecord, Group, StudySpec, best_per_pattern, paired_differences, pareto_front, summarize
from .base import Recipe, code, config_literal, literal, md

COSTS = ("kept_fraction", "memory_bytes")
"""The page's Pareto cost axes (its radio's options, default first)."""


def study_groups(spec: StudySpec, records: Sequence[CellRecord]) -> list[Group]:
    """Every setting's intervals over seeds, as the page summarises them (the spec's metrics and confidence)."""
    return summarize(records, spec.metrics or None, spec.confidence)


def study_headline(spec: StudySpec, records: Sequence[CellRecord], metric: str, model: str,
                   cost: str = "kept_fraction") -> dict[str, Any]:
    """What the Studies page shows of a study's records.

    Args:
        spec: the study.
        records: ``sparsekit.study.study_records(spec)``.
        metric: the metric the page shows (its "Metric" choice).
        model: the model the figures, the best-method table and the paired differences are of.
        cost: the Pareto cost axis (one-shot studies).

    Returns:
        ``cells`` (records) and ``failed`` (count); ``settings``: the "Every setting" table (model, pattern,
        method, seeds, kept share, ``mean [low, high]`` per metric at 4 significant digits, seed matters);
        ``intervals``: ``label -> [mean, low, high]`` of ``metric`` for ``model``; for one-shot studies
        ``pareto`` (the front's labels, cheapest first) and ``best`` (the best method per pattern);
        ``differences``: the paired-difference sentences.
    """
    groups = study_groups(spec, records)
    metrics = list(groups[0].metrics) if groups else []
    mine = [g for g in groups if g.model == model]
    out: dict[str, Any] = {
        "metric": metric, "model": model,
        "cells": len(records), "failed": sum(1 for r in records if not r.done),
        "settings": [{"model": g.model, "pattern": g.pattern, "method": g.variant, "seeds": len(g.seeds),
                      "kept share": float(g.kept_fraction), **{m: g.metrics[m].text(4) for m in metrics},
                      "seed matters": bool(g.seed_matters)} for g in groups],
        "intervals": {g.label: [g.metrics[metric].mean, g.metrics[metric].low, g.metrics[metric].high]
                      for g in mine if metric in g.metrics},
    }
    if spec.kind == "oneshot":
        out["cost"] = cost
        out["pareto"] = [g.label for g in pareto_front(mine, metric, cost)]
        out["best"] = [{"model": m, "pattern": p, "best": g.variant, metric: g.metrics[metric].text(4),
                        "seeds": len(g.seeds)} for (m, p), g in best_per_pattern(mine, metric).items()]
    diffs = paired_differences([r for r in records if r.model == model], metric, spec.confidence)
    out["differences"] = [d.sentence for d in diffs]
    return out


def _imports(spec: StudySpec) -> str:
    lines = ["from sparsekit import study", "from sparsekit.study import StudySpec"]
    if spec.base is not None:
        lines.append("from sparsekit import SparsifyConfig")
    if spec.train is not None:
        lines.append("from sparsekit.training import TrainConfig")
    return "\n".join(lines)


def study_recipe(spec: StudySpec, metric: str, model: str, cost: str = "kept_fraction") -> Recipe:
    """The Studies page: one study, run (or read from the cache) and shown.

    Args:
        spec: the study (from the page's widgets or an uploaded spec file).
        metric: the metric the page shows.
        model: the model the page's figures are of.
        cost: the Pareto cost axis the page shows (one-shot studies).
    """
    spec.validate()
    oneshot = spec.kind == "oneshot"
    cells = [
        md(f"## The study: {spec.name}\n{spec.cell_count()} cells ({spec.kind}). `run_study` runs on this "
           "machine (backend `local`): every cell already in the disk cache (the page's) is read, not computed "
           "again; the rest is computed and stored. On a Ray cluster: `study.run_study(spec, 'ray', "
           "ray_address=...)`."),
        code(f"{_imports(spec)}\n\nspec = {config_literal(spec)}\noutcome = study.run_study(spec, 'local')\n"
             "outcome.status"),
        md("## Intervals over seeds"),
        code("records = study.study_records(spec)\n"
             "groups = study.summarize(records, spec.metrics or None, spec.confidence)\n"
             f"metric, model = {literal(metric)}, {literal(model)}\n"
             "mine = [g for g in groups if g.model == model]\n"
             "[(g.label, g.metrics[metric].text(4)) for g in mine]"),
    ]
    if oneshot:
        cells += [
            code("viz.study_quality_figure(mine, metric)"),
            code(f"cost = {literal(cost)}\nfront = study.pareto_front(mine, metric, cost)\n"
                 "viz.study_pareto_figure(mine, front, metric, cost=cost)"),
            md("## Best method per pattern"),
            code("best = study.best_per_pattern(mine, metric)\n"
                 "{k: (g.variant, g.metrics[metric].text(4)) for k, g in best.items()}"),
        ]
    else:
        cells.append(code("viz.study_interval_figure(mine, metric)"))
    cells += [
        md("## Paired differences (same seeds)"),
        code("for d in study.paired_differences([r for r in records if r.model == model], metric, spec.confidence):\n"
             "    print(d.sentence)"),
        md("## Headline values (the page's tables and captions)"),
        code("from sparsekit.recipes.study import study_headline\n\n"
             "headline = study_headline(spec, records, metric, model" + (", cost)" if oneshot else ")") + "\nheadline"),
    ]
    shown = (f"It showed the study **{spec.name}** ({spec.kind}, {spec.cell_count()} cells): {metric} of `{model}` "
             "with intervals over seeds" + (f", the Pareto front against {cost}" if oneshot else "")
             + " and paired differences.")
    return Recipe("Studies", shown, model, tuple(cells))


__all__ = ["COSTS", "study_groups", "study_headline", "study_recipe"]

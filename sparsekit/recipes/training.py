"""Recipes of the Training & topology page: its Runs tab (saved training runs compared by SAD, one run
up close with its flip maps) and its Seed study tab (STE vs SR-STE over seeds, with intervals).

Both read the run store the page reads, through the public calls a notebook user would make:
``saved_run`` reopens a saved run (and trains it again from its seeded config where this machine
does not have it), ``run_seed_study`` takes every finished run of a study from the disk cache.
``training_headline`` / ``seed_study_headline`` compute what the page shows; both the page and the
notebook call them, as they call ``flip_grid`` / ``flip_stats`` and ``seed_summary_rows``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import torch

from ..layers import matrix_view
from ..models.digits import ARCH_LABELS
from ..topology import SadReport, flip_counts
from ..training import RunRecord, TrainConfig, load_run, sad_summary, train
from ..training.seedconfig import SeedStudyConfig
from ..training.seedresults import METRICS, SeedStudyResult, SummaryRow
from .base import Recipe, code, config_literal, literal, md

UNREPRODUCIBLE = ("seconds",)
"""Summary columns the headline leaves out: wall time is not a result of the run."""


def saved_run(run_id: str, config: TrainConfig, name: str = "") -> RunRecord:
    """A run the page showed: read back from the run store when this machine has it (exactly as
    saved), else trained again from its config (seeded, so the same run up to float summation
    order; not saved) and given ``run_id``. A run the page showed as stopped or failed is only in
    the store: trained again, it runs to the end.

    Args:
        run_id: the run's id in the store.
        config: the settings it was trained with.
        name: its name on the page.

    Raises:
        ValueError: the stored run was trained with other settings.
    """
    try:
        record = load_run(run_id)
    except KeyError:
        return dataclasses.replace(train(config, name=name), run_id=run_id)
    if record.config != config:
        raise ValueError(f"run {run_id} in the run store was trained with other settings than {config.label()}")
    return record


def flip_grid(record: RunRecord, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """How many times each weight of ``layer`` changed state, and those counts as the layer's grouped
    matrix (rows = outputs, N:M groups along each row) as the flip maps draw them."""
    counts = flip_counts(record.history, layer)
    return counts, matrix_view(counts, record.config.conv_grouping)


def flip_stats(record: RunRecord, layer: str) -> dict[str, Any]:
    """The flip-count caption of one run's layer: weights that changed state at least once, of how
    many, the most flips of one weight, over how many intervals, and the grid's shape."""
    counts, grid = flip_grid(record, layer)
    return {"run": record.label, "layer": layer, "changed": int((counts > 0).sum()), "weights": int(counts.numel()),
            "most": int(counts.max()), "intervals": len(record.history) - 1,
            "shape": list(counts.shape), "grid": list(grid.shape)}


def training_headline(records: Sequence[RunRecord], reports: Mapping[str, SadReport] | None = None, *,
                      layer: str | None = None, fraction: bool = True, flip_layer: str | None = None,
                      flip_runs: Sequence[RunRecord] = ()) -> dict[str, Any]:
    """What the Runs tab shows: the comparison table (``training.sad_summary`` without wall times) and
    the flip-count captions of the run up close (and the run beside it).

    Args:
        records: the runs compared.
        reports: run id -> its SAD report.
        layer: the SAD layer chosen (None: all sparse layers).
        fraction: SAD as a fraction of the weights.
        flip_layer: the layer of the flip maps (None: not shown).
        flip_runs: the run up close, then the one beside it.
    """
    rows = [{k: v for k, v in row.items() if k not in UNREPRODUCIBLE}
            for row in sad_summary(records, reports, layer=layer, fraction=fraction)]
    out: dict[str, Any] = {"summary": rows}
    if flip_layer is not None:
        out["flips"] = [flip_stats(rec, flip_layer) for rec in flip_runs]
    return out


def seed_summary_rows(rows: Sequence[SummaryRow]) -> list[dict[str, Any]]:
    """The seed study's table: per pattern and method, the number of seeds and every metric's mean and
    interval."""
    out = []
    for row in rows:
        item: dict[str, Any] = {"N:M": f"{row.n}:{row.m}", "run": row.label, "seeds": row.metrics["accuracy"].n}
        for key, (name, unit, _) in METRICS.items():
            iv = row.metrics[key]
            item[f"{name} ({unit})"] = iv.mean
            item[f"{name} CI low"] = iv.low
            item[f"{name} CI high"] = iv.high
        out.append(item)
    return out


def study_sentences(result: SeedStudyResult) -> list[str]:
    """The comparisons the Seed study tab writes out (every metric but early SAD)."""
    return [c.sentence for c in result.comparisons() if c.metric != "early_sad_pct"]


def seed_study_headline(result: SeedStudyResult) -> dict[str, Any]:
    """What the Seed study tab shows: its sentences, its table, and whether every run finished."""
    return {"comparisons": study_sentences(result), "summary": seed_summary_rows(result.summary()),
            "complete": result.complete}


def training_recipe(runs: Sequence[tuple[str, TrainConfig, str]], *, layer: str | None = None, fraction: bool = True,
                    focus: str | None = None, flip_layer: str | None = None, beside: str | None = None) -> Recipe:
    """The Runs tab: the chosen saved runs, their comparison table, curves and SAD figures, and one run
    up close (its SAD per layer and interval, and its flip counts beside another run's).

    Args:
        runs: ``(run id, config, name)`` of every run compared, in the page's order.
        layer: the SAD layer chosen (None: all sparse layers).
        fraction: SAD as a fraction of the weights (else a number of weights).
        focus: the run up close (None: none shown, no run has two mask snapshots).
        flip_layer: the layer of its flip maps.
        beside: the run shown beside it (None: none).
    """
    if not runs:
        raise ValueError("a training recipe needs at least one run")
    listed = "".join(f"    ({literal(rid)}, {config_literal(cfg)}, {literal(name)}),\n" for rid, cfg, name in runs)
    cells = [
        md("## The runs\n`saved_run` reads each run back from the run store (`SPARSEKIT_CACHE_DIR`) exactly as the "
           "page saved it; where this machine does not have it, it trains it again from its seeded config."),
        code("from sparsekit import training\nfrom sparsekit.recipes.training import saved_run\n"
             "from sparsekit.training import TrainConfig\n\n"
             f"runs = [  # (run id, settings, name)\n{listed}]\n"
             "records = [saved_run(run_id, config, name) for run_id, config, name in runs]\n"
             "reports = {rec.run_id: rec.sad() for rec in records}\n"
             f"layer, fraction = {literal(layer)}, {literal(fraction)}  # SAD of this layer (None: all sparse layers)\n"
             "training.sad_summary(records, reports, layer=layer, fraction=fraction)"),
        md("## Curves and SAD"),
        code("colors = viz.run_colors(records)\nviz.training_curves_figure(records, colors=colors)"),
        code("sparse_records = [rec for rec in records if rec.history.layers and len(rec.history) > 1]\n"
             "sad_options = dict(layer=layer, fraction=fraction, colors=colors,\n"
             "                   reports=[reports[rec.run_id] for rec in sparse_records])\n"
             "viz.sad_series_figure(sparse_records, kind='interval', **sad_options)"),
        code("viz.sad_series_figure(sparse_records, kind='cumulative', **sad_options)"),
        code("viz.sad_series_figure(sparse_records, kind='from_first', log_y=False, **sad_options)"),
        code("viz.sad_series_figure(sparse_records, kind='to_final', log_y=False, **sad_options)"),
    ]
    flips = ""
    if focus is not None:
        cells += [
            md("## One run up close"),
            code(f"focus = next(rec for rec in records if rec.run_id == {literal(focus)})\n"
                 "rep = reports[focus.run_id]\n"
                 "viz.sad_heatmap_figure(rep.layers, rep.epochs, rep.matrix('interval', fraction=fraction),\n"
                 "                       fraction=fraction, title=f'{focus.label}: SAD per layer and interval')"),
        ]
        if flip_layer is not None:
            cells += [code(
                "from sparsekit.recipes.training import flip_grid, flip_stats\n\n"
                f"flip_layer = {literal(flip_layer)}\n"
                f"pair = [focus{', ' if beside else ''}"
                + (f"next(rec for rec in records if rec.run_id == {literal(beside)})" if beside else "") + "]\n"
                "print([flip_stats(rec, flip_layer) for rec in pair])\n"
                "title = f'flips per weight of {flip_layer}' + (' (one colour scale)' if len(pair) > 1 else "
                "f': {focus.label}')\n"
                "viz.flip_maps_figure([flip_grid(rec, flip_layer)[1] for rec in pair], [rec.label for rec in pair], "
                "title=title)")]
            flips = ", flip_layer=flip_layer, flip_runs=pair"
    cells += [
        md("## Headline values (the comparison table and the flip counts)"),
        code("from sparsekit.recipes.training import training_headline\n\n"
             f"headline = training_headline(records, reports, layer=layer, fraction=fraction{flips})\nheadline"),
    ]
    shown = f"It compared {len(runs)} saved training run(s) of the digits models by SAD" + (
        " and showed one run up close." if focus is not None else ".")
    return Recipe("Training & topology", shown, "", tuple(cells))


def seed_study_recipe(config: SeedStudyConfig, metric: str = "late_sad_pct") -> Recipe:
    """The Seed study tab: STE and SR-STE over K paired seeds per N:M pattern, their intervals, the
    paired differences and the λ_w sweep.

    Args:
        config: the study.
        metric: the metric whose per-seed values the page plots (a key of ``METRICS``).
    """
    config.validate()
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    cells = (
        md("## The study\n`run_seed_study` trains every run that is not in the disk cache yet and reads the others "
           "back (the page's runs, when this notebook runs where the page ran)."),
        code("from sparsekit.training import TrainConfig\n"
             "from sparsekit.training.seedstudy import SeedStudyConfig, run_seed_study\n\n"
             f"study = {config_literal(config)}\nresult = run_seed_study(study)\n"
             "print(f'{result.computed} of {len(result.runs)} runs trained here, the rest from the cache')"),
        md("## Result over the seeds"),
        code("from sparsekit.recipes.training import seed_study_headline, seed_summary_rows, study_sentences\n\n"
             "for sentence in study_sentences(result):\n    print(sentence)"),
        code(f"viz.seed_study_figure(result, {literal(metric)})"),
        code("viz.paired_difference_figure(result)"),
        code("seed_summary_rows(result.summary())"),
        code("viz.lambda_sweep_figure(result) if result.lambda_rows() else None"),
        md("## Headline values (the sentences and the table)"),
        code("headline = seed_study_headline(result)\nheadline"),
    )
    patterns = ", ".join(f"{n}:{m}" for n, m in config.patterns)
    shown = (f"It ran a seed study: STE vs SR-STE on the digits {ARCH_LABELS[config.train.arch]}, {patterns}, "
             f"{config.seeds} seeds, {config.train.epochs} epochs.")
    return Recipe("Training & topology, seed study", shown, "", cells)


__all__ = ["UNREPRODUCIBLE", "flip_grid", "flip_stats", "saved_run", "seed_study_headline", "seed_study_recipe",
           "seed_summary_rows", "study_sentences", "training_headline", "training_recipe"]

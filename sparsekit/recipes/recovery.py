"""Recipes of the Recovery page: recovery runs made from the Sparsify page's setting (fine-tuned again
in the notebook, seeded as on the page), or saved runs reopened from the run store.

``recovery_rows`` is the page's summary table and ``recovery_headline`` its values; both the page
and the notebook call them.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from ..config import SparsifyConfig
from ..recovery import MODE_LABELS, RecoveryConfig, RecoveryRecord
from .base import Recipe, code, config_literal, literal, md
from .pages import load_cell

UNREPRODUCIBLE = ("seconds", "model")
"""Summary columns the headline leaves out: wall time, and the model as the page shows it (a server
path is shortened there)."""


def recovery_rows(records: Sequence[RecoveryRecord], *, origin: bool = False,
                  model_text: Callable[[str], str] = str) -> list[dict[str, Any]]:
    """The Recovery page's summary: one row per run (mode, the metric before, after and dense, gap
    recovered, seconds, status).

    Args:
        records: the runs.
        origin: also name each run's model and starting setting (reopened runs may come from different ones).
        model_text: how a model spec is shown.
    """
    rows = []
    for r in records:
        where = {"model": model_text(r.model_spec), "starting setting": r.sparsify_config.label()} if origin else {}
        rows.append({**where, "mode": MODE_LABELS.get(r.config.mode, r.config.mode), f"{r.metric} before": r.before,
                     "after": r.after, "dense": r.dense, "gap recovered": r.gap_recovered, "seconds": r.seconds,
                     "status": r.status})
    return rows


def recovery_headline(records: Sequence[RecoveryRecord], *, origin: bool = False, layer_run: int = 0) -> dict[str, Any]:
    """What the Recovery page shows: its summary rows (without wall times) and whose per-layer SAD it draws.

    Args:
        records: the runs.
        origin: the rows name each run's starting setting.
        layer_run: index of the run whose per-layer SAD is shown.
    """
    rows = [{k: v for k, v in row.items() if k not in UNREPRODUCIBLE}
            for row in recovery_rows(records, origin=origin)]
    return {"runs": rows, "layer_run": MODE_LABELS.get(records[layer_run].config.mode, records[layer_run].config.mode)}


def _figure_cells(layer_run: int, origin: bool) -> tuple[Any, ...]:
    return (
        md("## Curves, gap recovered, SAD and flip rate"),
        code("colors = viz.recovery_colors(records)\nviz.recovery_curves_figure(records, colors=colors)"),
        code("viz.recovery_gap_figure(records, colors=colors)"),
        code("viz.recovery_sad_figure(records)"),
        code("viz.flip_rate_figure(records)"),
        md("## Summary"),
        code("from sparsekit.recipes.recovery import recovery_headline, recovery_rows\n\n"
             f"recovery_rows(records{', origin=True' if origin else ''})"),
        md("## Per-layer SAD of one run"),
        code(f"viz.recovery_sad_heatmap(records[{int(layer_run)}])"),
        md("## Headline values (the summary table)"),
        code(f"headline = recovery_headline(records{', origin=True' if origin else ''}, layer_run={int(layer_run)})\n"
             "headline"),
    )


def recovery_recipe(spec: str, config: SparsifyConfig, configs: Sequence[RecoveryConfig], *, layer_run: int = 0,
                    upload_sha256: str = "") -> Recipe:
    """The Recovery page after Recover: the Sparsify page's setting, one recovery run per mode on one
    budget (seeded: ``recover`` gives the page's numbers again), their figures and summary.

    Args:
        spec: the model spec.
        config: the Sparsify page's setting the runs start from.
        configs: one ``RecoveryConfig`` per mode, as the page ran them.
        layer_run: index of the run whose per-layer SAD the page shows.
        upload_sha256: set when the model's weights were uploaded in the browser.
    """
    if not configs:
        raise ValueError("a recovery recipe needs at least one run")
    listed = "".join(f"    {config_literal(c)},\n" for c in configs)
    cells = (
        md("## The model and the pruned starting point"),
        code(load_cell(spec, upload_sha256)),
        code(f"from sparsekit import SparsifyConfig\n\nconfig = {config_literal(config)}\n"
             "result = sparsekit.sparsify(model, config)\nresult"),
        md("## Recovery runs, one per mode on the same budget\nEach run is seeded (`RecoveryConfig.seed`), so this "
           "gives the page's numbers again. The page used `recovery.recover_and_save`, which also keeps every run in "
           "the run store (its Saved runs view); `recover` here leaves the store as it is."),
        code("from sparsekit import recovery\nfrom sparsekit.recovery import RecoveryConfig\n\n"
             f"configs = [\n{listed}]\nrecords = [recovery.recover(result, model, c) for c in configs]\n"
             "[r.summary() for r in records]"),
        *_figure_cells(layer_run, origin=False),
    )
    modes = ", ".join(MODE_LABELS.get(c.mode, c.mode) for c in configs)
    shown = (f"It pruned `{spec}` with **{config.label()}** and fine-tuned it for {configs[0].steps} steps in each "
             f"mode ({modes}).")
    return Recipe("Recovery", shown, spec, cells)


def saved_recovery_recipe(run_ids: Sequence[str], *, layer_run: int = 0) -> Recipe:
    """The Recovery page's Saved runs view: the chosen runs reopened from the run store.

    Args:
        run_ids: the runs, in the page's order.
        layer_run: index of the run whose per-layer SAD the page shows.
    """
    if not run_ids:
        raise ValueError("a recovery recipe needs at least one run")
    cells = (
        md("## The saved runs\nRead back from the run store (`SPARSEKIT_CACHE_DIR`) exactly as they were saved; "
           "`recovery.list_recoveries()` lists them all."),
        code(f"from sparsekit import recovery\n\nrun_ids = {literal(list(run_ids))}\n"
             "records = [recovery.load_recovery(run_id) for run_id in run_ids]\n[r.summary() for r in records]"),
        *_figure_cells(layer_run, origin=True),
    )
    shown = f"It reopened {len(run_ids)} saved recovery run(s) from the run store."
    return Recipe("Recovery", shown, "", cells)


__all__ = ["UNREPRODUCIBLE", "recovery_headline", "recovery_recipe", "recovery_rows", "saved_recovery_recipe"]

"""The Sensitivity page's recipe: a per-unit scan (each unit pruned alone), its figures, and the
uniform vs sensitivity-guided comparison at one overall sparsity.

``sensitivity_headline`` (the scan's numbers as the page lists them) and ``allocation_row`` (one row of
the comparison table) are called by the page for what it shows and by the notebook for its headline.
"""
from __future__ import annotations

import math
from typing import Any

from ..sensitivity import SensitivityConfig, SensitivityScan
from ..sparsify import SparsifyResult
from .base import Recipe, code, config_literal, literal, md
from .pages import load_cell

ALLOCATIONS = ("uniform", "sensitivity")
"""The two allocations the page compares, in the order of its table."""


def _cell(value: float | None) -> float | None:
    return None if value is None else float(value)


def spearman_text(value: float | None) -> str:
    """One Spearman ρ as the page's caption writes it (``+0.83``; ``–`` when there is none)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:+.2f}"


def sensitivity_headline(scan: SensitivityScan) -> dict[str, Any]:
    """What the page shows of a scan: the dense quality, the per-unit table and the proxy's Spearman ρ.

    Args:
        scan: a ``SensitivityScan``.

    Returns:
        ``metric``, ``dense_quality``, ``settings``, ``units``, ``weights``, ``drop`` and ``proxy`` (one row
        per unit, one value per setting; ``drop`` None in proxy mode) and ``spearman`` (one caption text
        per setting, full mode only).
    """
    full = scan.config.mode == "full"
    return {
        "metric": scan.metric,
        "dense_quality": float(scan.dense_quality),
        "settings": list(scan.settings),
        "units": list(scan.units),
        "weights": [int(n) for n in scan.unit_numel],
        "drop": [[_cell(v) for v in row] for row in scan.drop] if full else None,
        "proxy": [[_cell(v) for v in row] for row in scan.proxy],
        "spearman": [spearman_text(r) for r in scan.spearman] if full else None,
    }


def allocation_row(allocation: str, result: SparsifyResult, quality: dict[str, float],
                   metric: str) -> dict[str, Any]:
    """One row of the page's uniform vs sensitivity-guided table.

    Args:
        allocation: ``uniform`` or ``sensitivity``.
        result: ``sparsekit.sparsify`` of the model with that allocation.
        quality: ``model.quality(result.model)``.
        metric: the scan's metric.

    Returns:
        ``allocation``, ``quality`` (the metric), ``pruned share`` (over the pruned layers), ``per layer``
        (the sparsity chosen per layer) and ``note``.
    """
    kept = result.summary()["kept_fraction_pruned_layers"]
    return {"allocation": allocation, "quality": float(quality[metric]),
            "pruned share": float("nan") if kept is None else 1 - float(kept),
            "per layer": {k: float(v) for k, v in (result.allocation or {}).items()},
            "note": result.allocation_note}


def sensitivity_recipe(spec: str, config: SensitivityConfig, *, target: float | None = None,
                       upload_sha256: str = "") -> Recipe:
    """The Sensitivity page: the scan of ``config`` and, when the page compared them, both allocations.

    Args:
        spec: the model spec.
        config: the scan's settings.
        target: the overall share pruned of the allocation comparison, when the page showed it.
        upload_sha256: set when the model's weights were uploaded in the browser.
    """
    config.validate()
    full = config.mode == "full"
    value = "drop" if full else "proxy"
    cells = [
        md("## The model"),
        code(load_cell(spec, upload_sha256)),
        md(f"## The scan: {', '.join(config.labels())}, {config.method}, unit = {config.grouping}\n"
           "Each unit is pruned alone, the rest of the model dense. A scan already on disk (the page's) is read "
           "from the cache; otherwise it runs here" + (" (one evaluation per unit and setting)." if full else
                                                        " (the proxy only: no evaluation).")),
        code("from sparsekit.sensitivity import SensitivityConfig, sensitivity_scan\n\n"
             f"config = {config_literal(config)}\nscan = sensitivity_scan(model, config)\n"
             "scan.dense_quality, scan.settings"),
        code(f"viz.sensitivity_heatmap(scan, value={literal(value)})"),
    ]
    if full:
        cells += [code("viz.sensitivity_proxy_figure(scan)"),
                  code("dict(zip(scan.settings, scan.spearman))  # proxy vs measured drop, across units")]
    cells += [
        md("## Per unit"),
        code("import pandas as pd\n\ntable = pd.DataFrame({'unit': scan.units, 'weights': scan.unit_numel})\n"
             "for j, setting in enumerate(scan.settings):\n"
             + ("    table[f'drop {setting}'] = [row[j] for row in scan.drop]\n" if full else "")
             + "    table[f'proxy {setting}'] = [row[j] for row in scan.proxy]\ntable"),
    ]
    head = "from sparsekit.recipes.sensitivity import sensitivity_headline\n\nheadline = sensitivity_headline(scan)\n"
    if full and target is not None:
        cells += [
            md(f"## Spend a budget unevenly: {target:.0%} pruned overall\nThe same share pruned (by weight over "
               "the pruned layers), spread evenly and by the scan."),
            code("from sparsekit import SparsifyConfig\nfrom sparsekit.recipes.sensitivity import allocation_row\n\n"
                 "rows, results = [], {}\n"
                 f"for allocation in {literal(ALLOCATIONS)}:\n"
                 f"    cfg = SparsifyConfig(pattern='unstructured', sparsity={literal(float(target))}, "
                 f"method={literal(config.method)}, allocation=allocation)\n"
                 "    results[allocation] = sparsekit.sparsify(model, cfg, "
                 "sensitivity=scan if allocation == 'sensitivity' else None)\n"
                 "    rows.append(allocation_row(allocation, results[allocation], "
                 "model.quality(results[allocation].model), scan.metric))\n"
                 "pd.DataFrame([{k: v for k, v in r.items() if k != 'per layer'} for r in rows])"),
            code("viz.layer_kept_figure(results['sensitivity'].report)  # the sparsity chosen per layer"),
        ]
        head += "headline['allocation'] = rows\n"
    cells += [md("## Headline values (the table, the caption and the comparison on the page)"),
              code(head + "headline")]
    shown = (f"It scanned `{spec}` ({', '.join(config.labels())}; {config.method}; unit {config.grouping}; "
             f"{'quality drop and proxy' if full else 'proxy only'})"
             + (f" and compared uniform with sensitivity-guided allocation at {target:.0%} pruned." if
                full and target is not None else "."))
    return Recipe("Sensitivity", shown, spec, tuple(cells))


__all__ = ["ALLOCATIONS", "allocation_row", "sensitivity_headline", "sensitivity_recipe", "spearman_text"]

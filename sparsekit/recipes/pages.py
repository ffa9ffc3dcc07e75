"""Recipes of the pages that prune one setting: Model and Sparsify (and the shared model cell).

Each ``*_recipe`` returns the notebook of one page; each ``*_headline`` computes that page's headline
values from the library's results, and both the page and the notebook call it, so the test that runs
the notebook compares the same quantities.
"""
from __future__ import annotations

from typing import Any

from ..config import SparsifyConfig
from ..evaluate import summary_number
from ..methods import get_method
from ..sparsify import SparsifyResult
from .base import Recipe, code, config_literal, literal, md


def load_cell(spec: str, upload_sha256: str = "") -> str:
    """Code that loads the page's model as ``model``."""
    if upload_sha256:
        return (f"# The page used weights uploaded in the browser (sha256 {upload_sha256[:12]}…): point this at\n"
                "# your copy of that .safetensors file.\n"
                f"model = sparsekit.load_model({literal(spec)}, weights=Path('weights.safetensors').read_bytes())\n"
                "model")
    return f"model = sparsekit.load_model({literal(spec)})\nmodel"


def summary_headline(result: SparsifyResult, quality: dict[str, float]) -> dict[str, Any]:
    """What the Sparsify page shows at the top: quality, kept shares and layers with weights removed.

    Args:
        result: a ``SparsifyResult``.
        quality: ``model.quality(result.model)``.
    """
    summary = result.summary()
    return {
        "quality": {k: float(v) for k, v in quality.items()},
        "kept_fraction_pruned_layers": float(summary_number(summary, "kept_fraction_pruned_layers")),
        "kept_fraction_all_layers": float(summary_number(summary, "kept_fraction_all_layers")),
        "layers_with_zeros": int(summary_number(summary, "layers_with_zeros")),
        "layers_total": int(summary_number(summary, "layers_total")),
    }


def sparsify_recipe(spec: str, config: SparsifyConfig, *, upload_sha256: str = "") -> Recipe:
    """The Sparsify page: one setting pruned, its quality, the per-layer report and its figures.

    Args:
        spec: the model spec.
        config: the setting the page shows.
        upload_sha256: set when the model's weights were uploaded in the browser.
    """
    config.validate()
    calibrated = get_method(config.method).needs_calibration
    cells = (
        md("## The model\n`load_model` gives one `LoadedModel`: the module (never changed by sparsekit), its "
           "quality metric and its calibration inputs."),
        code(load_cell(spec, upload_sha256)),
        md(f"## The setting: {config.label()}\nN counts *kept* weights (2:4 keeps 2 of every 4)."
           + (" The method reads the model's calibration inputs (`model.calibration`)." if calibrated else "")),
        code(f"from sparsekit import SparsifyConfig\n\nconfig = {config_literal(config)}\n"
             "result = sparsekit.sparsify(model, config)  # prunes a copy\nresult"),
        md("## Quality before and after"),
        code("dense = model.quality()\nquality = model.quality(result.model)\n"
             "{k: (dense[k], quality[k], quality[k] - dense[k]) for k in quality}"),
        md("## Per-layer report and figures"),
        code("[(r.name, r.shape, f\"kept {r.kept_fraction:.2f}\", r.skipped_reason or r.semi_structured)\n"
             " for r in result.report]"),
        code("viz.layer_kept_figure(result.report)"),
        code("viz.memory_figure(result.report) if any(r.pruned for r in result.report) else None"),
        md("## Headline values (the figures at the top of the page)"),
        code("from sparsekit.recipes.pages import summary_headline\n\nheadline = summary_headline(result, quality)\n"
             "headline"),
    )
    shown = f"It pruned a copy of `{spec}` with **{config.label()}** and measured its quality."
    return Recipe("Sparsify", shown, spec, cells)


__all__ = ["load_cell", "sparsify_recipe", "summary_headline"]

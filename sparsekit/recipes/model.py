"""The Model page's recipe: the loaded model's card (parameters, prunable layers, dense quality).

``model_headline`` computes what the page shows at the top and in its quality table; the page and the
notebook both call it.
"""
from __future__ import annotations

from typing import Any

from ..models import LoadedModel
from ..report import layer_table
from .base import Recipe, code, md
from .pages import load_cell


def model_headline(model: LoadedModel, dense: dict[str, float]) -> dict[str, Any]:
    """What the Model page shows: parameter counts, the prunable share, weight memory, kind, the
    number of prunable layers and the dense quality.

    Args:
        model: the ``LoadedModel``.
        dense: ``model.quality()``.

    Returns:
        ``params``, ``prunable_params``, ``prunable_share`` (of all parameters), ``weight_mb``
        (2²⁰ bytes), ``kind``, ``prunable_layers`` and ``quality`` (metric -> value).
    """
    table = layer_table(model)
    prunable = sum(int(row["params"]) for row in table)
    return {
        "params": int(model.n_params),
        "prunable_params": prunable,
        "prunable_share": prunable / model.n_params if model.n_params else 0.0,
        "weight_mb": model.n_bytes / 2**20,
        "kind": model.kind,
        "prunable_layers": len(table),
        "quality": {k: float(v) for k, v in dense.items()},
    }


def model_recipe(spec: str, *, upload_sha256: str = "") -> Recipe:
    """The Model page: the model's parameters by module type, its prunable layers and dense quality.

    Args:
        spec: the model spec.
        upload_sha256: set when the model's weights were uploaded in the browser.
    """
    cells = (
        md("## The model\n`load_model` gives one `LoadedModel`: the module, its quality metric and its "
           "calibration inputs. `model.info` holds the source details."),
        code(load_cell(spec, upload_sha256)),
        code("model.info"),
        md("## Where the parameters sit\nPruning removes weights from the Linear and Conv layers."),
        code("from sparsekit.report import layer_table, params_by_type\n\n"
             "counts = params_by_type(model)\nviz.params_by_type_figure(counts)"),
        code("import pandas as pd\n\ntable = layer_table(model)\npd.DataFrame(table)"),
        md("## Dense quality\nThe baseline every sparse version is compared with."),
        code("dense = model.quality()\n{model.metric_names.get(k, k): v for k, v in dense.items()}"),
        md("## Headline values (the figures at the top of the page and the quality table)"),
        code("from sparsekit.recipes.model import model_headline\n\nheadline = model_headline(model, dense)\n"
             "headline"),
    )
    shown = f"It showed the card of `{spec}`: its parameters, prunable layers and dense quality."
    return Recipe("Model", shown, spec, cells)


__all__ = ["model_headline", "model_recipe"]

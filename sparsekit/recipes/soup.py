"""The Recovery page's "Model soup" view as a notebook: the same soup ``StudySpec`` (kind ``soup``: the Sparsify
page's setting, k ingredients, the recovery budget, outer seeds), run with ``sparsekit.study.soup_study`` on the
local backend (ingredients already on disk are read, not recomputed), the figure and the table.

``soup_headline`` is what the page shows of a ``SoupStudyResult``; the page draws its table from it and the
notebook prints it.
"""
from __future__ import annotations

from typing import Any

from ..study import SoupStudy, SoupStudyResult, StudySpec
from ..study.soupstudy import LEVELS
from .base import Recipe, code, config_literal, md


def soup_headline(result: SoupStudyResult) -> dict[str, Any]:
    """What the page shows: ingredients done, the table (``SoupStudyResult.rows``: each level and both paired
    differences as ``mean [low, high]``) and, per pruned setting, every level's ``[mean, low, high]``."""
    return {
        "ingredients": f"{result.ingredients_done} of {result.ingredients_total}",
        "soups": len(result.outcomes),
        "table": result.rows(),
        "levels": {g.label: {lv: [g.levels[lv].mean, g.levels[lv].low, g.levels[lv].high] for lv in LEVELS}
                   for g in result.groups},
    }


def soup_recipe(spec: StudySpec, *, upload_sha256: str = "") -> Recipe:
    """The Recovery page's Model soup view.

    Args:
        spec: the soup study the page ran (kind ``soup``).
        upload_sha256: set when the model's weights were uploaded in the browser (a study loads models by spec,
            so the notebook says so).
    """
    spec.validate()
    if spec.kind != "soup":
        raise ValueError(f"a soup recipe takes a soup study (kind soup), got kind {spec.kind!r}")
    soup = spec.soup or SoupStudy()
    model = spec.models[0]
    note = (f"\n\nThe page's model had uploaded weights (sha256 {upload_sha256[:12]}…); a study loads `{model}` by "
            "its spec.") if upload_sha256 else ""
    imports = ["from sparsekit import study", "from sparsekit.study import SoupStudy, StudySpec"]
    if spec.base is not None:
        imports.append("from sparsekit import SparsifyConfig")
    if soup.recovery is not None:
        imports.append("from sparsekit.recovery import RecoveryConfig")
    cells = (
        md(f"## The soup study\nFor each of {len(spec.seeds)} outer seed(s) o, {soup.ingredients} fixed-mask recovery "
           f"runs of the pruned model (recovery seeds o·{soup.ingredients} … o·{soup.ingredients} + "
           f"{soup.ingredients - 1}, i.e. different orders of the training examples) are averaged into one soup. "
           "Every ingredient is a study cell: `soup_study` reads the ones in the disk cache (the page's) and computes "
           f"the rest; on a Ray cluster pass `'ray', ray_address=...`.{note}"),
        code("\n".join(imports) + f"\n\nspec = {config_literal(spec)}\nresult = study.soup_study(spec, 'local')\n"
             "result"),
        md("## Soup vs best and mean ingredient\nMean over outer seeds with its interval; the pruned model before "
           "recovery and the dense model for reference. \"Best ingredient\" is picked on the test split it is "
           "reported on (optimistic); the mean ingredient is the fair baseline."),
        code("viz.soup_figure(result)"),
        code("import pandas as pd\n\npd.DataFrame(result.rows())"),
        md("## The same soup with `model_soup`\nOne outer seed, run directly (`sparsekit.recovery.model_soup`): "
           "its soup equals the study's soup of that seed."),
        code("from sparsekit.recovery import default_recovery_config, model_soup\n"
             "from sparsekit.study import ingredient_seeds\n\n"
             "model = sparsekit.load_model(spec.models[0])\n"
             "recovery_config = spec.soup.recovery or default_recovery_config(model.kind)\n"
             "pruned = sparsekit.sparsify(model, spec.cells()[0].sparsify_config())\n"
             "direct = model_soup(pruned, model, recovery_config, ingredients=spec.soup.ingredients,\n"
             "                    seeds=ingredient_seeds(spec.seeds[0], spec.soup.ingredients))\n"
             "direct.soup, result.outcomes[0].soup"),
        md("## Headline values (the page's table)"),
        code("from sparsekit.recipes.soup import soup_headline\n\nheadline = soup_headline(result)\nheadline"),
    )
    shown = (f"It made model soups of `{model}` pruned with **{spec.patterns[0]} {spec.methods[0]}**: "
             f"{soup.ingredients} ingredients per soup, {len(spec.seeds)} outer seed(s), the soup against its best "
             "and mean ingredient.")
    return Recipe("Recovery", shown, model, cells)


__all__ = ["soup_headline", "soup_recipe"]

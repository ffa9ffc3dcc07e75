"""The Masks page's recipe: one layer's mask under the Sparsify page's setting, its figures, and its
comparison with a second setting's mask (SAD).

``masks_headline`` computes what the page shows (the kept count of the layer, the SAD of the layer and
of all layers both settings prune, the agreement counts); the page and the notebook both call it.
"""
from __future__ import annotations

from typing import Any

from .. import maskstats
from ..config import SparsifyConfig
from ..masks import sad
from ..sparsify import SparsifyResult
from .base import Recipe, code, config_literal, literal, md
from .pages import load_cell


def masks_headline(result: SparsifyResult, layer: str, other: SparsifyResult | None = None) -> dict[str, Any]:
    """What the Masks page shows for ``layer`` of ``result``, and its comparison with ``other``.

    Args:
        result: the ``SparsifyResult`` of the page's setting.
        layer: the selected layer (one of ``result.masks``).
        other: the second setting's result; its comparison is left out when None or when it does
            not prune ``layer``.

    Returns:
        ``layer``, ``kept``, ``numel``, ``kept_share``; with a comparison also ``sad_layer``,
        ``sad_layer_share``, ``common_layers``, ``sad_total``, ``sad_total_share``, ``both_kept``,
        ``only_a``, ``only_b``, ``both_pruned`` and ``kept_b`` (the layer's kept count under ``other``).
    """
    mask = result.masks[layer]
    head: dict[str, Any] = {"layer": layer, "kept": int(mask.sum()), "numel": int(mask.numel()),
                            "kept_share": float(mask.float().mean())}
    if other is None or layer not in other.masks:
        return head
    m2, mb2 = result.matrix_view(layer, mask), result.matrix_view(layer, other.masks[layer])
    stats = maskstats.mask_diff(m2, mb2)
    common = [n for n in result.masks if n in other.masks]
    total = sad({n: result.masks[n] for n in common}, {n: other.masks[n] for n in common})
    numel = sum(result.masks[n].numel() for n in common)
    head.update(
        sad_layer=stats.sad, sad_layer_share=stats.fraction, common_layers=len(common), sad_total=int(total),
        sad_total_share=total / numel if numel else 0.0, both_kept=stats.both_kept, only_a=stats.only_a,
        only_b=stats.only_b, both_pruned=stats.both_pruned, kept_b=int(mb2.sum()),
    )
    return head


def masks_recipe(spec: str, config: SparsifyConfig, layer: str, other: SparsifyConfig | None, *,
                 zoom: tuple[int, int, int] = (0, 0, 12), group: tuple[int, int] = (0, 0),
                 upload_sha256: str = "") -> Recipe:
    """The Masks page: ``layer``'s mask under ``config``, its figures, and the comparison with ``other``.

    Args:
        spec: the model spec.
        config: the setting whose masks the page showed (the Sparsify page's).
        layer: the selected layer.
        other: the second setting of the Compare tab (None when its form was invalid).
        zoom: the Zoom tab's first row, first column and block size.
        group: the N:M groups tab's row and first group.
        upload_sha256: set when the model's weights were uploaded in the browser.
    """
    config.validate()
    row0, col0, size = zoom
    irow, start = group
    nm = "nm = config.pattern == 'nm' and m2.shape[1] % config.m == 0\n"
    cells = [
        md("## The model and the setting\nThe masks of one setting, pruned on a copy of the model (kept = 1)."),
        code(load_cell(spec, upload_sha256)),
        code(f"from sparsekit import SparsifyConfig\n\nconfig = {config_literal(config)}\n"
             "result = sparsekit.sparsify(model, config)\nresult"),
        md(f"## Layer `{layer}`\nThe weight and its mask as the grouped 2-D matrix (rows = outputs; N:M groups run "
           "along each row; conv weights as [out, kh·kw·in])."),
        code(f"layer = {literal(layer)}\n"
             "orig = dict(model.module.named_modules())[layer].weight.detach()\n"
             "mask = result.masks[layer]\n"
             "w2, m2 = result.matrix_view(layer, orig), result.matrix_view(layer, mask)\n"
             + nm +
             "print(f'kept {int(mask.sum()):,} of {mask.numel():,} ({mask.float().mean().item():.1%})')"),
        md("### Overview"),
        code("viz.mask_heatmap(m2, title=f'{layer}: kept fraction per tile')"),
        code("viz.magnitude_histogram(w2, m2)"),
        code("viz.density_profile(m2)"),
        md("### Zoom"),
        code(f"row0, col0, size = {row0}, {col0}, {size}\n"
             "viz.mask_zoom_figure(w2, m2, row0, col0, size, size, m=config.m if nm else None)"),
    ]
    if config.pattern == "nm":
        cells += [
            md("### N:M groups"),
            code(f"if nm:\n    irow, start = {irow}, {start}\n    n_groups = m2.shape[1] // config.m\n"
                 "    fig = viz.nm_group_figure(w2, m2, config.m, irow, start, min(8, n_groups - start))\n"
                 "else:\n    fig = None\nfig"),
            code("viz.nm_pattern_figure(m2, config.m) if nm else None"),
        ]
    if other is not None:
        other.validate()
        cells += [
            md(f"## Compared with {other.label()}\nSAD counts the positions where two masks disagree."),
            code(f"other = {config_literal(other)}\nresult_b = sparsekit.sparsify(model, other)\n"
                 "mb2 = result.matrix_view(layer, result_b.masks[layer]) if layer in result_b.masks else None\n"
                 "if mb2 is not None:\n"
                 "    fig = viz.mask_diff_figure(m2, mb2, labels=(config.label(), other.label()))\n"
                 "else:\n    fig = None\nfig"),
        ]
    cells += [
        md("## Headline values (the caption, and the Compare tab's figures)"),
        code("from sparsekit.recipes.masks import masks_headline\n\n"
             f"headline = masks_headline(result, layer{', result_b' if other is not None else ''})\nheadline"),
    ]
    shown = (f"It showed the masks of layer `{layer}` of `{spec}` under **{config.label()}**"
             + (f", compared with **{other.label()}**." if other is not None else "."))
    return Recipe("Masks", shown, spec, tuple(cells))


__all__ = ["masks_headline", "masks_recipe"]

"""The Attribution page's recipe: Integrated Gradients of the dense and a sparse model, side by side
(digits classifiers pixel by pixel, sentence encoders token by token).

``image_headline`` and ``text_headline`` compute what the page shows; the page and the notebook both
call them.
"""
from __future__ import annotations

from typing import Any

from ..attribution import ImageAttribution, PairAttribution
from ..config import SparsifyConfig
from .base import Recipe, code, config_literal, literal, md
from .pages import load_cell

IMAGE_COUNT = 20
"""Held-out digits the page attributes."""


def image_headline(maps: ImageAttribution, index: int) -> dict[str, Any]:
    """What the page shows for digits: the selected image's correlation and the set's agreement.

    Args:
        maps: ``attribution.image_attribution`` of the page's images.
        index: the selected image.

    Returns:
        ``image``, ``label``, ``explained_class``, ``sparse_prediction``, ``correlation`` (this image),
        ``mean_correlation``, ``mean_top_overlap``, ``same_prediction`` and ``max_abs_delta``.
    """
    summary = maps.summary()
    return {
        "image": index, "label": maps.labels[index], "explained_class": maps.targets[index],
        "sparse_prediction": maps.sparse_predictions[index], "correlation": float(maps.correlation[index]),
        "mean_correlation": float(summary["mean_correlation"]), "mean_top_overlap": float(summary["mean_top_overlap"]),
        "same_prediction": float(summary["same_prediction"]), "max_abs_delta": float(summary["max_abs_delta"]),
    }


def text_headline(pair: PairAttribution, summary: dict[str, float] | None = None) -> dict[str, Any]:
    """What the page shows for a sentence encoder: the pair's similarities and attribution correlation,
    and the agreement over the built-in pairs when it was summarised.

    Args:
        pair: ``attribution.pair_attribution`` of the page's two sentences.
        summary: the summary of ``attribution.text_agreement``, when the page showed it.

    Returns:
        ``dense_similarity``, ``sparse_similarity``, ``similarity_change``, ``correlation`` (None when
        undefined), ``max_abs_delta``; with a summary also ``pairs``, ``mean_correlation``,
        ``top_token_agreement`` and ``mean_abs_similarity_change``.
    """
    correlation = float(pair.correlation)
    head: dict[str, Any] = {
        "dense_similarity": float(pair.dense_similarity), "sparse_similarity": float(pair.sparse_similarity),
        "similarity_change": float(pair.sparse_similarity - pair.dense_similarity),
        "correlation": None if correlation != correlation else correlation,
        "max_abs_delta": max(abs(float(d)) for d in pair.deltas),
    }
    if summary is not None:
        head.update(pairs=int(summary["pairs"]), mean_correlation=float(summary["mean_correlation"]),
                    top_token_agreement=float(summary["top_token_agreement"]),
                    mean_abs_similarity_change=float(summary["mean_abs_similarity_change"]))
    return head


def attribution_recipe(spec: str, config: SparsifyConfig, steps: int, *, image: int | None = None,
                       sentences: tuple[str, str] | None = None, pairs: int | None = None,
                       upload_sha256: str = "") -> Recipe:
    """The Attribution page: IG maps of the dense model and its sparse copy under ``config``.

    Args:
        spec: the model spec.
        config: the page's setting.
        steps: integration steps.
        image: the selected image (digits classifiers).
        sentences: sentences A and B (sentence encoders).
        pairs: how many built-in pairs the page summarised (sentence encoders; None when it did not).
        upload_sha256: set when the model's weights were uploaded in the browser.
    """
    config.validate()
    if (image is None) == (sentences is None):
        raise ValueError("give either the selected image or the two sentences")
    cells = [
        md("## The model and the setting\nThe sparse copy is pruned as on the Sparsify page; the dense module is "
           "never changed."),
        code(load_cell(spec, upload_sha256)),
        code(f"from sparsekit import SparsifyConfig\nfrom sparsekit import attribution as attr\n\n"
             f"config = {config_literal(config)}\nresult = sparsekit.sparsify(model, config)\n"
             f"steps = {int(steps)}\nresult"),
    ]
    if image is not None:
        cells += [
            md(f"## Integrated Gradients on {IMAGE_COUNT} held-out digits\nBoth models explain the dense model's "
               "predicted class, from a black image."),
            code(f"count = {IMAGE_COUNT}\nimages, labels = attr.digits_examples(count)\n"
                 "maps = attr.image_attribution(model.module, result.model, images, labels, n_steps=steps)\n"
                 "maps.summary()"),
            code(f"idx = {int(image)}\n"
                 "viz.attribution_maps_figure(maps.images[idx], maps.dense[idx], maps.sparse[idx],\n"
                 "                            title=f'Integrated Gradients for class {maps.targets[idx]}',\n"
                 "                            correlation=maps.correlation[idx])"),
            code("viz.agreement_figure([f'#{i} ({maps.labels[i]})' for i in range(count)], maps.correlation)"),
            code("import pandas as pd\n\npd.DataFrame(maps.rows())"),
            md("## Headline values (the figures under the maps)"),
            code("from sparsekit.recipes.attribution import image_headline\n\n"
                 "headline = image_headline(maps, idx)\nheadline"),
        ]
        what = f"image #{image}"
    else:
        assert sentences is not None
        a, b = sentences
        cells += [
            md("## Token attributions of the pair's similarity\nEach model explains its own cosine similarity: A "
               "with B's embedding fixed, then B with A's."),
            code(f"a = {literal(a)}\nb = {literal(b)}\n"
                 "pair = attr.pair_attribution(model.module, result.model, model.tokenizer, a, b, n_steps=steps)\n"
                 "pair.dense_similarity, pair.sparse_similarity, pair.correlation"),
            code("viz.token_attribution_figure(pair.tokens_a, pair.dense_a, pair.sparse_a, title='Sentence A')"),
            code("viz.token_attribution_figure(pair.tokens_b, pair.dense_b, pair.sparse_b, title='Sentence B')"),
        ]
        if pairs is not None:
            cells += [
                md(f"## Agreement over {pairs} built-in pairs"),
                code(f"results, summary = attr.text_agreement(model.module, result.model, model.tokenizer,\n"
                     f"                                      attr.DEFAULT_PAIRS[:{int(pairs)}], n_steps=steps)\n"
                     "import pandas as pd\n\npd.DataFrame([p.row() for p in results])"),
            ]
        cells += [
            md("## Headline values (the figures on the page)"),
            code("from sparsekit.recipes.attribution import text_headline\n\n"
                 f"headline = text_headline(pair{', summary' if pairs is not None else ''})\nheadline"),
        ]
        what = "a sentence pair" + (f" and {pairs} built-in pairs" if pairs is not None else "")
    shown = (f"It compared Integrated Gradients of `{spec}` dense and under **{config.label()}** ({steps} steps) "
             f"on {what}.")
    return Recipe("Attribution", shown, spec, tuple(cells))


__all__ = ["IMAGE_COUNT", "attribution_recipe", "image_headline", "text_headline"]

"""Recipe of the Attention page: one input's attention under a pattern, the pattern inside the model,
and (when it was run) the per-head search.

``attention_input`` gives the input the page captured (a held-out digit, the built-in passage, a
built-in sentence, or a text cut to the model's token limit as ``fit_text`` cuts it);
``attention_headline`` computes the numbers the page shows from the library's results; both the
page and the notebook call them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..attention.apply import AttentionQuality
from ..attention.capture import MAX_TOKENS, CaptureInput, passage_ids
from ..attention.metrics import HeadMetrics
from ..attention.search import SearchConfig, SearchResult
from ..attention.specs import PatternSpec
from ..models.base import LoadedModel
from .base import Recipe, code, config_literal, literal, md
from .pages import load_cell

SOURCES = ("image", "passage", "sentence", "text")
"""Where the captured input comes from: a held-out digit image (the ViT), the built-in passage of
``PASSAGE_TOKENS`` tokens, one of the built-in sentences, or a text of the user's."""
PASSAGE_TOKENS = 128


def token_limit(model: LoadedModel) -> int:
    """The most tokens captured from a text: ``MAX_TOKENS``, or fewer where the model has fewer
    positions (the limit ``capture_attention`` applies)."""
    positions = getattr(getattr(model.module, "config", None), "max_position_embeddings", None)
    return min(MAX_TOKENS, positions) if isinstance(positions, int) and positions > 0 else MAX_TOKENS


def fit_text(tokenizer: Any, text: str, limit: int) -> tuple[list[int], int]:
    """Token ids of ``text`` cut to at most ``limit`` tokens, the special tokens that close the
    sequence (``[SEP]``, an end-of-text token) kept at its end.

    Args:
        tokenizer: a Hugging Face tokenizer.
        text: the text.
        limit: the most tokens wanted.

    Returns:
        ``(ids, n_tokens)``: the ids, and how many tokens the whole text has (special tokens included).
    """
    ids = list(tokenizer(text, truncation=False)["input_ids"])
    if len(ids) <= limit:
        return ids, len(ids)
    special = set(tokenizer.all_special_ids)
    tail = 0
    while tail < min(len(ids), limit - 1) and ids[len(ids) - 1 - tail] in special:
        tail += 1
    return ids[: limit - tail] + ids[len(ids) - tail:], len(ids)


def fit_text_input(model: LoadedModel, text: str) -> tuple[str | list[int], int]:
    """What to capture for a text: the text itself when it fits ``token_limit``, else its first
    token ids (``fit_text``).

    Returns:
        ``(inputs, n_tokens)``: ``capture_attention``'s input, and how many tokens the whole text has
        (0 for an empty text, which ``capture_attention`` refuses in its own words).
    """
    if not text.strip():
        return text, 0
    ids, n_tokens = fit_text(model.tokenizer, text, token_limit(model))
    return (text if n_tokens <= token_limit(model) else ids), n_tokens


@dataclass(frozen=True)
class AttentionInput:
    """The input the Attention page captured."""

    source: str
    """One of ``SOURCES``."""
    image: int = 0
    """``image``: the index of the held-out digit (``digits_split().x_test``)."""
    text: str = ""
    """``sentence`` / ``text``: the text."""

    def inputs(self, model: LoadedModel) -> CaptureInput:
        """``capture_attention``'s input for ``model``."""
        if self.source == "image":
            from ..models.digits import digits_split

            return digits_split().x_test[self.image: self.image + 1]
        if self.source == "passage":
            return passage_ids(model, PASSAGE_TOKENS)
        if self.source == "sentence":
            return self.text
        if self.source == "text":
            return fit_text_input(model, self.text)[0]
        raise ValueError(f"unknown input source {self.source!r}; choose one of {', '.join(SOURCES)}")

    def cell(self) -> str:
        """Notebook code that sets ``inputs`` as ``inputs`` does."""
        if self.source == "image":
            return (f"from sparsekit.models.digits import digits_split\n\n"
                    f"inputs = digits_split().x_test[{self.image}:{self.image + 1}]  # held-out digit {self.image}")
        if self.source == "passage":
            return f"from sparsekit.attention import passage_ids\n\ninputs = passage_ids(model, {PASSAGE_TOKENS})"
        if self.source == "sentence":
            return f"inputs = {literal(self.text)}"
        if self.source == "text":
            return ("from sparsekit.recipes.attention import fit_text_input\n\n"
                    f"text = {literal(self.text)}\n"
                    "inputs, n_tokens = fit_text_input(model, text)  # cut to the model's token limit as on the page\n"
                    "n_tokens")
        raise ValueError(f"unknown input source {self.source!r}; choose one of {', '.join(SOURCES)}")

    def describe(self) -> str:
        """A few words on the input, for the notebook's introduction."""
        return {"image": f"held-out digit image {self.image}", "passage": f"the built-in passage "
                f"({PASSAGE_TOKENS} tokens)", "sentence": "a built-in sentence",
                "text": "a text of the user's"}.get(self.source, self.source)


def pattern_literal(spec: PatternSpec) -> str:
    """Constructor text of a pattern: ``PatternSpec.of('a_shape', sink=4, local=8)``, combinations
    with ``&`` / ``|``."""
    if spec.parts:
        sym = " & " if spec.name == "and" else " | "
        return sym.join(f"({pattern_literal(p)})" if p.parts else pattern_literal(p) for p in spec.parts)
    args = "".join(f", {k}={literal(v)}" for k, v in spec.params)
    return f"PatternSpec.of({literal(spec.name)}{args})"


def _quality(q: AttentionQuality, metric_names: Mapping[str, str]) -> dict[str, Any]:
    key = next(iter(q.sparse))
    return {"metric": metric_names.get(key, key), "dense": float(q.dense[key]), "sparse": float(q.sparse[key]),
            "change": float(q.sparse[key] - q.dense[key]), "mean_density": q.mean_density}


def attention_headline(metrics: HeadMetrics, layer: int, head: int, *, metric_names: Mapping[str, str] | None = None,
                       quality: AttentionQuality | None = None, search: SearchResult | None = None,
                       plan_quality: AttentionQuality | None = None,
                       uniform_quality: AttentionQuality | None = None) -> dict[str, Any]:
    """What the Attention page shows: the chosen head's density, recall and output error and the means
    over heads; the headline quality metric with the pattern inside the model (dense, sparse, change,
    mean density on the evaluation inputs); and, after a search, the plan's density and recall, its
    quality and the uniform pattern's.

    Args:
        metrics: ``measure(capture, pattern)``.
        layer: the layer shown.
        head: the head shown.
        metric_names: the model's ``metric_names``.
        quality: ``attention_quality(model, pattern, layers=..., heads=...)`` (None: not shown).
        search: ``search_heads(...)`` (None: not run).
        plan_quality: ``attention_quality(model, search.plan)``.
        uniform_quality: ``attention_quality(model, search.uniform_spec)``.
    """
    names = dict(metric_names or {})
    mean = metrics.mean()
    out: dict[str, Any] = {
        "layer": int(layer), "head": int(head),
        "density_head": float(metrics.density[layer, head].item()),
        "recall_head": float(metrics.recall[layer, head].item()),
        "error_head": float(metrics.error[layer, head].item()),
        "recall_mean": float(mean["recall"]), "density_mean": float(mean["density"]),
    }
    if quality is not None:
        out["quality"] = _quality(quality, names)
    if search is not None and plan_quality is not None and uniform_quality is not None:
        summary = search.summary()
        key = next(iter(plan_quality.sparse))
        out["search"] = {
            "plan_density": float(summary["plan_density"]), "plan_recall": float(summary["plan_recall"]),
            "recall_vs_uniform": float(summary["plan_recall"]) - float(summary["uniform_recall"]),
            "uniform": str(summary["uniform"]), "metric": names.get(key, key),
            "plan_quality": float(plan_quality.sparse[key]),
            "quality_vs_uniform": float(plan_quality.sparse[key] - uniform_quality.sparse[key]),
        }
    return out


def attention_recipe(spec: str, source: AttentionInput, pattern: PatternSpec, layer: int, head: int, *,
                     scope: tuple[tuple[int, ...] | None, tuple[int, ...] | None] | None = (None, None),
                     search: tuple[SearchConfig, int] | None = None, upload_sha256: str = "") -> Recipe:
    """The Attention page: the captured input, the pattern's metrics for the chosen head and all heads,
    the pattern inside the model, and the per-head search when the page ran it.

    Args:
        spec: the model spec.
        source: the input captured.
        pattern: the pattern shown.
        layer: the layer shown.
        head: the head shown.
        scope: ``(layers, heads)`` the pattern was applied to in the model (None for all), or None when
            the page showed no quality (no layer or no head chosen).
        search: ``(config, calibration inputs)`` of the search the page ran, or None.
        upload_sha256: set when the model's weights were uploaded in the browser.
    """
    cells = [
        md("## The model"),
        code(load_cell(spec, upload_sha256)),
        md(f"## Input: {source.describe()}\n`capture_attention` records every layer's and head's attention."),
        code(source.cell()),
        code("from sparsekit.attention import capture_attention\n\ncapture = capture_attention(model, inputs)\n"
             "capture"),
        md(f"## The pattern: `{pattern.label}`\nLayer {layer}, head {head} is the head shown."),
        code("from sparsekit.attention import PatternSpec, measure, plan_masks\n\n"
             f"pattern = {pattern_literal(pattern)}\n"
             "pattern.validate(capture.seq_len, capture.seq_len)\n"
             f"layer, head = {int(layer)}, {int(head)}\n"
             "masks = plan_masks(capture, pattern)\nmetrics = measure(capture, pattern)\nmetrics.mean()"),
        code("viz.head_picker_figure(metrics.recall, (layer, head), title='attention mass kept (recall) per layer "
             "and head')"),
        code("viz.attention_heatmap(capture.probs[layer, head], capture.tokens, masks[layer, head],\n"
             "                      title=f'layer {layer} ({capture.layer_names[layer]}), head {head}: attention, "
             "grey = dropped by the pattern')"),
        code("viz.head_grid_figure(metrics.density, title='density per layer and head', colorbar='density')"),
        code("viz.head_grid_figure(metrics.error, title='relative output error per layer and head', colorbar='error',\n"
             "                      zmax=None, colorscale='Reds')"),
    ]
    quality_arg = "None"
    if scope is not None:
        layers, heads = scope
        where = "every layer and head" if layers is None else f"layers {list(layers)}, heads {list(heads or ())}"
        cells += [
            md(f"## Quality with the pattern inside the model ({where})\nThe metric runs on the model's own "
               "evaluation set; each input gets the pattern over its own tokens."),
            code("from sparsekit.attention import attention_quality\n\n"
                 "quality = attention_quality(model, pattern, "
                 f"layers={literal(None if layers is None else list(layers))}, "
                 f"heads={literal(None if heads is None else list(heads))})\n"
                 "quality.rows(model.metric_names)"),
        ]
        quality_arg = "quality"
    search_args = ""
    if search is not None:
        config, count = search
        cells += [
            md("## Search a pattern per head\nEvery candidate is measured on the calibration inputs; each head gets "
               "the one with the highest recall within the density budget, compared with the best single pattern. "
               "Each layer is kept on disk as it is measured: after an interrupt (Ctrl-C, a stopped kernel) the same "
               "cell measures only the layers not yet done."),
            code("from sparsekit.attention import SearchConfig, calibration_captures, search_heads\n"
                 "from sparsekit.attention.search import plan_comparison_rows\n\n"
                 f"search_config = {config_literal(config)}\n"
                 f"result = search_heads(calibration_captures(model, {int(count)}), search_config)  "
                 "# run again after an interrupt: it continues\n"
                 "plan_quality = attention_quality(model, result.plan)\n"
                 "uniform_quality = attention_quality(model, result.uniform_spec)\n"
                 "plan_comparison_rows(result, plan_quality, uniform_quality, model.metric_names)"),
            code("viz.plan_grid_figure(result, title='chosen pattern per head (cell text: recall on the calibration "
                 "inputs)')"),
            code("viz.search_tradeoff_figure(result)"),
        ]
        search_args = ",\n                              search=result, plan_quality=plan_quality, " \
                      "uniform_quality=uniform_quality"
    cells += [
        md("## Headline values (the numbers the page shows)"),
        code("from sparsekit.recipes.attention import attention_headline\n\n"
             "headline = attention_headline(metrics, layer, head, metric_names=model.metric_names,\n"
             f"                              quality={quality_arg}{search_args})\nheadline"),
    ]
    shown = (f"It captured the attention of `{spec}` on {source.describe()}, laid **{pattern.label}** over it "
             f"(layer {layer}, head {head} shown)" + (", ran the model with it" if scope is not None else "")
             + (" and searched a pattern per head." if search is not None else "."))
    return Recipe("Attention", shown, spec, tuple(cells))


__all__ = ["PASSAGE_TOKENS", "SOURCES", "AttentionInput", "attention_headline", "attention_recipe", "fit_text",
           "fit_text_input", "pattern_literal", "token_limit"]

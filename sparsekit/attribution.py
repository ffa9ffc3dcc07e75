"""Attribution drift: does the sparse model still look at the same evidence?

Integrated Gradients (Sundararajan et al., 2017, through Captum) explains one output as a sum
over input features: ``sum_i attr_i = F(x) - F(baseline)`` (completeness). Running it on the
dense model and on a sparse copy, for the same input and the same output, shows whether pruning
moved the evidence the model relies on, even where accuracy did not change.

- Digits classifiers: pixel maps of the logit of the dense model's predicted class, from a black
  image (the digits' background), dense vs sparse, with their Pearson correlation.
- Sentence encoders (MiniLM): ``LayerIntegratedGradients`` over the token embeddings for the
  cosine similarity of a sentence pair, summed over the embedding dimensions to one number per
  token. Sentence A is explained with B's embedding fixed (and the other way round); the baseline
  keeps ``[CLS]``/``[SEP]`` and replaces every other token by ``[PAD]``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, Sequence, cast

import torch
from torch import nn

from .models.digits import digits_split
from .models.sentences import SENTENCES
from .models.text import sentence_embeddings

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

DEFAULT_IG_STEPS = 64
"""Integration steps (Gauss-Legendre) for image maps: completeness holds to ~1e-4 on the digits models."""
DEFAULT_LIG_STEPS = 32
"""Integration steps for token attributions (each step is one encoder forward)."""
TOP_PIXELS = 10
"""Pixels compared by the top-k overlap of two image maps."""
MAX_IG_STEPS = 256
MAX_SENTENCE_CHARS = 400


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two equally sized tensors (flattened); NaN when either is constant."""
    x, y = a.detach().double().reshape(-1), b.detach().double().reshape(-1)
    if x.numel() != y.numel():
        raise ValueError(f"cannot correlate {x.numel()} values with {y.numel()}")
    x, y = x - x.mean(), y - y.mean()
    denom = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum()) / denom if denom > 0 else float("nan")


def top_overlap(a: torch.Tensor, b: torch.Tensor, k: int) -> float:
    """Share of the ``k`` largest-``|value|`` positions of ``a`` that are also among ``b``'s."""
    x, y = a.detach().reshape(-1).abs(), b.detach().reshape(-1).abs()
    k = max(1, min(k, x.numel()))
    ia = set(torch.topk(x, k).indices.tolist())
    ib = set(torch.topk(y, k).indices.tolist())
    return len(ia & ib) / k


def _check_steps(n_steps: int) -> int:
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or not 2 <= n_steps <= MAX_IG_STEPS:
        raise ValueError(f"n_steps must be an integer between 2 and {MAX_IG_STEPS}, got {n_steps!r}")
    return n_steps


# ---------------------------------------------------------------------------------------------
# Images


def integrated_gradients(
    module: nn.Module,
    inputs: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor,
    *,
    baseline: torch.Tensor | float = 0.0,
    n_steps: int = DEFAULT_IG_STEPS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Captum Integrated Gradients of ``module(inputs)[:, target]``.

    Args:
        module: a classifier (not modified; no ``.grad`` is stored).
        inputs: a batch ``[b, ...]``.
        target: the output index explained, one for all or one per sample.
        baseline: the reference input (default: zeros).
        n_steps: integration steps.

    Returns:
        ``(attributions shaped like inputs, convergence delta per sample)``; the delta is
        ``sum(attributions) - (F(x) - F(baseline))``.
    """
    from captum.attr import IntegratedGradients

    n_steps = _check_steps(n_steps)
    with torch.inference_mode(False), torch.enable_grad():
        ig = IntegratedGradients(module)
        attr, delta = ig.attribute(inputs.detach().clone(), baselines=baseline, target=target, n_steps=n_steps,
                                   return_convergence_delta=True)
    return attr.detach(), delta.detach()


@dataclass
class ImageAttribution:
    """IG maps of a dense and a sparse classifier for the same images and classes."""

    images: torch.Tensor
    """``[k, 1, 8, 8]`` model inputs."""
    labels: list[int]
    """True labels (or -1 when unknown)."""
    targets: list[int]
    """Class explained for each image: the dense model's prediction."""
    sparse_predictions: list[int]
    dense: torch.Tensor
    """``[k, 8, 8]`` dense-model attributions."""
    sparse: torch.Tensor
    """``[k, 8, 8]`` sparse-model attributions."""
    correlation: list[float]
    """Pearson r between the two maps of each image."""
    overlap: list[float]
    """Share of the ``TOP_PIXELS`` most-attributed pixels shared by both maps."""
    dense_delta: torch.Tensor
    sparse_delta: torch.Tensor

    def summary(self) -> dict[str, float]:
        """Agreement over the set: mean/median/min correlation, mean top-pixel overlap, prediction agreement."""
        r = torch.tensor([c for c in self.correlation if not math.isnan(c)], dtype=torch.float64)
        return {
            "images": len(self.correlation),
            "mean_correlation": float(r.mean()) if r.numel() else float("nan"),
            "median_correlation": float(r.median()) if r.numel() else float("nan"),
            "min_correlation": float(r.min()) if r.numel() else float("nan"),
            "mean_top_overlap": sum(self.overlap) / max(len(self.overlap), 1),
            "same_prediction": (sum(a == b for a, b in zip(self.targets, self.sparse_predictions))
                                / max(len(self.targets), 1)),
            "max_abs_delta": float(torch.cat([self.dense_delta, self.sparse_delta]).abs().max()),
        }

    def rows(self) -> list[dict[str, int | float]]:
        """One dict per image, for tables."""
        return [
            {"image": i, "label": self.labels[i], "explained_class": self.targets[i],
             "sparse_prediction": self.sparse_predictions[i], "correlation": self.correlation[i],
             "top_overlap": self.overlap[i]}
            for i in range(len(self.targets))
        ]


def image_attribution(
    dense: nn.Module,
    sparse: nn.Module,
    images: torch.Tensor,
    labels: Sequence[int] | None = None,
    *,
    n_steps: int = DEFAULT_IG_STEPS,
) -> ImageAttribution:
    """IG maps of ``dense`` and ``sparse`` for the dense model's predicted class of each image.

    Args:
        dense: the dense classifier (e.g. ``LoadedModel.module``; not modified).
        sparse: the sparse copy (e.g. ``SparsifyResult.model``).
        images: ``[k, 1, H, W]`` model inputs.
        labels: true labels, for display only.
        n_steps: integration steps.

    Returns:
        An ``ImageAttribution`` with both maps, their correlations and the convergence deltas.
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[0] == 0:
        got = getattr(images, "shape", type(images).__name__)
        raise ValueError(f"images must be a non-empty [k, 1, H, W] tensor, got {got}")
    with torch.no_grad():
        targets = dense(images).argmax(-1)
        sparse_pred = sparse(images).argmax(-1)
    a_dense, d_dense = integrated_gradients(dense, images, targets, n_steps=n_steps)
    a_sparse, d_sparse = integrated_gradients(sparse, images, targets, n_steps=n_steps)
    maps_d, maps_s = a_dense.sum(1), a_sparse.sum(1)  # one channel
    return ImageAttribution(
        images=images.detach(),
        labels=[int(x) for x in labels] if labels is not None else [-1] * images.shape[0],
        targets=targets.tolist(),
        sparse_predictions=sparse_pred.tolist(),
        dense=maps_d,
        sparse=maps_s,
        correlation=[pearson(a, b) for a, b in zip(maps_d, maps_s)],
        overlap=[top_overlap(a, b, TOP_PIXELS) for a, b in zip(maps_d, maps_s)],
        dense_delta=d_dense,
        sparse_delta=d_sparse,
    )


def digits_examples(count: int = 16) -> tuple[torch.Tensor, list[int]]:
    """Held-out digits images, cycling through the classes (0, 1, ..., 9, 0, ...).

    Args:
        count: how many, 1..200.

    Returns:
        ``(images [count, 1, 8, 8], labels)``.
    """
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 200:
        raise ValueError(f"count must be an integer between 1 and 200, got {count!r}")
    data = digits_split()
    by_class = [torch.nonzero(data.y_test == c).flatten().tolist() for c in range(10)]
    picked: list[int] = []
    rank = 0
    while len(picked) < count:
        for c in range(10):
            if rank < len(by_class[c]) and len(picked) < count:
                picked.append(by_class[c][rank])
        rank += 1
    idx = torch.tensor(picked)
    return data.x_test[idx].clone(), data.y_test[idx].tolist()


# ---------------------------------------------------------------------------------------------
# Sentence pairs (encoders)


def _default_pairs() -> tuple[tuple[str, str], ...]:
    # Each topic holds 12 sentences, the first four short; pair the first two of 8 topics.
    return tuple((SENTENCES[12 * t], SENTENCES[12 * t + 1]) for t in range(8))


DEFAULT_PAIRS: tuple[tuple[str, str], ...] = _default_pairs()
"""Two related built-in sentences from each of 8 topics."""


def _similarity(input_ids: torch.Tensor, attention_mask: torch.Tensor, other: torch.Tensor,
                module: nn.Module) -> torch.Tensor:
    return (sentence_embeddings(module, input_ids, attention_mask) * other).sum(-1)


def _embed(module: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return sentence_embeddings(module, ids, torch.ones_like(ids))


class _TokenEmbedder(Protocol):
    """A Hugging Face model's token embedding accessor (``nn.Module``'s stubs type every unknown
    attribute as ``Tensor | Module``)."""

    def get_input_embeddings(self) -> nn.Module: ...


def _baseline_ids(ids: torch.Tensor, tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    specials = set(getattr(tokenizer, "all_special_ids", []) or [])
    pad = getattr(tokenizer, "pad_token_id", None)
    pad = 0 if pad is None else int(pad)
    keep = torch.tensor([[int(t) in specials for t in row] for row in ids.tolist()], dtype=torch.bool)
    return torch.where(keep, ids, torch.full_like(ids, pad))


def token_attributions(
    module: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    sentence: str,
    other_embedding: torch.Tensor,
    *,
    n_steps: int = DEFAULT_LIG_STEPS,
) -> tuple[list[str], torch.Tensor, float, float]:
    """Layer Integrated Gradients over the token embeddings of ``cos(embed(sentence), other)``.

    Args:
        module: a Hugging Face encoder with ``get_input_embeddings()`` (not modified).
        tokenizer: its tokenizer.
        sentence: the sentence explained.
        other_embedding: ``[d]`` or ``[1, d]`` unit embedding of the other sentence (held fixed).
        n_steps: integration steps.

    Returns:
        ``(tokens, per-token attribution [L], similarity F(x), convergence delta)``; per-token values
        sum to ``F(x) - F(baseline)`` up to the delta.
    """
    from captum.attr import LayerIntegratedGradients

    n_steps = _check_steps(n_steps)
    if not isinstance(sentence, str) or not sentence.strip():
        raise ValueError("the sentence is empty")
    if len(sentence) > MAX_SENTENCE_CHARS:
        raise ValueError(f"the sentence has {len(sentence)} characters; at most {MAX_SENTENCE_CHARS}")
    if not hasattr(module, "get_input_embeddings"):
        raise ValueError(f"{type(module).__name__} has no token embedding layer (get_input_embeddings)")
    ids = torch.tensor([tokenizer(sentence, truncation=True, max_length=128)["input_ids"]])
    mask = torch.ones_like(ids)
    other = other_embedding.detach().reshape(1, -1)
    base = _baseline_ids(ids, tokenizer)
    with torch.inference_mode(False), torch.enable_grad():
        lig = LayerIntegratedGradients(_similarity, cast(_TokenEmbedder, module).get_input_embeddings())
        attr, delta = lig.attribute(ids, baselines=base, additional_forward_args=(mask, other, module),
                                    n_steps=n_steps, return_convergence_delta=True)
    with torch.no_grad():
        value = float(_similarity(ids, mask, other, module))
    # A list of ids gives a list of tokens (a single id would give one string).
    tokens = cast("list[str]", tokenizer.convert_ids_to_tokens(ids[0].tolist()))
    return tokens, attr.detach().sum(-1)[0], value, float(delta.reshape(-1)[0])


@dataclass
class PairAttribution:
    """Per-token attributions of a sentence pair's similarity, dense vs sparse."""

    sentence_a: str
    sentence_b: str
    tokens_a: list[str]
    tokens_b: list[str]
    dense_a: torch.Tensor
    sparse_a: torch.Tensor
    dense_b: torch.Tensor
    sparse_b: torch.Tensor
    dense_similarity: float
    sparse_similarity: float
    deltas: list[float] = field(default_factory=list)
    """Convergence deltas: dense A, dense B, sparse A, sparse B."""

    @property
    def correlation(self) -> float:
        """Pearson r of dense vs sparse token attributions over both sentences' tokens."""
        return pearson(torch.cat([self.dense_a, self.dense_b]), torch.cat([self.sparse_a, self.sparse_b]))

    @property
    def top_token_agreement(self) -> float:
        """1 when both sentences' most-attributed token is the same under dense and sparse, 0.5 for one."""
        same = [int(torch.argmax(d.abs())) == int(torch.argmax(s.abs()))
                for d, s in ((self.dense_a, self.sparse_a), (self.dense_b, self.sparse_b))]
        return sum(same) / 2

    def row(self) -> dict[str, str | float]:
        """A flat dict for tables."""
        return {"sentence_a": self.sentence_a, "sentence_b": self.sentence_b,
                "dense_similarity": self.dense_similarity, "sparse_similarity": self.sparse_similarity,
                "correlation": self.correlation, "top_token_agreement": self.top_token_agreement}


def pair_attribution(
    dense: nn.Module,
    sparse: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    sentence_a: str,
    sentence_b: str,
    *,
    n_steps: int = DEFAULT_LIG_STEPS,
) -> PairAttribution:
    """Token attributions of the pair's cosine similarity under the dense and the sparse encoder.

    Each model explains its own similarity: sentence A with B's embedding (by the same model) fixed,
    then B with A's fixed.

    Args:
        dense: the dense encoder (not modified).
        sparse: the sparse copy.
        tokenizer: the shared tokenizer.
        sentence_a: first sentence.
        sentence_b: second sentence.
        n_steps: integration steps.

    Returns:
        A ``PairAttribution``.
    """
    out: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
    tokens: tuple[list[str], list[str]] = ([], [])
    deltas: list[float] = []
    for tag, module in (("dense", dense), ("sparse", sparse)):
        ids_a = torch.tensor([tokenizer(sentence_a, truncation=True, max_length=128)["input_ids"]])
        ids_b = torch.tensor([tokenizer(sentence_b, truncation=True, max_length=128)["input_ids"]])
        emb_a, emb_b = _embed(module, ids_a), _embed(module, ids_b)
        tok_a, attr_a, sim, da = token_attributions(module, tokenizer, sentence_a, emb_b, n_steps=n_steps)
        tok_b, attr_b, _, db = token_attributions(module, tokenizer, sentence_b, emb_a, n_steps=n_steps)
        out[tag] = (attr_a, attr_b, sim)
        tokens = (tok_a, tok_b)
        deltas += [da, db]
    return PairAttribution(
        sentence_a=sentence_a, sentence_b=sentence_b,
        tokens_a=tokens[0], tokens_b=tokens[1],
        dense_a=out["dense"][0], dense_b=out["dense"][1], sparse_a=out["sparse"][0], sparse_b=out["sparse"][1],
        dense_similarity=out["dense"][2], sparse_similarity=out["sparse"][2], deltas=deltas,
    )


def text_agreement(
    dense: nn.Module,
    sparse: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[str, str]] = DEFAULT_PAIRS,
    *,
    n_steps: int = DEFAULT_LIG_STEPS,
) -> tuple[list[PairAttribution], dict[str, float]]:
    """Dense-vs-sparse token attribution agreement over a set of sentence pairs.

    Args:
        dense: the dense encoder.
        sparse: the sparse copy.
        tokenizer: the tokenizer.
        pairs: sentence pairs (default: two related built-in sentences from each of 8 topics).
        n_steps: integration steps.

    Returns:
        ``(per-pair results, summary)``; the summary has ``pairs``, ``mean_correlation``,
        ``min_correlation``, ``top_token_agreement`` and ``mean_abs_similarity_change``.
    """
    if not pairs:
        raise ValueError("give at least one sentence pair")
    results = [pair_attribution(dense, sparse, tokenizer, a, b, n_steps=n_steps) for a, b in pairs]
    r = [p.correlation for p in results if not math.isnan(p.correlation)]
    summary = {
        "pairs": len(results),
        "mean_correlation": sum(r) / len(r) if r else float("nan"),
        "min_correlation": min(r) if r else float("nan"),
        "top_token_agreement": sum(p.top_token_agreement for p in results) / len(results),
        "mean_abs_similarity_change": (sum(abs(p.sparse_similarity - p.dense_similarity) for p in results)
                                       / len(results)),
        "max_abs_delta": max(abs(d) for p in results for d in p.deltas),
    }
    return results, summary

"""How much of the attention a pattern keeps, per layer and head.

For one head with dense attention ``A = softmax(S)`` (``S`` the scores, ``-inf`` where the model
itself forbids a pair), values ``V`` and a boolean pattern ``M`` (True = kept):

- density = ``|M ∧ D| / |D|``, with ``D`` the pairs the dense model attends over (all pairs for an
  encoder, the causal triangle for a decoder);
- attention recall = ``mean_i sum_{j: M_ij} A_ij``, the share of the dense softmax mass inside the
  pattern, averaged over queries;
- relative output error = ``‖O_M − O‖_F / ‖O‖_F`` with ``O = A V`` and ``O_M`` the output when the
  softmax is renormalised over the kept keys (``softmax(S masked to M) V``; a query with no kept
  key outputs zeros, as in FlexAttention).

Everything is vectorised over leading dimensions, so all layers and heads of a capture are
measured in a few tensor operations.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from ..display import Card, Shown, percent
from .capture import AttentionCapture
from .masks import PatternContext, materialize_heads
from .specs import AttentionPlan, PatternSpec, layer_mask, static_mask


def density(mask: Tensor, allowed: Tensor | None = None) -> Tensor:
    """Share of the allowed pairs a pattern keeps.

    Args:
        mask: bool ``[..., q, kv]`` (True = kept).
        allowed: bool ``[q, kv]`` (or broadcastable): the pairs the dense model attends over
            (default: all).

    Returns:
        float64 ``[...]`` in 0..1.
    """
    # float64 so that a budget comparison (density <= budget) is decided on the exact ratio.
    if allowed is None:
        return mask.sum((-2, -1)).double() / max(mask.shape[-2] * mask.shape[-1], 1)
    allowed = allowed.to(torch.bool)
    total = allowed.expand(mask.shape[-2:]).sum().clamp(min=1)
    return (mask & allowed).sum((-2, -1)).double() / total


def recall(probs: Tensor, mask: Tensor) -> Tensor:
    """Attention recall: dense softmax mass inside the pattern, averaged over queries.

    Args:
        probs: dense attention ``[..., q, kv]`` (rows sum to 1).
        mask: bool, broadcastable to ``probs``.

    Returns:
        float ``[...]`` in 0..1 (1 for a pattern that keeps every key with non-zero weight).
    """
    return (probs * mask).sum(-1).mean(-1)


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the kept keys only; a row with no kept (finite) score is all zeros.

    Args:
        scores: ``[..., q, kv]`` logits, ``-inf`` where the model forbids a pair.
        mask: bool, broadcastable to ``scores``.

    Returns:
        Probabilities of the same shape.
    """
    s = scores.float().masked_fill(~mask, -math.inf)
    top = s.amax(-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    e = (s - top).exp()
    z = e.sum(-1, keepdim=True)
    return e / torch.where(z > 0, z, torch.ones_like(z))


def masked_output(scores: Tensor, value: Tensor, mask: Tensor) -> Tensor:
    """Attention output with the softmax renormalised over the kept keys.

    Args:
        scores: ``[..., q, kv]`` logits.
        value: ``[..., kv, d]``.
        mask: bool, broadcastable to ``scores``.

    Returns:
        ``[..., q, d]``.
    """
    return masked_softmax(scores, mask) @ value.float()


def output_error(scores: Tensor, value: Tensor, mask: Tensor, probs: Tensor | None = None) -> Tensor:
    """Relative output error ``‖O_M − O‖_F / ‖O‖_F`` per head.

    Args:
        scores: ``[..., q, kv]`` logits.
        value: ``[..., kv, d]``.
        mask: bool pattern.
        probs: the dense attention (default ``softmax(scores)``); pass the model's own to compare
            against exactly what it computed.

    Returns:
        float ``[...]`` (0 for a pattern that changes nothing).
    """
    dense_p = probs.float() if probs is not None else masked_softmax(scores, torch.ones_like(scores, dtype=torch.bool))
    dense = dense_p @ value.float()
    diff = masked_output(scores, value, mask) - dense
    num = diff.pow(2).sum((-2, -1)).sqrt()
    den = dense.pow(2).sum((-2, -1)).sqrt()
    return num / den.clamp(min=torch.finfo(den.dtype).tiny)


def _as_plan(pattern: PatternSpec | AttentionPlan, capture: AttentionCapture) -> AttentionPlan:
    if isinstance(pattern, AttentionPlan):
        if (pattern.n_layers, pattern.n_heads) != (capture.n_layers, capture.n_heads):
            raise ValueError(
                f"the plan covers {pattern.n_layers} layers x {pattern.n_heads} heads; the model has "
                f"{capture.n_layers} x {capture.n_heads}"
            )
        return pattern
    return AttentionPlan.uniform(pattern, capture.n_layers, capture.n_heads)


def plan_masks(capture: AttentionCapture, pattern: PatternSpec | AttentionPlan, *, strict: bool = True) -> Tensor:
    """The pattern of every layer and head of a capture.

    Args:
        capture: the captured attention.
        pattern: one spec for every head, or a plan.
        strict: reject parameters that do not fit the sequence (e.g. a window larger than it).

    Returns:
        Bool ``[layers, heads, n, n]``.
    """
    if isinstance(pattern, PatternSpec):
        return spec_masks(capture, pattern, strict=strict)
    plan = _as_plan(pattern, capture)
    return torch.stack([layer_mask(plan, layer, capture.context(layer), n_heads=capture.n_heads, strict=strict)
                        for layer in range(capture.n_layers)])


def spec_masks(capture: AttentionCapture, spec: PatternSpec, *, strict: bool = True) -> Tensor:
    """One spec at every layer and head, built in one call: a static spec is materialised once;
    a data-dependent one is estimated for all ``layers x heads`` at once (they are independent).

    Args:
        capture: the captured attention.
        spec: the pattern.
        strict: reject parameters that do not fit the sequence.

    Returns:
        Bool ``[layers, heads, n, n]``.
    """
    n, n_layers, n_heads = capture.seq_len, capture.n_layers, capture.n_heads
    if strict:
        spec.validate(n, n)
    if not spec.needs:
        return static_mask(spec, n, n, capture.causal).expand(n_layers, n_heads, n, n)
    ctx = PatternContext(n, n, capture.causal, probs=capture.probs.flatten(0, 1),
                         query=capture.query.flatten(0, 1), key=capture.key.flatten(0, 1))
    return materialize_heads(spec.build(ctx), n_layers * n_heads, n, n).view(n_layers, n_heads, n, n)


@dataclass(repr=False)
class HeadMetrics(Shown):
    """Density, recall and output error of a pattern at every layer and head."""

    label: str
    """What was measured (the spec label, or ``per-head plan``)."""
    density: Tensor
    """float ``[layers, heads]``."""
    recall: Tensor
    """float ``[layers, heads]``."""
    error: Tensor
    """float ``[layers, heads]``: relative output error."""
    n_inputs: int = 1
    """Inputs averaged over."""

    FIGURE = "head_metrics_figure"

    def summary_card(self) -> Card:
        """Means over heads, and per layer the mean density, recall and output error."""
        m = self.mean()
        head = {"pattern": self.label, "mean density": percent(m["density"]), "mean recall": percent(m["recall"]),
                "mean output error": f"{m['error']:.4g}", "inputs": str(self.n_inputs)}
        rows = [{"layer": i, "density": percent(float(self.density[i].mean())),
                 "recall": percent(float(self.recall[i].mean())), "output error": float(self.error[i].mean())}
                for i in range(self.density.shape[0])]
        return Card("HeadMetrics", head, rows)

    def mean(self) -> dict[str, float]:
        """Means over all heads: ``{"density", "recall", "error"}``."""
        return {"density": self.density.mean().item(), "recall": self.recall.mean().item(),
                "error": self.error.mean().item()}

    def rows(self) -> list[dict[str, float | int | str]]:
        """One dict per head: layer, head, density, recall, error (for tables and CSV)."""
        n_layers, n_heads = self.density.shape
        return [
            {"layer": layer, "head": head, "pattern": self.label, "density": float(self.density[layer, head]),
             "recall": float(self.recall[layer, head]), "output_error": float(self.error[layer, head])}
            for layer in range(n_layers) for head in range(n_heads)
        ]

    def to_csv(self) -> str:
        """``rows()`` as CSV text."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["layer", "head", "pattern", "density", "recall", "output_error"])
        writer.writeheader()
        writer.writerows(self.rows())
        return buf.getvalue()


def measure(capture: AttentionCapture, pattern: PatternSpec | AttentionPlan, *, strict: bool = True) -> HeadMetrics:
    """Density, recall and output error of a pattern (or plan) at every layer and head.

    Args:
        capture: the captured attention of one input.
        pattern: one spec for every head, or a per-head plan.
        strict: reject parameters that do not fit the sequence.

    Returns:
        The metrics.

    Raises:
        ValueError: a parameter does not fit the sequence (strict), or the plan's shape differs.
    """
    mask = plan_masks(capture, pattern, strict=strict)
    label = pattern.label if isinstance(pattern, PatternSpec) else "per-head plan"
    return HeadMetrics(
        label=label,
        density=density(mask, capture.allowed),
        recall=recall(capture.probs, mask),
        error=output_error(capture.scores, capture.value, mask, capture.probs),
    )


def measure_many(captures: Sequence[AttentionCapture], pattern: PatternSpec | AttentionPlan) -> HeadMetrics:
    """``measure`` averaged over inputs (each input weighs the same; parameters larger than a
    short input simply cover it).

    Args:
        captures: captures of the same model.
        pattern: one spec for every head, or a per-head plan.

    Returns:
        Mean metrics per layer and head.
    """
    if not captures:
        raise ValueError("no captures to measure")
    parts = [measure(c, pattern, strict=False) for c in captures]
    return HeadMetrics(
        label=parts[0].label,
        density=torch.stack([p.density for p in parts]).mean(0),
        recall=torch.stack([p.recall for p in parts]).mean(0),
        error=torch.stack([p.error for p in parts]).mean(0),
        n_inputs=len(parts),
    )

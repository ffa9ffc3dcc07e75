"""Keep-masks on cache tensors ``[batch, heads, tokens, D]`` and the bytes a pruned cache takes.

**Count convention.** A vector of ``n`` entries at sparsity ``s`` keeps ``N = n - floor(s * n)``
entries, the largest |x|; entries of equal |x| are ranked by position (the earlier one is kept). So
exactly ``floor(s * n)`` are zeroed: 64 of 128 at ``s = 0.5``, whatever the values. The Mustafar
authors' code (dhjoo98/mustafar) takes ``k = max(1, int(s * n))``, the k-th smallest |x| as a
threshold (``torch.kthvalue``) and keeps ``|x| >= threshold``: that zeroes ``k - 1`` entries when no
two |x| tie (63 of 128 at ``s = 0.5``), and fewer when the threshold value repeats.
``mustafar_reference_mask`` reproduces their rule, for comparison. sparsekit uses exact counts so
that a stated sparsity is the sparsity stored and the bytes formulas hold for any input.

**Bytes** (fp16 values, 2 bytes an entry, unless ``value_bytes`` says otherwise):

- dense: ``entries * value_bytes``;
- Mustafar's bitmap layout: one bitmap per vector of ``D`` entries, padded to whole bytes
  (``vectors * ceil(D / 8)``), plus ``kept * value_bytes``;
- CSR, each ``(batch, head)`` a matrix with one row per token: ``kept * (value_bytes + 4)`` (values and
  int32 column indices) plus ``batch * heads * (tokens + 1) * 4`` (int32 row pointers).
"""
from __future__ import annotations

import math

import torch

__all__ = [
    "INDEX_BYTES", "VALUE_BYTES", "bitmap_bytes", "channel_mask", "csr_bytes", "dense_bytes", "kept_count",
    "mustafar_reference_mask", "score_mask", "token_mask",
]

VALUE_BYTES = 2
"""Bytes per stored value: fp16, the cache dtype the byte figures assume (the model may run in fp32)."""
INDEX_BYTES = 4
"""Bytes per CSR column index and row pointer (int32)."""


def kept_count(n: int, sparsity: float) -> int:
    """Entries kept out of ``n`` at ``sparsity``: ``n - floor(s * n)``.

    ``s * n`` is rounded to 9 decimals before the floor, so that 0.29 * 100 (28.999999999999996 in
    binary floating point) counts as 29.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    if n < 0:
        raise ValueError(f"a vector has n >= 0 entries, got {n}")
    return n - math.floor(round(sparsity * n, 9))


def _keep_largest(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Bool mask keeping the ``keep`` largest entries along the last dim; ties go to the earlier position."""
    n = scores.shape[-1]
    if keep >= n:
        return torch.ones_like(scores, dtype=torch.bool)
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if keep > 0:
        mask.scatter_(-1, order[..., :keep], True)
    return mask


def score_mask(score: torch.Tensor, sparsity: float, axis: str = "token") -> torch.Tensor:
    """Keep-mask from a score tensor ``[..., tokens, D]`` with the count convention above: per token vector
    (``axis="token"``, ``kept_count(D)`` of the highest scores) or per channel (``axis="channel"``,
    ``kept_count(tokens)``); equal scores ranked by position, the earlier entry kept.

    Args:
        score: non-negative scores (``|x|`` for magnitude, ``|x * w|`` for the output-aware scores).
        sparsity: fraction zeroed per vector, in [0, 1).
        axis: ``token`` or ``channel``.

    Returns:
        A bool tensor shaped like ``score``, True where an entry is kept.
    """
    if axis == "token":
        return _keep_largest(score, kept_count(score.shape[-1], sparsity))
    if axis != "channel":
        raise ValueError(f"axis must be 'token' or 'channel', got {axis!r}")
    if score.dim() < 2:
        raise ValueError(f"a per-channel mask needs [..., tokens, D], got shape {tuple(score.shape)}")
    return _keep_largest(score.transpose(-1, -2), kept_count(score.shape[-2], sparsity)).transpose(-1, -2)


def token_mask(x: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Per-token magnitude mask: each vector ``x[b, h, t, :]`` keeps ``kept_count(D, sparsity)`` entries.

    Args:
        x: cache tensor ``[batch, heads, tokens, D]`` (any leading dims work).
        sparsity: fraction zeroed per vector, in [0, 1).

    Returns:
        A bool tensor shaped like ``x``, True where an entry is kept.
    """
    return score_mask(x.abs(), sparsity, "token")


def channel_mask(x: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Per-channel magnitude mask: each channel ``x[b, h, :, d]`` keeps ``kept_count(tokens, sparsity)`` of the
    tokens given (the caller passes the pruned tokens only; the dense window stays out).

    Args:
        x: cache tensor ``[batch, heads, tokens, D]``.
        sparsity: fraction zeroed per channel, in [0, 1).

    Returns:
        A bool tensor shaped like ``x``, True where an entry is kept.
    """
    if x.dim() < 2:
        raise ValueError(f"channel_mask needs [..., tokens, D], got shape {tuple(x.shape)}")
    return score_mask(x.abs(), sparsity, "channel")


def mustafar_reference_mask(x: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The Mustafar authors' per-token rule, for comparison with ``token_mask``.

    ``k = max(1, int(s * D))``; threshold = k-th smallest |x| of each vector (``torch.kthvalue``);
    keep ``|x| >= threshold``. Zeroes ``k - 1`` entries per vector when no |x| ties.
    """
    k = max(1, int(sparsity * x.shape[-1]))
    mag = x.abs()
    threshold = torch.kthvalue(mag.float(), k, dim=-1, keepdim=True).values
    return mag >= threshold.to(mag.dtype)


def dense_bytes(entries: int, value_bytes: int = VALUE_BYTES) -> int:
    """Bytes of ``entries`` values stored dense."""
    return entries * value_bytes


def bitmap_bytes(x: torch.Tensor, value_bytes: int = VALUE_BYTES) -> int:
    """Bytes of ``x`` ([..., D]) in Mustafar's layout: a bitmap per vector padded to whole bytes, plus the
    nonzero values."""
    vectors = x.numel() // x.shape[-1] if x.numel() else 0
    kept = int(torch.count_nonzero(x))
    return vectors * math.ceil(x.shape[-1] / 8) + kept * value_bytes


def csr_bytes(x: torch.Tensor, value_bytes: int = VALUE_BYTES, index_bytes: int = INDEX_BYTES) -> int:
    """Bytes of ``x`` ([..., tokens, D]) as CSR, one matrix per leading index: nonzero values, int32 column
    indices, int32 row pointers (tokens + 1 per matrix)."""
    if x.dim() < 2:
        raise ValueError(f"csr_bytes needs [..., tokens, D], got shape {tuple(x.shape)}")
    matrices = x.numel() // (x.shape[-1] * x.shape[-2]) if x.numel() else math.prod(x.shape[:-2])
    kept = int(torch.count_nonzero(x))
    return kept * (value_bytes + index_bytes) + matrices * (x.shape[-2] + 1) * index_bytes

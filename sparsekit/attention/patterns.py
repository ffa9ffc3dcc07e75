"""Attention sparsity patterns as FlexAttention ``mask_mod`` functions.

A ``mask_mod(b, h, q_idx, kv_idx) -> bool tensor`` says whether query ``q_idx`` of head ``h`` (of
batch element ``b``) may attend to key ``kv_idx``; True = kept. Every factory here returns one,
written only with element-wise tensor operations and table look-ups, so the same function

- is accepted by ``torch.nn.attention.flex_attention.create_block_mask`` (which calls it on
  0-d index tensors under ``vmap``), and
- is evaluated for a whole ``[q, kv]`` grid at once by ``materialize`` (broadcast index tensors).

Indices are positions inside one sequence: query ``i``, key ``j`` (``0 <= i < q_len``,
``0 <= j < kv_len``). Static patterns depend on ``i`` and ``j`` only; data-dependent ones
(vertical-slash, block top-k) are estimated from captured attention or ``Q``/``K`` and close over
small per-head index tables. For a decoder the model's own causal mask still applies: a pattern
is ANDed with it wherever it is used (``sparsekit.attention.apply``), and densities are counted
over the pairs the model allows.

Above the factories sits a serialisable layer: ``PatternSpec`` (a pattern name with explicit
parameters, or an and/or composition of specs), the registry ``PATTERNS`` describing every
parameter with its bounds, and ``AttentionPlan`` (a spec, or dense, per layer and head).
"""
from __future__ import annotations

import json
import math
import operator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor

MaskMod = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
"""``mask_mod(b, h, q_idx, kv_idx) -> bool tensor`` (True = attend), FlexAttention's signature."""

MAX_COLUMNS = 512
"""Most explicit columns a vertical-stripe pattern or global-token list may name."""
MAX_PARAM = 1 << 16
"""Upper bound of every integer parameter (far above any sequence this app captures)."""


# ---------------------------------------------------------------------------------------------
# Helpers shared by the factories


def _int(value: Any, name: str, minimum: int = 0) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        if not (isinstance(value, float) and value.is_integer()):
            raise ValueError(f"{name} must be an integer, got {value!r}") from None
        value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    if value > MAX_PARAM:
        raise ValueError(f"{name} must be at most {MAX_PARAM}, got {value}")
    return value


def _lookup(table: Tensor, *index: Tensor) -> Tensor:
    """``table[index]`` where any out-of-range index reads as False.

    Clamping first keeps the gather legal for every index ``create_block_mask`` may probe.
    """
    inside: Tensor | bool = True
    clamped = []
    for size, idx in zip(table.shape, index):
        inside = inside & (idx >= 0) & (idx < size)
        clamped.append(idx.clamp(0, size - 1))
    return table[tuple(clamped)] & inside


def _head_index(table: Tensor, h: Tensor) -> Tensor:
    # A table estimated from a single head ([1, ...]) serves every head.
    return h * 0 if table.shape[0] == 1 else h


def _token_table(tokens: Sequence[int], what: str) -> Tensor:
    tokens = sorted({_int(t, what) for t in tokens})
    if len(tokens) > MAX_COLUMNS:
        raise ValueError(f"at most {MAX_COLUMNS} {what}s, got {len(tokens)}")
    # One extra False slot past the largest index, so any larger index reads False.
    table = torch.zeros((tokens[-1] + 2) if tokens else 1, dtype=torch.bool)
    if tokens:
        table[torch.tensor(tokens)] = True
    return table


# ---------------------------------------------------------------------------------------------
# Static patterns


def full() -> MaskMod:
    """Dense attention: every query attends to every key.

    Returns:
        ``mask_mod`` that is True for all ``(i, j)``.
    """

    def mask_mod(b, h, q_idx, kv_idx):
        return (q_idx >= 0) & (kv_idx >= 0)

    return mask_mod


def causal() -> MaskMod:
    """Causal (decoder) attention: keep ``j <= i``.

    Returns:
        ``mask_mod`` for ``kv_idx <= q_idx``.
    """

    def mask_mod(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx

    return mask_mod


def sliding_window(window: int, *, causal: bool = False) -> MaskMod:
    """Sliding-window (local) attention.

    Symmetric: keep ``|i - j| <= window``. Causal: keep ``0 <= i - j <= window``.

    Args:
        window: largest distance kept (0 keeps only the diagonal).
        causal: look only backwards.

    Returns:
        The ``mask_mod``.
    """
    w = _int(window, "window")

    def mask_mod(b, h, q_idx, kv_idx):
        d = q_idx - kv_idx
        if causal:
            return (d >= 0) & (d <= w)
        return d.abs() <= w

    return mask_mod


def dilated_window(window: int, dilation: int, *, causal: bool = False) -> MaskMod:
    """Dilated sliding window.

    Symmetric: keep ``|i - j| <= window`` and ``|i - j| mod dilation == 0``. Causal: the same
    with ``0 <= i - j``. ``dilation = 1`` is the plain sliding window.

    Args:
        window: largest distance kept.
        dilation: keep every ``dilation``-th distance (>= 1).
        causal: look only backwards.

    Returns:
        The ``mask_mod``.
    """
    w = _int(window, "window")
    d_ = _int(dilation, "dilation", 1)

    def mask_mod(b, h, q_idx, kv_idx):
        d = q_idx - kv_idx
        near = ((d >= 0) & (d <= w)) if causal else (d.abs() <= w)
        return near & (d.abs() % d_ == 0)

    return mask_mod


def longformer(window: int, global_tokens: Sequence[int]) -> MaskMod:
    """Longformer: sliding window plus global tokens.

    Keep ``|i - j| <= window``, or ``i`` is a global token (it attends everywhere), or ``j`` is a
    global token (everyone attends to it).

    Args:
        window: largest distance kept by the local part.
        global_tokens: positions of the global tokens (e.g. ``[0]`` for [CLS]).

    Returns:
        The ``mask_mod``.
    """
    w = _int(window, "window")
    g = _token_table(global_tokens, "global token")

    def mask_mod(b, h, q_idx, kv_idx):
        return ((q_idx - kv_idx).abs() <= w) | _lookup(g, q_idx) | _lookup(g, kv_idx)

    return mask_mod


def bigbird_random_blocks(
    n_q_blocks: int, n_kv_blocks: int, global_blocks: int, random_blocks: int, seed: int
) -> Tensor:
    """The random part of BigBird: for each query block row ``I``, ``random_blocks`` key blocks
    drawn uniformly without replacement from those the local and global rules do not already keep
    (all of them when fewer remain), with a ``torch.Generator`` seeded by ``seed``.

    Args:
        n_q_blocks: query blocks (``ceil(q_len / block)``).
        n_kv_blocks: key blocks.
        global_blocks: the first ``global_blocks`` blocks are global.
        random_blocks: random key blocks per query block row.
        seed: generator seed (same seed, same blocks).

    Returns:
        Bool ``[n_q_blocks, n_kv_blocks]``, True where a block was drawn.
    """
    gen = torch.Generator().manual_seed(_int(seed, "seed"))
    table = torch.zeros(n_q_blocks, n_kv_blocks, dtype=torch.bool)
    if random_blocks <= 0 or n_q_blocks == 0 or n_kv_blocks == 0:
        return table
    cols = torch.arange(n_kv_blocks)
    for row in range(n_q_blocks):
        if row < global_blocks:
            continue  # a global query block already attends everywhere
        free = cols[((cols - row).abs() > 1) & (cols >= global_blocks)]
        if free.numel() == 0:
            continue
        pick = free[torch.randperm(free.numel(), generator=gen)[:random_blocks]]
        table[row, pick] = True
    return table


def bigbird(
    q_len: int, kv_len: int, *, block: int, global_blocks: int = 1, random_blocks: int = 2, seed: int = 0
) -> MaskMod:
    """BigBird block-sparse attention (ITC variant).

    With ``I = i // block`` and ``J = j // block``, keep ``|I - J| <= 1`` (block-local), or
    ``I < global_blocks`` or ``J < global_blocks`` (the first blocks are global), or ``J`` is one
    of the random blocks drawn for row ``I`` (``bigbird_random_blocks``). The last block may be
    shorter than ``block``.

    Args:
        q_len: query length (the random draw depends on the number of blocks).
        kv_len: key length.
        block: tokens per block.
        global_blocks: number of leading global blocks.
        random_blocks: random key blocks per query block.
        seed: seed of the random draw.

    Returns:
        The ``mask_mod``.
    """
    b_ = _int(block, "block", 1)
    g = _int(global_blocks, "global_blocks")
    r = _int(random_blocks, "random_blocks")
    n_q, n_kv = math.ceil(_int(q_len, "q_len") / b_), math.ceil(_int(kv_len, "kv_len") / b_)
    rand = bigbird_random_blocks(n_q, n_kv, g, r, seed)

    def mask_mod(b, h, q_idx, kv_idx):
        qb, kb = q_idx // b_, kv_idx // b_
        return ((qb - kb).abs() <= 1) | (qb < g) | (kb < g) | _lookup(rand, qb, kb)

    return mask_mod


_STRIDED_PARTS = ("both", "local", "stride")
_FIXED_PARTS = ("both", "block", "summary")


def strided(stride: int, *, part: str = "both") -> MaskMod:
    """Sparse Transformer strided attention (Child et al., 2019).

    Head A (``part="local"``): keep ``i - stride < j <= i``. Head B (``part="stride"``): keep
    ``(i - j) mod stride == 0`` (both directions; AND with ``causal()`` for a decoder).
    ``part="both"`` keeps the union (the paper's merged head).

    Args:
        stride: the stride ``l`` (>= 1).
        part: ``"both"``, ``"local"`` or ``"stride"``.

    Returns:
        The ``mask_mod``.
    """
    l_ = _int(stride, "stride", 1)
    if part not in _STRIDED_PARTS:
        raise ValueError(f"part must be one of {', '.join(_STRIDED_PARTS)}, got {part!r}")

    def mask_mod(b, h, q_idx, kv_idx):
        d = q_idx - kv_idx
        a = (d >= 0) & (d < l_)
        s = d % l_ == 0
        return a if part == "local" else s if part == "stride" else a | s

    return mask_mod


def fixed(stride: int, summary: int, *, part: str = "both") -> MaskMod:
    """Sparse Transformer fixed attention (Child et al., 2019).

    Head A (``part="block"``): keep ``j // stride == i // stride``. Head B (``part="summary"``):
    keep ``j mod stride >= stride - summary`` (the last ``summary`` positions of every block).
    ``part="both"`` keeps the union.

    Args:
        stride: the block length ``l`` (>= 1).
        summary: ``c``, summary positions per block (``1 <= c <= l``).
        part: ``"both"``, ``"block"`` or ``"summary"``.

    Returns:
        The ``mask_mod``.
    """
    l_ = _int(stride, "stride", 1)
    c = _int(summary, "summary", 1)
    if c > l_:
        raise ValueError(f"summary ({c}) must be at most stride ({l_})")
    if part not in _FIXED_PARTS:
        raise ValueError(f"part must be one of {', '.join(_FIXED_PARTS)}, got {part!r}")

    def mask_mod(b, h, q_idx, kv_idx):
        a = (q_idx // l_) == (kv_idx // l_)
        s = (kv_idx % l_) >= (l_ - c)
        return a if part == "block" else s if part == "summary" else a | s

    return mask_mod


def a_shape(sink: int, local: int) -> MaskMod:
    """A-shape (attention sinks + local window, StreamingLLM / MInference).

    Keep ``j < sink`` or ``|i - j| < local``.

    Args:
        sink: leading key columns every query keeps.
        local: window: distances strictly below ``local`` are kept (``local >= 1`` keeps the
            diagonal).

    Returns:
        The ``mask_mod``.
    """
    s = _int(sink, "sink")
    w = _int(local, "local")

    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx < s) | ((q_idx - kv_idx).abs() < w)

    return mask_mod


def diagonal(width: int) -> MaskMod:
    """Sparse-vDiT diagonal pattern: keep ``|i - j| <= width`` (the symmetric sliding window).

    Args:
        width: half-width of the band.

    Returns:
        The ``mask_mod``.
    """
    return sliding_window(width)


def multi_diagonal(width: int, period: int) -> MaskMod:
    """Sparse-vDiT multi-diagonal pattern: keep ``|i - j - k * period| <= width`` for some integer
    ``k`` (bands repeating every ``period`` tokens, e.g. one frame of a video).

    Computed as ``(i - j + width) mod period <= 2 * width``, which is the same set.

    Args:
        width: half-width of each band.
        period: distance between bands (``F``, tokens per frame; >= 1).

    Returns:
        The ``mask_mod``.
    """
    w = _int(width, "width")
    f = _int(period, "period", 1)

    def mask_mod(b, h, q_idx, kv_idx):
        return ((q_idx - kv_idx + w) % f) <= 2 * w

    return mask_mod


def vertical_stripe(columns: Sequence[int]) -> MaskMod:
    """Sparse-vDiT vertical stripe: keep ``j in columns`` (for every query).

    Args:
        columns: key positions every query attends to.

    Returns:
        The ``mask_mod``.
    """
    table = _token_table(columns, "column")

    def mask_mod(b, h, q_idx, kv_idx):
        return _lookup(table, kv_idx) & (q_idx >= 0)

    return mask_mod


# ---------------------------------------------------------------------------------------------
# Data-dependent patterns


def _per_head(x: Tensor, ndim: int, what: str) -> Tensor:
    if x.ndim == ndim - 1:
        x = x.unsqueeze(0)
    if x.ndim != ndim:
        raise ValueError(f"{what} must be [heads, ...] with {ndim} dims or one head with {ndim - 1}, got {list(x.shape)}")
    return x


def _top(scores: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` largest entries along the last dim; ties go to the lower index."""
    k = min(k, scores.shape[-1])
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]


def vertical_slash_sets(
    probs: Tensor,
    *,
    vertical: int,
    slash: int,
    last_q: int = 64,
    sink_columns: int = 1,
    local: int = 1,
    causal: bool = False,
) -> tuple[Tensor, Tensor]:
    """The columns and diagonals MInference's vertical-slash pattern keeps, estimated from the
    attention of the last queries.

    With ``Q`` the last ``min(last_q, q_len)`` query rows of ``probs``: each key column ``j`` is
    scored by ``sum_{i in Q} A[i, j]`` and each diagonal offset ``o = i - j`` by
    ``sum_{i in Q, i - j = o} A[i, j]``. ``V`` = the first ``sink_columns`` columns plus the
    ``vertical`` best-scored other columns; ``S`` = the nearest diagonals (``|o| <= local``; for
    ``causal``, ``0 <= o <= local``) plus the ``slash`` best-scored other offsets (for ``causal``,
    only ``o >= 0`` are candidates). Ties go to the lower column / lower ``o + kv_len - 1``.

    Args:
        probs: attention ``[heads, q_len, kv_len]`` or ``[q_len, kv_len]``.
        vertical: columns chosen by score (besides the sink columns).
        slash: diagonals chosen by score (besides the local ones).
        last_q: queries the estimate looks at (MInference: 64).
        sink_columns: leading columns always kept.
        local: radius of the diagonals always kept.
        causal: the model is a decoder.

    Returns:
        ``(columns [H, kv_len] bool, diagonals [H, q_len + kv_len - 1] bool)``; diagonal
        offset ``o`` sits at index ``o + kv_len - 1``.
    """
    p = _per_head(probs, 3, "probs").float()
    n_h, q_len, kv_len = p.shape
    vertical, slash = _int(vertical, "vertical"), _int(slash, "slash")
    last_q, sink_columns, local = _int(last_q, "last_q", 1), _int(sink_columns, "sink_columns"), _int(local, "local")
    rows = p[:, max(q_len - last_q, 0):, :]
    first_row = max(q_len - last_q, 0)
    col_score = rows.sum(1)
    n_diag = q_len + kv_len - 1
    # Scatter every kept-query entry onto its diagonal index (i - j + kv_len - 1).
    i = torch.arange(first_row, q_len).unsqueeze(1)
    j = torch.arange(kv_len).unsqueeze(0)
    diag_idx = (i - j + kv_len - 1).expand(rows.shape[1], kv_len).reshape(-1)
    diag_score = torch.zeros(n_h, n_diag).index_add_(1, diag_idx, rows.reshape(n_h, -1))

    cols = torch.zeros(n_h, kv_len, dtype=torch.bool)
    cols[:, : min(sink_columns, kv_len)] = True
    if vertical:
        free = col_score.masked_fill(cols, -math.inf)
        n_free = kv_len - int(cols[0].sum())
        cols.scatter_(1, _top(free, min(vertical, n_free)), True)

    offsets = torch.arange(n_diag) - (kv_len - 1)
    forced = ((offsets >= 0) & (offsets <= local)) if causal else (offsets.abs() <= local)
    candidate = (offsets >= 0) if causal else torch.ones(n_diag, dtype=torch.bool)
    diags = forced.unsqueeze(0).expand(n_h, n_diag).clone()
    n_free = int((candidate & ~forced).sum())
    if slash and n_free:
        free = diag_score.masked_fill(~(candidate & ~forced), -math.inf)
        diags.scatter_(1, _top(free, min(slash, n_free)), True)
    return cols, diags


def vertical_slash(
    probs: Tensor,
    *,
    vertical: int,
    slash: int,
    last_q: int = 64,
    sink_columns: int = 1,
    local: int = 1,
    causal: bool = False,
) -> MaskMod:
    """MInference's vertical-slash pattern: keep ``j in V`` or ``i - j in S``, with ``V`` and
    ``S`` estimated per head from the attention of the last queries (``vertical_slash_sets``).

    Args:
        probs: attention ``[heads, q_len, kv_len]`` (or one head ``[q_len, kv_len]``).
        vertical: columns chosen by score besides the ``sink_columns`` first ones.
        slash: diagonals chosen by score besides the ``local`` nearest ones.
        last_q: queries the estimate looks at.
        sink_columns: leading columns always kept.
        local: radius of the diagonals always kept.
        causal: the model is a decoder (only backward diagonals are candidates).

    Returns:
        A ``mask_mod`` over ``h`` (one estimate per head) and positions.
    """
    cols, diags = vertical_slash_sets(
        probs, vertical=vertical, slash=slash, last_q=last_q, sink_columns=sink_columns, local=local, causal=causal
    )
    offset = cols.shape[1] - 1

    def mask_mod(b, h, q_idx, kv_idx):
        hh = _head_index(cols, h)
        return _lookup(cols, hh, kv_idx) | _lookup(diags, hh, q_idx - kv_idx + offset)

    return mask_mod


def block_topk_table(query: Tensor, key: Tensor, *, block: int, topk: int, causal: bool = False) -> Tensor:
    """Which key blocks each query block keeps under block top-k selection (MoBA / NSA style).

    Q and K are mean-pooled over each block of ``block`` tokens (the last block over the tokens
    it has); the pooled dot product ``Qp[I] . Kp[J]`` ranks the key blocks of query block ``I``;
    the ``topk`` best are kept (ties to the lower ``J``), plus block ``J = I``. For ``causal``
    only blocks ``J <= I`` are candidates.

    Args:
        query: ``[heads, q_len, d]`` (or ``[q_len, d]``).
        key: ``[heads, kv_len, d]`` (or ``[kv_len, d]``).
        block: tokens per block.
        topk: key blocks chosen per query block besides its own.
        causal: the model is a decoder.

    Returns:
        Bool ``[heads, n_q_blocks, n_kv_blocks]``.
    """
    q = _per_head(query, 3, "query").float()
    k = _per_head(key, 3, "key").float()
    b_ = _int(block, "block", 1)
    topk = _int(topk, "topk")
    n_h = max(q.shape[0], k.shape[0])
    n_qb, n_kb = math.ceil(q.shape[1] / b_), math.ceil(k.shape[1] / b_)

    def pool(x: Tensor, n_blocks: int) -> Tensor:
        ids = torch.arange(x.shape[1]) // b_
        sums = torch.zeros(x.shape[0], n_blocks, x.shape[2]).index_add_(1, ids, x)
        counts = torch.bincount(ids, minlength=n_blocks).clamp(min=1).to(x.dtype)
        return sums / counts[:, None]

    scores = pool(q, n_qb) @ pool(k, n_kb).transpose(-1, -2)
    scores = scores.expand(n_h, n_qb, n_kb)
    rows, cols = torch.arange(n_qb)[:, None], torch.arange(n_kb)[None, :]
    own = rows == cols
    candidate = (cols <= rows) if causal else torch.ones(n_qb, n_kb, dtype=torch.bool)
    candidate = candidate & ~own
    table = own.expand(n_h, n_qb, n_kb).clone()
    n_free = int(candidate.sum(1).max()) if n_kb else 0
    if topk and n_free:
        ranked = _top(scores.masked_fill(~candidate, -math.inf), min(topk, n_free))
        pick = torch.zeros_like(table).scatter_(2, ranked, True)
        table |= pick & candidate  # rows with fewer candidates than topk must not pick masked blocks
    return table


def block_topk(query: Tensor, key: Tensor, *, block: int, topk: int, causal: bool = False) -> MaskMod:
    """Block top-k attention: keep ``(i, j)`` when key block ``j // block`` is selected for query
    block ``i // block`` by ``block_topk_table`` (pooled Q.K top-k plus the own block).

    Args:
        query: ``[heads, q_len, d]`` (or one head ``[q_len, d]``).
        key: ``[heads, kv_len, d]``.
        block: tokens per block.
        topk: key blocks per query block besides its own.
        causal: the model is a decoder.

    Returns:
        A ``mask_mod`` over ``h`` and positions.
    """
    table = block_topk_table(query, key, block=block, topk=topk, causal=causal)
    b_ = int(block)

    def mask_mod(b, h, q_idx, kv_idx):
        return _lookup(table, _head_index(table, h), q_idx // b_, kv_idx // b_)

    return mask_mod


# ---------------------------------------------------------------------------------------------
# Composition and materialisation


def and_masks(*mask_mods: MaskMod) -> MaskMod:
    """Intersection: keep ``(i, j)`` only where every pattern keeps it (``full`` for none).

    Args:
        *mask_mods: patterns to intersect.

    Returns:
        The combined ``mask_mod``.
    """
    mods = list(mask_mods)

    def mask_mod(b, h, q_idx, kv_idx):
        out = (q_idx >= 0) & (kv_idx >= 0)
        for m in mods:
            out = out & m(b, h, q_idx, kv_idx)
        return out

    return mask_mod


def or_masks(*mask_mods: MaskMod) -> MaskMod:
    """Union: keep ``(i, j)`` where any pattern keeps it (nothing for none).

    Args:
        *mask_mods: patterns to unite.

    Returns:
        The combined ``mask_mod``.
    """
    mods = list(mask_mods)

    def mask_mod(b, h, q_idx, kv_idx):
        out = (q_idx < 0) & (kv_idx < 0)
        for m in mods:
            out = out | m(b, h, q_idx, kv_idx)
        return out

    return mask_mod


def per_head(mask_mods: Sequence[MaskMod]) -> MaskMod:
    """One pattern per head: head ``h`` uses ``mask_mods[h]`` (heads beyond the list keep nothing).

    Selecting with ``h == k`` instead of Python indexing keeps it usable under ``vmap``.

    Args:
        mask_mods: one ``mask_mod`` per head.

    Returns:
        The combined ``mask_mod``.
    """
    mods = list(mask_mods)

    def mask_mod(b, h, q_idx, kv_idx):
        out = (q_idx < 0) & (kv_idx < 0)
        for k, m in enumerate(mods):
            out = out | ((h == k) & m(b, h, q_idx, kv_idx))
        return out

    return mask_mod


def materialize(mask_mod: MaskMod, q_len: int, kv_len: int, *, head: int = 0, batch: int = 0) -> Tensor:
    """The pattern as a dense boolean matrix (for plots and metrics).

    Args:
        mask_mod: the pattern.
        q_len: number of queries.
        kv_len: number of keys.
        head: the head index passed as ``h``.
        batch: the batch index passed as ``b``.

    Returns:
        Bool ``[q_len, kv_len]``, True = kept.
    """
    q = torch.arange(_int(q_len, "q_len")).unsqueeze(1)
    kv = torch.arange(_int(kv_len, "kv_len")).unsqueeze(0)
    out = mask_mod(torch.tensor(batch), torch.tensor(head), q, kv)
    return torch.broadcast_to(torch.as_tensor(out, dtype=torch.bool), (q_len, kv_len)).clone()


def materialize_heads(mask_mod: MaskMod, n_heads: int, q_len: int, kv_len: int, *, batch: int = 0) -> Tensor:
    """The pattern for heads ``0 .. n_heads - 1`` in one broadcast call.

    Args:
        mask_mod: the pattern.
        n_heads: number of heads.
        q_len: number of queries.
        kv_len: number of keys.
        batch: the batch index passed as ``b``.

    Returns:
        Bool ``[n_heads, q_len, kv_len]``.
    """
    h = torch.arange(_int(n_heads, "n_heads", 1)).view(-1, 1, 1)
    q = torch.arange(_int(q_len, "q_len")).view(1, -1, 1)
    kv = torch.arange(_int(kv_len, "kv_len")).view(1, 1, -1)
    out = mask_mod(torch.tensor(batch), h, q, kv)
    return torch.broadcast_to(torch.as_tensor(out, dtype=torch.bool), (n_heads, q_len, kv_len)).clone()


# ---------------------------------------------------------------------------------------------
# The registry: every pattern by name, with explicit, bounded parameters


@dataclass(frozen=True)
class PatternContext:
    """What a pattern may be built from: the lengths, and for data-dependent patterns the
    attention or Q/K of the heads it will be applied to."""

    q_len: int
    """Number of queries."""
    kv_len: int
    """Number of keys."""
    causal: bool = False
    """The model is a decoder (its causal mask applies on top of any pattern)."""
    probs: Tensor | None = None
    """Dense attention ``[heads, q_len, kv_len]`` (needed by vertical-slash)."""
    query: Tensor | None = None
    """Queries ``[heads, q_len, d]`` (needed by block top-k)."""
    key: Tensor | None = None
    """Keys ``[heads, kv_len, d]`` (needed by block top-k)."""


@dataclass(frozen=True)
class Param:
    """One pattern parameter."""

    name: str
    default: int | bool | str
    help: str
    minimum: int = 0
    """Smallest value (integers)."""
    maximum: int = MAX_PARAM
    """Largest value (integers)."""
    choices: tuple[str, ...] = ()
    """Allowed values of a text choice."""

    @property
    def kind(self) -> str:
        """``"bool"``, ``"int"``, ``"choice"`` or ``"text"`` (from the default's type)."""
        if isinstance(self.default, bool):
            return "bool"
        if isinstance(self.default, int):
            return "int"
        return "choice" if self.choices else "text"

    def check(self, value: Any) -> int | bool | str:
        """The value, checked against the kind and bounds (``ValueError`` naming the parameter)."""
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"{self.name} must be true or false, got {value!r}")
            return value
        if self.kind == "int":
            value = _int(value, self.name, self.minimum)
            if value > self.maximum:
                raise ValueError(f"{self.name} must be at most {self.maximum}, got {value}")
            return value
        if not isinstance(value, str):
            raise ValueError(f"{self.name} must be text, got {value!r}")
        if self.choices and value not in self.choices:
            raise ValueError(f"{self.name} must be one of {', '.join(self.choices)}, got {value!r}")
        return value


def parse_columns(text: str) -> list[int]:
    """Parse a column list such as ``"0, 3, 8-11"`` into sorted unique positions.

    Args:
        text: comma-separated positions and inclusive ranges ``a-b``.

    Returns:
        The positions.

    Raises:
        ValueError: malformed text, a reversed range, or more than ``MAX_COLUMNS`` columns.
    """
    out: set[int] = set()
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise ValueError(f"columns must look like '0, 3, 8-11'; cannot read {part!r}") from None
        if a < 0 or b < a:
            raise ValueError(f"columns: {part!r} is not a valid position or range")
        if b - a >= MAX_COLUMNS or len(out) + (b - a + 1) > MAX_COLUMNS:
            raise ValueError(f"at most {MAX_COLUMNS} columns")
        out.update(range(a, b + 1))
    if not out:
        raise ValueError("columns: name at least one key position, e.g. '0' or '0-3'")
    return sorted(out)


Builder = Callable[[PatternContext, Mapping[str, Any]], MaskMod]
Checker = Callable[[int, int, Mapping[str, Any]], None]


@dataclass(frozen=True)
class PatternInfo:
    """A registry entry: how to build a pattern from a context and its parameters."""

    name: str
    title: str
    summary: str
    """One-line definition shown in the app."""
    params: tuple[Param, ...]
    build: Builder
    check: Checker
    needs: str = ""
    """``""`` (static), ``"probs"`` or ``"qk"``: what a context must carry."""


def _too_long(name: str, value: int, limit: int, unit: str, q_len: int) -> None:
    if value > limit:
        raise ValueError(
            f"{name} {value} is larger than the sequence ({q_len} tokens): use at most {limit} {unit} for this input"
        )


def _check_none(q: int, kv: int, p: Mapping[str, Any]) -> None:
    return None


def _check_window(key: str) -> Checker:
    def check(q: int, kv: int, p: Mapping[str, Any]) -> None:
        _too_long(key, p[key], max(q, kv) - 1, "tokens", q)

    return check


def _check_many(*checks: Checker) -> Checker:
    def check(q: int, kv: int, p: Mapping[str, Any]) -> None:
        for c in checks:
            c(q, kv, p)

    return check


def _check_at_most(key: str, limit: Callable[[int, int, Mapping[str, Any]], int], unit: str) -> Checker:
    def check(q: int, kv: int, p: Mapping[str, Any]) -> None:
        _too_long(key, p[key], limit(q, kv, p), unit, q)

    return check


def _n_blocks(q: int, kv: int, p: Mapping[str, Any]) -> int:
    return math.ceil(max(q, kv) / p["block"])


def _need(ctx: PatternContext, what: str, name: str) -> Tensor:
    value = getattr(ctx, what)
    if value is None:
        raise ValueError(f"the {name} pattern is estimated from the attention itself: capture it first ({what} is missing)")
    return value


_WINDOW = Param("window", 8, "largest distance |i − j| kept")
_CAUSAL = Param("causal", False, "keep only keys at or before the query (0 ≤ i − j)")

PATTERNS: dict[str, PatternInfo] = {
    info.name: info
    for info in [
        PatternInfo("full", "Full (dense)", "keep every (i, j)", (), lambda c, p: full(), _check_none),
        PatternInfo("causal", "Causal", "keep j ≤ i", (), lambda c, p: causal(), _check_none),
        PatternInfo(
            "sliding_window", "Sliding window", "|i − j| ≤ w (causal: 0 ≤ i − j ≤ w)", (_WINDOW, _CAUSAL),
            lambda c, p: sliding_window(p["window"], causal=p["causal"]), _check_window("window"),
        ),
        PatternInfo(
            "dilated_window", "Dilated window", "|i − j| ≤ w and |i − j| mod d = 0",
            (Param("window", 16, "largest distance kept"), Param("dilation", 2, "keep every d-th distance", 1), _CAUSAL),
            lambda c, p: dilated_window(p["window"], p["dilation"], causal=p["causal"]),
            _check_many(_check_window("window"), _check_window("dilation")),
        ),
        PatternInfo(
            "longformer", "Longformer (global + window)", "|i − j| ≤ w, or i or j among the first g tokens",
            (_WINDOW, Param("n_global", 1, "the first g tokens are global (e.g. [CLS])")),
            lambda c, p: longformer(p["window"], range(p["n_global"])),
            _check_many(_check_window("window"), _check_at_most("n_global", lambda q, kv, p: min(q, kv), "tokens")),
        ),
        PatternInfo(
            "bigbird", "BigBird (local + global + random blocks)",
            "blocks: |I − J| ≤ 1, or I or J < g, or J among r seeded random blocks of row I",
            (Param("block", 8, "tokens per block", 1), Param("global_blocks", 1, "leading global blocks"),
             Param("random_blocks", 1, "random key blocks per query block"), Param("seed", 0, "seed of the random draw")),
            lambda c, p: bigbird(c.q_len, c.kv_len, block=p["block"], global_blocks=p["global_blocks"],
                                 random_blocks=p["random_blocks"], seed=p["seed"]),
            _check_many(_check_at_most("block", lambda q, kv, p: max(q, kv), "tokens"),
                        _check_at_most("global_blocks", _n_blocks, "blocks"),
                        _check_at_most("random_blocks", _n_blocks, "blocks")),
        ),
        PatternInfo(
            "strided", "Strided (Sparse Transformer)", "A: i − l < j ≤ i; B: (i − j) mod l = 0; both: A or B",
            (Param("stride", 8, "the stride l", 1), Param("part", "both", "which head", choices=_STRIDED_PARTS)),
            lambda c, p: strided(p["stride"], part=p["part"]),
            _check_at_most("stride", lambda q, kv, p: max(q, kv), "tokens"),
        ),
        PatternInfo(
            "fixed", "Fixed (Sparse Transformer)", "A: ⌊j/l⌋ = ⌊i/l⌋; B: j mod l ≥ l − c; both: A or B",
            (Param("stride", 8, "block length l", 1), Param("summary", 1, "summary positions c per block", 1),
             Param("part", "both", "which head", choices=_FIXED_PARTS)),
            lambda c, p: fixed(p["stride"], p["summary"], part=p["part"]),
            _check_at_most("stride", lambda q, kv, p: max(q, kv), "tokens"),
        ),
        PatternInfo(
            "a_shape", "A-shape (sinks + local)", "j < sink or |i − j| < local",
            (Param("sink", 4, "leading key columns kept for every query"), Param("local", 8, "keep |i − j| < local", 1)),
            lambda c, p: a_shape(p["sink"], p["local"]),
            _check_many(_check_at_most("sink", lambda q, kv, p: kv, "tokens"),
                        _check_at_most("local", lambda q, kv, p: max(q, kv), "tokens")),
        ),
        PatternInfo(
            "vertical_slash", "Vertical-slash (MInference)",
            "j ∈ V or i − j ∈ S: top columns and diagonals by the attention of the last queries",
            (Param("vertical", 8, "columns chosen by score (besides the sink columns)"),
             Param("slash", 8, "diagonals chosen by score (besides the local ones)"),
             Param("last_q", 64, "queries the estimate looks at", 1),
             Param("sink_columns", 1, "first columns always kept"),
             Param("local", 1, "diagonals with |i − j| ≤ local always kept")),
            lambda c, p: vertical_slash(_need(c, "probs", "vertical-slash"), vertical=p["vertical"], slash=p["slash"],
                                        last_q=p["last_q"], sink_columns=p["sink_columns"], local=p["local"],
                                        causal=c.causal),
            _check_many(_check_at_most("vertical", lambda q, kv, p: kv, "columns"),
                        _check_at_most("sink_columns", lambda q, kv, p: kv, "columns"),
                        _check_at_most("slash", lambda q, kv, p: q + kv - 1, "diagonals"),
                        _check_window("local")),
            needs="probs",
        ),
        PatternInfo(
            "block_topk", "Block top-k (MoBA / NSA)", "per query block: own block + top-k key blocks by pooled Q·K",
            (Param("block", 8, "tokens per block", 1), Param("topk", 2, "key blocks per query block besides its own")),
            lambda c, p: block_topk(_need(c, "query", "block top-k"), _need(c, "key", "block top-k"),
                                    block=p["block"], topk=p["topk"], causal=c.causal),
            _check_many(_check_at_most("block", lambda q, kv, p: max(q, kv), "tokens"),
                        _check_at_most("topk", _n_blocks, "blocks")),
            needs="qk",
        ),
        PatternInfo(
            "diagonal", "Diagonal (Sparse-vDiT)", "|i − j| ≤ w", (Param("width", 4, "half-width of the band"),),
            lambda c, p: diagonal(p["width"]), _check_window("width"),
        ),
        PatternInfo(
            "multi_diagonal", "Multi-diagonal (Sparse-vDiT)", "|i − j − kF| ≤ w for some integer k",
            (Param("width", 1, "half-width of each band"), Param("period", 8, "F: distance between bands", 1)),
            lambda c, p: multi_diagonal(p["width"], p["period"]),
            _check_many(_check_window("width"), _check_at_most("period", lambda q, kv, p: max(q, kv), "tokens")),
        ),
        PatternInfo(
            "vertical_stripe", "Vertical stripe (Sparse-vDiT)", "j ∈ S for a list of key columns S",
            (Param("columns", "0", "key positions, e.g. '0, 5, 8-11'"),),
            lambda c, p: vertical_stripe(parse_columns(p["columns"])),
            lambda q, kv, p: _too_long("column", max(parse_columns(p["columns"])), kv - 1, "as the last column", q),
        ),
    ]
}
"""Every pattern by name."""

COMBINATORS = ("and", "or")


@dataclass(frozen=True)
class PatternSpec:
    """A pattern with explicit parameters, or an and/or composition of specs. Hashable and
    JSON-serialisable (cache keys, downloads); ``build`` turns it into a ``mask_mod``."""

    name: str
    """A ``PATTERNS`` key, or ``"and"`` / ``"or"``."""
    params: tuple[tuple[str, int | bool | str], ...] = ()
    """``(name, value)`` for every parameter of the pattern, in registry order."""
    parts: tuple["PatternSpec", ...] = ()
    """The combined specs of an ``"and"`` / ``"or"``."""

    @staticmethod
    def of(name: str, **params: Any) -> "PatternSpec":
        """A spec with defaults filled in and every value checked.

        Args:
            name: a ``PATTERNS`` key.
            **params: parameter values (others take their defaults).

        Returns:
            The spec.

        Raises:
            ValueError: unknown pattern or parameter, or a value out of bounds.
        """
        info = PATTERNS.get(name)
        if info is None:
            raise ValueError(f"unknown attention pattern {name!r}; choose one of {', '.join(PATTERNS)}")
        known = {p.name for p in info.params}
        extra = sorted(set(params) - known)
        if extra:
            raise ValueError(f"{name} has no parameter {', '.join(extra)}; its parameters: {', '.join(sorted(known)) or 'none'}")
        values = tuple((p.name, p.check(params.get(p.name, p.default))) for p in info.params)
        spec = PatternSpec(name, values)
        if name == "vertical_stripe":
            parse_columns(spec.param("columns"))
        if name == "fixed" and spec.param("summary") > spec.param("stride"):
            raise ValueError(f"summary ({spec.param('summary')}) must be at most stride ({spec.param('stride')})")
        return spec

    @staticmethod
    def combine(op: str, *parts: "PatternSpec") -> "PatternSpec":
        """``op`` = ``"and"`` (intersection) or ``"or"`` (union) of at least two specs."""
        if op not in COMBINATORS:
            raise ValueError(f"combine with 'and' or 'or', got {op!r}")
        if len(parts) < 2:
            raise ValueError("combining needs at least two patterns")
        return PatternSpec(op, (), tuple(parts))

    def __and__(self, other: "PatternSpec") -> "PatternSpec":
        return PatternSpec.combine("and", self, other)

    def __or__(self, other: "PatternSpec") -> "PatternSpec":
        return PatternSpec.combine("or", self, other)

    def param(self, name: str) -> Any:
        """The value of parameter ``name`` (``KeyError`` if the pattern has none)."""
        for key, value in self.params:
            if key == name:
                return value
        raise KeyError(f"{self.name} has no parameter {name!r}")

    @property
    def needs(self) -> frozenset[str]:
        """Data a context must carry to build this spec (``"probs"``, ``"qk"``)."""
        if self.parts:
            return frozenset().union(*(p.needs for p in self.parts))
        need = PATTERNS[self.name].needs
        return frozenset({need}) if need else frozenset()

    @property
    def label(self) -> str:
        """Short text, e.g. ``sliding_window(window=8)`` or ``(a) | (b)``."""
        if self.parts:
            sym = " & " if self.name == "and" else " | "
            return sym.join(f"({p.label})" if p.parts else p.label for p in self.parts)
        defaults = {p.name: p.default for p in PATTERNS[self.name].params}
        # Flags at their default (causal=False, part='both') would only clutter the label.
        shown = [f"{k}={v}" for k, v in self.params if not (isinstance(v, (bool, str)) and v == defaults[k])
                 or k == "columns"]
        return f"{self.name}({', '.join(shown)})"

    def validate(self, q_len: int, kv_len: int | None = None) -> None:
        """Raise ``ValueError`` when a length-like parameter does not fit a sequence (e.g. a window
        larger than the sequence), naming the largest value that does.

        Args:
            q_len: number of queries.
            kv_len: number of keys (default ``q_len``).
        """
        kv_len = q_len if kv_len is None else kv_len
        if q_len < 1 or kv_len < 1:
            raise ValueError("the sequence is empty")
        if self.parts:
            for p in self.parts:
                p.validate(q_len, kv_len)
            return
        PATTERNS[self.name].check(q_len, kv_len, dict(self.params))

    def build(self, ctx: PatternContext, *, strict: bool = False) -> MaskMod:
        """The ``mask_mod`` of this spec for a context.

        Args:
            ctx: lengths, and the attention or Q/K for data-dependent patterns.
            strict: first ``validate`` the parameters against the lengths (otherwise a window
                longer than the sequence simply covers all of it).

        Returns:
            The ``mask_mod``.
        """
        if strict:
            self.validate(ctx.q_len, ctx.kv_len)
        if self.parts:
            mods = [p.build(ctx) for p in self.parts]
            return and_masks(*mods) if self.name == "and" else or_masks(*mods)
        return PATTERNS[self.name].build(ctx, dict(self.params))

    def to_dict(self) -> dict[str, Any]:
        """``{"name", "params"}`` or ``{"name": "and"|"or", "parts": [...]}`` (JSON-ready)."""
        if self.parts:
            return {"name": self.name, "parts": [p.to_dict() for p in self.parts]}
        return {"name": self.name, "params": dict(self.params)}

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> "PatternSpec":
        """Inverse of ``to_dict``; every value is checked as by ``PatternSpec.of``."""
        if not isinstance(data, Mapping) or "name" not in data:
            raise ValueError("a pattern must be an object with a 'name'")
        if data["name"] in COMBINATORS:
            return PatternSpec.combine(data["name"], *(PatternSpec.from_dict(p) for p in data.get("parts", [])))
        return PatternSpec.of(data["name"], **dict(data.get("params", {})))

    def to_json(self) -> str:
        """``to_dict`` as canonical JSON (sorted keys): a stable cache key."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> "PatternSpec":
        """Inverse of ``to_json``."""
        return PatternSpec.from_dict(json.loads(text))


@lru_cache(maxsize=256)
def static_mask(spec: PatternSpec, q_len: int, kv_len: int, causal: bool = False) -> Tensor:
    """``materialize`` of a static (data-free) spec, cached: the same windows are asked for again
    and again (every layer, every head, every sentence of the same length).

    Args:
        spec: a spec with no data needs.
        q_len: number of queries.
        kv_len: number of keys.
        causal: the model is a decoder (passed to the context; static patterns ignore it).

    Returns:
        Bool ``[q_len, kv_len]`` (shared: do not modify it).
    """
    if spec.needs:
        raise ValueError(f"{spec.label} depends on the attention; build it from a context with data")
    return materialize(spec.build(PatternContext(q_len, kv_len, causal)), q_len, kv_len)


# ---------------------------------------------------------------------------------------------
# Plans: a pattern (or dense) per layer and head


@dataclass(frozen=True)
class AttentionPlan:
    """Which pattern each attention head uses; ``None`` leaves a head dense."""

    heads: tuple[tuple[PatternSpec | None, ...], ...]
    """``heads[layer][head]``."""

    @staticmethod
    def uniform(
        spec: PatternSpec | None,
        n_layers: int,
        n_heads: int,
        *,
        layers: Iterable[int] | None = None,
        heads: Iterable[int] | None = None,
    ) -> "AttentionPlan":
        """The same spec on the chosen layers and heads (all by default), dense elsewhere.

        Args:
            spec: the pattern (None: everything dense).
            n_layers: attention layers of the model.
            n_heads: heads per layer.
            layers: layer indices to sparsify (default all).
            heads: head indices to sparsify in those layers (default all).

        Returns:
            The plan.
        """
        layer_set = set(range(n_layers)) if layers is None else set(layers)
        head_set = set(range(n_heads)) if heads is None else set(heads)
        bad = sorted(i for i in layer_set if not 0 <= i < n_layers)
        if bad:
            raise ValueError(f"layers {bad} do not exist (the model has {n_layers})")
        bad = sorted(i for i in head_set if not 0 <= i < n_heads)
        if bad:
            raise ValueError(f"heads {bad} do not exist (each layer has {n_heads})")
        return AttentionPlan(tuple(
            tuple(spec if (layer in layer_set and head in head_set) else None for head in range(n_heads))
            for layer in range(n_layers)
        ))

    @property
    def n_layers(self) -> int:
        """Layers covered."""
        return len(self.heads)

    @property
    def n_heads(self) -> int:
        """Heads per layer."""
        return len(self.heads[0]) if self.heads else 0

    def spec(self, layer: int, head: int) -> PatternSpec | None:
        """The spec of one head (None: dense)."""
        return self.heads[layer][head]

    def groups(self, layer: int) -> dict[PatternSpec, list[int]]:
        """Heads of one layer grouped by spec (dense heads left out)."""
        out: dict[PatternSpec, list[int]] = {}
        for head, spec in enumerate(self.heads[layer]):
            if spec is not None:
                out.setdefault(spec, []).append(head)
        return out

    @property
    def is_dense(self) -> bool:
        """No head has a pattern."""
        return all(s is None for row in self.heads for s in row)

    def labels(self) -> list[list[str]]:
        """``labels()[layer][head]``: the spec label, or ``"dense"``."""
        return [[s.label if s is not None else "dense" for s in row] for row in self.heads]

    def to_json(self) -> str:
        """``{"heads": [[spec dict or null, ...], ...]}`` as canonical JSON."""
        return json.dumps({"heads": [[s.to_dict() if s is not None else None for s in row] for row in self.heads]},
                          sort_keys=True)

    @staticmethod
    def from_json(text: str) -> "AttentionPlan":
        """Inverse of ``to_json`` (``ValueError`` for a malformed plan)."""
        data = json.loads(text)
        rows = data.get("heads") if isinstance(data, dict) else None
        if not isinstance(rows, list) or not rows or len({len(r) for r in rows}) != 1:
            raise ValueError("a plan needs 'heads': a non-empty list of equally long lists")
        return AttentionPlan(tuple(
            tuple(PatternSpec.from_dict(s) if s is not None else None for s in row) for row in rows
        ))


def layer_mask(
    plan: AttentionPlan, layer: int, ctx: PatternContext, *, n_heads: int | None = None, strict: bool = False
) -> Tensor:
    """The boolean mask of every head of one layer under a plan.

    Args:
        plan: the plan.
        layer: layer index.
        ctx: lengths and (for data-dependent specs) this layer's attention or Q/K, one entry per
            head.
        n_heads: heads (default ``plan.n_heads``).
        strict: validate every spec against the lengths first.

    Returns:
        Bool ``[heads, q_len, kv_len]``; dense heads are all True.
    """
    n_heads = plan.n_heads if n_heads is None else n_heads
    out = torch.ones(n_heads, ctx.q_len, ctx.kv_len, dtype=torch.bool)
    for spec, heads in plan.groups(layer).items():
        if strict:
            spec.validate(ctx.q_len, ctx.kv_len)
        if spec.needs:
            mask = materialize_heads(spec.build(ctx), n_heads, ctx.q_len, ctx.kv_len)[heads]
        else:
            mask = static_mask(spec, ctx.q_len, ctx.kv_len, ctx.causal)
        out[heads] = mask
    return out


__all__ = [
    "AttentionPlan",
    "COMBINATORS",
    "MaskMod",
    "PATTERNS",
    "Param",
    "PatternContext",
    "PatternInfo",
    "PatternSpec",
    "a_shape",
    "and_masks",
    "bigbird",
    "bigbird_random_blocks",
    "block_topk",
    "block_topk_table",
    "causal",
    "diagonal",
    "dilated_window",
    "fixed",
    "full",
    "layer_mask",
    "longformer",
    "materialize",
    "materialize_heads",
    "multi_diagonal",
    "or_masks",
    "parse_columns",
    "per_head",
    "sliding_window",
    "static_mask",
    "strided",
    "vertical_slash",
    "vertical_slash_sets",
    "vertical_stripe",
]

"""Patterns estimated from the input itself: MInference's vertical-slash (from the captured
attention of the last queries) and block top-k selection (from pooled Q and K, MoBA / NSA style).

Each closes over small per-head index tables; a table estimated from one head serves every head.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .core import MaskMod, _head_index, _int, _lookup
from .registry import BLOCK, BLOCKS, DISTANCE, KEYS, Fit, arg, pattern

_COLUMNS = Fit(KEYS.limit, "columns")


def _per_head(x: Tensor, ndim: int, what: str) -> Tensor:
    if x.ndim == ndim - 1:
        x = x.unsqueeze(0)
    if x.ndim != ndim:
        raise ValueError(
            f"{what} must be [heads, ...] with {ndim} dims or one head with {ndim - 1}, got {list(x.shape)}"
        )
    return x


def _top(scores: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` largest entries along the last dim; ties go to the lower index."""
    k = min(k, scores.shape[-1])
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]


def vertical_slash_sets(probs: Tensor, *, vertical: int, slash: int, last_q: int = 64, sink_columns: int = 1,
                        local: int = 1, causal: bool = False) -> tuple[Tensor, Tensor]:
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


@pattern("Vertical-slash (MInference)",
         "j ∈ V or i − j ∈ S: top columns and diagonals by the attention of the last queries",
         context=("probs", "causal"),
         vertical=arg("columns chosen by score (besides the sink columns)", default=8, fits=_COLUMNS),
         slash=arg("diagonals chosen by score (besides the local ones)", default=8,
                   fits=Fit(lambda q, kv, p: q + kv - 1, "diagonals")),
         last_q=arg("queries the estimate looks at", minimum=1),
         sink_columns=arg("first columns always kept", fits=_COLUMNS),
         local=arg("diagonals with |i − j| ≤ local always kept", fits=DISTANCE))
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

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
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


@pattern("Block top-k (MoBA / NSA)", "per query block: own block + top-k key blocks by pooled Q·K",
         context=("query", "key", "causal"),
         block=BLOCK, topk=arg("key blocks per query block besides its own", default=2, fits=BLOCKS))
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

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return _lookup(table, _head_index(table, h), q_idx // block, kv_idx // block)

    return mask_mod



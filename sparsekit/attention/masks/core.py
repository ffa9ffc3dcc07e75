"""What every mask family shares: the ``mask_mod`` type, parameter bounds, table look-ups that
stay legal under ``vmap``, and evaluation of a ``mask_mod`` on a whole index grid.

A ``mask_mod(b, h, q_idx, kv_idx) -> bool tensor`` says whether query ``q_idx`` of head ``h`` (of
batch element ``b``) may attend to key ``kv_idx``; True = kept. Every factory returns one written
only with element-wise tensor operations and table look-ups, so the same function

- is accepted by ``torch.nn.attention.flex_attention.create_block_mask`` (which calls it on
  0-d index tensors under ``vmap``), and
- is evaluated for a whole ``[q, kv]`` grid at once by ``materialize`` (broadcast index tensors).
"""
from __future__ import annotations

import operator
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

MaskMod = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
"""``mask_mod(b, h, q_idx, kv_idx) -> bool tensor`` (True = attend), FlexAttention's signature."""

MAX_COLUMNS = 512
"""Most explicit columns a vertical-stripe pattern or global-token list may name."""
MAX_PARAM = 1 << 16
"""Upper bound of every integer parameter (far above any sequence this app captures)."""


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
    # A mask_mod may return a lower-rank result (torch's and_masks() of nothing is a 0-d True).
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

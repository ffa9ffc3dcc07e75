"""Patterns where a few tokens see, or are seen by, every other: Longformer's global tokens,
BigBird's global and random blocks, and the A-shape's attention sinks."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from .core import MaskMod, _int, _lookup, _token_table
from .local import WINDOW
from .registry import BLOCK, BLOCKS, KEYS, SPAN, Fit, arg, pattern


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

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return ((q_idx - kv_idx).abs() <= w) | _lookup(g, q_idx) | _lookup(g, kv_idx)

    return mask_mod


# A spec names its global tokens by count (the leading ones, [CLS] and friends): a bounded integer
# the app can offer, where an arbitrary list would need parsing and a length check.
@pattern("Longformer (global + window)", "|i − j| ≤ w, or i or j among the first g tokens", name="longformer",
         window=WINDOW,
         n_global=arg("the first g tokens are global (e.g. [CLS])", default=1,
                      fits=Fit(lambda q, kv, p: min(q, kv))))
def _longformer_leading(window: int, n_global: int) -> MaskMod:
    return longformer(window, range(n_global))


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


@pattern("BigBird (local + global + random blocks)",
         "blocks: |I − J| ≤ 1, or I or J < g, or J among r seeded random blocks of row I",
         context=("q_len", "kv_len"),
         block=BLOCK,
         global_blocks=arg("leading global blocks", fits=BLOCKS),
         # The app starts at one random block, the library at two: the app's inputs are only a
         # few blocks long.
         random_blocks=arg("random key blocks per query block", default=1, fits=BLOCKS),
         seed=arg("seed of the random draw"))
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
    n_q, n_kv = math.ceil(_int(q_len, "q_len") / block), math.ceil(_int(kv_len, "kv_len") / block)
    rand = bigbird_random_blocks(n_q, n_kv, global_blocks, random_blocks, seed)

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        qb, kb = q_idx // block, kv_idx // block
        return ((qb - kb).abs() <= 1) | (qb < global_blocks) | (kb < global_blocks) | _lookup(rand, qb, kb)

    return mask_mod


@pattern("A-shape (sinks + local)", "j < sink or |i − j| < local",
         sink=arg("leading key columns kept for every query", default=4, fits=KEYS),
         local=arg("keep |i − j| < local", default=8, minimum=1, fits=SPAN))
def a_shape(sink: int, local: int) -> MaskMod:
    """A-shape (attention sinks + local window, StreamingLLM / MInference).

    Keep ``j < sink`` or ``|i - j| < local``.

    Args:
        sink: leading key columns every query keeps.
        local: window: distances strictly below ``local`` are kept (>= 1; 1 keeps only the
            diagonal, so every query keeps at least one key).

    Returns:
        The ``mask_mod``.
    """

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return (kv_idx < sink) | ((q_idx - kv_idx).abs() < local)

    return mask_mod

"""The FlexAttention suite: dense SDPA against FlexAttention with a block-sparse mask, per
sequence length.

Its own module because it shares nothing with the weight-sparsity suites but the harness: it
times attention patterns, not pruned weights.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F

from ..progress import ProgressFn
from .harness import (
    Case,
    CaseResult,
    attach_baseline,
    case_seed,
    check_fits,
    check_positive_ints,
    run_case,
    run_cases,
    skipped,
)

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask

    from ..attention.masks.core import MaskMod

MAX_SEQ = 131072


@dataclass(frozen=True)
class AttentionPattern:
    """A named block-sparse pattern for the attention suite: ``mask_mod(b, h, q_idx, kv_idx)``."""

    name: str
    mask_mod: MaskMod


def default_attention_patterns(window: int = 64) -> list[AttentionPattern]:
    """Causal sliding window of ``window`` tokens, and the full mask (FlexAttention's overhead)."""

    def sliding(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        return (q_idx >= kv_idx) & (q_idx - kv_idx <= window)

    def full(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        return q_idx >= 0

    return [AttentionPattern(f"causal window {window}", sliding), AttentionPattern("full", full)]


def block_mask_density(bm: BlockMask, q_len: int, kv_len: int, block_size: int) -> float:
    """Share of (query block, key block) pairs FlexAttention computes (partial or full).

    Counted from the block mask's per-row block counts. ``BlockMask.sparsity()`` weighs blocks by a
    full block's area against the true length, which misreports lengths that are not a multiple
    of the block size.
    """
    computed = bm.kv_num_blocks.sum().item()
    if bm.full_kv_num_blocks is not None:
        computed += bm.full_kv_num_blocks.sum().item()
    pairs = math.ceil(q_len / block_size) * math.ceil(kv_len / block_size)
    return computed / (pairs * bm.kv_num_blocks.shape[0] * bm.kv_num_blocks.shape[1])


_COMPILED_FLEX = None


def _compiled_flex():
    global _COMPILED_FLEX
    if _COMPILED_FLEX is None:
        from torch.nn.attention.flex_attention import flex_attention

        _COMPILED_FLEX = torch.compile(flex_attention, dynamic=False)
    return _COMPILED_FLEX


def attention_suite(
    seq_lens: Sequence[int],
    patterns: Sequence[AttentionPattern] | None = None,
    *,
    device: str,
    dtype: torch.dtype = torch.float32,
    batch: int = 1,
    heads: int = 8,
    head_dim: int = 64,
    block_size: int = 128,
    repeats: int = 10,
    compile: bool = True,
    progress: ProgressFn | None = None,
) -> list[CaseResult]:
    """Dense SDPA vs FlexAttention with each pattern's block mask, per sequence length.

    The correctness reference is SDPA with the pattern materialised as a boolean mask; the speedup
    baseline is plain dense SDPA (what the sparse kernel would replace). Block density (the share
    of non-empty blocks, the work FlexAttention cannot skip) is reported next to the speedup.
    """
    return run_cases(attention_cases(seq_lens, patterns, device=device, dtype=dtype, batch=batch, heads=heads,
                                     head_dim=head_dim, block_size=block_size, repeats=repeats, compile=compile),
                     progress)


def attention_cases(seq_lens: Sequence[int], patterns: Sequence[AttentionPattern] | None = None, *, device: str,
                    dtype: torch.dtype = torch.float32, batch: int = 1, heads: int = 8, head_dim: int = 64,
                    block_size: int = 128, repeats: int = 10, compile: bool = True) -> list[Case]:
    """``attention_suite``'s cases, one per sequence length (every pattern at it), validated but not measured."""
    seq_lens = check_positive_ints(seq_lens, "sequence lengths", MAX_SEQ)
    patterns = list(patterns) if patterns is not None else default_attention_patterns()
    element = torch.finfo(dtype).bits // 8
    for L in seq_lens:
        # q, k, v, output, plus the materialised reference mask and scores of one head at a time.
        check_fits(4 * batch * heads * L * head_dim * element + batch * heads * L * L * (element + 1), device,
                   f"attention at {L} tokens")

    def measure(L: int) -> list[CaseResult]:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        flex = _compiled_flex() if compile else flex_attention
        gen = torch.Generator(device="cpu").manual_seed(case_seed("attention", L))
        q, k, v = (torch.randn(batch, heads, L, head_dim, generator=gen).to(device=device, dtype=dtype)
                   for _ in range(3))
        inputs = [(q, k, v)]
        params = {"seq_len": L, "batch": batch, "heads": heads, "head_dim": head_dim}
        flops_dense = 4.0 * batch * heads * L * L * head_dim
        base = run_case(suite="attention", case=f"L{L}", backend="SDPA dense", device=device, dtype=dtype,
                        params=params, fn=lambda t: F.scaled_dot_product_attention(*t),
                        reference=lambda t: F.scaled_dot_product_attention(*t), inputs=inputs, flops=flops_dense,
                        repeats=repeats)
        out = [base]
        for pat in patterns:
            try:
                bm = create_block_mask(pat.mask_mod, None, None, L, L, device=device, BLOCK_SIZE=block_size)
                block_density = block_mask_density(bm, L, L, block_size)
                idx = torch.arange(L, device=device)
                zero = torch.zeros((), dtype=torch.long, device=device)  # batch and head 0
                dense_mask = pat.mask_mod(zero, zero, idx[:, None], idx[None, :])
                dense_mask = torch.as_tensor(dense_mask, device=device).expand(L, L)
                density = float(dense_mask.float().mean())
            except Exception as err:  # a pattern FlexAttention cannot take is reported, not fatal
                out.append(skipped("attention", f"L{L}", f"flex {pat.name}", device, dtype, params,
                                   f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"))
                continue
            p = {**params, "pattern": pat.name, "density": density, "block_density": block_density,
                 "block_size": block_size}

            def reference(t: tuple[torch.Tensor, ...], m: torch.Tensor = dense_mask) -> torch.Tensor:
                tq, tk, tv = t
                return F.scaled_dot_product_attention(tq, tk, tv, attn_mask=m)

            def sparse(t: tuple[torch.Tensor, ...], bm: BlockMask = bm) -> torch.Tensor:
                return flex(*t, block_mask=bm)

            res = run_case(suite="attention", case=f"L{L}", backend=f"flex {pat.name}", device=device, dtype=dtype,
                           params=p, fn=sparse, reference=reference,
                           inputs=inputs, flops=flops_dense * density, repeats=repeats,
                           tolerance=1e-3 if dtype == torch.float32 else None)
            attach_baseline([res], base)
            out.append(res)
        return out

    names = ", ".join(p.name for p in patterns)
    return [Case("attention", f"attention at {L} tokens ({names})", partial(measure, L)) for L in seq_lens]

"""The KV-cache decode suite: one decode step's attention over a pruned K/V cache, against dense SDPA.

One query token (batch 1, ``H`` heads, head dim ``D``) attends to a cache of ``L`` tokens. K and V are
pruned per token by magnitude at sparsity ``s`` with ``sparsekit.kvcache.token_mask`` (each vector of
``D`` keeps ``kept_count(D, s)`` entries), except the ``window`` most recent tokens, which stay dense
(Mustafar's residual window). Timed per case (one shape and length; every sparsity at it):

- **SDPA dense**: ``F.scaled_dot_product_attention`` on the full, unpruned cache (the baseline);
- **masked dense**: the same SDPA on the pruned K and V stored densely (zeros included): the same
  FLOPs and bytes, so it shows that zeros alone buy nothing;
- **CSR**: ``scores = K_csr @ q`` (K in CSR, one row per token), softmax, then ``out = Vᵀ_csr @ p``
  (V stored as CSR of its transpose, one row per channel). Both products are ``torch`` CSR × dense
  column (SpMV) with int32 indices, each over a block-diagonal matrix that holds every head
  (``[H·L, H·D]`` for K, ``[H·D, H·L]`` for Vᵀ), so one call covers all heads. Why Vᵀ: on CPU torch
  has no batched CSR matmul, and ``p @ V_csr`` (dense × CSR, V stored by token) took 6–55× the time of
  the Vᵀ SpMV at 1k–32k tokens (12 heads × 64, torch 2.13, 2 loaded cores), a CSC view of V about 70×.
  The price of Vᵀ: a decode step appends a column to it, which CSR cannot do in place;
- **CSR batched (bmm)**, CUDA only: ``torch.bmm`` of a batched CSR ``[H, L, D]`` (and ``[H, D, L]``
  for Vᵀ) with the query, torch's cuSPARSE path (torch has no CPU kernel for it: listed as skipped).

Every kernel's output is first checked against a float64 recomputation (``softmax(q·Kᵀ/√D)·V``, plain
torch, on the same cache: pruned for the sparse kernels, full for dense), so a wrong kernel is reported
as failed and never timed. Speedup = dense time / kernel time; ``kv_verdicts`` turns each into a
verdict with the interquartile ranges. The memory of each layout (dense, Mustafar's bitmap + values,
CSR with int32 indices; ``sparsekit.kvcache``'s formulas, at the timed dtype's value size) is recorded
with each result. The cache holds seeded Gaussian values: the timings do not depend on them, the
quality of pruning a real model's cache does (the Attention page measures that).
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from ..kvcache import bitmap_bytes, csr_bytes, kept_count, token_mask
from ..progress import ProgressFn
from .harness import (
    Case,
    CaseResult,
    attach_baseline,
    budget_spent,
    case_seed,
    check_fits,
    run_case,
    run_cases,
    skipped,
)

MAX_TOKENS = 131072
MAX_HEADS = 256
MAX_HEAD_DIM = 1024
DEFAULT_LENS = (1024, 2048, 4096, 8192, 16384, 32768)
DEFAULT_SPARSITIES = (0.5, 0.7)
DEFAULT_SHAPES = ((12, 64), (4, 32))
"""(heads, head dim): GPT-2 small / a small LLaMA's attention, and ``lm:small``'s (its context is 256
tokens; only its shape is used here)."""
DEFAULT_WINDOW = 16
"""Recent tokens kept dense (``KVConfig.residual_length``'s default)."""
SUITE = "kv"
BACKENDS = ("masked dense", "CSR", "CSR batched (bmm)")
Kernel = Callable[[torch.Tensor], torch.Tensor]
"""A decode-step kernel: query ``[1, H, 1, D]`` -> attention output ``[1, H, 1, D]``."""
Drawn = tuple[torch.Tensor, torch.Tensor, dict[float, tuple[torch.Tensor, torch.Tensor]]]


def check_kv_settings(lens: Sequence[int], sparsities: Sequence[float], shapes: Sequence[tuple[int, int]],
                      window: int) -> tuple[list[int], list[float], list[tuple[int, int]], int]:
    """Validate the suite's settings before anything is allocated.

    Returns:
        The lengths, sparsities, (heads, head dim) shapes and window, as lists of plain numbers.

    Raises:
        ValueError: a sparsity outside [0, 1), a head count or head dim that is not a positive whole
            number, a negative window, a length shorter than the window, or an empty selection.
    """
    def whole(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if not whole(window) or not 0 <= window <= MAX_TOKENS:
        raise ValueError(f"the dense window must be a whole number of tokens in 0..{MAX_TOKENS:,}, got {window!r}")
    out_lens = []
    for L in lens:
        if not whole(L) or not 1 <= L <= MAX_TOKENS:
            raise ValueError(f"cached tokens L must be whole numbers between 1 and {MAX_TOKENS:,}, got {L!r}")
        if L < window:
            raise ValueError(f"cached tokens L={L} is shorter than the dense window of {window} recent tokens; "
                             f"use L >= {window} or a smaller window")
        out_lens.append(L)
    out_sp = []
    for s in sparsities:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 <= float(s) < 1.0:
            raise ValueError(f"KV sparsity must be in [0, 1) (the fraction of each K/V vector zeroed), got {s!r}")
        out_sp.append(float(s))
    out_shapes = []
    for shape in shapes:
        try:
            heads, dim = shape
        except (TypeError, ValueError):
            raise ValueError(f"a KV shape is (heads, head dim), got {shape!r}") from None
        if not whole(heads) or not 1 <= heads <= MAX_HEADS:
            raise ValueError(f"heads H must be a whole number between 1 and {MAX_HEADS}, got {heads!r}")
        if not whole(dim) or not 1 <= dim <= MAX_HEAD_DIM:
            raise ValueError(f"head dim D must be a positive whole number (at most {MAX_HEAD_DIM}), got {dim!r}")
        out_shapes.append((heads, dim))
    for what, values in (("cache length", out_lens), ("sparsity", out_sp), ("(heads, head dim) shape", out_shapes)):
        if not values:
            raise ValueError(f"give at least one {what} for the KV decode suite")
    return out_lens, out_sp, out_shapes, window


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax(q·Kᵀ/√D)·V`` in float64, plain torch (the independent reference every kernel is checked on)."""
    q64, k64, v64 = q.double(), k.double(), v.double()
    scores = q64 @ k64.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return torch.softmax(scores, dim=-1) @ v64


def block_diagonal_csr(x: torch.Tensor) -> torch.Tensor:
    """The nonzeros of ``x [H, R, C]`` as one CSR matrix ``[H·R, H·C]``, head ``h`` in diagonal block ``h``
    (int32 row pointers and column indices)."""
    heads, rows, cols = x.shape
    flat = x.reshape(heads * rows, cols).to_sparse_csr()
    crow = flat.crow_indices()
    per_head = crow[rows::rows] - crow[:-1:rows]
    offsets = torch.arange(heads, device=x.device) * cols
    col = flat.col_indices() + torch.repeat_interleave(offsets, per_head)
    return torch.sparse_csr_tensor(crow.to(torch.int32), col.to(torch.int32), flat.values(),
                                   (heads * rows, heads * cols), check_invariants=False)  # valid by construction


def csr_tensor_bytes(t: torch.Tensor) -> int:
    """Bytes the torch CSR tensor ``t`` holds (values, column indices, row pointers)."""
    parts = (t.values(), t.col_indices(), t.crow_indices())
    return sum(p.numel() * p.element_size() for p in parts)


def csr_decode(k_csr: torch.Tensor, vt_csr: torch.Tensor, heads: int, dim: int) -> Kernel:
    """The CSR kernel: ``q [1, H, 1, D] -> out [1, H, 1, D]`` with block-diagonal K and Vᵀ (``block_diagonal_csr``)."""
    scale = 1.0 / math.sqrt(dim)
    tokens = k_csr.shape[0] // heads

    def run(q: torch.Tensor) -> torch.Tensor:
        scores = (k_csr @ (q.reshape(heads * dim, 1) * scale)).reshape(heads, tokens)
        p = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        return (vt_csr @ p.reshape(heads * tokens, 1)).reshape(1, heads, 1, dim)

    return run


def csr_batched_decode(k_csr: torch.Tensor, vt_csr: torch.Tensor) -> Kernel:
    """``torch.bmm`` with batched CSR K ``[H, L, D]`` and Vᵀ ``[H, D, L]`` (CUDA)."""
    heads, _, dim = k_csr.shape
    scale = 1.0 / math.sqrt(dim)

    def run(q: torch.Tensor) -> torch.Tensor:
        scores = torch.bmm(k_csr, q.reshape(heads, dim, 1) * scale)  # [H, L, 1]
        p = torch.softmax(scores.float(), dim=1).to(q.dtype)
        return torch.bmm(vt_csr, p).reshape(1, heads, 1, dim)

    return run


def kv_suite(lens: Sequence[int] = DEFAULT_LENS, sparsities: Sequence[float] = DEFAULT_SPARSITIES,
             shapes: Sequence[tuple[int, int]] = DEFAULT_SHAPES, *, device: str, dtype: torch.dtype = torch.float32,
             window: int = DEFAULT_WINDOW, repeats: int = 10, n_queries: int = 3,
             progress: ProgressFn | None = None) -> list[CaseResult]:
    """Dense SDPA vs masked dense vs CSR for one decode step over a pruned KV cache (see the module's text).

    Args:
        lens: cached tokens ``L``.
        sparsities: fraction of each K and V vector zeroed (``token_mask``), in [0, 1).
        shapes: ``(heads, head dim)`` pairs.
        device: ``cpu`` or ``cuda``.
        dtype: the cache's and query's dtype (float32 on CPU; half precision on CUDA).
        window: recent tokens kept dense (at most every ``L``).
        repeats: timed calls per kernel.
        n_queries: query tokens rotated through the timed calls (the cache stays the same, as in decoding).

    Returns:
        Per case: the ``SDPA dense`` baseline, then per sparsity ``masked dense`` and ``CSR`` (and on CUDA
        ``CSR batched (bmm)``), each with ``speedup`` over the baseline and the layouts' bytes in ``params``.
    """
    return run_cases(kv_cases(lens, sparsities, shapes, device=device, dtype=dtype, window=window, repeats=repeats,
                              n_queries=n_queries), progress)


def kv_cases(lens: Sequence[int], sparsities: Sequence[float], shapes: Sequence[tuple[int, int]], *, device: str,
             dtype: torch.dtype = torch.float32, window: int = DEFAULT_WINDOW, repeats: int = 10,
             n_queries: int = 3) -> list[Case]:
    """``kv_suite``'s cases, one per (shape, length) with every sparsity, validated but not measured.

    Each shape draws one cache of the longest length (seeded by the shape and that length) and each case
    takes its first ``L`` tokens, so the per-token masks (``token_mask``, the slow part) are computed once per
    shape and sparsity: a token's mask depends on that token alone, so the first ``L - window`` tokens' masks
    are those of the long cache, and the last ``window`` tokens of each case stay dense.
    """
    lens, sparsities, shapes, window = check_kv_settings(lens, sparsities, shapes, window)
    element = torch.finfo(dtype).bits // 8
    longest = max(lens)
    for heads, dim in shapes:
        # The long K and V and their masks, a case's copies (pruned and full), two CSR tensors, the float64 reference.
        n = heads * longest * dim
        check_fits(n * (2 * element + len(sparsities) * 2 + 4 * element + 2 * (element + 4) + 16), device,
                   f"a KV cache of {longest} tokens × {heads} heads × {dim}")
    cuda = device.startswith("cuda")
    drawn: dict[tuple[int, int], Drawn] = {}

    def cache(heads: int, dim: int) -> Drawn:
        if (heads, dim) not in drawn:
            drawn.clear()  # one shape at a time
            gen = torch.Generator(device="cpu").manual_seed(case_seed(SUITE, heads, dim, longest))
            k, v = (torch.randn(1, heads, longest, dim, generator=gen).to(device=device, dtype=dtype) for _ in range(2))
            drawn[(heads, dim)] = (k, v, {})
        return drawn[(heads, dim)]

    def masks(heads: int, dim: int, s: float, L: int) -> tuple[torch.Tensor, torch.Tensor]:
        k, v, by_sparsity = cache(heads, dim)
        if s not in by_sparsity:
            by_sparsity[s] = (token_mask(k, s), token_mask(v, s))
        out = []
        for full in by_sparsity[s]:
            keep = full[:, :, :L].clone()
            keep[:, :, L - window:] = True
            out.append(keep)
        return out[0], out[1]

    def measure(heads: int, dim: int, L: int) -> list[CaseResult]:
        case = f"H{heads} D{dim} L{L}"
        params = {"heads": heads, "head_dim": dim, "tokens": L, "window": window, "batch": 1}
        spent = budget_spent()
        if spent:
            return [skipped(SUITE, case, b, device, dtype, params, spent) for b in ("SDPA dense", *BACKENDS)]
        k_long, v_long, _ = cache(heads, dim)
        k, v = k_long[:, :, :L].contiguous(), v_long[:, :, :L].contiguous()
        gen = torch.Generator(device="cpu").manual_seed(case_seed(SUITE, heads, dim, L))
        queries = [torch.randn(1, heads, 1, dim, generator=gen).to(device=device, dtype=dtype)
                   for _ in range(n_queries)]
        dense_bytes = 2 * k.numel() * element
        base = run_case(suite=SUITE, case=case, backend="SDPA dense", device=device, dtype=dtype,
                        params={**params, "bytes_dense": dense_bytes},
                        fn=lambda q: F.scaled_dot_product_attention(q, k, v), reference=_reference(k, v),
                        inputs=queries, flops=4.0 * k.numel(), bytes_moved=float(dense_bytes), repeats=repeats)
        out = [base]
        if not cuda:
            out.append(skipped(SUITE, case, "CSR batched (bmm)", device, dtype, params,
                               "torch has no CPU kernel for batched CSR @ dense (bmm); it runs on CUDA"))
        for s in sparsities:
            keep_k, keep_v = masks(heads, dim, s, L)
            out += sparse_results(case, {**params, "sparsity": s, "kept_per_vector": kept_count(dim, s)},
                                  k * keep_k, v * keep_v, queries, base)
        return out

    def sparse_results(case: str, params: dict[str, Any], kp: torch.Tensor, vp: torch.Tensor,
                       queries: list[torch.Tensor], base: CaseResult) -> list[CaseResult]:
        kept = int(torch.count_nonzero(kp)) + int(torch.count_nonzero(vp))
        p = {**params, "density": kept / (2 * kp.numel()), "value_bytes": element,
             "bytes_dense": 2 * kp.numel() * element,
             "bytes_bitmap": bitmap_bytes(kp, element) + bitmap_bytes(vp, element),
             "bytes_csr": csr_bytes(kp, element) + csr_bytes(vp, element)}
        reference = _reference(kp, vp)
        results = [run_case(suite=SUITE, case=case, backend="masked dense", device=device, dtype=dtype, params=p,
                            fn=lambda q: F.scaled_dot_product_attention(q, kp, vp), reference=reference,
                            inputs=queries, flops=4.0 * kp.numel(), bytes_moved=float(p["bytes_dense"]),
                            repeats=repeats)]
        kernels: list[tuple[str, Callable[[], tuple[Kernel, int]]]] = [
            ("CSR", lambda: _block_kernel(kp[0], vp[0]))]
        if cuda:
            kernels.append(("CSR batched (bmm)", lambda: _batched_kernel(kp[0], vp[0])))
        for backend, build in kernels:
            try:
                fn, held = build()
            except (RuntimeError, NotImplementedError, ValueError, TypeError) as err:
                results.append(skipped(SUITE, case, backend, device, dtype, p,
                                       f"cannot build: {type(err).__name__}: {str(err).splitlines()[0][:200]}"))
                continue
            results.append(run_case(suite=SUITE, case=case, backend=backend, device=device, dtype=dtype,
                                    params={**p, "bytes_torch_csr": held}, fn=fn, reference=reference,
                                    inputs=queries, flops=2.0 * kept, bytes_moved=float(held), repeats=repeats))
        attach_baseline(results, base)
        return results

    return [Case(SUITE, f"KV decode H{h}×D{d} at {L} tokens", partial(measure, h, d, L))
            for h, d in shapes for L in lens]


def _reference(k: torch.Tensor, v: torch.Tensor) -> Kernel:
    """``reference_attention`` over this cache, computed once per query (every kernel of a case is checked on it)."""
    memo: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def ref(q: torch.Tensor) -> torch.Tensor:
        if id(q) not in memo:
            memo[id(q)] = (q, reference_attention(q, k, v))  # the query is kept, so its id is not reused
        return memo[id(q)][1]

    return ref


def _block_kernel(k: torch.Tensor, v: torch.Tensor) -> tuple[Kernel, int]:
    """The CSR kernel over pruned ``[H, L, D]`` K and V, and the bytes its two CSR tensors hold."""
    heads, _, dim = k.shape
    k_csr = block_diagonal_csr(k)
    vt_csr = block_diagonal_csr(v.transpose(-1, -2).contiguous())
    return csr_decode(k_csr, vt_csr, heads, dim), csr_tensor_bytes(k_csr) + csr_tensor_bytes(vt_csr)


def _batched_kernel(k: torch.Tensor, v: torch.Tensor) -> tuple[Kernel, int]:
    """The batched-CSR kernel (``torch.bmm``); each head keeps the same count, as batched CSR requires."""
    k_csr = k.to_sparse_csr()
    vt_csr = v.transpose(-1, -2).contiguous().to_sparse_csr()
    return csr_batched_decode(k_csr, vt_csr), csr_tensor_bytes(k_csr) + csr_tensor_bytes(vt_csr)


def kv_verdicts(results: Sequence[CaseResult]) -> list[dict[str, Any]]:
    """Per case, sparsity and sparse backend: the speedup over dense SDPA, its range and the verdict, with the
    memory of each layout.

    The range is ``[dense q1 / kernel q3, dense q3 / kernel q1]`` (the interquartile ranges of both timings);
    the verdict is "faster" when the whole range is above 1, "slower" when it is below 1, else "no clear
    difference". A kernel that was not timed says why.

    Returns:
        Rows ``{shape, tokens, sparsity, backend, speedup, range, verdict, dense MiB, bitmap MiB, CSR MiB}``
        (K and V together; ``*_MiB`` at the timed dtype's value size) in the run's order.
    """
    bases = {(r.case, r.device): r for r in results if r.suite == SUITE and r.backend == "SDPA dense"}
    rows = []
    for r in results:
        if r.suite != SUITE or r.backend == "SDPA dense" or "sparsity" not in r.params:
            continue
        base = bases.get((r.case, r.device))
        p = r.params
        lo = hi = None
        if r.status != "ok" or base is None or base.status != "ok" or r.speedup is None:
            why = r.message or r.status if r.status != "ok" else "the dense baseline was not timed"
            verdict = f"not measured: {why}"[:200]
        else:
            assert base.q1_ms is not None and base.q3_ms is not None and r.q1_ms and r.q3_ms
            lo, hi = base.q1_ms / r.q3_ms, base.q3_ms / r.q1_ms
            verdict = "faster" if lo > 1.0 else "slower" if hi < 1.0 else "no clear difference"
        mib = 2.0**20
        rows.append({"shape": f"H{p.get('heads')}×D{p.get('head_dim')}", "tokens": p.get("tokens"),
                     "sparsity": p.get("sparsity"), "backend": r.backend, "speedup": r.speedup,
                     "range": None if lo is None else f"{lo:.2f}–{hi:.2f}", "verdict": verdict,
                     "dense MiB": _mib(p.get("bytes_dense"), mib), "bitmap MiB": _mib(p.get("bytes_bitmap"), mib),
                     "CSR MiB": _mib(p.get("bytes_csr"), mib)})
    return rows


def _mib(value: object, mib: float) -> float | None:
    return round(value / mib, 3) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def kv_summary(results: Sequence[CaseResult]) -> list[str]:
    """One sentence per sparse backend: in how many timed cases it was faster, slower or neither."""
    by_backend: dict[str, list[str]] = {}
    for row in kv_verdicts(results):
        by_backend.setdefault(row["backend"], []).append(row["verdict"])
    out = []
    for backend, verdicts in by_backend.items():
        timed = [v for v in verdicts if not v.startswith("not measured")]
        if not timed:
            out.append(f"{backend}: not measured ({verdicts[0].removeprefix('not measured: ')})")
            continue
        counts = {w: sum(1 for v in timed if v == w) for w in ("faster", "slower", "no clear difference")}
        out.append(f"{backend}: faster than dense SDPA in {counts['faster']} of {len(timed)} timed cases, "
                   f"slower in {counts['slower']}, no clear difference in {counts['no clear difference']}")
    return out


__all__ = [
    "BACKENDS", "DEFAULT_LENS", "DEFAULT_SHAPES", "DEFAULT_SPARSITIES", "DEFAULT_WINDOW", "block_diagonal_csr",
    "check_kv_settings", "csr_batched_decode", "csr_decode", "kv_cases", "kv_suite", "kv_summary", "kv_verdicts",
    "reference_attention",
]

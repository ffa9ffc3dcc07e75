"""Sparsity masks: N:M and unstructured, and SAD between masks.

Conventions: a mask is a ``torch.bool`` tensor of the weight's shape, True = kept. N counts the
*kept* entries of every group of M (SR-STE's convention).

Over the ~450-line guide on purpose: the compiled M=4 and M=8 kernels spell their sorting networks
out as straight-line compare-exchanges (numba vectorises only that form), and they belong next to
the contract they implement.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Iterator, Mapping, TypeAlias

import numba
import numpy as np
import torch

# Pairwise comparison counting costs m(m-1)/2 passes over numel/m values; past this group size a
# stable sort is cheaper.
_PAIRWISE_MAX_M = 16
# Groups processed per chunk: small enough that the working set stays in the CPU's L2 cache,
# large enough that per-op overhead stays small.
_CHUNK_GROUPS = 1 << 16
# Below this many entries the CPU kernels run on one thread: waking the parallel kernel's threads
# costs more than the work and, on a loaded machine, can wait milliseconds for a second core (a
# training step on small layers). Measured on 256×64, 2:4: serial kernel 36 µs median / 156 µs
# p99 with both cores busy, against 19 µs / 4.1 ms parallel and 276 µs / 4.3 ms for a stable sort.
_SMALL = 1 << 15


def _check_scores(weight: torch.Tensor, scores: torch.Tensor | None) -> torch.Tensor:
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if scores is None:
        scores = weight
    elif not isinstance(scores, torch.Tensor):
        raise TypeError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    elif scores.shape != weight.shape:
        raise ValueError(f"scores shape {tuple(scores.shape)} does not match weight shape {tuple(weight.shape)}")
    if scores.is_complex():
        raise ValueError("complex scores are not supported")
    scores = scores.detach()
    if not scores.is_floating_point():
        scores = scores.double()  # exact for integer inputs
    return scores


def _check_no_nan(scores: torch.Tensor) -> None:
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN; cannot rank them")


# The CPU kernels rank each group on integer keys: the bits of |x| (float32 bits order like the
# values for non-negative floats) shifted left, with (m - 1 - position) in the low bits. Keys in a
# group are then all distinct, and a larger key means a larger |x|, or an equal |x| at a lower
# position: exactly the contract's tie rule. The generic kernel copies groups in blocks into a
# members-major buffer so the comparisons run over contiguous memory. The M=4 and M=8 kernels
# instead keep a group's keys in registers, find the n-th largest key with a fixed
# compare-exchange network (LLVM vectorizes the loop across groups), and write the group's keep
# flags as one packed little-endian word: one pass over the input, one over the output.
_BLOCK = 1024
_ABS_MASK = 0x7FFFFFFF
_F32_INF_BITS = 0x7F800000
# The packed-word kernels put member i in byte i of the word.
_PACKED_OUTPUT = sys.byteorder == "little"


@numba.njit(inline="always")
def _ce(a: np.int64, b: np.int64) -> tuple[np.int64, np.int64]:  # pragma: no cover - compiled
    return max(a, b), min(a, b)


@numba.njit(inline="always")
def _key(bit_pattern: np.int32, shift: int, low: int) -> np.int64:  # pragma: no cover - compiled
    return (np.int64(bit_pattern & _ABS_MASK) << shift) | low


@numba.njit(inline="always")
def _flags4(  # pragma: no cover - compiled
    k0: np.int64, k1: np.int64, k2: np.int64, k3: np.int64, t: np.int64
) -> np.uint32:
    """Four keep flags, key >= threshold, as the bytes of a little-endian uint32."""
    return (np.uint32(k0 >= t) | (np.uint32(k1 >= t) << 8) | (np.uint32(k2 >= t) << 16)
            | (np.uint32(k3 >= t) << 24))


@numba.njit(parallel=True, cache=True, error_model="numpy", boundscheck=False)
def _keys_kernel_m4(  # pragma: no cover - compiled; tested through nm_mask
    bits: np.ndarray, n: int, out32: np.ndarray
) -> int | np.integer:
    groups = bits.shape[0] // 4
    n_blocks = (groups + _BLOCK - 1) // _BLOCK
    nan_key = (_F32_INF_BITS << 2) | 3  # any larger key holds a NaN
    nan: int | np.integer = 0  # a sum of NumPy comparisons to mypy; an int64 in the compiled code
    for blk in numba.prange(n_blocks):
        for g in range(blk * _BLOCK, min(groups, (blk + 1) * _BLOCK)):
            b = g * 4
            k0, k1 = _key(bits[b], 2, 3), _key(bits[b + 1], 2, 2)
            k2, k3 = _key(bits[b + 2], 2, 1), _key(bits[b + 3], 2, 0)
            nan += (k0 > nan_key) + (k1 > nan_key) + (k2 > nan_key) + (k3 > nan_key)
            # The n-th largest of four keys, from a sorting network on the two pairs.
            hi01, lo01 = _ce(k0, k1)
            hi23, lo23 = _ce(k2, k3)
            if n == 1:
                t = max(hi01, hi23)
            elif n == 2:
                t = max(min(hi01, hi23), max(lo01, lo23))
            else:
                t = min(max(lo01, lo23), min(hi01, hi23))
            out32[g] = _flags4(k0, k1, k2, k3, t)
    return nan


@numba.njit(parallel=True, cache=True, error_model="numpy", boundscheck=False)
def _keys_kernel_m8(  # pragma: no cover - compiled; tested through nm_mask
    bits: np.ndarray, n: int, out64: np.ndarray
) -> int | np.integer:
    groups = bits.shape[0] // 8
    n_blocks = (groups + _BLOCK - 1) // _BLOCK
    nan_key = (_F32_INF_BITS << 3) | 7
    nan: int | np.integer = 0  # a sum of NumPy comparisons to mypy; an int64 in the compiled code
    for blk in numba.prange(n_blocks):
        for g in range(blk * _BLOCK, min(groups, (blk + 1) * _BLOCK)):
            b = g * 8
            k0, k1 = _key(bits[b], 3, 7), _key(bits[b + 1], 3, 6)
            k2, k3 = _key(bits[b + 2], 3, 5), _key(bits[b + 3], 3, 4)
            k4, k5 = _key(bits[b + 4], 3, 3), _key(bits[b + 5], 3, 2)
            k6, k7 = _key(bits[b + 6], 3, 1), _key(bits[b + 7], 3, 0)
            nan += (
                (k0 > nan_key) + (k1 > nan_key) + (k2 > nan_key) + (k3 > nan_key)
                + (k4 > nan_key) + (k5 > nan_key) + (k6 > nan_key) + (k7 > nan_key)
            )
            # Knuth's optimal 19-comparator network (6 layers) sorts the keys descending into a0..a7.
            a0, a2 = _ce(k0, k2)
            a1, a3 = _ce(k1, k3)
            a4, a6 = _ce(k4, k6)
            a5, a7 = _ce(k5, k7)
            a0, a4 = _ce(a0, a4)
            a1, a5 = _ce(a1, a5)
            a2, a6 = _ce(a2, a6)
            a3, a7 = _ce(a3, a7)
            a0, a1 = _ce(a0, a1)
            a2, a3 = _ce(a2, a3)
            a4, a5 = _ce(a4, a5)
            a6, a7 = _ce(a6, a7)
            a2, a4 = _ce(a2, a4)
            a3, a5 = _ce(a3, a5)
            a1, a4 = _ce(a1, a4)
            a3, a6 = _ce(a3, a6)
            a1, a2 = _ce(a1, a2)
            a3, a4 = _ce(a3, a4)
            a5, a6 = _ce(a5, a6)
            if n == 1:
                t = a0
            elif n == 2:
                t = a1
            elif n == 3:
                t = a2
            elif n == 4:
                t = a3
            elif n == 5:
                t = a4
            elif n == 6:
                t = a5
            else:
                t = a6
            out64[g] = np.uint64(_flags4(k0, k1, k2, k3, t)) | (np.uint64(_flags4(k4, k5, k6, k7, t)) << 32)
    return nan


@numba.njit(parallel=True, cache=True, error_model="numpy", boundscheck=False)
def _keys_kernel(  # pragma: no cover - compiled; tested through nm_mask
    bits: np.ndarray, n: int, m: int, shift: int, out: np.ndarray
) -> int:
    groups = bits.shape[0] // m
    n_blocks = (groups + _BLOCK - 1) // _BLOCK
    nan = 0
    for blk in numba.prange(n_blocks):
        g0 = blk * _BLOCK
        size = min(groups, g0 + _BLOCK) - g0
        keys = np.empty((m, _BLOCK), np.int64)
        beaten_by = np.empty(_BLOCK, np.int32)
        base = g0 * m
        for g in range(size):
            for i in range(m):
                v = bits[base + g * m + i] & _ABS_MASK
                nan += v > _F32_INF_BITS
                keys[i, g] = (np.int64(v) << shift) | (m - 1 - i)
        for i in range(m):
            ki = keys[i]
            beaten_by[:size] = 0
            for j in range(m):
                if j != i:
                    kj = keys[j]
                    for g in range(size):
                        beaten_by[g] += kj[g] > ki[g]
            for g in range(size):
                out[base + g * m + i] = beaten_by[g] < n
    return nan


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _float_kernel(a: np.ndarray, n: int, out: np.ndarray) -> int:  # pragma: no cover - compiled; tested through nm_mask
    # float64 scores do not fit the 31-bit keys: compare values directly, lower index wins ties.
    groups, m = a.shape
    nan = 0
    for g in numba.prange(groups):
        for i in range(m):
            ai = abs(a[g, i])
            nan += ai != ai
            wins = 0
            for j in range(i):
                wins += ai > abs(a[g, j])
            for j in range(i + 1, m):
                wins += ai >= abs(a[g, j])
            out[g, i] = wins >= m - n
    return nan


def _cpu_keep(groups: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """groups: [G, m] CPU scores. Returns [G, m] bool keep."""
    nan: int | np.integer  # NaN count from the kernel
    if groups.dtype == torch.float64:
        arr = groups.contiguous().numpy()
        out = np.empty(arr.shape, dtype=np.bool_)
        nan = _float_kernel(arr, n, out)
    else:
        bits = groups.to(torch.float32).contiguous().view(torch.int32).reshape(-1).numpy()
        out = np.empty(bits.shape, dtype=np.bool_)
        if m == 4 and _PACKED_OUTPUT:
            nan = _keys_kernel_m4(bits, n, out.view(np.uint32))
        elif m == 8 and _PACKED_OUTPUT:
            nan = _keys_kernel_m8(bits, n, out.view(np.uint64))
        else:
            nan = _keys_kernel(bits, n, m, max(1, (m - 1).bit_length()), out)
    if nan:
        raise ValueError(f"scores contain {nan} NaN value(s); cannot rank them")
    return torch.from_numpy(out).reshape(groups.shape)


def _pairwise_keep(a: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """a: [m, G] contiguous non-negative scores of G groups. Returns [m, G] bool keep."""
    g = a.shape[1]
    wins = torch.zeros((m, g), dtype=torch.uint8, device=a.device)
    cmp = torch.empty(g, dtype=torch.bool, device=a.device)
    for i in range(m):
        for j in range(i + 1, m):
            # Entry i beats entry j when |a_i| >= |a_j|: on ties the lower index wins.
            torch.ge(a[i], a[j], out=cmp)
            wins[i].add_(cmp)
            wins[j].add_(~cmp)
    # wins + losses = m - 1; kept <=> fewer than n entries beat it <=> wins >= m - n.
    return wins >= (m - n)


def _sorted_keep(a: torch.Tensor, n: int) -> torch.Tensor:
    """a: [G, m] scores. Stable descending sort keeps the lower index first among ties."""
    order = torch.sort(a, dim=1, descending=True, stable=True).indices[:, :n]
    keep = torch.zeros_like(a, dtype=torch.bool)
    keep.scatter_(1, order, True)
    return keep


@contextlib.contextmanager
def serial_kernels() -> Iterator[None]:
    """Run the compiled mask kernels on one thread inside the block (numba's setting is per
    calling thread, so other sessions are not affected; restored on exit)."""
    previous = numba.get_num_threads()
    if previous == 1:
        yield
        return
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


def _serial_cpu_keep(groups: torch.Tensor, n: int, m: int) -> torch.Tensor:
    with serial_kernels():
        return _cpu_keep(groups, n, m)


def _nm_groups_keep(groups: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """groups: [G, m] scores (any sign). Returns [G, m] bool keep."""
    if groups.device.type == "cpu" and m <= _PAIRWISE_MAX_M:
        if groups.numel() < _SMALL:
            return _serial_cpu_keep(groups, n, m)
        return _cpu_keep(groups, n, m)
    _check_no_nan(groups)
    if groups.numel() < _SMALL:
        return _sorted_keep(groups.abs(), n)
    if m > _PAIRWISE_MAX_M:
        return _sorted_keep(groups.abs(), n)
    return _torch_keep(groups, n, m)


def _torch_keep(groups: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Device-agnostic pairwise ranking in torch ops (the path for CUDA tensors)."""
    num = groups.shape[0]
    out = torch.empty((num, m), dtype=torch.bool, device=groups.device)
    buf = torch.empty((m, min(num, _CHUNK_GROUPS)), dtype=groups.dtype, device=groups.device)
    for start in range(0, num, _CHUNK_GROUPS):
        stop = min(start + _CHUNK_GROUPS, num)
        a = buf[:, : stop - start]
        # |x| written transposed so each group member is a contiguous row.
        torch.abs(groups[start:stop].t(), out=a)
        out[start:stop] = _pairwise_keep(a, n, m).t()
    return out


def nm_mask(
    weight: torch.Tensor,
    n: int,
    m: int,
    *,
    dim: int = -1,
    scores: torch.Tensor | None = None,
) -> torch.Tensor:
    """N:M mask: in every run of ``m`` consecutive entries along ``dim``, keep the ``n`` largest.

    Args:
        weight: the tensor to mask (any shape).
        n: entries kept per group, ``1 <= n < m``.
        m: group size; ``weight.shape[dim]`` must be a multiple of it.
        dim: the dimension the groups run along (-1: a Linear weight's input features).
        scores: importance, same shape as ``weight``; default ``|weight|``. Ranked by absolute value.

    Returns:
        A bool tensor of ``weight``'s shape, True = kept. Ties go to the lower index in the group,
        so the result is deterministic.
    """
    if isinstance(n, bool) or isinstance(m, bool) or not isinstance(n, int) or not isinstance(m, int):
        raise TypeError(f"n and m must be integers, got n={n!r}, m={m!r}")
    if m < 2 or not 1 <= n < m:
        raise ValueError(f"N:M needs 1 <= N < M (N = kept per group of M), got N={n}, M={m}")
    s = _check_scores(weight, scores)
    if s.dim() == 0:
        raise ValueError("cannot build an N:M mask for a 0-d tensor")
    try:
        d = dim % s.dim() if -s.dim() <= dim < s.dim() else None
    except TypeError:
        d = None
    if d is None:
        raise ValueError(f"dim {dim!r} is out of range for a tensor of shape {tuple(s.shape)}")
    if s.shape[d] % m:
        raise ValueError(
            f"dimension {d} of shape {tuple(s.shape)} has size {s.shape[d]}, which is not a multiple of M={m}"
        )
    moved = s.movedim(d, -1)
    groups = moved.reshape(-1, m)
    keep = _nm_groups_keep(groups, n, m)
    return keep.reshape(moved.shape).movedim(-1, d).contiguous()


def unstructured_mask(
    weight: torch.Tensor,
    sparsity: float,
    *,
    scores: torch.Tensor | None = None,
) -> torch.Tensor:
    """Unstructured mask pruning exactly ``round(sparsity * numel)`` entries of smallest ``|scores|``.

    Args:
        weight: the tensor to mask.
        sparsity: the pruned fraction, ``0 <= sparsity < 1``.
        scores: importance, same shape as ``weight``; default ``|weight|``.

    Returns:
        A bool tensor of ``weight``'s shape, True = kept. Among equal scores the entries with the
        lower flat index are kept.
    """
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise TypeError(f"sparsity must be a number, got {sparsity!r}")
    if not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"sparsity must satisfy 0 <= sparsity < 1 (fraction pruned), got {sparsity}")
    s = _check_scores(weight, scores)
    _check_no_nan(s)
    numel = s.numel()
    n_prune = int(round(float(sparsity) * numel))
    if n_prune == 0:
        return torch.ones(s.shape, dtype=torch.bool, device=s.device)
    return topk_keep(s, numel - n_prune)


def topk_keep(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Mask keeping the ``k`` largest ``|scores|``; among equal scores the lower flat index is kept."""
    flat = scores.detach().reshape(-1).abs()
    numel = flat.numel()
    if k >= numel:
        return torch.ones(scores.shape, dtype=torch.bool, device=flat.device)
    if k <= 0:
        return torch.zeros(scores.shape, dtype=torch.bool, device=flat.device)
    # Selection instead of a full sort: the k-th largest value is the threshold, and only the
    # entries equal to it need an index-ordered tie break.
    threshold = torch.kthvalue(flat, numel - k + 1).values
    keep = flat > threshold
    need = k - int(keep.sum())
    if need > 0:
        ties = torch.nonzero(flat == threshold).flatten()[:need]
        keep[ties] = True
    return keep.reshape(scores.shape)


def conv_nm_mask(
    weight: torch.Tensor,
    n: int,
    m: int,
    *,
    grouping: str = "channel",
    scores: torch.Tensor | None = None,
) -> torch.Tensor:
    """N:M mask for a conv weight ``[out, in, *kernel]``.

    Args:
        grouping: ``"channel"`` groups M consecutive input channels at the same kernel position
            (NVIDIA ASP and current SR-STE code); ``"kernel"`` groups along the flattened
            ``in * kh * kw`` axis (the original SR-STE code).
    """
    if weight.dim() < 3:
        raise ValueError(f"conv_nm_mask expects a conv weight [out, in, *kernel], got shape {tuple(weight.shape)}")
    if grouping == "channel":
        return nm_mask(weight, n, m, dim=1, scores=scores)
    if grouping == "kernel":
        flat_scores = None if scores is None else scores.reshape(weight.shape[0], -1)
        try:
            return nm_mask(weight.reshape(weight.shape[0], -1), n, m, scores=flat_scores).reshape(weight.shape)
        except ValueError as err:
            raise ValueError(f"kernel-wise grouping of conv weight {tuple(weight.shape)}: {err}") from None
    raise ValueError(f"grouping must be 'channel' or 'kernel', got {grouping!r}")


def _as_bool(t: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype == torch.bool:
        return t
    if not torch.all((t == 0) | (t == 1)):
        raise ValueError(f"{name} is not a binary mask (values other than 0/1)")
    return t != 0


MaskSet: TypeAlias = Mapping[str, torch.Tensor]
"""Masks by layer name."""


def sad(mask_a: torch.Tensor | MaskSet, mask_b: torch.Tensor | MaskSet) -> int:
    """Sparse Architecture Divergence: positions whose keep/prune bit differs (‖E_a − E_b‖₁).

    Args:
        mask_a, mask_b: two mask tensors of one shape, or two dicts name -> mask with the same keys
            (the per-layer SADs are summed).

    Returns:
        The count as a Python int.
    """
    if isinstance(mask_a, Mapping) or isinstance(mask_b, Mapping):
        if not (isinstance(mask_a, Mapping) and isinstance(mask_b, Mapping)):
            raise ValueError("sad takes two tensors or two dicts of tensors, not one of each")
        if set(mask_a) != set(mask_b):
            only_a = sorted(set(mask_a) - set(mask_b))[:5]
            only_b = sorted(set(mask_b) - set(mask_a))[:5]
            raise ValueError(f"mask dicts have different keys: only in first {only_a}, only in second {only_b}")
        return sum(sad(mask_a[k], mask_b[k]) for k in mask_a)
    a = _as_bool(mask_a, "mask_a")
    b = _as_bool(mask_b, "mask_b")
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return int(torch.count_nonzero(a ^ b))


def warmup() -> None:
    """Compile (or load from the on-disk cache) the CPU mask kernels for the common dtypes."""
    w = torch.randn(8, 16)
    for n, m in ((2, 4), (2, 8), (3, 16)):  # the M=4, M=8 and generic kernels
        nm_mask(w, n, m)
    nm_mask(w.double(), 2, 4)

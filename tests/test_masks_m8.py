"""The dedicated M=8 CPU kernel of nm_mask against a plain-loop reference."""
import itertools

import numpy as np
import pytest
import torch

import sparsekit
from sparsekit import masks

M = 8
NS = range(1, M)


def ref_order(group):
    """Member indices of one group, best first: a stable sort on -|v| keeps the lower index first on ties."""
    mags = [abs(v) for v in group]
    return sorted(range(len(mags)), key=lambda i: -mags[i])


def ref_keep_rows(rows, ns=NS):
    """rows: [G, M] tensor. Returns {n: [G, M] bool keep} from one stable sort per group."""
    orders = [ref_order(group) for group in rows.tolist()]
    out = {}
    for n in ns:
        keep = []
        for order in orders:
            kept = set(order[:n])
            keep.append([i in kept for i in range(M)])
        out[n] = torch.tensor(keep, dtype=torch.bool).reshape(rows.shape)
    return out


def ref_nm_along(w, n, dim):
    """Reference mask for groups of M along ``dim`` of any-shaped ``w``."""
    moved = w.movedim(dim, -1)
    keep = ref_keep_rows(moved.reshape(-1, M), ns=[n])[n]
    return keep.reshape(moved.shape).movedim(-1, dim)


@pytest.fixture
def m8_kernel_only(monkeypatch):
    """Make the generic kernel fail, so a passing test proves the M=8 kernel produced the mask."""
    if not masks._PACKED_OUTPUT:
        pytest.skip("the packed M=8 kernel serves little-endian machines")

    def generic_kernel_must_not_run(*args):
        raise AssertionError("the generic kernel ran for M=8")

    monkeypatch.setattr(masks, "_keys_kernel", generic_kernel_must_not_run)


# Group counts around the kernel's block size, below the serial-kernel threshold and above it.
BLOCK_GROUPS = [1, 7, masks._BLOCK - 1, masks._BLOCK, masks._BLOCK + 1, 3 * masks._BLOCK, 5 * masks._BLOCK + 13]


@pytest.mark.parametrize("groups", BLOCK_GROUPS)
def test_random_floats_every_n(m8_kernel_only, groups):
    rows = torch.randn(groups, M, generator=torch.Generator().manual_seed(groups))
    want = ref_keep_rows(rows)
    for n in NS:
        got = sparsekit.nm_mask(rows, n, M)
        assert torch.equal(got, want[n]), n
        assert (got.sum(1) == n).all()


@pytest.mark.parametrize("groups", BLOCK_GROUPS)
def test_many_ties_every_n(m8_kernel_only, groups):
    g = torch.Generator().manual_seed(100 + groups)
    # Small integers: most groups hold equal magnitudes, of both signs, and +0.0 / -0.0.
    rows = torch.randint(-2, 3, (groups, M), generator=g).float()
    rows[rows == 0] = torch.where(torch.rand(int((rows == 0).sum()), generator=g) < 0.5, 0.0, -0.0)
    want = ref_keep_rows(rows)
    for n in NS:
        assert torch.equal(sparsekit.nm_mask(rows, n, M), want[n]), n


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes_every_n(dtype):
    rows = torch.randint(-3, 4, (5 * masks._BLOCK + 3, M), generator=torch.Generator().manual_seed(7)).to(dtype)
    rows[::5] *= 0.37  # non-integer magnitudes, still with ties
    want = ref_keep_rows(rows.double())
    for n in NS:
        assert torch.equal(sparsekit.nm_mask(rows, n, M), want[n]), (dtype, n)


def test_all_tie_structures_every_n(m8_kernel_only):
    # Every group over {+0, -0, 1, -1, 2}, up to the sign of nonzero values: 4^8 groups, each
    # magnitude pattern (hence every tie structure among three distinct magnitudes).
    rows = torch.tensor(list(itertools.product([0.0, -0.0, 1.0, -2.0], repeat=M)))
    want = ref_keep_rows(rows)
    for n in NS:
        assert torch.equal(sparsekit.nm_mask(rows, n, M), want[n]), n


def test_all_orderings_of_distinct_values_every_n(m8_kernel_only):
    # Every permutation of 8 distinct magnitudes (signs alternating): checks the compare-exchange
    # network sorts every input order.
    values = torch.tensor([0.5, -1.0, 2.0, -3.5, 4.0, -1e-30, 1e30, -7.0])
    perms = torch.tensor(list(itertools.permutations(range(M))))
    rows = values[perms]
    want = ref_keep_rows(rows)
    for n in NS:
        assert torch.equal(sparsekit.nm_mask(rows, n, M), want[n]), n


def test_extreme_magnitudes(m8_kernel_only):
    inf = float("inf")
    tiny = float(np.finfo(np.float32).smallest_subnormal)
    big = float(np.finfo(np.float32).max)
    rows = torch.tensor([
        [inf, -inf, big, -big, tiny, -tiny, 0.0, -0.0],
        [-0.0, 0.0, -tiny, tiny, -big, big, -inf, inf],
        [tiny, 0.0, tiny, -0.0, tiny, 0.0, tiny, -0.0],
        [-inf] * M,
    ] * 3000)
    want = ref_keep_rows(rows)
    for n in NS:
        assert torch.equal(sparsekit.nm_mask(rows, n, M), want[n]), n


@pytest.mark.parametrize("dim", [0, 1, 2, 3, -1])
def test_conv_shaped_inputs_along_dim(m8_kernel_only, dim):
    g = torch.Generator().manual_seed(11 + dim)
    w = torch.randint(-3, 4, (16, 24, 8, 8), generator=g).float()
    w[1::2] = torch.randn(8, 24, 8, 8, generator=g)
    for n in NS:
        got = sparsekit.nm_mask(w, n, M, dim=dim)
        assert got.shape == w.shape and got.is_contiguous()
        assert torch.equal(got, ref_nm_along(w, n, dim)), (dim, n)


def test_conv_nm_mask_channel_and_kernel_grouping(m8_kernel_only):
    w = torch.randn(12, 16, 3, 3, generator=torch.Generator().manual_seed(3))
    w[:, ::3] = 0.5
    for n in (2, 4, 6):
        assert torch.equal(masks.conv_nm_mask(w, n, M, grouping="channel"), ref_nm_along(w, n, 1))
        flat = w.reshape(12, -1)
        want = ref_nm_along(flat, n, 1).reshape(w.shape)
        assert torch.equal(masks.conv_nm_mask(w, n, M, grouping="kernel"), want)


def test_scores_rank_instead_of_weight(m8_kernel_only):
    g = torch.Generator().manual_seed(5)
    w = torch.randn(300, 64, generator=g)
    s = torch.randint(-2, 3, (300, 64), generator=g).float()
    for n in NS:
        assert torch.equal(sparsekit.nm_mask(w, n, M, scores=s), ref_nm_along(s, n, 1)), n


@pytest.mark.parametrize("groups", [1, masks._BLOCK + 1, 5 * masks._BLOCK + 13])
@pytest.mark.parametrize("nan", [float("nan"), -float("nan")])
def test_nan_raises(m8_kernel_only, groups, nan):
    for where in (0, groups * M - 1, (groups // 2) * M + 3):
        w = torch.randn(groups, M)
        w.view(-1)[where] = nan
        with pytest.raises(ValueError, match="NaN"):
            sparsekit.nm_mask(w, 4, M)


def test_bad_shapes_still_raise():
    with pytest.raises(ValueError, match="multiple of M=8"):
        sparsekit.nm_mask(torch.randn(4, 12), 2, M)
    with pytest.raises(ValueError, match="1 <= N < M"):
        sparsekit.nm_mask(torch.randn(4, 16), 8, M)


def test_empty_tensor():
    assert sparsekit.nm_mask(torch.randn(0, 16), 3, M).shape == (0, 16)

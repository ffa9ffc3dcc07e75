"""Monarch matrices (sparsekit.structured.monarch) against independent references: the paper's
P L Pᵀ R built from explicit permutation matrices and torch.block_diag, numpy SVDs of each slice
taken in plain loops, alternating least squares on the whole matrix from many starts, random Monarch
matrices, and parameter counts taken from the modules themselves."""
from __future__ import annotations

import functools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from sparsekit.structured import MonarchLinear, monarch_blocks_for_budget, monarch_params, monarch_project
from sparsekit.structured.monarch import check_blocks, monarch_dense

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPES = [(4, 4, 2), (9, 9, 3), (16, 16, 4), (12, 8, 4), (6, 10, 2), (15, 6, 3), (8, 8, 1), (8, 8, 8), (20, 12, 4)]
"""(out, in, blocks)."""


def perm(n: int, pairs) -> torch.Tensor:
    """The n×n permutation matrix with a 1 at each (row, col) of ``pairs``."""
    pairs = list(pairs)
    p = torch.zeros(n, n, dtype=torch.float64)
    for r, c in pairs:
        p[r, c] = 1.0
    assert torch.equal(p.sum(0), torch.ones(n)) and torch.equal(p.sum(1), torch.ones(n))
    return p


def reference_monarch(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """M = P_out · blockdiag(L_j) · P_mid · blockdiag(R_k), written out with explicit matrices.

    R_k is [b, p] (intermediate rows k·b + j); P_mid reorders channel (k, j) to position j·b + k, so
    L_j ([s, b]) reads one channel from every block of R; P_out puts output (j, l) at row l·b + j."""
    b, s = left.shape[0], left.shape[1]
    r_bd = torch.block_diag(*[right[k] for k in range(b)])  # [b·b, in]
    l_bd = torch.block_diag(*[left[j] for j in range(b)])  # [b·s, b·b]
    p_mid, p_out = permutations(b, s)
    return p_out @ l_bd @ p_mid @ r_bd


@functools.lru_cache(maxsize=None)
def permutations(b: int, s: int) -> tuple[torch.Tensor, torch.Tensor]:
    p_mid = perm(b * b, [(j * b + k, k * b + j) for j in range(b) for k in range(b)])
    p_out = perm(b * s, [(l * b + j, j * s + l) for j in range(b) for l in range(s)])
    return p_mid, p_out


def random_factors(out, inp, b, gen):
    s, p = out // b, inp // b
    return (torch.randn(b, s, b, generator=gen, dtype=torch.float64),
            torch.randn(b, b, p, generator=gen, dtype=torch.float64))


def slice_svd_error(w: np.ndarray, b: int) -> float:
    """‖W − best Monarch‖_F from numpy: each (j, k) slice W[l·b + j, k·p + i] keeps its largest
    singular value, the rest is the error."""
    out, inp = w.shape
    s, p = out // b, inp // b
    lost = 0.0
    for j in range(b):
        for k in range(b):
            block = np.array([[w[l * b + j, k * p + i] for i in range(p)] for l in range(s)])
            sv = np.linalg.svd(block, compute_uv=False)
            lost += float(np.sum(sv[1:] ** 2))
    return math.sqrt(lost)


@pytest.mark.parametrize("out,inp,b", SHAPES)
def test_factors_multiply_to_the_papers_product(out, inp, b):
    gen = torch.Generator().manual_seed(out * 100 + inp + b)
    left, right = random_factors(out, inp, b, gen)
    assert torch.allclose(monarch_dense(left, right), reference_monarch(left, right), atol=1e-12)


@pytest.mark.parametrize("b", [2, 3, 4])
def test_square_case_is_p_l_pt_r_with_one_permutation(b):
    # n = b²: both permutations are the same perfect shuffle, and it is its own transpose (Definition 3.1)
    n = b * b
    shuffle = perm(n, [(l * b + j, j * b + l) for j in range(b) for l in range(b)])
    assert torch.equal(shuffle, shuffle.T)
    gen = torch.Generator().manual_seed(b)
    left, right = random_factors(n, n, b, gen)
    m = shuffle @ torch.block_diag(*left) @ shuffle.T @ torch.block_diag(*right)
    assert torch.allclose(monarch_dense(left, right), m, atol=1e-12)


@pytest.mark.parametrize("out,inp,b", SHAPES)
def test_exact_monarch_projects_onto_itself(out, inp, b):
    gen = torch.Generator().manual_seed(7 + out + inp * b)
    left, right = random_factors(out, inp, b, gen)
    m = reference_monarch(left, right)
    l2, r2 = monarch_project(m, b)
    assert torch.allclose(reference_monarch(l2, r2), m, atol=1e-10 * float(m.abs().max()))
    # float32 in, float32 out, to float32 tolerance
    l3, r3 = monarch_project(m.float(), b)
    assert l3.dtype == r3.dtype == torch.float32
    assert torch.allclose(monarch_dense(l3, r3).double(), m, rtol=1e-4, atol=1e-4 * float(m.abs().max()))


@pytest.mark.parametrize("out,inp,b", SHAPES)
def test_projection_error_is_the_slicewise_svd_optimum_and_beats_random_monarch(out, inp, b):
    gen = torch.Generator().manual_seed(out + 31 * inp + b)
    w = torch.randn(out, inp, generator=gen, dtype=torch.float64)
    left, right = monarch_project(w, b)
    err = float(torch.linalg.matrix_norm(reference_monarch(left, right) - w))
    assert err == pytest.approx(slice_svd_error(w.numpy(), b), rel=1e-9, abs=1e-12)
    for _ in range(200):
        rl, rr = random_factors(out, inp, b, gen)
        scale = float(torch.rand((), generator=gen, dtype=torch.float64)) * 2
        assert float(torch.linalg.matrix_norm(reference_monarch(rl * scale, rr) - w)) >= err - 1e-12
    # also never above a Monarch matrix near the projection (a local check of optimality)
    for _ in range(50):
        dl, dr = random_factors(out, inp, b, gen)
        near = reference_monarch(left + 1e-3 * dl, right + 1e-3 * dr)
        assert float(torch.linalg.matrix_norm(near - w)) >= err - 1e-12


def als_fit(w: torch.Tensor, b: int, gen: torch.Generator, iters: int = 60) -> float:
    """Alternating least squares on ‖W − M(L, R)‖_F over the whole matrix: M is linear in L for fixed R
    and in R for fixed L; each design matrix is read off ``reference_monarch`` on unit vectors."""
    out, inp = w.shape
    left, right = random_factors(out, inp, b, gen)
    target = w.reshape(-1, 1)

    def solve(x, build):
        units = torch.eye(x.numel(), dtype=torch.float64).reshape(x.numel(), *x.shape)
        design = torch.stack([build(u).reshape(-1) for u in units], 1)
        return torch.linalg.lstsq(design, target, driver="gelsd").solution.reshape(x.shape)

    for _ in range(iters):
        left = solve(left, lambda x: reference_monarch(x, right))
        right = solve(right, lambda x: reference_monarch(left, x))
    return float(torch.linalg.matrix_norm(reference_monarch(left, right) - w))


@pytest.mark.parametrize("out,inp,b", [(4, 4, 2), (6, 4, 2), (6, 9, 3)])
def test_projection_is_never_above_alternating_least_squares_from_many_starts(out, inp, b):
    gen = torch.Generator().manual_seed(100 + out * inp + b)
    w = torch.randn(out, inp, generator=gen, dtype=torch.float64)
    err = float(torch.linalg.matrix_norm(monarch_dense(*monarch_project(w, b)) - w))
    fits = [als_fit(w, b, gen) for _ in range(12)]
    assert min(fits) >= err - 1e-9
    # the best start reaches the same optimum: the projection is the global minimum, not just a bound
    assert min(fits) == pytest.approx(err, rel=1e-6)


@pytest.mark.parametrize("out,inp,b", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_parameter_counts_are_exact(out, inp, b, bias):
    layer = MonarchLinear(inp, out, b, bias=bias, dtype=torch.float16)
    counted = sum(p.numel() for p in layer.parameters())
    by_hand = b * b * (inp // b) + b * (out // b) * b + (out if bias else 0)
    assert layer.n_params == counted == by_hand == monarch_params(out, inp, b, bias=bias)
    assert layer.stored_bytes == 2 * counted
    assert tuple(layer.left.shape) == (b, out // b, b) and tuple(layer.right.shape) == (b, b, inp // b)


@pytest.mark.parametrize("out,inp,b", SHAPES)
def test_forward_equals_dense_product(out, inp, b):
    gen = torch.Generator().manual_seed(3 * out + inp)
    w = torch.randn(out, inp, generator=gen, dtype=torch.float64)
    bias = torch.randn(out, generator=gen, dtype=torch.float64)
    layer = MonarchLinear.from_weight(w, b, bias)
    dense = reference_monarch(layer.left.detach(), layer.right.detach())
    assert torch.allclose(layer.to_dense().detach(), dense, atol=1e-12)
    for lead in [(), (3,), (2, 5)]:
        x = torch.randn(*lead, inp, generator=gen, dtype=torch.float64)
        y = layer(x)
        assert y.shape == (*lead, out)
        assert torch.allclose(y, x @ dense.T + bias, atol=1e-10)
    # without a bias, and gradients equal those through the dense product
    nobias = MonarchLinear.from_weight(w, b)
    x = torch.randn(4, inp, generator=gen, dtype=torch.float64)
    nobias(x).square().sum().backward()
    left = nobias.left.detach().clone().requires_grad_(True)
    right = nobias.right.detach().clone().requires_grad_(True)
    (x @ reference_monarch(left, right).T).square().sum().backward()
    assert torch.allclose(nobias.left.grad, left.grad, atol=1e-9)
    assert torch.allclose(nobias.right.grad, right.grad, atol=1e-9)


def test_projection_leaves_the_weight_alone():
    w = torch.randn(8, 12)
    before = w.clone()
    MonarchLinear.from_weight(w, 4, torch.zeros(8))
    assert torch.equal(w, before)


def brute_blocks(out: int, inp: int, budget: float) -> int | None:
    """The largest b whose MonarchLinear (counted) keeps at most budget·out·in weight entries."""
    best = None
    for b in range(1, min(out, inp) + 1):
        if out % b or inp % b:
            continue
        layer = MonarchLinear(inp, out, b, bias=False)
        if Fraction(sum(p.numel() for p in layer.parameters())) <= Fraction(budget) * out * inp:
            best = b
    return best


@pytest.mark.parametrize("out,inp", [(64, 64), (128, 64), (64, 128), (384, 128), (12, 18), (10, 64), (64, 4)])
@pytest.mark.parametrize("budget", [0.05, 0.125, 0.25, 1 / 3, 0.5, 0.75, 1.0])
def test_blocks_for_budget_against_brute_force(out, inp, budget):
    expected = brute_blocks(out, inp, budget)
    if expected is None:
        with pytest.raises(ValueError, match="leaves no Monarch matrix"):
            monarch_blocks_for_budget(out, inp, budget)
    else:
        assert monarch_blocks_for_budget(out, inp, budget) == expected


def test_budget_edges_are_exact():
    # 64×64 at b = 8 keeps 8·128 = 1024 = exactly a quarter
    assert monarch_blocks_for_budget(64, 64, 0.25) == 8
    assert monarch_blocks_for_budget(64, 64, 0.2499) == 4


@pytest.mark.parametrize("budget", [0, -0.1, 1.5, float("nan"), True, "0.5", None])
def test_bad_budget_is_refused(budget):
    with pytest.raises(ValueError, match=r"budget must be a fraction of the dense parameters in \(0, 1\]"):
        monarch_blocks_for_budget(64, 64, budget)


def test_budget_below_the_smallest_monarch_names_it():
    with pytest.raises(ValueError, match=r"\[out=64, in=64\].*smallest \(1 block, rank 1\) keeps 128 = 0.03125"):
        monarch_blocks_for_budget(64, 64, 0.01)


def test_blocks_that_do_not_divide_are_refused_with_the_sizes():
    with pytest.raises(ValueError, match=r"blocks=4 does not fit a \[out=12, in=10\] weight: in_features = 10 is not a "
                                         r"multiple of 4.*block counts that fit: 1, 2"):
        monarch_project(torch.randn(12, 10), 4)
    with pytest.raises(ValueError, match="out_features = 10 is not a multiple of 3 and in_features = 8"):
        MonarchLinear(8, 10, 3)
    with pytest.raises(ValueError, match="out_features = 10"):
        monarch_params(10, 8, 4)


@pytest.mark.parametrize("blocks", [0, -2])
def test_blocks_below_one_are_refused(blocks):
    with pytest.raises(ValueError, match=f"blocks must be at least 1, got blocks={blocks}"):
        monarch_project(torch.randn(8, 8), blocks)


@pytest.mark.parametrize("blocks", [2.0, True, "2", None])
def test_blocks_that_are_not_integers_are_refused(blocks):
    with pytest.raises(ValueError, match="blocks must be an integer"):
        check_blocks(8, 8, blocks)


@pytest.mark.parametrize("shape", [(16,), (4, 4, 4), ()])
def test_weight_that_is_not_2d_is_refused(shape):
    with pytest.raises(ValueError, match=r"2-D \[out, in\] weight, got shape"):
        monarch_project(torch.randn(shape), 2)


def test_other_bad_inputs():
    with pytest.raises(ValueError, match="floating-point weight"):
        monarch_project(torch.ones(4, 4, dtype=torch.int64), 2)
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        monarch_project(np.ones((4, 4)), 2)
    with pytest.raises(ValueError, match="bias of shape"):
        MonarchLinear.from_weight(torch.randn(8, 4), 2, torch.zeros(4))
    with pytest.raises(ValueError, match="takes inputs with 8 features"):
        MonarchLinear(8, 8, 2)(torch.randn(3, 6))
    with pytest.raises(ValueError, match="Monarch factors must be"):
        monarch_dense(torch.randn(2, 3, 4), torch.randn(2, 2, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (CUDA)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_on_cuda_the_layer_stays_there_and_equals_the_cpu_reference(dtype):
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(96, 64, generator=gen, dtype=torch.float64)
    layer = MonarchLinear.from_weight(w.to("cuda", dtype), 8, torch.zeros(96, device="cuda", dtype=dtype))
    assert layer.left.device.type == "cuda" and layer.left.dtype == dtype
    cpu_left, cpu_right = monarch_project(w, 8)
    dense = reference_monarch(cpu_left, cpu_right)
    x = torch.randn(4, 64, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        y = layer(x.to("cuda", dtype)).double().cpu()
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    assert torch.allclose(y, x @ dense.T, rtol=tol, atol=tol * float((x @ dense.T).abs().max()))

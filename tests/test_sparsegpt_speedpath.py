"""SparseGPT's fast path (one Cholesky of the reversed H, threads for the lazy block updates, the
column pass on one thread, N:M groups ranked without a sort) against the textbook OBS of
tests/reference.py: the masks must be the textbook algorithm's, exactly. No timing is asserted here; speed is in
benchmarks/bench_sparsegpt.py."""
from __future__ import annotations

import pytest
import torch

from sparsekit.methods.sparsegpt import _inverse_upper_cholesky, _nm_before, _nm_pruned, sparsegpt_prune

from reference import obs_reference


def random_layer(rows, cols, seed, *, dead=(), zero_rows=()):
    """A weight and H = 2 X^T X / n from correlated inputs with uneven scales (optionally some inputs
    dead on every token, and some all-zero weight rows, whose scores all tie)."""
    g = torch.Generator().manual_seed(seed)
    tokens = 3 * cols
    x = torch.randn(tokens, cols, generator=g) + torch.randn(tokens, 8, generator=g) @ torch.randn(8, cols, generator=g)
    x = x * torch.exp(0.5 * torch.randn(cols, generator=g))
    x[:, list(dead)] = 0.0
    w = torch.randn(rows, cols, generator=g)
    w[list(zero_rows)] = 0.0
    return w, 2.0 * x.double().T @ x.double() / tokens


CASES = [
    # (rows, cols, pattern, seed, dead inputs, zero weight rows)
    (48, 256, {"nm": (2, 4)}, 1, (), ()),
    (33, 264, {"nm": (2, 4)}, 2, (0, 1, 2, 9, 130), (4,)),  # 264: a partial last block; ties
    (40, 320, {"nm": (1, 4)}, 3, (), ()),
    (24, 384, {"nm": (3, 4)}, 4, (), (0,)),
    (32, 256, {"nm": (2, 8)}, 5, (5, 6, 7), (3,)),
    (20, 240, {"nm": (4, 8)}, 6, (), ()),
    (64, 320, {"sparsity": 0.5}, 7, (), ()),
    (30, 300, {"sparsity": 0.7}, 8, (10, 11, 299), (2,)),
    (16, 130, {"sparsity": 0.25}, 9, (), ()),
]


@pytest.mark.parametrize("rows,cols,kw,seed,dead,zero_rows", CASES)
def test_masks_equal_textbook_obs(rows, cols, kw, seed, dead, zero_rows):
    w, h = random_layer(rows, cols, seed, dead=dead, zero_rows=zero_rows)
    new, keep, info = sparsegpt_prune(w, h, **kw)
    want_w, want_keep, _ = obs_reference(w, h, **kw)
    assert torch.equal(keep, want_keep)
    assert torch.allclose(new.double(), want_w, rtol=1e-4, atol=1e-4 * float(want_w.abs().max()))
    assert torch.all(new[~keep] == 0)
    assert not info["damp_raised"]
    if dead:
        assert torch.all(new[:, list(dead)] == 0)


@pytest.mark.parametrize("kw", [{"nm": (2, 4)}, {"sparsity": 0.5}])
def test_masks_do_not_depend_on_thread_count(kw):
    # The lazy updates use torch's threads, the column pass one thread: 1 and 2 threads must agree
    # on the mask, and the thread count must be left as it was.
    w, h = random_layer(96, 512, 10)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(sparsegpt_prune(w, h, **kw))
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
    (w1, k1, _), (w2, k2, _) = results
    assert torch.equal(k1, k2)
    assert torch.allclose(w1, w2, rtol=1e-5, atol=1e-6)


def test_float64_and_float32_hessian_give_the_same_mask():
    # The Hessian is factored in float64 whatever it comes in (the calibration pass may hand over
    # either); the float32 rounding of H itself is the only difference.
    w, h = random_layer(16, 256, 11)
    h32 = h.float()
    _, keep32, _ = sparsegpt_prune(w, h32, nm=(2, 4))
    _, want, _ = sparsegpt_prune(w, h32.double(), nm=(2, 4))
    assert torch.equal(keep32, want)


@pytest.mark.parametrize("n", [1, 5, 300, 700])
def test_inverse_upper_cholesky_is_the_upper_factor_of_the_inverse(n):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(2 * n + 3, n, generator=g, dtype=torch.float64)
    hd = x.T @ x / n + 0.1 * torch.eye(n, dtype=torch.float64)
    u = _inverse_upper_cholesky(hd.flip(0, 1))
    assert u.dtype == torch.float32
    want = torch.linalg.cholesky(torch.linalg.inv(hd), upper=True)
    assert torch.equal(u, torch.triu(u))
    assert torch.allclose(u.double(), want, rtol=1e-5, atol=1e-6 * float(want.abs().max()))


def test_inverse_upper_cholesky_rejects_an_indefinite_matrix():
    hd = torch.eye(4, dtype=torch.float64)
    hd[2, 2] = -1.0
    with pytest.raises(RuntimeError):
        _inverse_upper_cholesky(hd.flip(0, 1))


def test_singular_hessian_raises_the_dampening_and_keeps_exact_groups():
    # An indefinite H (rank one minus 5 % of its mean diagonal): 1 % dampening is not enough, 10 %
    # is; the dampening is raised until the factorisation succeeds and the N:M groups stay exact.
    g = torch.Generator().manual_seed(12)
    v = torch.randn(64, 1, generator=g, dtype=torch.float64)
    h = v @ v.T
    h -= 0.05 * torch.eye(64, dtype=torch.float64) * float(torch.diag(h).mean())
    w = torch.randn(8, 64, generator=g)
    new, keep, info = sparsegpt_prune(w, h, nm=(2, 4))
    assert info["damp_raised"]
    assert info["damp"] == pytest.approx(0.1 * float(torch.diag(h).mean()))
    assert torch.all(keep.reshape(8, 16, 4).sum(-1) == 2)
    assert torch.all(new[~keep] == 0)


@pytest.mark.parametrize("m", [2, 3, 4, 5, 8])
def test_nm_ranking_matches_a_stable_sort(m):
    g = torch.Generator().manual_seed(m)
    # Few distinct values, so most groups have ties.
    score = torch.randint(0, 3, (m, 500), generator=g).float()
    for n in range(1, m):
        order = torch.argsort(score.t(), dim=1, descending=True, stable=True)
        keep = torch.zeros(500, m, dtype=torch.bool).scatter_(1, order[:, :n], True).t()
        assert torch.equal(_nm_pruned(score, n, _nm_before(m, score.device)), ~keep)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_masks_equal_textbook_obs():
    w, h = random_layer(48, 256, 13)
    for kw in ({"nm": (2, 4)}, {"sparsity": 0.5}):
        new, keep, _ = sparsegpt_prune(w.cuda(), h.cuda(), **kw)
        want_w, want_keep, _ = obs_reference(w, h, **kw)
        assert keep.is_cuda and torch.equal(keep.cpu(), want_keep)
        assert torch.allclose(new.cpu().double(), want_w, rtol=1e-4, atol=1e-4 * float(want_w.abs().max()))


@pytest.mark.parametrize("rows,cols,kw,seed", [(70, 256, {"nm": (2, 4)}, 20), (33, 200, {"nm": (1, 4)}, 21),
                                               (40, 264, {"nm": (3, 8)}, 22), (64, 300, {"sparsity": 0.5}, 23),
                                               (17, 130, {"sparsity": 0.7}, 24)])
@pytest.mark.parametrize("layout", ["row-major", "column-major"])  # column-major: a GPT-2 Conv1D's [in, out].t()
def test_compiled_column_pass_gives_the_torch_ops_bits(rows, cols, kw, seed, layout, monkeypatch):
    # The CPU kernel must reproduce the torch column pass bit for bit (weights, masks, loss),
    # including where torch's addr_ fuses the multiply-add and where it rounds twice; ties too.
    from sparsekit.methods import sparsegpt
    from sparsekit.methods.columnpass import fused_width

    if fused_width() is None:
        pytest.skip("this torch build's addr_ rounding is not one the kernel reproduces (the torch ops run)")
    w, h = random_layer(rows, cols, seed, zero_rows=(1,))
    w[2] = (w[2] * 2).round() / 2  # many equal scores in one row
    if layout == "column-major":
        w = w.t().contiguous().t()
    fast = sparsegpt_prune(w, h, **kw)
    monkeypatch.setattr(sparsegpt, "column_pass", lambda *args: False)
    plain = sparsegpt_prune(w, h, **kw)
    assert torch.equal(fast[1], plain[1])
    assert torch.equal(fast[0].view(torch.int32), plain[0].view(torch.int32))
    assert fast[2] == plain[2]

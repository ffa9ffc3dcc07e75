"""Masks and SAD against plain-Python references."""
import itertools

import pytest
import torch

import sparsekit
from sparsekit.masks import conv_nm_mask


def ref_nm(values, n, m):
    """Plain loop over a flat list: keep the n largest |v| of each run of m, lower index on ties."""
    keep = []
    for start in range(0, len(values), m):
        group = [abs(v) for v in values[start : start + m]]
        order = sorted(range(m), key=lambda i: (-group[i], i))
        kept = set(order[:n])
        keep.extend(i in kept for i in range(m))
    return keep


def ref_nm_rows(t, n, m):
    return torch.tensor([ref_nm(row, n, m) for row in t.tolist()])


def ref_unstructured(values, sparsity):
    k_prune = round(sparsity * len(values))
    order = sorted(range(len(values)), key=lambda i: (abs(values[i]), -i))
    pruned = set(order[:k_prune])
    return [i not in pruned for i in range(len(values))]


NM = [(1, 2), (1, 4), (2, 4), (3, 4), (2, 8), (4, 8), (3, 5), (7, 16), (2, 20)]


@pytest.mark.parametrize("n,m", NM)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_nm_matches_loop_with_ties(n, m, dtype):
    g = torch.Generator().manual_seed(n * 100 + m)
    # Small integers force many ties, including +0/-0 and equal magnitudes of opposite sign.
    w = torch.randint(-3, 4, (7, m * 5), generator=g).to(dtype)
    mask = sparsekit.nm_mask(w, n, m)
    assert mask.dtype == torch.bool and mask.shape == w.shape
    assert torch.equal(mask, ref_nm_rows(w.float(), n, m))


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (2, 8)])
def test_nm_random_floats_exact_count(n, m):
    w = torch.randn(33, m * 11, generator=torch.Generator().manual_seed(1))
    mask = sparsekit.nm_mask(w, n, m)
    assert torch.equal(mask, ref_nm_rows(w, n, m))
    assert (mask.view(-1, m).sum(1) == n).all()


def test_nm_scores_and_dims():
    w = torch.randn(8, 12, generator=torch.Generator().manual_seed(2))
    s = torch.randn(8, 12, generator=torch.Generator().manual_seed(3))
    assert torch.equal(sparsekit.nm_mask(w, 2, 4, scores=s), ref_nm_rows(s, 2, 4))
    # Along dim 0: the same as masking the transpose along its last dim.
    assert torch.equal(sparsekit.nm_mask(w, 1, 4, dim=0), ref_nm_rows(w.t(), 1, 4).t())
    w3 = torch.randn(3, 8, 5, generator=torch.Generator().manual_seed(4))
    got = sparsekit.nm_mask(w3, 2, 4, dim=1)
    want = ref_nm_rows(w3.permute(0, 2, 1).reshape(-1, 8), 2, 4).reshape(3, 5, 8).permute(0, 2, 1)
    assert torch.equal(got, want)


def test_nm_large_tensor_matches_sort_reference():
    w = torch.randn(512, 1024, generator=torch.Generator().manual_seed(5))
    w[::7, ::3] = 0.25  # ties across block boundaries of the kernel
    for n, m in [(2, 4), (2, 8)]:
        groups = w.abs().reshape(-1, m)
        idx = torch.sort(groups, dim=1, descending=True, stable=True).indices[:, :n]
        want = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, idx, True).reshape(w.shape)
        assert torch.equal(sparsekit.nm_mask(w, n, m), want)


def test_nm_does_not_modify_input():
    w = torch.randn(4, 8)
    before = w.clone()
    sparsekit.nm_mask(w, 2, 4)
    assert torch.equal(w, before)


@pytest.mark.parametrize(
    "kwargs,words",
    [
        (dict(n=4, m=4), "1 <= N < M"),
        (dict(n=0, m=4), "1 <= N < M"),
        (dict(n=5, m=4), "1 <= N < M"),
        (dict(n=2, m=3, dim=-1), "(4, 10)"),
        (dict(n=2, m=4, dim=5), "out of range"),
    ],
)
def test_nm_bad_arguments(kwargs, words):
    w = torch.randn(4, 10)
    with pytest.raises(ValueError, match=None) as err:
        sparsekit.nm_mask(w, **kwargs)
    assert words in str(err.value)


def test_nm_not_multiple_names_shape():
    with pytest.raises(ValueError, match=r"\(3, 6\).*multiple of M=4"):
        sparsekit.nm_mask(torch.randn(3, 6), 2, 4)


def test_nm_nan_and_type_errors():
    w = torch.randn(4, 8)
    w[1, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        sparsekit.nm_mask(w, 2, 4)
    with pytest.raises(ValueError, match="shape"):
        sparsekit.nm_mask(torch.randn(4, 8), 2, 4, scores=torch.randn(4, 4))
    with pytest.raises(TypeError):
        sparsekit.nm_mask(torch.randn(4, 8), 2.0, 4)
    with pytest.raises(TypeError):
        sparsekit.nm_mask([[1.0, 2.0]], 1, 2)


def test_conv_grouping_channel_and_kernel():
    w = torch.randn(6, 8, 3, 3, generator=torch.Generator().manual_seed(6))
    ch = conv_nm_mask(w, 2, 4, grouping="channel")
    # Channel-wise: groups of 4 input channels at each (out, kh, kw).
    want = ref_nm_rows(w.permute(0, 2, 3, 1).reshape(-1, 8), 2, 4).reshape(6, 3, 3, 8).permute(0, 3, 1, 2)
    assert torch.equal(ch, want)
    kw = conv_nm_mask(w, 2, 4, grouping="kernel")
    assert torch.equal(kw, ref_nm_rows(w.reshape(6, -1), 2, 4).reshape(w.shape))
    with pytest.raises(ValueError, match="multiple of M=4"):
        conv_nm_mask(torch.randn(4, 3, 3, 3), 2, 4, grouping="channel")
    with pytest.raises(ValueError, match="kernel-wise"):
        conv_nm_mask(torch.randn(4, 1, 3, 3), 2, 4, grouping="kernel")
    with pytest.raises(ValueError, match="grouping"):
        conv_nm_mask(w, 2, 4, grouping="rows")


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.7, 0.95, 0.999])
def test_unstructured_matches_loop(sparsity):
    w = torch.randint(-4, 5, (9, 13), generator=torch.Generator().manual_seed(7)).float()
    mask = sparsekit.unstructured_mask(w, sparsity)
    want = torch.tensor(ref_unstructured(w.flatten().tolist(), sparsity)).reshape(w.shape)
    assert torch.equal(mask, want)
    assert int((~mask).sum()) == round(sparsity * w.numel())


def test_unstructured_random_scores():
    w = torch.randn(40, 50, generator=torch.Generator().manual_seed(8))
    s = torch.randn(40, 50, generator=torch.Generator().manual_seed(9))
    mask = sparsekit.unstructured_mask(w, 0.6, scores=s)
    assert torch.equal(mask.flatten(), torch.tensor(ref_unstructured(s.flatten().tolist(), 0.6)))


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan")])
def test_unstructured_bad_sparsity(bad):
    with pytest.raises(ValueError, match="0 <= sparsity < 1"):
        sparsekit.unstructured_mask(torch.randn(4, 4), bad)


def test_sad_tensors_and_dicts():
    g = torch.Generator().manual_seed(10)
    a = torch.rand(17, 23, generator=g) > 0.5
    b = torch.rand(17, 23, generator=g) > 0.5
    loop = sum(x != y for x, y in zip(a.flatten().tolist(), b.flatten().tolist()))
    assert sparsekit.sad(a, b) == loop
    assert sparsekit.sad(a, a) == 0
    assert sparsekit.sad(a, ~a) == a.numel()
    # 0/1 float masks are accepted too.
    assert sparsekit.sad(a.float(), b.float()) == loop
    c = torch.rand(5, 5, generator=g) > 0.5
    d = torch.rand(5, 5, generator=g) > 0.5
    assert sparsekit.sad({"x": a, "y": c}, {"x": b, "y": d}) == loop + sum(
        x != y for x, y in zip(c.flatten().tolist(), d.flatten().tolist())
    )


def test_sad_bad_input():
    a = torch.ones(3, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"\(3, 4\) vs \(4, 3\)"):
        sparsekit.sad(a, torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="different keys"):
        sparsekit.sad({"a": a}, {"b": a})
    with pytest.raises(ValueError, match="not a binary mask"):
        sparsekit.sad(a.float() * 2, a)
    with pytest.raises(ValueError, match="two tensors or two dicts"):
        sparsekit.sad({"a": a}, a)


def test_nm_brute_force_all_small_patterns():
    # Every 4-vector over {0, 1, 2} (81 cases, all tie structures) for every N of 2:4's family.
    rows = torch.tensor(list(itertools.product([0.0, 1.0, -2.0], repeat=4)))
    for n in (1, 2, 3):
        assert torch.equal(sparsekit.nm_mask(rows, n, 4), ref_nm_rows(rows, n, 4))


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (3, 8), (5, 16)])
def test_torch_pathway_used_on_gpus_matches_loop(n, m):
    # nm_mask runs this torch-op path on CUDA tensors; check it on CPU against the loop.
    from sparsekit.masks import _CHUNK_GROUPS, _sorted_keep, _torch_keep

    g = torch.Generator().manual_seed(m)
    rows = torch.randint(-3, 4, (999, m), generator=g).float()
    want = ref_nm_rows(rows, n, m)
    assert torch.equal(_torch_keep(rows, n, m), want)
    assert torch.equal(_sorted_keep(rows.abs(), n), want)
    # More groups than one chunk: against the stable-sort selection (checked above).
    big = torch.randint(-3, 4, (_CHUNK_GROUPS + 77, m), generator=g).float()
    assert torch.equal(_torch_keep(big, n, m), _sorted_keep(big.abs(), n))


@pytest.mark.parametrize("n,m", NM)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_compiled_cpu_kernels_match_loop(n, m, dtype):
    # nm_mask sorts small tensors; call the compiled kernels directly on small, tie-heavy input.
    from sparsekit.masks import _PAIRWISE_MAX_M, _cpu_keep

    if m > _PAIRWISE_MAX_M:
        pytest.skip("the compiled kernels serve M <= 16")
    rows = torch.randint(-3, 4, (41, m), generator=torch.Generator().manual_seed(m + n)).to(dtype)
    assert torch.equal(_cpu_keep(rows, n, m), ref_nm_rows(rows.float(), n, m))
    rows[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        _cpu_keep(rows, n, m)


def test_small_tensors_use_one_thread_and_restore_the_setting():
    import numba

    before = numba.get_num_threads()
    w = torch.randint(-3, 4, (16, 8)).float()  # small: the serial kernel
    assert torch.equal(sparsekit.nm_mask(w, 2, 4), ref_nm_rows(w.reshape(-1, 4), 2, 4).reshape(16, 8))
    assert numba.get_num_threads() == before
    with pytest.raises(ValueError, match="NaN"):
        sparsekit.nm_mask(torch.tensor([[1.0, float("nan"), 0.0, 2.0]]), 2, 4)
    assert numba.get_num_threads() == before

"""Wanda, SparseGPT, Taylor and channel permutation, checked against direct computations."""
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsekit
from sparsekit.methods.calibration import transformer_blocks
from sparsekit.methods.sparsegpt import sparsegpt_prune
from sparsekit.methods.taylor import taylor_scores
from sparsekit.methods.wanda import row_unstructured_mask, wanda_scores
from sparsekit.permutation import permute_channels, search_permutation
from sparsekit.sparsify import SparsifyConfig, sparsify

from reference import obs_reference


def keep_top_in_groups(scores, n, m):
    """Plain loop: in every run of m along each row keep the n largest (ties: lower index)."""
    rows, cols = scores.shape
    keep = np.zeros((rows, cols), dtype=bool)
    for r in range(rows):
        for s in range(0, cols, m):
            group = [(-float(scores[r, s + j]), j) for j in range(m)]
            for _, j in sorted(group)[:n]:
                keep[r, s + j] = True
    return torch.from_numpy(keep)


def keep_top_in_rows(scores, sparsity):
    rows, cols = scores.shape
    k = cols - int(round(sparsity * cols))
    keep = np.zeros((rows, cols), dtype=bool)
    for r in range(rows):
        order = sorted(range(cols), key=lambda j: (-float(scores[r, j].detach()), j))
        keep[r, order[:k]] = True
    return torch.from_numpy(keep)


def direct_wanda(weight, x_rows):
    """S_ij = |W_ij| * sqrt(sum_t X_tj^2), with loops over columns."""
    w = weight.detach().double()
    x = x_rows.detach().double()
    out = torch.empty_like(w)
    for j in range(w.shape[1]):
        norm = math.sqrt(sum(float(v) ** 2 for v in x[:, j]))
        out[:, j] = w[:, j].abs() * norm
    return out


def test_wanda_scores_equal_direct_formula_random_layer():
    torch.manual_seed(0)
    layer = nn.Linear(16, 6)
    x = torch.randn(40, 16) * torch.linspace(0.1, 3.0, 16)  # inputs of very different scales
    expected = direct_wanda(layer.weight, x)
    got = wanda_scores(layer.weight, x.double().pow(2).sum(0).sqrt())
    assert torch.allclose(got.double(), expected, rtol=1e-5)

    # Through sparsify: N:M compares within groups of M along the row, unstructured within each row.
    model = nn.Sequential(layer)
    res = sparsify(model, SparsifyConfig(pattern="nm", n=2, m=4, method="wanda"), calibration=x)
    assert torch.equal(res.masks["0"], keep_top_in_groups(expected, 2, 4))
    res = sparsify(model, SparsifyConfig(pattern="unstructured", sparsity=0.6, method="wanda"), calibration=x)
    assert torch.equal(res.masks["0"], keep_top_in_rows(expected, 0.6))
    assert torch.equal(res.model[0].weight, layer.weight * res.masks["0"])  # Wanda does not update weights
    # Magnitude would choose differently here: the input scales matter.
    assert not torch.equal(res.masks["0"], keep_top_in_rows(layer.weight.abs(), 0.6))


class TokenModel(nn.Module):
    """Embedding then Linear, called like a Hugging Face model."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.emb = nn.Embedding(30, 8)
        self.proj = nn.Linear(8, 4)

    def forward(self, input_ids, attention_mask=None):
        return self.proj(self.emb(input_ids))


def test_wanda_ignores_padding_tokens():
    model = TokenModel()
    ids = torch.tensor([[1, 2, 3, 0, 0], [4, 5, 6, 7, 8]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    real = torch.cat([model.emb(ids[0, :3]), model.emb(ids[1])]).detach()
    expected = direct_wanda(model.proj.weight, real)
    res = sparsify(model, SparsifyConfig(pattern="unstructured", sparsity=0.5, method="wanda"),
                   calibration={"input_ids": ids, "attention_mask": mask})
    assert torch.equal(res.masks["proj"], keep_top_in_rows(expected, 0.5))


def test_wanda_conv_scores_use_input_patches():
    torch.manual_seed(2)
    conv = nn.Conv2d(4, 3, 3, padding=1)
    x = torch.rand(3, 4, 5, 5) * torch.tensor([0.1, 1.0, 5.0, 2.0]).reshape(1, 4, 1, 1)
    padded = F.pad(x, (1, 1, 1, 1)).double()
    # Norm of the input seen by weight (o, c, p, q): x_pad[b, c, i + p, j + q] over b, i, j.
    norms = torch.zeros(4, 3, 3, dtype=torch.float64)
    for c, p, q in itertools.product(range(4), range(3), range(3)):
        norms[c, p, q] = padded[:, c, p : p + 5, q : q + 5].pow(2).sum().sqrt()
    scores = conv.weight.detach().double().abs() * norms.unsqueeze(0)
    res = sparsify(nn.Sequential(conv), SparsifyConfig(pattern="nm", n=2, m=4, method="wanda"), calibration=x)
    # Channel grouping: groups of 4 input channels at each kernel position.
    expected = keep_top_in_groups(scores.movedim(1, -1).reshape(-1, 4), 2, 4).reshape(3, 3, 3, 4).movedim(-1, 1)
    assert torch.equal(res.masks["0"], expected)


def correlated_inputs(n, d, seed):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=gen)
    mix = torch.randn(d, d, generator=gen) / math.sqrt(d) + torch.eye(d)
    return (z @ mix) * torch.linspace(0.2, 2.0, d)


def recon_error(w, w_hat, x):
    return float(torch.linalg.norm(x.double() @ (w.double() - w_hat.double()).T))


def groups_exact(mask, weight, n, m):
    for row_m, row_w in zip(mask.reshape(-1, mask.shape[-1]).tolist(), weight.reshape(-1, weight.shape[-1]).tolist()):
        for s in range(0, len(row_m), m):
            if sum(row_m[s : s + m]) != n:
                return False
            if sum(1 for v in row_w[s : s + m] if v != 0) > n:
                return False
    return True


@pytest.mark.parametrize("pattern", ["2:4", "4:8", "unstructured"])
def test_sparsegpt_beats_magnitude_on_random_layer(pattern):
    torch.manual_seed(3)
    w = torch.randn(24, 256)
    x = correlated_inputs(600, 256, 4)
    h = 2 * x.double().T @ x.double() / x.shape[0]
    if pattern == "unstructured":
        new, keep, _ = sparsegpt_prune(w, h, sparsity=0.5)
        mag = sparsekit.unstructured_mask(w, 0.5)
        # Budget per block of 128 columns: exactly half of each block.
        assert int(keep.sum()) == int(mag.sum())
    else:
        n, m = map(int, pattern.split(":"))
        new, keep, _ = sparsegpt_prune(w, h, nm=(n, m))
        mag = sparsekit.nm_mask(w, n, m)
        assert groups_exact(keep, new, n, m)
    assert torch.all(new[~keep] == 0)
    assert recon_error(w, new, x) < 0.9 * recon_error(w, w * mag, x)


@pytest.fixture(scope="module")
def mlp(digits_cache_dir):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPARSEKIT_CACHE_DIR", str(digits_cache_dir))
        yield sparsekit.load_model("digits:mlp")


def layer_inputs(module, layer, run):
    seen = []
    handle = layer.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach()))
    with torch.no_grad():
        run(module)
    handle.remove()
    x = seen[0]
    return x.reshape(-1, x.shape[-1])


def test_sparsegpt_beats_magnitude_on_real_digits_layers(mlp):
    for name in ("fc2", "head"):
        layer = dict(mlp.module.named_modules())[name]
        x = layer_inputs(mlp.module, layer, lambda m: m(mlp.calibration))
        h = 2 * x.double().T @ x.double() / x.shape[0]
        w = layer.weight.detach()
        new, keep, _ = sparsegpt_prune(w, h, nm=(2, 4))
        assert groups_exact(keep, new, 2, 4)
        assert recon_error(w, new, x) < recon_error(w, w * sparsekit.nm_mask(w, 2, 4), x)
        new, keep, _ = sparsegpt_prune(w, h, sparsity=0.7)
        assert recon_error(w, new, x) < recon_error(w, w * sparsekit.unstructured_mask(w, 0.7), x)


def test_sparsegpt_beats_magnitude_on_real_minilm_layer():
    from transformers import AutoModel, AutoTokenizer

    from sparsekit.models.sentences import SENTENCES
    from sparsekit.models.text import minilm_dir

    path = minilm_dir()
    model = AutoModel.from_pretrained(str(path), add_pooling_layer=False, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(str(path))
    batch = tok(list(SENTENCES[1:240:8]), padding=True, return_tensors="pt")
    layer = model.encoder.layer[2].attention.self.query
    seen = []
    handle = layer.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach()))
    with torch.no_grad():
        model(**batch)
    handle.remove()
    x = seen[0][batch["attention_mask"].bool()]
    h = 2 * x.double().T @ x.double() / x.shape[0]
    w = layer.weight.detach()
    new, keep, _ = sparsegpt_prune(w, h, nm=(2, 4))
    assert groups_exact(keep, new, 2, 4)
    assert recon_error(w, new, x) < 0.8 * recon_error(w, w * sparsekit.nm_mask(w, 2, 4), x)


def test_sparsegpt_through_sparsify_keeps_nm_and_source(mlp):
    before = {k: v.clone() for k, v in mlp.module.state_dict().items()}
    res = sparsify(mlp, SparsifyConfig(pattern="nm", n=2, m=4, method="sparsegpt"))
    for name, mask in res.masks.items():
        weight = dict(res.model.named_modules())[name].weight.detach()
        assert groups_exact(mask, weight, 2, 4)
    assert all(torch.equal(before[k], v) for k, v in mlp.module.state_dict().items())  # shared model untouched
    assert mlp.quality(res.model)["accuracy"] >= mlp.quality(sparsify(mlp, SparsifyConfig()).model)["accuracy"]


def test_sequential_inputs_come_from_pruned_layers():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(30, 8)
    res = sparsify(model, SparsifyConfig(pattern="nm", n=2, m=4, method="wanda"), calibration=x)
    pruned_first = F.relu(F.linear(x, model[0].weight * res.masks["0"], model[0].bias)).detach()
    expected = keep_top_in_groups(direct_wanda(model[2].weight, pruned_first), 2, 4)
    assert torch.equal(res.masks["2"], expected)


def test_taylor_scores_equal_gradient_times_weight():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    x = torch.randn(10, 6)
    got = taylor_scores(model, ["0", "2"], x, batch_size=10).scores
    logits = model(x)
    loss = F.cross_entropy(logits, logits.detach().argmax(-1))
    grads = torch.autograd.grad(loss, [model[0].weight, model[2].weight])
    for name, w, g in zip(["0", "2"], [model[0].weight, model[2].weight], grads):
        assert torch.allclose(got[name], (g * w).detach() ** 2, rtol=1e-5, atol=1e-12)
    assert model[0].weight.grad is None  # nothing stored on the parameters
    res = sparsify(model, SparsifyConfig(pattern="nm", n=1, m=2, method="taylor"), calibration=x)
    assert torch.equal(res.masks["0"], keep_top_in_groups(got["0"], 1, 2))


# ------------------------------------------------------------------------------------ permutation


def kept_by_loop(matrix, perm, n, m):
    a = matrix.abs()[:, perm].tolist()
    total = 0.0
    for row in a:
        for s in range(0, len(row), m):
            total += sum(sorted(row[s : s + m], reverse=True)[:n])
    return total


@pytest.mark.parametrize("shape,n,m,seed", [((16, 32), 2, 4, 0), ((40, 64), 1, 4, 1), ((8, 48), 4, 8, 2), ((64, 16), 2, 4, 3)])
def test_permutation_never_lowers_kept_magnitude(shape, n, m, seed):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(*shape, generator=gen) * torch.rand(shape[1], generator=gen)  # uneven columns
    r = search_permutation(w, n, m)
    assert sorted(r.perm.tolist()) == list(range(shape[1]))
    assert r.kept_after == pytest.approx(kept_by_loop(w, r.perm, n, m), rel=1e-9)
    assert r.kept_before == pytest.approx(kept_by_loop(w, torch.arange(shape[1]), n, m), rel=1e-9)
    assert r.kept_after >= r.kept_before
    assert r.kept_after <= r.kept_row_bound + 1e-9
    assert 0.0 <= r.recovered_share <= 1.0


def test_permutation_against_brute_force():
    gen = torch.Generator().manual_seed(7)
    for _ in range(3):
        w = torch.randn(5, 8, generator=gen)
        # Every way to split 8 columns into two groups of 4 (the order inside a group does not matter).
        best = max(kept_by_loop(w, list(g) + [j for j in range(8) if j not in g], 2, 4)
                   for g in itertools.combinations(range(8), 4))
        r = search_permutation(w, 2, 4)
        assert r.kept_before <= r.kept_after <= best + 1e-9


def test_permutation_on_an_optimal_order_changes_nothing():
    w = torch.tensor([[9.0, 8.0, 0.1, 0.2, 7.0, 6.0, 0.3, 0.1]])  # each group already holds two big ones
    r = search_permutation(w, 2, 4)
    assert r.swaps == 0 and r.kept_after == r.kept_before


class MixNet(nn.Module):
    """fc1 -> relu -> fc2 (elementwise, permutable) -> cumsum -> head (not elementwise)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(8)
        self.fc1 = nn.Linear(12, 16)
        self.fc2 = nn.Linear(16, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(torch.cumsum(self.fc2(F.relu(self.fc1(x))), dim=-1))


def test_permutation_keeps_the_function_and_skips_mixing_layers():
    model = MixNet()
    x = torch.randn(64, 12)
    result = permute_channels(model, 2, 4, calibration=x)
    with torch.no_grad():
        assert torch.allclose(result.model(x), model(x), atol=1e-5, rtol=0)
    assert [r["layer"] for r in result.rows] == ["fc2"]
    assert "changes the output" in result.skipped["head"]
    assert result.rows[0]["kept_after"] >= result.rows[0]["kept_before"]
    # The recovered share shows up under 2:4 magnitude pruning of the permuted copy.
    plain = sparsify(model, SparsifyConfig(pattern="nm", n=2, m=4))
    permuted = sparsify(result.model, SparsifyConfig(pattern="nm", n=2, m=4))
    def kept(res):
        return float(dict(res.model.named_modules())["fc2"].weight.detach().abs().sum())

    assert kept(permuted) >= kept(plain)


def test_permutation_keeps_the_digits_mlp_function(mlp):
    x = mlp.calibration
    result = permute_channels(mlp, 2, 4)
    with torch.no_grad():
        assert torch.allclose(result.model(x), mlp.module(x), atol=1e-5, rtol=0)
    assert {r["layer"] for r in result.rows} == {"fc2", "head"}
    assert 0.0 < result.recovered_share() <= 1.0


# ------------------------------------------------------------------------------------ bad input


def test_calibrated_methods_need_calibration_data():
    model = nn.Sequential(nn.Linear(8, 4))
    for method in ("wanda", "sparsegpt", "taylor"):
        with pytest.raises(ValueError, match="needs calibration data"):
            sparsify(model, SparsifyConfig(method=method))
    with pytest.raises(ValueError, match="calibration batch is empty"):
        sparsify(model, SparsifyConfig(method="wanda"), calibration=torch.zeros(0, 8))


def test_bad_settings_get_clear_messages():
    model = nn.Sequential(nn.Linear(8, 4))
    x = torch.randn(5, 8)
    with pytest.raises(ValueError, match="sparsity must be between 0 and 0.99"):
        sparsify(model, SparsifyConfig(pattern="unstructured", sparsity=1.5, method="wanda"), calibration=x)
    with pytest.raises(ValueError, match="use scope='layer'"):
        sparsify(model, SparsifyConfig(pattern="unstructured", scope="global", method="sparsegpt"), calibration=x)
    with pytest.raises(ValueError, match="no Linear or Conv layers"):
        sparsify(nn.Sequential(nn.ReLU()), SparsifyConfig(method="wanda"), calibration=x)
    with pytest.raises(ValueError, match="no Linear or Conv layers"):
        permute_channels(nn.Sequential(nn.ReLU()), 2, 4, calibration=x)
    with pytest.raises(ValueError, match="1 <= N < M"):
        search_permutation(torch.randn(4, 8), 4, 4)
    with pytest.raises(ValueError, match="sparsity must be in"):
        row_unstructured_mask(torch.randn(3, 4), 1.0)


def test_unreached_layers_fall_back_to_magnitude():
    class Partial(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(8, 4)
            self.unused = nn.Linear(8, 4)

        def forward(self, x):
            return self.used(x)

    model = Partial()
    res = sparsify(model, SparsifyConfig(method="sparsegpt"), calibration=torch.randn(20, 8))
    assert "not reached" in res.notes["unused"]
    assert torch.equal(res.masks["unused"], sparsekit.nm_mask(model.unused.weight, 2, 4))


@pytest.mark.parametrize("kw", [{"nm": (2, 4)}, {"nm": (1, 4)}, {"nm": (3, 8)}, {"sparsity": 0.5},
                                {"sparsity": 0.7}])
def test_sparsegpt_matches_column_by_column_obs(kw):
    # The Cholesky / lazy-block implementation must give the textbook algorithm's result.
    torch.manual_seed(11)
    w = torch.randn(6, 288)  # 288 = two full blocks of 128 and a partial one
    x = correlated_inputs(500, 288, 12)
    h = 2 * x.double().T @ x.double() / x.shape[0]
    new, keep, info = sparsegpt_prune(w, h, **kw)
    want_w, want_keep, want_loss = obs_reference(w, h, **kw)
    assert torch.equal(keep, want_keep)
    assert torch.allclose(new.double(), want_w, rtol=1e-4, atol=1e-4 * float(want_w.abs().max()))
    assert info["loss"] == pytest.approx(want_loss, rel=1e-4)
    assert not info["damp_raised"]


def test_sparsegpt_hessian_counts_sequences_with_dead_inputs():
    # 3-D calibration (24 tokens per sequence), 6 of 128 inputs dead on every token, activations
    # ~0.1 rms: the reference builds H = 2/n_sequences * sum x x^T, and with dead inputs (unit
    # diagonal) the scale changes the dampening relative to the live inputs, so the masks differ
    # from a per-token H. The library's masks must equal the textbook OBS on the reference's H.
    torch.manual_seed(3)
    seqs, tokens, d = 40, 24, 128
    mix = torch.randn(d, d) / math.sqrt(d)
    x = (torch.randn(seqs, tokens, d) @ mix) * 0.1
    dead = torch.tensor([3, 17, 40, 41, 90, 127])
    x[..., dead] = 0.0
    layer = nn.Linear(d, 12, bias=False)
    model = nn.Sequential(layer)
    res = sparsify(model, SparsifyConfig(pattern="nm", n=2, m=4, method="sparsegpt"), calibration=x)
    X = x.reshape(-1, d).double()
    h_seq = 2.0 * X.T @ X / seqs
    want_w, want_keep, _ = obs_reference(layer.weight.detach(), h_seq, nm=(2, 4))
    assert torch.equal(res.masks["0"], want_keep)
    got = res.model[0].weight.detach().double()
    assert torch.allclose(got, want_w, rtol=1e-4, atol=1e-4 * float(want_w.abs().max()))
    assert (got[:, dead] == 0).all()
    # The case discriminates: a per-token H gives another mask.
    _, token_keep, _ = obs_reference(layer.weight.detach(), 2.0 * X.T @ X / (seqs * tokens), nm=(2, 4))
    assert not torch.equal(token_keep, want_keep)


class _TwoLayerBlock(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc1 = nn.Linear(d, d)
        self.fc2 = nn.Linear(d, d)

    def forward(self, x, *, scale=1.0):
        return x + scale * self.fc2(F.relu(self.fc1(x)))


class _TinyStack(nn.Module):
    def __init__(self, d=8, depth=2):
        super().__init__()
        self.embed = nn.Linear(d, d)
        self.blocks = nn.ModuleList(_TwoLayerBlock(d) for _ in range(depth))
        self.head = nn.Linear(d, 4)

    def forward(self, x):
        x = self.embed(x)
        for block in self.blocks:
            x = block(x, scale=0.5)  # a keyword argument, as Hugging Face blocks take
        return self.head(x)


def wanda_by_hand(model, x, order):
    """Wanda 2:4 written out with explicit forwards: in block order each block's two layers are
    pruned on inputs from the block run dense; in layer order fc2 sees inputs through pruned fc1."""
    import copy

    model = copy.deepcopy(model)
    masks = {}

    def prune(name, layer, inputs):
        keep = keep_top_in_groups(direct_wanda(layer.weight, inputs.reshape(-1, inputs.shape[-1])), 2, 4)
        with torch.no_grad():
            layer.weight.mul_(keep)
        masks[name] = keep

    with torch.no_grad():
        prune("embed", model.embed, x)
        h = model.embed(x)
        for i, block in enumerate(model.blocks):
            h1 = F.relu(block.fc1(h))  # dense fc1 output
            prune(f"blocks.{i}.fc1", block.fc1, h)
            if order == "layer":
                h1 = F.relu(block.fc1(h))  # recomputed through the pruned fc1
            prune(f"blocks.{i}.fc2", block.fc2, h1)
            h = block(h, scale=0.5)
        prune("head", model.head, h)
    return masks


@pytest.mark.parametrize("order", ["block", "layer"])
def test_calibration_order_matches_a_hand_written_pass(order):
    torch.manual_seed(8)
    model = _TinyStack()
    x = torch.randn(6, 5, 8)
    res = sparsify(model, SparsifyConfig(pattern="nm", n=2, m=4, method="wanda", calibration_order=order),
                   calibration=x)
    want = wanda_by_hand(model, x, order)
    assert res.calibration_order == order
    assert set(res.masks) == set(want)
    for name in want:
        assert torch.equal(res.masks[name], want[name]), name
    # The two orders really differ here (otherwise this test could not tell them apart).
    other = wanda_by_hand(model, x, "layer" if order == "block" else "block")
    assert any(not torch.equal(other[k], want[k]) for k in want)


def test_block_detection_and_fallback(vit, minilm):
    assert [n for n, _ in transformer_blocks(vit.module)] == ["blocks.0", "blocks.1"]
    assert [n for n, _ in transformer_blocks(minilm.module)] == [f"encoder.layer.{i}" for i in range(6)]
    mlp = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    assert transformer_blocks(mlp) == []
    res = sparsify(mlp, SparsifyConfig(method="sparsegpt"), calibration=torch.randn(20, 8))
    assert res.calibration_order == "layer" and "no transformer blocks" in res.calibration_note
    with pytest.raises(ValueError, match="calibration_order"):
        SparsifyConfig(calibration_order="blocks").validate()


@pytest.mark.parametrize("name", ["tiny-llama", "family/tiny-gpt2", "tiny-bert"])
def test_block_order_on_hugging_face_models(model_root, name):
    # Hugging Face blocks take keyword arguments (masks, position embeddings); the block forward
    # must pass them through, and every layer inside the blocks ends up exactly 2:4.
    loaded = sparsekit.load_model(f"hf:{name}")
    res = sparsify(loaded, SparsifyConfig(method="sparsegpt"))
    assert res.calibration_order == "block"
    blocks = [b for b, _ in transformer_blocks(loaded.module)]
    assert len(blocks) == 2
    inside = [n for n in res.masks if any(n.startswith(b + ".") for b in blocks)]
    assert inside and not any("not reached" in res.notes.get(n, "") for n in inside)
    for n in inside:
        mask = res.matrix_view(n, res.masks[n])
        assert (mask.reshape(mask.shape[0], -1, 4).sum(-1) == 2).all(), n
    quality = loaded.quality(res.model)
    assert all(math.isfinite(v) for v in quality.values())

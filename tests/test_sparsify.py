"""sparsify: non-destructive application, selection, reports, exports."""
import csv
import io
import math

import pytest
import torch
from safetensors.torch import load
from torch import nn

import sparsekit
from sparsekit.export import masks_safetensors, weights_safetensors
from sparsekit.sparsify import (
    SparsifyConfig,
    layer_group,
    report_csv,
    sparsify,
)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.Module()
        self.attn.q = nn.Linear(16, 16)
        self.attn.proj = nn.Linear(16, 16)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(16, 32)
        self.mlp.fc2 = nn.Linear(32, 16)


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.stem = nn.Linear(6, 16)  # 6 inputs: not a multiple of 4
        self.block = Block()
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        h = self.stem(x)
        h = self.block.attn.proj(self.block.attn.q(h))
        h = self.block.mlp.fc2(torch.relu(self.block.mlp.fc1(h)))
        return self.head(h)


def groups_ok(weight, mask, n, m):
    """Plain loop: every run of m along the last dim keeps exactly n, and the kept are the largest."""
    w = weight.reshape(-1, weight.shape[-1]).tolist()
    k = mask.reshape(-1, mask.shape[-1]).tolist()
    for wr, kr in zip(w, k):
        for s in range(0, len(wr), m):
            g, kg = wr[s : s + m], kr[s : s + m]
            if sum(kg) != n:
                return False
            kept = [abs(v) for v, keep in zip(g, kg) if keep]
            pruned = [abs(v) for v, keep in zip(g, kg) if not keep]
            if pruned and min(kept) < max(pruned):
                return False
    return True


def test_model_is_never_mutated():
    model = Toy()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = sparsify(model, SparsifyConfig(pattern="nm", n=2, m=4))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert res.model is not model
    assert all(p1 is not p2 for p1, p2 in zip(res.model.parameters(), model.parameters()))


def test_nm_applied_with_report():
    model = Toy()
    res = sparsify(model, SparsifyConfig(pattern="nm", n=2, m=4))
    rows = {r.name: r for r in res.report}
    assert rows["stem"].skipped_reason == "in_features = 6 is not a multiple of M=4"
    assert rows["stem"].kept == rows["stem"].numel
    for name in ["block.attn.q", "block.mlp.fc1", "head"]:
        orig = dict(model.named_modules())[name].weight
        new = dict(res.model.named_modules())[name].weight
        mask = res.masks[name]
        assert torch.equal(new, orig * mask)
        assert groups_ok(orig, mask, 2, 4)
        assert rows[name].kept == orig.numel() // 2
    # Conv: groups of 4 input channels at each kernel position.
    cmask = res.masks["conv"]
    assert (cmask.permute(0, 2, 3, 1).reshape(-1, 4).sum(1) == 2).all()
    assert rows["block.attn.q"].group == "attention" and rows["block.mlp.fc1"].group == "mlp"
    assert rows["head"].group == "other"


def test_unstructured_per_layer_and_global():
    model = Toy()
    res = sparsify(model, SparsifyConfig(pattern="unstructured", sparsity=0.7))
    for r in res.report:
        assert r.numel - r.kept == round(0.7 * r.numel)
    res = sparsify(model, SparsifyConfig(pattern="unstructured", sparsity=0.7, scope="global"))
    mods = dict(model.named_modules())
    kept_abs, pruned_abs, total = [], [], 0
    for name, mask in res.masks.items():
        w = mods[name].weight.detach().abs()
        kept_abs.append(w[mask])
        pruned_abs.append(w[~mask])
        total += w.numel()
    assert sum(len(p) for p in pruned_abs) == round(0.7 * total)
    assert torch.cat(kept_abs).min() >= torch.cat(pruned_abs).max()
    fractions = {round(r.kept_fraction, 3) for r in res.report}
    assert len(fractions) > 1  # global scope gives layers different densities


def test_random_method_is_seeded():
    model = Toy()
    a = sparsify(model, SparsifyConfig(pattern="nm", method="random", seed=1))
    b = sparsify(model, SparsifyConfig(pattern="nm", method="random", seed=1))
    c = sparsify(model, SparsifyConfig(pattern="nm", method="random", seed=2))
    assert sparsekit.sad(a.masks, b.masks) == 0
    assert sparsekit.sad(a.masks, c.masks) > 0
    assert all((m.reshape(-1, 4).sum(1) == 2).all() for n, m in a.masks.items() if n != "conv")
    mag = sparsify(model, SparsifyConfig(pattern="nm"))
    assert sparsekit.sad(a.masks, mag.masks) > 0


def test_layer_selection():
    model = Toy()
    res = sparsify(model, SparsifyConfig(pattern="nm", layers="mlp"))
    assert set(res.masks) == {"block.mlp.fc1", "block.mlp.fc2"}
    res = sparsify(model, SparsifyConfig(pattern="nm", layers="attention"))
    assert set(res.masks) == {"block.attn.q", "block.attn.proj"}
    res = sparsify(model, SparsifyConfig(pattern="nm", include=r"^block\.", exclude=r"fc2"))
    assert set(res.masks) == {"block.attn.q", "block.attn.proj", "block.mlp.fc1"}
    res = sparsify(model, SparsifyConfig(pattern="unstructured", keep_first_dense=True, keep_last_dense=True))
    reasons = {r.name: r.skipped_reason for r in res.report}
    assert reasons["conv"] == "first layer kept dense" and reasons["head"] == "last layer kept dense"
    assert "stem" in res.masks


def test_layer_group_names():
    assert layer_group("encoder.layer.0.attention.self.query") == "attention"
    assert layer_group("encoder.layer.0.attention.output.dense") == "attention"
    assert layer_group("encoder.layer.0.intermediate.dense") == "mlp"
    assert layer_group("encoder.layer.0.output.dense") == "mlp"
    assert layer_group("model.layers.3.self_attn.o_proj") == "attention"
    assert layer_group("model.layers.3.mlp.down_proj") == "mlp"
    assert layer_group("classifier") == "other"


@pytest.mark.parametrize(
    "cfg,words",
    [
        (dict(pattern="nm", n=4, m=4), "1 <= N < M"),
        (dict(pattern="nm", n=0, m=4), "1 <= N < M"),
        (dict(pattern="nm", n=1, m=64), "between 2 and 32"),
        (dict(pattern="unstructured", sparsity=1.0), "between 0 and 0.99"),
        (dict(pattern="unstructured", sparsity=-0.2), "between 0 and 0.99"),
        (dict(pattern="weird"), "pattern must be one of"),
        (dict(method="movement"), "method must be one of"),
        (dict(include="(unclosed"), "not a valid regular expression"),
        (dict(seed=-1), "seed"),
        (dict(n=2.5), "integer"),
    ],
)
def test_bad_config(cfg, words):
    with pytest.raises(ValueError) as err:
        sparsify(Toy(), SparsifyConfig(**cfg))
    assert words in str(err.value)


def test_empty_selection_and_no_layers():
    with pytest.raises(ValueError, match="selection is empty"):
        sparsify(Toy(), SparsifyConfig(include="nothing-matches"))
    with pytest.raises(ValueError, match="no Linear or Conv"):
        sparsify(nn.Sequential(nn.ReLU()), SparsifyConfig())


def test_dense_config_changes_nothing():
    model = Toy()
    res = sparsify(model, SparsifyConfig(pattern="dense"))
    assert res.masks == {}
    x = torch.randn(3, 6)
    assert torch.equal(res.model(x), model(x))


def test_exports_round_trip():
    model = Toy()
    res = sparsify(model, SparsifyConfig(pattern="nm"))
    masks = load(masks_safetensors(res))
    assert set(masks) == {f"{n}.weight_mask" for n in res.masks}
    assert all(torch.equal(masks[f"{n}.weight_mask"], m) for n, m in res.masks.items())
    state = load(weights_safetensors(res))
    fresh = Toy()
    fresh.load_state_dict(state)
    x = torch.randn(5, 6)
    assert torch.equal(fresh(x), res.model(x))
    rows = list(csv.DictReader(io.StringIO(report_csv(res))))
    assert len(rows) == len(res.report)
    assert rows[1]["name"] == "stem" and "not a multiple" in rows[1]["skipped_reason"]


def test_config_json_round_trip():
    cfg = SparsifyConfig(pattern="unstructured", sparsity=0.7, scope="global", method="random", seed=3)
    assert SparsifyConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        SparsifyConfig.from_json('{"bogus": 1}')


def test_gpt2_conv1d_and_tied_head():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=64, n_positions=16)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    res = sparsify(model, SparsifyConfig(pattern="nm", n=2, m=4))
    rows = {r.name: r for r in res.report}
    assert "tied" in rows["lm_head"].skipped_reason
    # Conv1D weight is [in, out]: groups of 4 run along dim 0 (the inputs).
    mask = res.masks["transformer.h.0.attn.c_attn"]
    assert mask.shape == (32, 96)
    assert (mask.t().reshape(-1, 4).sum(1) == 2).all()
    ids = torch.randint(0, 64, (1, 8))
    assert res.model(ids).logits.shape == (1, 8, 64)
    assert math.isclose(rows["transformer.h.0.mlp.c_fc"].kept_fraction, 0.5)


def test_matrix_view_puts_groups_in_rows():
    model = Toy()
    res = sparsify(model, SparsifyConfig(pattern="nm", n=2, m=4))
    mat = res.matrix_view("conv", res.masks["conv"])
    assert mat.shape == (8, 9 * 4)
    assert (mat.reshape(-1, 4).sum(1) == 2).all()
    res_k = sparsify(model, SparsifyConfig(pattern="nm", n=2, m=4, conv_grouping="kernel"))
    assert (res_k.matrix_view("conv", res_k.masks["conv"]).reshape(-1, 4).sum(1) == 2).all()


@pytest.mark.parametrize("cfg", [SparsifyConfig(pattern="nm", n=2, m=4),
                                 SparsifyConfig(pattern="unstructured", sparsity=0.6)])
def test_summary_memory_totals_of_pruned_layers(cfg):
    res = sparsify(Toy(), cfg)
    s = res.summary()
    pruned = [r for r in res.report if r.pruned]
    assert pruned
    dense = bitmask = csr = 0
    nm = 0
    for r in pruned:
        dense += r.dense_bytes
        bitmask += r.bitmask_bytes
        csr += r.csr_bytes
        nm = None if nm is None or r.nm_bytes is None else nm + r.nm_bytes
    assert (s["pruned_dense_bytes"], s["pruned_bitmask_bytes"], s["pruned_csr_bytes"]) == (dense, bitmask, csr)
    assert s["pruned_nm_bytes"] == nm and (nm is None) == (cfg.pattern == "unstructured")
    # Dense storage of the pruned layers: four bytes per float32 weight.
    assert s["pruned_dense_bytes"] == sum(4 * res.masks[r.name].numel() for r in pruned)
    assert s["dense_bytes"] == sum(r.dense_bytes for r in res.report) >= s["pruned_dense_bytes"]

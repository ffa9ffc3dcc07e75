"""sensitivity: one-unit-at-a-time pruning scan, its proxy, Spearman, cache, CSV and heatmap."""
import copy
import csv
import io
import json
import random

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit import viz
from sparsekit.models.base import LoadedModel
from sparsekit.sensitivity import (
    SensitivityConfig,
    SensitivityScan,
    average_ranks,
    scan_units,
    sensitivity_scan,
    spearman,
)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.Module()
        self.attn.q = nn.Linear(8, 8)
        self.attn.k = nn.Linear(8, 8)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(8, 8)

    def forward(self, h):
        h = h + self.attn.k(torch.tanh(self.attn.q(h)))
        return h + self.mlp.fc1(torch.relu(h))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(8, 4)  # 32 weights: 0.99 unstructured prunes round(31.68) = 32, all of them

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.head(x)


def loaded_net(module=None):
    module = (module or Net()).eval()
    torch.manual_seed(1)
    x = torch.randn(48, 8)
    with torch.no_grad():
        target = module(x).clone()

    def quality(m):
        with torch.no_grad():
            return {"neg_mse": -float(((m(x) - target) ** 2).mean()), "other": 0.0}

    return LoadedModel(spec="net", name="net", kind="image-classifier", module=module, quality_fn=quality,
                       calibration=x, higher_is_better={"neg_mse": True, "other": True})


def test_spearman_against_brute_force():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(2, 9)
        x = [rng.randint(0, 4) for _ in range(n)]  # many ties
        y = [rng.randint(0, 4) for _ in range(n)]
        # Brute force: rank = (number smaller) + (number equal + 1) / 2, then Pearson of the ranks.
        rx = [sum(b < a for b in x) + (sum(b == a for b in x) + 1) / 2 for a in x]
        ry = [sum(b < a for b in y) + (sum(b == a for b in y) + 1) / 2 for a in y]
        assert average_ranks(x) == rx
        mx, my = sum(rx) / n, sum(ry) / n
        sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
        sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
        want = None if sxx == 0 or syy == 0 else sxy / (sxx * syy) ** 0.5
        assert spearman(x, y) == (pytest.approx(want) if want is not None else None)
    # No ties: the textbook 1 - 6 sum d^2 / (n (n^2 - 1)).
    x, y = [0.1, 0.5, 0.3, 0.9, 0.7], [1.0, 3.0, 2.0, 4.0, 5.0]
    d2 = sum((a - b) ** 2 for a, b in zip(average_ranks(x), average_ranks(y)))
    assert spearman(x, y) == pytest.approx(1 - 6 * d2 / (5 * 24))
    assert spearman([1, None, 2], [3, 4, None]) is None  # one complete pair only


def test_zeroed_layer_drop_equals_zeroing_by_hand(tmp_cache):
    loaded = loaded_net()
    scan = sensitivity_scan(loaded, SensitivityConfig(sparsities=(0.99,)))
    row = scan.units.index("head")
    by_hand = copy.deepcopy(loaded.module)
    with torch.no_grad():
        by_hand.head.weight.zero_()
    dense = loaded.quality()["neg_mse"]
    assert scan.drop[row][0] == pytest.approx(dense - loaded.quality_fn(by_hand)["neg_mse"], rel=1e-6)
    assert scan.quality[row][0] == pytest.approx(loaded.quality_fn(by_hand)["neg_mse"], rel=1e-6)
    assert scan.proxy[row][0] == pytest.approx(1.0)  # ||W x - 0||^2 / ||W x||^2


def test_proxy_is_the_output_reconstruction_error(tmp_cache):
    loaded = loaded_net()
    scan = sensitivity_scan(loaded, SensitivityConfig(sparsities=(0.5,), mode="proxy"))
    assert all(q is None for row in scan.quality for q in row)
    layer = loaded.module.blocks[1].mlp.fc1
    seen = []
    hook = layer.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach().clone()))
    loaded.module(loaded.calibration)
    hook.remove()
    W, X = layer.weight.detach().double(), seen[0].double()
    order = sorted(range(W.numel()), key=lambda i: abs(W.reshape(-1)[i].item()))  # plain magnitude mask
    Wp = W.clone().reshape(-1)
    for i in order[:32]:
        Wp[i] = 0.0
    Wp = Wp.reshape(W.shape)
    want = float(((X @ W.T - X @ Wp.T) ** 2).sum() / ((X @ W.T) ** 2).sum())
    assert scan.proxy[scan.units.index("blocks.1.mlp.fc1")][0] == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("method", ["magnitude", "random", "wanda", "sparsegpt", "taylor"])
def test_proxy_mode_matches_the_full_scan(tmp_cache, method):
    # The proxy mode prunes each layer itself from dense input statistics; the full scan takes the
    # weights sparsify produced (SparseGPT's rewritten ones included). They must agree.
    loaded = loaded_net()
    cfg = SensitivityConfig(method=method, sparsities=(0.5, 0.8), nm=((2, 4),))
    full = sensitivity_scan(loaded, cfg)
    proxy = sensitivity_scan(loaded, SensitivityConfig(**{**cfg.__dict__, "mode": "proxy"}))
    for a_row, b_row in zip(full.proxy, proxy.proxy):
        assert list(b_row) == pytest.approx(list(a_row), rel=1e-6, abs=1e-12)
    assert all(d is not None for row in full.drop for d in row)
    assert len(full.spearman) == 3 and all(r is None or -1 <= r <= 1 for r in full.spearman)


def test_block_kind_groups_and_their_drop(tmp_cache):
    loaded = loaded_net()
    cfg = SensitivityConfig(sparsities=(0.5,), grouping="block-kind")
    assert scan_units(loaded, cfg) == [("blocks.0 attention", ["blocks.0.attn.q", "blocks.0.attn.k"]),
                                       ("blocks.0 mlp", ["blocks.0.mlp.fc1"]),
                                       ("blocks.1 attention", ["blocks.1.attn.q", "blocks.1.attn.k"]),
                                       ("blocks.1 mlp", ["blocks.1.mlp.fc1"]), ("head", ["head"])]
    scan = sensitivity_scan(loaded, cfg)
    # By hand: half of each attention weight of block 1 (smallest |w|) set to zero, nothing else.
    by_hand = copy.deepcopy(loaded.module)
    with torch.no_grad():
        for lin in (by_hand.blocks[1].attn.q, by_hand.blocks[1].attn.k):
            flat = lin.weight.view(-1)
            for i in sorted(range(64), key=lambda i: abs(flat[i].item()))[:32]:
                flat[i] = 0.0
    want = loaded.quality()["neg_mse"] - loaded.quality_fn(by_hand)["neg_mse"]
    assert scan.drop[2][0] == pytest.approx(want, rel=1e-6)
    assert scan.unit_numel[2] == 128


def test_shared_model_not_mutated(tmp_cache):
    loaded = loaded_net()
    before = {k: v.clone() for k, v in loaded.module.state_dict().items()}
    for method in ("taylor", "sparsegpt"):
        for mode in ("full", "proxy"):
            sensitivity_scan(loaded, SensitivityConfig(method=method, sparsities=(0.6,), mode=mode), use_cache=False)
    for k, v in loaded.module.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in loaded.module.modules())
    assert all(not p.requires_grad or p.grad is None for p in loaded.module.parameters())


def test_cache_progress_and_stop(tmp_cache, monkeypatch):
    import os

    assert os.environ["SPARSEKIT_CACHE_DIR"] == str(tmp_cache)
    loaded = loaded_net()
    calls = []
    cfg = SensitivityConfig(sparsities=(0.5, 0.9))
    first = sensitivity_scan(loaded, cfg, progress=lambda f, msg: calls.append((f, msg)))
    assert [f for f, _ in calls] == sorted(f for f, _ in calls) and calls[-1][0] == 1.0
    assert len(calls) == len(first.units) + 1 and "blocks.0.attn.q" in calls[0][1]
    import sparsekit.sensitivity as mod

    with monkeypatch.context() as patch:  # (undo() would also drop tmp_cache's environment variable)
        patch.setattr(mod, "sparsify", lambda *a, **k: pytest.fail("a cached scan must not prune again"))
        assert sensitivity_scan(loaded, cfg) == first
    ticks = iter([False, False, True])
    stopped = sensitivity_scan(loaded, SensitivityConfig(sparsities=(0.4,)), stop=lambda: next(ticks))
    assert not stopped.complete
    assert stopped.drop[1][0] is not None and all(row == (None,) for row in stopped.drop[2:])
    with pytest.raises(ValueError, match="incomplete"):
        sparsekit.sparsify(loaded, sparsekit.SparsifyConfig(pattern="unstructured", sparsity=0.3,
                                                            allocation="sensitivity"), sensitivity=stopped)
    again = sensitivity_scan(loaded, SensitivityConfig(sparsities=(0.4,)))  # a stopped scan is not cached
    assert again.complete
    assert os.environ["SPARSEKIT_CACHE_DIR"] == str(tmp_cache)


def test_record_json_and_csv(tmp_cache):
    loaded = loaded_net()
    scan = sensitivity_scan(loaded, SensitivityConfig(sparsities=(0.5,), nm=((2, 4),), metric="neg_mse"))
    assert SensitivityScan.from_json(scan.to_json()) == scan
    assert SensitivityConfig.from_json(scan.config.to_json()) == scan.config
    rows = list(csv.DictReader(io.StringIO(scan.to_csv())))
    assert [r["unit"] for r in rows] == list(scan.units)
    for i, r in enumerate(rows):
        assert float(r["drop 50%"]) == scan.drop[i][1]
        assert float(r["proxy 2:4"]) == scan.proxy[i][0]
        assert int(r["weights"]) == scan.unit_numel[i]
    json.loads(scan.to_json())


def test_heatmap_figure(tmp_cache):
    loaded = loaded_net()
    scan = sensitivity_scan(loaded, SensitivityConfig(sparsities=(0.5, 0.9)))
    fig = viz.sensitivity_heatmap(scan)
    heat = fig.data[0]
    assert list(heat.y) == list(scan.units) and list(heat.x) == list(scan.settings)
    assert [list(r) for r in heat.z] == [list(r) for r in scan.drop]
    assert "proxy %{customdata[4]}" in heat.hovertemplate and "drop %{customdata[2]}" in heat.hovertemplate
    assert heat.customdata[3][1][4] == f"{scan.proxy[3][1]:.4g}" and heat.customdata[3][1][2] == f"{scan.drop[3][1]:.4g}"
    assert heat.zmid == 0
    scatter = viz.sensitivity_proxy_figure(scan)
    assert len(scatter.data) == 2 and list(scatter.data[0].x) == [p[0] for p in scan.proxy]
    proxy_fig = viz.sensitivity_heatmap(scan, value="proxy")
    assert [list(r) for r in proxy_fig.data[0].z] == [list(r) for r in scan.proxy]
    with pytest.raises(ValueError, match="value"):
        viz.sensitivity_heatmap(scan, value="speed")


@pytest.mark.parametrize("cfg, words", [
    (dict(grouping="block"), "grouping must be one of"),
    (dict(mode="fast"), "mode must be one of"),
    (dict(sparsities=(), nm=()), "at least one"),
    (dict(sparsities=(1.0,)), r"\(0, 0.99\]"),
    (dict(sparsities=(0.5, 0.5)), "repeat"),
    (dict(sparsities=tuple(i / 20 for i in range(1, 14))), "at most 12"),
    (dict(nm=((4, 4),)), "1 <= N < M"),
    (dict(nm=(3,)), "pairs"),
    (dict(method="movement"), "method must be one of"),
])
def test_bad_config(tmp_cache, cfg, words):
    with pytest.raises(ValueError, match=words):
        sensitivity_scan(loaded_net(), SensitivityConfig(**cfg))


def test_bad_inputs_at_run_time(tmp_cache):
    with pytest.raises(ValueError, match="metric 'bleu'"):
        sensitivity_scan(loaded_net(), SensitivityConfig(metric="bleu"))
    no_calib = loaded_net()
    no_calib.calibration = None
    with pytest.raises(ValueError, match="needs calibration"):
        sensitivity_scan(no_calib, SensitivityConfig(mode="proxy"))
    with pytest.raises(ValueError, match="no prunable layer"):
        sensitivity_scan(loaded_net(), SensitivityConfig(exclude="."))


def test_cached_scan_is_keyed_on_the_evaluation_ids(tmp_cache, model_root):
    """A scan measured on one set of evaluation sentences is not served for another (set_eval_ids),
    and comes back for the same ids."""
    from sparsekit.sensitivity import cached_scan

    loaded = sparsekit.load_model("hf:family/tiny-gpt2")
    cfg = SensitivityConfig(sparsities=(0.5,), nm=(), grouping="block-kind")
    scan = sensitivity_scan(loaded, cfg)
    assert cached_scan(loaded, cfg).drop == scan.drop
    loaded.quality_fn.set_eval_ids([[101, 2023, 2003, 1037, 3231, 102], [101, 2178, 6251, 2182, 102]])
    assert cached_scan(loaded, cfg) is None
    other = sensitivity_scan(loaded, cfg)
    assert cached_scan(loaded, cfg).drop == other.drop

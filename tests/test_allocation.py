"""allocation: OWL and sensitivity-guided per-layer sparsity under one overall budget."""
import json

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit.allocation import (
    owl_outlier_ratios,
    owl_sparsities,
)
from sparsekit.methods.calibration import InputStats, LayerInputs
from sparsekit.methods.wanda import exact_count_mask as wanda_exact_mask
from sparsekit.models.base import LoadedModel
from sparsekit.sparsify import SparsifyConfig, sparsify

METHODS = ("magnitude", "random", "wanda", "sparsegpt", "taylor")


def tiny_net(seed=0):
    """Three Linear layers of different sizes; the middle one gets a few planted outlier weights."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4)).eval()
    with torch.no_grad():
        net[2].weight[:3, :3] *= 25.0
    return net


def calibration_batch():
    torch.manual_seed(1)
    x = torch.randn(64, 8)
    x[:, 0] *= 6.0  # one loud input feature, as LLM activations have
    return x


def tiny_loaded(seed=0):
    net = tiny_net(seed)
    x = calibration_batch()
    y = net(x).argmax(-1)
    return LoadedModel(spec=f"tiny-{seed}", name="tiny", kind="image-classifier", module=net,
                       quality_fn=lambda m: {"acc": float((m(x).argmax(-1) == y).float().mean())},
                       calibration=x, higher_is_better={"acc": True})


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:  # the shipped weights; nothing read from the user's cache
        patch.setenv("SPARSEKIT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        return sparsekit.load_model("digits:mlp")


def pruned_count(result):
    """Independent count: pruned entries of every mask, summed with a plain loop."""
    return sum(int(v) for mask in result.masks.values() for v in (~mask).reshape(-1).tolist())


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("sparsity", [0.5, 0.7])
def test_owl_unstructured_keeps_the_budget_exactly(mlp, tmp_cache, method, sparsity):
    before = {k: v.clone() for k, v in mlp.module.state_dict().items()}
    res = sparsify(mlp, SparsifyConfig(pattern="unstructured", sparsity=sparsity, method=method, allocation="owl"))
    total = sum(m.weight.numel() for m in mlp.module.modules() if isinstance(m, nn.Linear))
    assert pruned_count(res) == round(sparsity * total)
    assert "exact" in res.allocation_note
    # Layers differ (OWL moved them), and each layer's own count is what the allocation says.
    assert len({round(s, 4) for s in res.allocation.values()}) > 1
    for name, mask in res.masks.items():
        assert int((~mask).sum()) == round(res.allocation[name] * mask.numel())
    for k, v in mlp.module.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(not m._forward_pre_hooks for m in mlp.module.modules())


def nm_level_of(weight_mask, m):
    """Plain loop: the one n every group of m consecutive inputs keeps, or None if groups differ."""
    ns = set()
    for row in weight_mask.reshape(weight_mask.shape[0], -1).tolist():
        for s in range(0, len(row), m):
            ns.add(sum(row[s:s + m]))
    return ns.pop() if len(ns) == 1 else None


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_owl_nm_levels_run_on_nm_kernels_and_never_exceed_the_density(mlp, tmp_cache, method):
    cfg = SparsifyConfig(pattern="nm", n=2, m=4, method=method, allocation="owl", owl_lambda=0.3)
    res = sparsify(mlp, cfg)
    total = sum(m.weight.numel() for m in mlp.module.modules() if isinstance(m, nn.Linear))
    kept = total - pruned_count(res)  # a layer kept dense has no mask and keeps everything
    assert kept <= total // 2
    levels = {}
    for r in res.report:
        if r.name in res.masks:
            levels[r.name] = nm_level_of(res.masks[r.name], 4)
            assert levels[r.name] is not None and 1 <= levels[r.name] <= 3
        else:
            assert "kept dense by the allocation" in r.skipped_reason
            levels[r.name] = 4
    assert len(set(levels.values())) > 1  # lambda 0.3 moves layers off 2:4
    assert {n: 1 - k / 4 for n, k in levels.items()} == pytest.approx(res.allocation)
    remainder = total // 2 - kept
    assert ("exact" in res.allocation_note) == (remainder == 0)
    if remainder:
        assert f"{remainder} weights fewer kept" in res.allocation_note


def test_owl_ratios_and_sparsities_follow_the_formula(tmp_cache):
    net, x = tiny_net(), calibration_batch()
    names = ["0", "2", "4"]
    # Plain computation: inputs of each layer by forward hooks, column norms, the outlier share.
    seen = {}
    hooks = [net[int(n)].register_forward_hook(lambda mod, inp, out, n=n: seen.__setitem__(n, inp[0].detach().clone()))
             for n in names]
    net(x)
    for h in hooks:
        h.remove()
    M, lam, S = 3.0, 0.1, 0.6
    plain = {}
    for n in names:
        W, X = net[int(n)].weight.detach().double(), seen[n].double()
        norms = [sum(X[t, j].item() ** 2 for t in range(X.shape[0])) ** 0.5 for j in range(X.shape[1])]
        metric = [[abs(W[i, j].item()) * norms[j] for j in range(W.shape[1])] for i in range(W.shape[0])]
        flat = [v for row in metric for v in row]
        mean = sum(flat) / len(flat)
        plain[n] = sum(v > M * mean for v in flat) / len(flat)
    ratios = owl_outlier_ratios(net, names, x, M)
    assert ratios == pytest.approx(plain, abs=1e-12)
    assert len(set(plain.values())) == 3
    numel = {n: net[int(n)].weight.numel() for n in names}
    lo, hi = min(plain.values()), max(plain.values())
    spread = {n: (plain[n] - lo) / (hi - lo) * 2 * lam for n in names}
    N = sum(numel.values())
    shift = sum(spread[n] * numel[n] for n in names) / N
    want = {n: S + shift - spread[n] for n in names}
    got = owl_sparsities(ratios, numel, S, lam)
    assert got == pytest.approx(want, abs=1e-12)
    assert max(got.values()) - min(got.values()) == pytest.approx(2 * lam)
    # The most outlier-heavy layer is pruned least.
    assert min(got, key=got.get) == max(plain, key=plain.get)
    res = sparsify(tiny_loaded(), SparsifyConfig(pattern="unstructured", sparsity=S, allocation="owl", owl_m=M,
                                                 owl_lambda=lam))
    for n in names:
        assert abs(res.allocation[n] - want[n]) <= 1.0 / numel[n] + 1e-9


def test_owl_clipping_keeps_the_weighted_mean():
    ratios, numel = {"a": 0.0, "b": 0.5, "c": 1.0}, {"a": 100, "b": 300, "c": 50}
    got = owl_sparsities(ratios, numel, 0.05, 0.2)
    assert min(got.values()) == 0.0
    assert sum(got[n] * numel[n] for n in numel) / 450 == pytest.approx(0.05)


def test_wanda_exact_mask_prunes_the_weakest_per_row():
    torch.manual_seed(0)
    layer = nn.Linear(10, 6)
    view = LayerInputs("l", layer, False)
    stats = InputStats("norms")
    stats.add(torch.randn(40, 10), 40)
    scores = layer.weight.detach().abs() * stats.total.sqrt().float()
    for count in (0, 6, 13, 29, 59):
        keep = wanda_exact_mask(view, layer.weight, stats, count)
        assert int((~keep).sum()) == count
        per_row = [int((~keep[r]).sum()) for r in range(6)]
        assert set(per_row) <= {count // 6, count // 6 + 1}
        for r in range(6):  # plain loop: every pruned score is at most every kept score of its row
            kept = [scores[r, j].item() for j in range(10) if keep[r, j]]
            gone = [scores[r, j].item() for j in range(10) if not keep[r, j]]
            assert not gone or not kept or max(gone) <= min(kept)


def test_sensitivity_allocation_keeps_the_budget(tmp_cache):
    from sparsekit.sensitivity import SensitivityConfig, sensitivity_scan

    loaded = tiny_loaded()
    scan = sensitivity_scan(loaded, SensitivityConfig(sparsities=(0.3, 0.6, 0.9), nm=((1, 4), (2, 4), (3, 4))))
    res = sparsify(loaded, SparsifyConfig(pattern="unstructured", sparsity=0.6, allocation="sensitivity"),
                   sensitivity=scan)
    assert pruned_count(res) == round(0.6 * (128 + 192 + 48))
    res = sparsify(loaded, SparsifyConfig(pattern="nm", n=2, m=4, allocation="sensitivity"), sensitivity=scan)
    assert 368 - pruned_count(res) <= 184
    with pytest.raises(ValueError, match="no N:M settings with M=2"):
        sparsify(loaded, SparsifyConfig(pattern="nm", n=1, m=2, allocation="sensitivity"), sensitivity=scan)
    few = sensitivity_scan(loaded, SensitivityConfig(sparsities=(0.3,), nm=((3, 4),)))
    with pytest.raises(ValueError, match="cannot prune"):
        sparsify(loaded, SparsifyConfig(pattern="nm", n=1, m=4, allocation="sensitivity"), sensitivity=few)
    with pytest.raises(ValueError, match="above what the scanned sparsities reach"):
        sparsify(loaded, SparsifyConfig(pattern="unstructured", sparsity=0.5, allocation="sensitivity"), sensitivity=few)
    other = sensitivity_scan(tiny_loaded(seed=1), SensitivityConfig(sparsities=(0.5,)))
    with pytest.raises(ValueError, match="different model"):
        sparsify(loaded, SparsifyConfig(pattern="unstructured", allocation="sensitivity"), sensitivity=other)


@pytest.mark.parametrize("cfg, words", [
    (dict(allocation="greedy"), "allocation must be one of"),
    (dict(allocation="owl", owl_m=0), "owl_m"),
    (dict(allocation="owl", owl_m=500.0), "owl_m"),
    (dict(allocation="owl", owl_m="5"), "owl_m"),
    (dict(allocation="owl", owl_lambda=-0.1), "owl_lambda"),
    (dict(allocation="owl", owl_lambda=0.8), "owl_lambda"),
    (dict(pattern="unstructured", scope="global", allocation="owl"), "needs scope='layer'"),
    (dict(pattern="unstructured", sparsity=1.2, allocation="owl"), "between 0 and 0.99"),
])
def test_bad_config(cfg, words):
    with pytest.raises(ValueError, match=words):
        sparsify(tiny_net(), SparsifyConfig(**cfg))


def test_bad_inputs_at_run_time(tmp_cache):
    with pytest.raises(ValueError, match="allocation='owl' needs calibration inputs"):
        sparsify(tiny_net(), SparsifyConfig(pattern="unstructured", allocation="owl"))
    with pytest.raises(ValueError, match="needs a sensitivity scan"):
        sparsify(tiny_loaded(), SparsifyConfig(pattern="unstructured", allocation="sensitivity"))
    odd = nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 4))
    # A layer M does not fit stays dense under OWL as under uniform, and the note says so (issue #24).
    owl = sparsify(odd, SparsifyConfig(allocation="owl"), calibration=torch.randn(4, 6))
    assert owl.report[0].skipped_reason == "in_features = 6 is not a multiple of M=4"
    assert "left dense, as M does not fit: 0 (in_features = 6" in owl.allocation_note
    # Uniform N:M still leaves such a layer dense, as before.
    assert "not a multiple" in sparsify(odd, SparsifyConfig()).report[0].skipped_reason
    small = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 4))
    with pytest.raises(ValueError, match="budget out of range"):
        sparsify(small, SparsifyConfig(pattern="unstructured", sparsity=0.99, allocation="owl"),
                 calibration=torch.randn(4, 4))
    with pytest.raises(ValueError, match="SensitivityScan"):
        sparsify(tiny_loaded(), SparsifyConfig(pattern="unstructured", allocation="sensitivity"), sensitivity={"a": 1})


def test_config_json_keeps_old_keys_and_round_trips():
    old = SparsifyConfig(pattern="unstructured", sparsity=0.7, method="wanda")
    data = json.loads(old.to_json())
    assert not {"allocation", "owl_m", "owl_lambda"} & set(data)  # cache keys of uniform configs unchanged
    assert SparsifyConfig.from_json(json.dumps(data)) == old
    owl = SparsifyConfig(pattern="nm", allocation="owl", owl_m=7.0, owl_lambda=0.2)
    assert SparsifyConfig.from_json(owl.to_json()) == owl
    assert json.loads(owl.to_json())["allocation"] == "owl"
    assert "OWL allocation" in owl.label()


def test_sparsify_page_compares_owl_with_uniform(tmp_cache):
    """The Sparsify page with OWL shows its headline metric next to uniform allocation of the same
    pattern, both equal to the library's numbers for those two configs."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file("../app.py", default_timeout=120)
    at.run()
    at.selectbox(key="model_source").set_value("digits:mlp").run()
    at.switch_page("views/sparsify.py")
    at.run()
    at.radio(key="sp_pattern").set_value("unstructured").run()
    at.selectbox(key="sp_allocation").set_value("owl").run()
    assert not at.exception and not at.error
    loaded = sparsekit.load_model("digits:mlp")
    owl = sparsify(loaded, SparsifyConfig(pattern="unstructured", sparsity=0.5, allocation="owl"))
    uniform = sparsify(loaded, SparsifyConfig(pattern="unstructured", sparsity=0.5))
    a, u = loaded.quality(owl.model)["accuracy"], loaded.quality(uniform.model)["accuracy"]
    text = next(i.value for i in at.info if "with this allocation" in i.value)
    assert f"**{a:.4g}** with this allocation" in text and f"**{u:.4g}** with every layer" in text
    assert ("better than" if a > u else "worse than" if a < u else "the same as") in text
    # uniform allocation shows no comparison
    at.selectbox(key="sp_allocation").set_value("uniform").run()
    assert not any("with this allocation" in i.value for i in at.info)

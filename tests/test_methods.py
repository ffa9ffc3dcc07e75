"""The method registry: a new method is one registration, and sparsify, the config and the app read it."""
from dataclasses import replace

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit.methods import CALIBRATED_METHODS, METHODS, REGISTRY, Method, get_method, register


@pytest.fixture
def inverse():
    # A made-up method (scores 1/|w|: keeps the smallest weights) registered for this test only.
    method = register(Method(name="test-inverse", label="inverse", needs_calibration=False,
                             layer_scores=lambda weight, name, config: 1.0 / weight.abs(), help="keeps the smallest |w|"))
    yield method
    del REGISTRY[method.name]


def test_registered_methods():
    assert METHODS == ("magnitude", "random", "wanda", "sparsegpt", "taylor")
    assert CALIBRATED_METHODS == ("wanda", "sparsegpt", "taylor")
    assert get_method("sparsegpt").calibration_order and not get_method("taylor").calibration_order
    assert get_method("wanda").layer_local and not get_method("magnitude").layer_local
    with pytest.raises(ValueError, match="method must be one of magnitude"):
        get_method("movement")


def test_a_new_method_is_one_registration(inverse):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 3))
    res = sparsekit.sparsify(model, sparsekit.SparsifyConfig(method="test-inverse"))
    w = model[0].weight.detach()
    # 2:4 on 1/|w| keeps the two smallest |w| of every group: the opposite of magnitude.
    magnitude = sparsekit.nm_mask(w, 2, 4)
    assert torch.equal(res.masks["0"], ~magnitude)
    assert sparsekit.SparsifyConfig(method="test-inverse", pattern="unstructured", scope="global").validate() is None


def test_registration_needs_one_way_to_score():
    with pytest.raises(ValueError, match="exactly one of"):
        register(Method(name="nothing", label="x", needs_calibration=False, help="x"))
    with pytest.raises(ValueError, match="already registered"):
        register(Method(name="magnitude", label="x", needs_calibration=False, help="x",
                        layer_scores=lambda w, n, c: w))


@pytest.fixture
def input_norm():
    """A made-up calibrated method that chooses masks inside the shared calibration forward: keep the
    largest |w|·‖x‖₂ over the whole layer (Wanda compares within rows), with its own cost model."""
    from sparsekit.masks import nm_mask, unstructured_mask

    def keep_layer(layer, weight, config, stats, notes):
        W = layer.matrix(weight.detach())
        scores = W.abs().float() * stats.total.sqrt().float().unsqueeze(0)
        if config.pattern == "nm":
            return layer.from_matrix(nm_mask(W, config.n, config.m, scores=scores)), None
        return layer.from_matrix(unstructured_mask(W, float(config.sparsity), scores=scores)), None

    def run(model, names, config, calibration, progress):
        from sparsekit.methods.calibration import sequential_prune
        return sequential_prune(model, names, config, calibration, progress, keep_layer, "norms")

    method = register(Method(name="test-input-norm", label="input norm", needs_calibration=True, run=run,
                             keep_layer=keep_layer, stats="norms", calibration_passes=1.5,
                             layer_flops=lambda rows, cols, tokens: (float(rows * cols * tokens), 0.0),
                             help="keeps the largest |w|·‖x‖ of each layer"))
    yield method
    del REGISTRY[method.name]


def _net_and_batch():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4)).eval()
    return net, torch.randn(20, 8)


def test_a_new_calibrated_method_needs_no_edit_elsewhere(input_norm):
    """Registered once, the method runs through sparsify, OWL allocation, the cost estimate and a study
    cell, each reading what the Method declares."""
    from sparsekit.methods.cost import COLUMN_PASS_SLOWDOWN, estimate_seconds, forward_weights
    from sparsekit.study import oneshot_cell

    net, x = _net_and_batch()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    cfg = sparsekit.SparsifyConfig(method="test-input-norm", pattern="unstructured", sparsity=0.5)
    res = sparsekit.sparsify(net, cfg, calibration=x)
    # The first layer sees x itself: its mask must be the top half of |w|·‖x_j‖ by a plain ranking.
    w = net[0].weight.detach()
    scores = (w.abs() * x.pow(2).sum(0).sqrt().unsqueeze(0)).flatten()
    keep = torch.zeros(w.numel(), dtype=torch.bool)
    keep[torch.sort(scores, descending=True, stable=True).indices[: w.numel() // 2]] = True
    assert torch.equal(res.masks["0"].flatten(), keep)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())

    # OWL allocation: the per-layer targets go through keep_layer; the total is exact.
    owl = sparsekit.sparsify(net, sparsekit.SparsifyConfig(method="test-input-norm", pattern="unstructured",
                                                           sparsity=0.6, allocation="owl"), calibration=x)
    total = sum(m.numel() for m in owl.masks.values())
    assert total - sum(int(m.sum()) for m in owl.masks.values()) == round(0.6 * total)
    assert len({round(v, 6) for v in owl.allocation.values()}) > 1  # non-uniform

    # Cost: its own passes and per-layer flops, by the formula written out here.
    sec_per_token = 1e-3
    rate = 2.0 * forward_weights(net) / sec_per_token
    prunable = sum(m.weight.numel() for m in net if isinstance(m, nn.Linear))
    flops = sum(m.out_features * m.in_features * 20 for m in net if isinstance(m, nn.Linear))
    want = 1.5 * 2.0 * prunable * 20 / rate + (flops + COLUMN_PASS_SLOWDOWN * 0.0) / rate
    assert estimate_seconds(net, cfg, x, sec_per_token) == pytest.approx(want, rel=1e-12)

    # A study cell: the seed changes the mask only of a method that declares uses_seed.
    assert oneshot_cell("digits:mlp", cfg, seed=3).seed_effect == ""
    assert oneshot_cell("digits:mlp", replace(cfg, method="random"), seed=3).seed_effect == "random mask"


def test_method_fields_are_checked():
    with pytest.raises(ValueError, match="keep_layer needs stats"):
        register(Method(name="bad-stats", label="x", needs_calibration=True, help="x", run=lambda *a: None,
                        keep_layer=lambda *a: None, stats="gradients"))
    with pytest.raises(ValueError, match="run_output"):
        register(Method(name="bad-output", label="x", needs_calibration=True, help="x", run=lambda *a: None,
                        run_output="weights"))
    assert "bad-stats" not in REGISTRY and "bad-output" not in REGISTRY
    assert get_method("random").uses_seed and not get_method("magnitude").uses_seed
    assert get_method("taylor").run_output == "scores" and get_method("sparsegpt").run_output == "masks"


@pytest.mark.parametrize("kind", ["normal", "ties", "zeros", "nan"])
def test_wanda_row_mask_keeps_what_a_stable_sort_keeps(kind):
    """row_unstructured_mask finds each row's threshold with topk; it must keep exactly what a stable
    descending sort of |scores| keeps (ties: the lower index), at every sparsity."""
    from sparsekit.methods.wanda import row_unstructured_mask

    g = torch.Generator().manual_seed(7)
    for rows, cols in ((1, 1), (5, 4), (40, 33), (64, 96)):
        x = torch.randn(rows, cols, generator=g)
        if kind == "ties":
            x = torch.randint(-3, 4, (rows, cols), generator=g).float()  # -0.0 and 0.0 tie too
            x[x == 0] *= -1.0
        elif kind == "zeros":
            x = torch.zeros(rows, cols)
        elif kind == "nan":
            x[0, -1] = float("nan")
        for sparsity in (0.0, 0.1, 0.25, 0.5, 0.75, 0.99):
            k = cols - round(sparsity * cols)
            order = torch.sort(x.abs(), dim=1, descending=True, stable=True).indices
            want = torch.zeros(rows, cols, dtype=torch.bool).scatter_(1, order[:, :k], True)
            assert torch.equal(row_unstructured_mask(x, sparsity), want), (rows, cols, sparsity)

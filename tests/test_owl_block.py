"""OWL at its authors' granularity (issue #26 item 5): one outlier ratio per transformer block over
all its Linear layers together, one sparsity per block; per layer as an option, unchanged."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit.allocation import allocate
from sparsekit.sparsify import SparsifyConfig, sparsify


class TinyBlock(nn.Module):
    def __init__(self, d: int, h: int) -> None:
        super().__init__()
        self.attn = nn.Linear(d, d)
        self.up = nn.Linear(d, h)
        self.down = nn.Linear(h, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.down(torch.relu(self.up(x)))


class TinyTransformer(nn.Module):
    """An embedding Linear, four equal blocks of three Linear layers (a ModuleList), a head."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Linear(6, 8)
        self.blocks = nn.ModuleList([TinyBlock(8, 16) for _ in range(4)])
        self.head = nn.Linear(8, 4)
        with torch.no_grad():  # outliers of different strength in different blocks
            self.blocks[1].up.weight[:2, :2] *= 30.0
            self.blocks[2].down.weight[:4, :3] *= 12.0
            self.blocks[3].attn.weight[0, :] *= 6.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def tiny_calibration() -> torch.Tensor:
    torch.manual_seed(3)
    x = torch.randn(16, 5, 6)
    x[..., 1] *= 5.0
    return x


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:  # the shipped weights; nothing read from the user's cache
        patch.setenv("SPARSEKIT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        return sparsekit.load_model("digits:vit")


def linear_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def authors_block_sparsities(model: nn.Module, blocks: list[str], x: torch.Tensor, hyper_m: float, lam: float,
                             sparsity: float) -> tuple[dict[str, float], dict[str, float]]:
    """A plain-loop reimplementation of luuyin/OWL ``prune_wanda_outlier``'s ratio step: per block,
    the metrics ``|W| * sqrt(scaler_row)`` of all its Linear layers flattened and concatenated, the
    outlier ratio ``100 * count(metric > mean * M) / numel``, then ``(r - min) / (max - min) * 2 lam``,
    minus its plain mean plus ``1 - sparsity`` (the density), and sparsity = 1 - density.

    Returns:
        (block -> outlier ratio as a share in [0, 1], block -> sparsity).
    """
    sq: dict[str, list[float]] = {}
    hooks = []
    for name, mod in linear_layers(model):
        def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor, name: str = name) -> None:
            rows = inp[0].detach().double().reshape(-1, mod.in_features).tolist()
            acc = sq.setdefault(name, [0.0] * mod.in_features)
            for row in rows:
                for j, v in enumerate(row):
                    acc[j] += v * v
        hooks.append(mod.register_forward_hook(hook))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    ratios = []
    for block in blocks:
        flat: list[float] = []
        for name, mod in linear_layers(model):
            if name.startswith(block + "."):
                norms = [v ** 0.5 for v in sq[name]]
                for row in mod.weight.detach().double().tolist():
                    flat.extend(abs(w) * norms[j] for j, w in enumerate(row))
        mean = sum(flat) / len(flat)
        ratios.append(100.0 * sum(1 for v in flat if v > mean * hyper_m) / len(flat))
    lo, hi = min(ratios), max(ratios)
    scaled = [(r - lo) * (1 / (hi - lo) * lam * 2) for r in ratios]
    avg = sum(scaled) / len(scaled)
    density = [s - avg + (1 - sparsity) for s in scaled]
    return ({b: r / 100 for b, r in zip(blocks, ratios)}, {b: 1 - d for b, d in zip(blocks, density)})


def pruned_per_layer(result) -> dict[str, int]:
    """Independent count from the masks: pruned entries of each layer, by a plain loop."""
    return {n: sum(1 for v in (~mask).reshape(-1).tolist() if v) for n, mask in result.masks.items()}


CASES = {
    "tiny": (lambda vit: (TinyTransformer(), tiny_calibration()), [f"blocks.{i}" for i in range(4)], 3.0, 0.1, 0.6),
    "digits:vit": (lambda vit: (vit.module, vit.calibration), ["blocks.0", "blocks.1"], 5.0, 0.08, 0.7),
}


@pytest.mark.parametrize("case", list(CASES))
def test_block_unit_equals_the_authors_computation(vit, case):
    make, blocks, hyper_m, lam, s = CASES[case]
    model, x = make(vit)
    ref_d, ref_s = authors_block_sparsities(copy.deepcopy(model).eval(), blocks, x, hyper_m, lam, s)
    assert len(set(ref_d.values())) > 1  # the blocks differ, so the mapping is not trivial
    config = SparsifyConfig(pattern="unstructured", sparsity=s, method="wanda", allocation="owl", owl_m=hyper_m,
                            owl_lambda=lam)
    layers = linear_layers(model)
    alloc = allocate(copy.deepcopy(model).eval(), layers, config, x)
    res = sparsify(model, config, calibration=x, progress=False)
    pruned = pruned_per_layer(res)
    total = sum(m.weight.numel() for _, m in layers)
    assert sum(pruned.values()) == round(s * total)  # the budget, exactly
    for name, mod in layers:
        block = next((b for b in blocks if name.startswith(b + ".")), None)
        numel = mod.weight.numel()
        if block is None:  # embeddings and heads: at the target, as the authors leave them out of OWL
            assert name not in alloc.blocks and name not in alloc.scores
            want = s
        else:
            assert alloc.blocks[name] == block
            assert alloc.scores[name] == pytest.approx(ref_d[block], abs=1e-12)
            want = ref_s[block]
        # The real-valued target becomes an integer count; the remainder moves at most one weight.
        assert abs(pruned[name] - want * numel) <= 1.0 + 1e-9, name
        assert res.allocation[name] == pruned[name] / numel
    assert "unit: transformer block" in res.allocation_note
    assert "outside every block (embed" in res.allocation_note or "outside every block (patch_embed" in \
        res.allocation_note


def test_every_layer_of_a_block_gets_its_blocks_sparsity_and_nm_levels(vit):
    model, x = TinyTransformer(seed=1), tiny_calibration()
    res = sparsify(model, SparsifyConfig(pattern="unstructured", sparsity=0.5, method="magnitude", allocation="owl",
                                         owl_m=3.0, owl_lambda=0.15), calibration=x, progress=False)
    pruned = pruned_per_layer(res)
    total = sum(m.numel() for m in res.masks.values())
    assert sum(pruned.values()) == round(0.5 * total)
    per_block = {}
    for name, mask in res.masks.items():
        if name.startswith("blocks."):
            per_block.setdefault(name.split(".")[1], []).append(pruned[name] / mask.numel())
    assert len(per_block) == 4
    for shares in per_block.values():  # one sparsity per block, up to one weight of rounding per layer
        assert max(shares) - min(shares) <= 1 / 64 + 1e-12
    assert max(max(v) for v in per_block.values()) - min(min(v) for v in per_block.values()) > 0.2
    # N:M: one level per block, the kept count never above N/M of the total.
    nm = sparsify(vit.module, SparsifyConfig(pattern="nm", n=2, m=4, method="wanda", allocation="owl",
                                             owl_lambda=0.25), calibration=vit.calibration, progress=False)
    kept = {n: int(m.sum()) for n, m in nm.masks.items()}
    numel = {n: m.numel() for n, m in nm.masks.items()}
    assert sum(kept.values()) <= sum(numel.values()) // 2
    for block in ("blocks.0.", "blocks.1."):
        levels = {round(4 * kept[n] / numel[n]) for n in kept if n.startswith(block)}
        assert len(levels) == 1, levels
    assert {round(4 * kept[n] / numel[n]) for n in ("patch_embed", "head")} <= {1, 2, 3, 4}


# What the per-layer OWL gave on the shipped digits ViT before the block unit existed (captured from
# the code at 433025a): the layer unit must keep these numbers.
BEFORE_UNSTRUCTURED_70 = {
    'patch_embed': 0.7265625, 'blocks.0.attn.q': 0.727294921875, 'blocks.0.attn.k': 0.727294921875,
    'blocks.0.attn.v': 0.727294921875, 'blocks.0.attn.proj': 0.7041015625, 'blocks.0.mlp.fc1': 0.7274169921875,
    'blocks.0.mlp.fc2': 0.5673828125, 'blocks.1.attn.q': 0.7275390625, 'blocks.1.attn.k': 0.7275390625,
    'blocks.1.attn.v': 0.7275390625, 'blocks.1.attn.proj': 0.7275390625, 'blocks.1.mlp.fc1': 0.7274169921875,
    'blocks.1.mlp.fc2': 0.6766357421875, 'head': 0.728125}
BEFORE_NM_2_4 = {
    'patch_embed': 0.5, 'blocks.0.attn.q': 0.5, 'blocks.0.attn.k': 0.5, 'blocks.0.attn.v': 0.5,
    'blocks.0.attn.proj': 0.5, 'blocks.0.mlp.fc1': 0.5, 'blocks.0.mlp.fc2': 0.0, 'blocks.1.attn.q': 0.5,
    'blocks.1.attn.k': 0.5, 'blocks.1.attn.v': 0.75, 'blocks.1.attn.proj': 0.75, 'blocks.1.mlp.fc1': 0.75,
    'blocks.1.mlp.fc2': 0.5, 'head': 0.5}


def test_layer_unit_keeps_the_per_layer_numbers(vit):
    base = dict(method="wanda", allocation="owl", owl_unit="layer")
    un = sparsify(vit.module, SparsifyConfig(pattern="unstructured", sparsity=0.7, **base), calibration=vit.calibration,
                  progress=False)
    assert un.allocation == BEFORE_UNSTRUCTURED_70
    assert "unit: layer)" in un.allocation_note and "no transformer blocks" not in un.allocation_note
    nm = sparsify(vit.module, SparsifyConfig(pattern="nm", owl_lambda=0.25, **base), calibration=vit.calibration,
                  progress=False)
    assert nm.allocation == BEFORE_NM_2_4
    # The block unit gives other numbers on the same model (so the comparison above can fail).
    block = sparsify(vit.module, SparsifyConfig(pattern="unstructured", sparsity=0.7, method="wanda",
                                                allocation="owl"), calibration=vit.calibration, progress=False)
    assert block.allocation != BEFORE_UNSTRUCTURED_70


def test_a_model_without_blocks_falls_back_to_layers_and_says_so(tmp_cache):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4)).eval()
    with torch.no_grad():
        net[2].weight[:3, :3] *= 25.0
    x = torch.randn(64, 8)
    cfg = SparsifyConfig(pattern="unstructured", sparsity=0.6, allocation="owl", owl_m=3.0, owl_lambda=0.1)
    block = sparsify(net, cfg, calibration=x, progress=False)
    layer = sparsify(net, SparsifyConfig(**{**json.loads(cfg.to_json()), "owl_unit": "layer"}), calibration=x,
                     progress=False)
    assert block.allocation == layer.allocation
    assert len(set(block.allocation.values())) > 1
    assert "the model has no transformer blocks, so each layer is scored alone" in block.allocation_note
    assert "no transformer blocks" not in layer.allocation_note


@pytest.mark.parametrize("unit", ["blocks", "Layer", "", None, 1])
def test_bad_owl_unit_gets_a_clear_message(unit):
    with pytest.raises(ValueError, match=r"owl_unit \(what OWL scores as one unit\) must be one of \('block', "
                                         r"'layer'\), got"):
        SparsifyConfig(allocation="owl", owl_unit=unit).validate()
    with pytest.raises(ValueError, match="owl_unit"):
        sparsify(TinyTransformer(), SparsifyConfig(pattern="unstructured", allocation="owl", owl_unit=unit),
                 calibration=tiny_calibration())
    with pytest.raises(ValueError, match="owl_unit"):
        SparsifyConfig.from_json(json.dumps({"allocation": "owl", "owl_unit": unit})).validate()


def test_json_round_trip_and_label():
    uniform = SparsifyConfig(pattern="unstructured", sparsity=0.7, method="wanda")
    assert "owl_unit" not in json.loads(uniform.to_json())  # uniform cache keys unchanged
    for unit in ("block", "layer"):
        cfg = SparsifyConfig(pattern="unstructured", sparsity=0.7, method="wanda", allocation="owl", owl_unit=unit)
        data = json.loads(cfg.to_json())
        assert data["owl_unit"] == unit  # an OWL config always names its unit (older per-layer keys lack it)
        assert SparsifyConfig.from_json(cfg.to_json()) == cfg
    old = json.dumps({"allocation": "owl", "pattern": "unstructured", "sparsity": 0.7})
    assert SparsifyConfig.from_json(old).owl_unit == "block"  # the default is the authors' unit
    assert SparsifyConfig(allocation="owl", owl_unit="layer").label().endswith("OWL allocation (per layer)")
    assert SparsifyConfig(allocation="owl").label().endswith("OWL allocation")
    odd = SparsifyConfig(owl_unit="layer")  # not OWL: the non-default unit still round-trips
    assert SparsifyConfig.from_json(odd.to_json()) == odd


def test_sparsify_page_offers_the_owl_unit_only_for_owl(tmp_cache):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file("../app.py", default_timeout=300)
    at.run()
    at.selectbox(key="model_source").set_value("digits:vit").run()
    at.switch_page("views/sparsify.py")
    at.run()
    at.radio(key="sp_pattern").set_value("unstructured").run()
    assert "sp_owl_unit" not in [s.key for s in at.selectbox]
    at.selectbox(key="sp_allocation").set_value("owl").run()
    assert at.selectbox(key="sp_owl_unit").value == "block"
    assert any("unit: transformer block" in c.value for c in at.caption)
    at.selectbox(key="sp_owl_unit").set_value("layer").run()
    assert not at.exception and not at.error
    assert any("unit: layer" in c.value for c in at.caption)

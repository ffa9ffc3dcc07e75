"""monarchize (sparsekit.structured.monarch_model): the copy equals a copy whose weights were replaced by
their projections by hand, counts equal the parameters counted in the copy, the layer selection is
sparsify's, GPT-2's transposed Conv1D is projected as the Linear it is, bad configs get clear messages,
the shared model is never changed, the zoo's models run, and the Jupyter card shows the report's fields."""
from __future__ import annotations

import copy
import html
import math
import re

import numpy as np
import pytest
import torch
from torch import nn

from conftest import shared_model
from sparsekit.layers import layer_group
from sparsekit.structured import (
    MonarchConfig,
    MonarchLinear,
    monarch_blocks_for_budget,
    monarch_project,
    monarchize,
)
from sparsekit.structured.monarch import monarch_dense

pytestmark = pytest.mark.usefixtures("one_thread")


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 6), nn.ReLU(),
                         nn.Linear(6, 4, bias=False))


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def unchanged(module: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    after = module.state_dict()
    return set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)


def hand_projected(model: nn.Module, blocks: dict[str, int]) -> nn.Module:
    """A deep copy whose named Linear weights are replaced (in place) by their dense Monarch projection."""
    out = copy.deepcopy(model)
    modules = dict(out.named_modules())
    with torch.no_grad():
        for name, b in blocks.items():
            w = modules[name].weight
            transposed = type(modules[name]).__name__ == "Conv1D"
            matrix = w.t() if transposed else w
            dense = monarch_dense(*monarch_project(matrix, b))
            w.copy_(dense.t() if transposed else dense)
    return out


def test_copy_equals_weights_replaced_by_hand_and_source_is_untouched():
    model = net()
    before = snapshot(model)
    kinds = [type(m) for m in model.modules()]
    result = monarchize(model, MonarchConfig(blocks=2), progress=False)
    assert unchanged(model, before) and [type(m) for m in model.modules()] == kinds
    # 8→16 (2·24 = 48 < 128), 16→12 (56 < 192), 12→6 (36 < 72), 6→4 (20 < 24): all four take 2 blocks
    assert [r.blocks for r in result.layers] == [2, 2, 2, 2]
    assert all(isinstance(result.model[i], MonarchLinear) for i in (0, 2, 4, 6))
    reference = hand_projected(model, {"0": 2, "2": 2, "4": 2, "6": 2})
    x = torch.randn(5, 8)
    with torch.no_grad():
        assert torch.allclose(result.model(x), reference(x), atol=1e-5)
    assert result.model[6].bias is None and torch.equal(result.model[0].bias, model[0].bias)
    assert not result.model.training


def test_counts_and_errors_against_the_copy():
    model = net()
    result = monarchize(model, MonarchConfig(blocks=2), progress=False)
    modules = dict(result.model.named_modules())
    for row in result.layers:
        dense = dict(model.named_modules())[row.name].weight.detach().double().numpy()
        layer = modules[row.name]
        counted = layer.left.numel() + layer.right.numel()
        assert row.shape == dense.shape and row.params_before == dense.size
        assert row.params_after == counted == 2 * (dense.shape[0] + dense.shape[1])
        assert row.bytes_before == 4 * dense.size and row.bytes_after == 4 * counted
        gap = np.linalg.norm(dense - layer.to_dense().detach().double().numpy()) / np.linalg.norm(dense)
        assert row.rel_error == pytest.approx(gap, rel=1e-6)
    assert result.model_params_before == sum(p.numel() for p in model.parameters())
    assert result.model_params_after == sum(p.numel() for p in result.model.parameters())
    saved = sum(r.params_before - r.params_after for r in result.layers)
    assert result.model_params_before - result.model_params_after == saved
    assert result.model_bytes_after == 4 * result.model_params_after
    s = result.summary()
    assert s["layers_projected"] == s["layers_total"] == 4
    assert s["kept_fraction_projected"] == sum(r.params_after for r in result.layers) / (128 + 192 + 72 + 24)


def test_layers_the_block_count_does_not_fit_stay_dense_and_say_why():
    model = net()
    result = monarchize(model, MonarchConfig(blocks=4), progress=False)
    rows = {r.name: r for r in result.layers}
    # 8→16 fits (4·24 = 96 < 128); 16→12 fits; 12→6: out 6; 6→4: in 6 and 4·10 = 40 ≥ 24 (divisibility first)
    assert rows["0"].blocks == rows["2"].blocks == 4
    assert rows["4"].reason == "out_features = 6 is not a multiple of blocks=4"
    assert rows["6"].reason == "in_features = 6 is not a multiple of blocks=4"
    assert rows["4"].params_after == rows["4"].params_before == 72 and rows["4"].rel_error is None
    assert isinstance(result.model[4], nn.Linear) and torch.equal(result.model[4].weight, model[4].weight)
    # a block count that fits but saves nothing
    wide = monarchize(nn.Sequential(nn.Linear(4, 4), nn.Linear(16, 16)), MonarchConfig(blocks=4), progress=False)
    assert wide.layers[0].reason == "4 blocks keep 32 parameters, not fewer than the dense 16"
    assert wide.layers[1].blocks == 4


def test_no_layer_that_fits_is_a_clear_error():
    with pytest.raises(ValueError, match=r"no layer can be projected with Monarch, 5 blocks: 0: out_features = 16 is "
                                         r"not a multiple of blocks=5 and in_features = 8"):
        monarchize(net(), MonarchConfig(blocks=5), progress=False)
    with pytest.raises(ValueError, match=r"budget 0.01 is below the smallest Monarch matrix of this shape"):
        monarchize(net(), MonarchConfig(blocks=0, budget=0.01), progress=False)
    with pytest.raises(ValueError, match="no Linear layers"):
        monarchize(nn.Sequential(nn.ReLU()), MonarchConfig(), progress=False)


def test_budget_gives_each_layer_the_largest_fitting_block_count():
    model = shared_model("digits:vit")
    result = monarchize(model, MonarchConfig(blocks=0, budget=0.3), progress=False)
    for row in result.layers:
        out, inp = row.shape
        expected = monarch_blocks_for_budget(out, inp, 0.3)
        assert row.blocks == expected and row.params_after == expected * (out + inp) <= 0.3 * out * inp


def test_selection_is_sparsifys():
    model = shared_model("digits:vit")
    mlp = monarchize(model, MonarchConfig(blocks=4, layers="mlp"), progress=False)
    assert [r.name for r in mlp.layers if r.projected] == [
        n for n, m in model.module.named_modules() if isinstance(m, nn.Linear) and layer_group(n) == "mlp"]
    assert all("outside the 'mlp' layer selection" in r.reason for r in mlp.layers if not r.projected)
    picked = monarchize(model, MonarchConfig(blocks=4, include=r"blocks\.1\.", exclude=r"\.k$", keep_last_dense=True),
                        progress=False)
    done = [r.name for r in picked.layers if r.projected]
    assert done == ["blocks.1.attn.q", "blocks.1.attn.v", "blocks.1.attn.proj", "blocks.1.mlp.fc1"]
    reasons = {r.name: r.reason for r in picked.layers}
    assert reasons["blocks.1.mlp.fc2"] == "last layer kept dense" and reasons["blocks.1.attn.k"] == "matches exclude regex"
    assert reasons["head"] == "does not match include regex"


def test_gpt2_conv1d_is_projected_as_its_linear_and_tied_head_stays_dense():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    gpt = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=32)).eval()
    before = snapshot(gpt)
    result = monarchize(gpt, MonarchConfig(blocks=4), progress=False)
    assert unchanged(gpt, before)
    rows = {r.name: r for r in result.layers}
    assert rows["lm_head"].reason == "weight tied to another layer (e.g. embeddings)"
    # c_attn stores [in=16, out=48]: the report gives (out, in)
    assert rows["transformer.h.0.attn.c_attn"].shape == (48, 16)
    conv = {n: r.blocks for n, r in rows.items() if r.projected}
    assert set(conv) == {f"transformer.h.0.{n}" for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    reference = hand_projected(gpt, conv)
    ids = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        assert torch.allclose(result.model(ids).logits, reference(ids).logits, atol=1e-5)


def test_convolutions_stay_dense_and_a_bare_linear_becomes_monarch():
    cnn = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Flatten(), nn.Linear(8, 8))
    result = monarchize(cnn, MonarchConfig(blocks=2), progress=False)
    assert result.layers[0].reason == "a Conv2d: Monarch projection replaces Linear layers only"
    assert isinstance(result.model[2], MonarchLinear)
    lin = nn.Linear(8, 8)
    single = monarchize(lin, MonarchConfig(blocks=2), progress=False)
    assert isinstance(single.model, MonarchLinear) and isinstance(lin, nn.Linear)
    x = torch.randn(3, 8)
    dense = monarch_dense(*monarch_project(lin.weight, 2))
    with torch.no_grad():
        assert torch.allclose(single.model(x), x @ dense.T + lin.bias, atol=1e-6)


@pytest.mark.parametrize("config,message", [
    (MonarchConfig(blocks=0), r"set blocks \(>= 1\) or, with blocks=0, a budget in \(0, 1\]: a budget of 0 leaves "
                              "no parameters"),
    (MonarchConfig(blocks=2, budget=0.5), "set either blocks or budget, not both"),
    (MonarchConfig(blocks=-1), "blocks must be an integer from 1 to 4096"),
    (MonarchConfig(blocks=2.5), "blocks must be an integer"),
    (MonarchConfig(blocks=0, budget=1.5), r"budget must be a fraction of the dense parameters in \(0, 1\]"),
    (MonarchConfig(blocks=0, budget=-0.2), "budget must be a fraction"),
    (MonarchConfig(layers="conv"), "layers must be one of"),
    (MonarchConfig(include="("), "include is not a valid regular expression"),
])
def test_bad_configs_are_refused(config, message):
    with pytest.raises(ValueError, match=message):
        monarchize(net(), config, progress=False)


def test_config_json_round_trip():
    config = MonarchConfig(blocks=0, budget=0.25, layers="mlp", exclude="head", keep_first_dense=True)
    assert MonarchConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="unknown"):
        MonarchConfig.from_json('{"blocks": 2, "blokcs": 3}')


@pytest.mark.parametrize("spec", ["digits:vit", "digits:mlp", "lm:small"])
def test_zoo_models_run_and_the_shared_model_is_untouched(spec):
    loaded = shared_model(spec)
    before = snapshot(loaded.module)
    dense_quality = loaded.quality()
    result = monarchize(loaded, MonarchConfig(blocks=0, budget=0.5), progress=False)
    assert unchanged(loaded.module, before)
    assert not any(isinstance(m, MonarchLinear) for m in loaded.module.modules())
    assert result.summary()["layers_projected"] > 0
    quality = loaded.quality(result.model)
    assert list(quality) == list(dense_quality) and all(math.isfinite(v) for v in quality.values())
    assert loaded.quality() == dense_quality


@pytest.mark.slow
def test_minilm_runs():
    loaded = shared_model("minilm")
    before = snapshot(loaded.module)
    result = monarchize(loaded, MonarchConfig(blocks=0, budget=0.5), progress=False)
    assert unchanged(loaded.module, before) and result.summary()["layers_projected"] == 36
    quality = loaded.quality(result.model)
    assert all(math.isfinite(v) for v in quality.values())


def cells(card_html: str) -> list[list[str]]:
    return [[html.unescape(c) for c in re.findall(r"<td>(.*?)</td>", row)]
            for row in re.findall(r"<tr>(.*?)</tr>", card_html) if "<td>" in row]


def test_card_shows_the_reports_fields():
    model = net()
    result = monarchize(model, MonarchConfig(blocks=4), progress=False)
    card = result.summary_card()
    # by hand: layers 0 (8→16) and 2 (16→12) take 4 blocks: 4·24 + 4·28 = 208 of 128 + 192 = 320 entries
    assert card.title == "MonarchResult: Monarch, 4 blocks"
    assert card.headline["layers projected"] == "2 / 4"
    assert card.headline["kept in projected layers"] == f"{100 * 208 / 320:.1f}%" == "65.0%"
    assert card.headline["kept in all Linear/Conv"] == f"{100 * (208 + 72 + 24) / (320 + 96):.1f}%"
    n_before = sum(p.numel() for p in model.parameters())
    n_after = sum(p.numel() for p in result.model.parameters())
    assert card.headline["model parameters"] == f"{n_after:,} of {n_before:,}"
    assert card.headline["largest relative error"] == f"{max(r.rel_error for r in result.layers[:2]):.3g}"
    rows = cells(result._repr_html_())
    assert [r[0] for r in rows] == ["0", "2", "4", "6"]
    assert rows[0][1:6] == ["16×8", "4", "128", "96", "75.0%"]
    assert rows[2][2] == "—" and rows[2][4] == "—" and rows[2][5] == "100.0%"
    assert rows[2][7] == "out_features = 6 is not a multiple of blocks=4"
    text = repr(result)
    assert text.startswith("<MonarchResult: Monarch, 4 blocks: layers projected 2 / 4") and "\n" not in text
    assert "tensor(" not in text and "Sequential" not in text
    with pytest.raises(TypeError, match="has no figure"):
        result.figure()


def test_progress_callback_sees_every_layer_and_the_end():
    seen = []
    monarchize(net(), MonarchConfig(blocks=2), progress=lambda f, msg: seen.append((f, msg)))
    assert [m for _, m in seen] == ["projecting 0", "projecting 2", "projecting 4", "projecting 6", "done"]
    assert [f for f, _ in seen] == [0.0, 0.25, 0.5, 0.75, 1.0]

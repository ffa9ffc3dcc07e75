"""SliceGPT on the digits ViT (pre-LN): the rotated, unsliced model equals the dense one; shapes and parameter counts
equal a formula; the first rotation is the PCA of the centred stream computed here; bad input is refused."""
from __future__ import annotations

import copy

import pytest
import torch

from sparsekit.models.digits_nets import DigitsViT
from sparsekit.structured.slicegpt import slice_model, sliced_width
from tests.conftest import shared_model

D, HIDDEN, TOKENS, PATCH, CLASSES, DEPTH = 64, 128, 17, 4, 10, 2


@pytest.fixture(scope="module")
def vit():
    return shared_model("digits:vit")


def shaken(vit_module: torch.nn.Module, seed: int = 0) -> DigitsViT:
    """A copy whose norms have random scales and shifts and whose class token is not zero, so that folding them is
    tested, not the trained values (which sit near 1 and 0)."""
    g = torch.Generator().manual_seed(seed)
    m = copy.deepcopy(vit_module)
    with torch.no_grad():
        for norm in [m.norm] + [n for b in m.blocks for n in (b.norm1, b.norm2)]:
            norm.weight.copy_(0.5 + torch.rand(D, generator=g))
            norm.bias.copy_(0.3 * torch.randn(D, generator=g))
        m.cls_token.copy_(0.5 * torch.randn(1, 1, D, generator=g))
    return m.eval()


def param_formula(d: int, d_last: int) -> int:
    """Parameters of the sliced ViT at width d (last block output and head at d_last), counted by hand."""
    embed = PATCH * d + d + d + TOKENS * d  # patch embedding, class token, position embedding
    blocks = 0
    for i in range(DEPTH):
        d_out = d_last if i == DEPTH - 1 else d
        blocks += 3 * (d * D + D)  # q, k, v read the sliced stream, keep the heads' width
        blocks += D * d + d  # proj writes the sliced stream
        blocks += d * HIDDEN + HIDDEN + HIDDEN * d_out + d_out  # fc1, fc2
        blocks += d * d + d * d_out  # the two shortcut matrices
    return embed + blocks + CLASSES * d_last + CLASSES  # the head; the norms have no parameters left


def test_the_vit_is_pre_ln():
    m = DigitsViT()
    x = torch.randn(3, TOKENS, D)
    seen = []
    m.blocks[0].norm1.register_forward_pre_hook(lambda _m, a: seen.append(("norm1", a[0])))
    m.blocks[0].attn.register_forward_pre_hook(lambda _m, a: seen.append(("attn", a[0])))
    m.blocks[0](x)
    # the block's own input enters the norm; the residual adds to x itself, no norm after the add
    assert torch.equal(seen[0][1], x)
    out = m.blocks[0](x)
    b = m.blocks[0]
    with torch.no_grad():
        h = x + b.attn(b.norm1(x))
        assert torch.allclose(out, h + b.mlp(b.norm2(h)))


@pytest.mark.parametrize("seed", [0, 1])
def test_rotated_unsliced_model_equals_the_dense_one(vit, seed):
    dense = shaken(vit.module, seed)
    images = torch.cat([vit.calibration[:64], torch.rand(16, 1, 8, 8)])
    result = slice_model(dense, 0.0, calibration=vit.calibration, progress=False)
    with torch.no_grad():
        want, got = dense(images).double(), result.module(images).double()
    assert torch.allclose(got, want, rtol=2e-5, atol=2e-5 * float(want.abs().max()))
    assert result.kept_width == D
    for blk in result.module.blocks:
        for s in (blk.attn_shortcut, blk.mlp_shortcut):
            s = s.detach().double()
            assert torch.allclose(s @ s.T, torch.eye(D, dtype=torch.float64), atol=1e-5)  # orthogonal
            assert not torch.allclose(s, torch.eye(D, dtype=torch.float64), atol=1e-2)  # a real rotation
    # the source is untouched
    assert isinstance(dense.norm, torch.nn.LayerNorm) and type(dense.blocks[0]).__name__ == "Block"


@pytest.mark.parametrize("fraction, slice_head", [(0.1, True), (0.3, True), (0.5, True), (0.9, True),
                                                  (0.3, False)])
def test_shapes_and_parameter_count_equal_the_formula(vit, fraction, slice_head):
    result = slice_model(vit, fraction, progress=False, slice_head=slice_head)
    d = int((1 - fraction) * D + 1e-9)
    d_last = d if slice_head else D
    assert result.kept_width == d == sliced_width(D, fraction)
    m = result.module
    assert m.patch_embed.weight.shape == (d, PATCH) and m.cls_token.shape == (1, 1, d)
    assert m.pos_embed.shape == (1, TOKENS, d) and m.head.weight.shape == (CLASSES, d_last)
    for i, blk in enumerate(m.blocks):
        d_out = d_last if i == DEPTH - 1 else d
        assert blk.attn.q.weight.shape == (D, d) and blk.attn.proj.weight.shape == (d, D)
        assert blk.mlp.fc1.weight.shape == (HIDDEN, d) and blk.mlp.fc2.weight.shape == (d_out, HIDDEN)
        assert blk.attn_shortcut.shape == (d, d) and blk.mlp_shortcut.shape == (d, d_out)
    counted = sum(p.numel() for p in m.parameters())
    assert result.params_after == counted == param_formula(d, d_last)
    assert result.params_before == sum(p.numel() for p in vit.module.parameters()) == 69194
    assert sum(r.params_after for r in result.layers) == counted
    with torch.no_grad():
        assert m(vit.calibration[:5]).shape == (5, CLASSES)


def test_first_rotation_is_the_pca_of_the_centred_stream(vit):
    """The share of Σxᵀx kept at the first block's input, against an eigen-decomposition done here on the dense
    model's stream with each token centred (LayerNorm's mean subtraction moved into the writers)."""
    captured = []
    handle = vit.module.blocks[0].register_forward_pre_hook(lambda _m, a: captured.append(a[0].detach().double()))
    with torch.no_grad():
        vit.module(vit.calibration)
    handle.remove()
    x = captured[0].reshape(-1, D)
    x = x - x.mean(-1, keepdim=True)
    values = torch.linalg.eigvalsh(x.T @ x).flip(0).clamp(min=0)
    for fraction in (0.7, 0.8, 0.9):
        d = sliced_width(D, fraction)
        result = slice_model(vit, fraction, progress=False)
        where, share = result.variance_kept[0]
        assert where == "block 0 input"
        assert share == pytest.approx(float(values[:d].sum() / values.sum()), rel=1e-9)
    assert result.calibration_tokens == vit.calibration.shape[0] * TOKENS


def test_slicing_costs_accuracy_only_when_it_cuts_deep(vit):
    dense = vit.quality()["accuracy"]
    light = vit.quality(slice_model(vit, 0.1, progress=False).module)["accuracy"]
    deep = vit.quality(slice_model(vit, 0.9, progress=False).module)["accuracy"]
    assert abs(light - dense) <= 1.0
    assert deep < dense - 20


def test_sliced_vit_still_records_attention_and_leaves_the_shared_model_alone(vit):
    before = {k: v.clone() for k, v in vit.module.state_dict().items()}
    m = slice_model(vit, 0.5, progress=False).module
    attn = m.blocks[1].attn
    attn.record_attention = True
    with torch.no_grad():
        m(vit.calibration[:3])
    assert attn.last_attention is not None and attn.last_attention.shape == (3, 4, TOKENS, TOKENS)
    assert torch.allclose(attn.last_attention.sum(-1), torch.ones(3, 4, TOKENS))
    after = vit.module.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert type(vit.module.blocks[0]).__name__ == "Block"


def test_bad_input(vit):
    with pytest.raises(ValueError, match="calibrates the digits ViT on images"):
        slice_model(vit, 0.2, calibration={"input_ids": torch.zeros(2, 5, dtype=torch.long)}, progress=False)
    with pytest.raises(ValueError, match="leaves no dimension"):
        slice_model(vit, 0.99, progress=False)
    with pytest.raises(ValueError, match="slicing fraction must be in"):
        slice_model(vit, 1.0, progress=False)
    sliced = slice_model(vit, 0.2, progress=False).module
    with pytest.raises(ValueError, match="already sliced"):
        slice_model(sliced, 0.2, calibration=vit.calibration, progress=False)
    with pytest.raises(ValueError, match="needs calibration data"):
        slice_model(vit.module, 0.2, progress=False)

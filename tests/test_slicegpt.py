"""SliceGPT (sparsekit.structured.slicegpt): the rotated, unsliced model equals the dense one; sliced shapes and
parameter counts match a formula from the config; the first rotation matches a PCA done here by hand; the shared
model is untouched; bad input is refused with a reason."""
from __future__ import annotations

import copy
import math

import pytest
import torch

import sparsekit
from sparsekit.methods.calibration import run_model
from sparsekit.structured.slicegpt import slice_model, sliced_width
from tests.conftest import shared_model

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["The cat sat on the mat and looked at the door.", "Numbers are added one after another.",
         "A short line.", "def f(x): return x * 2"]


def _perturbed(loaded):
    """Random norm scales and shifts and nonzero biases, so that folding them is exercised (a fresh model's
    norms are the identity)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in loaded.module.named_parameters():
            if p.dim() == 1:
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.3 * torch.randn(p.shape, generator=gen))
    return loaded


@pytest.fixture
def tiny(model_root, request):
    return _perturbed(sparsekit.load_model(request.param))


def _logits(module, batch):
    with torch.no_grad():
        return run_model(module, batch).logits


def _check_equal(loaded, result):
    batch = loaded.preprocess(TEXTS)
    dense, rotated = _logits(loaded.module, batch), _logits(result.module, batch)
    valid = batch["attention_mask"].bool()
    scale = dense[valid].abs().max().item()
    assert (dense[valid] - rotated[valid]).abs().max().item() <= 2e-5 * max(scale, 1.0)
    assert torch.equal(dense[valid].argmax(-1), rotated[valid].argmax(-1))


@pytest.mark.parametrize("tiny", ["hf:family/tiny-gpt2", "hf:tiny-llama"], indirect=True)
def test_rotated_unsliced_model_equals_the_dense_one(tiny):
    result = slice_model(tiny, 0.0, progress=False)
    assert result.kept_width == result.width
    _check_equal(tiny, result)
    blocks = result.module.transformer.h if result.architecture == "gpt2" else result.module.model.layers
    for b in blocks:  # an unsliced shortcut is a product of two rotations: orthogonal, and not the identity
        s = b.attn_shortcut.double()
        assert torch.allclose(s.T @ s, torch.eye(s.shape[0], dtype=torch.float64), atol=1e-5)
        assert not torch.allclose(s, torch.eye(s.shape[0], dtype=s.dtype), atol=1e-2)


def test_rotated_unsliced_lm_small_equals_the_dense_one():
    lm = shared_model("lm:small")
    _check_equal(lm, slice_model(lm, 0.0, progress=False))


def _gpt2_params(c, d, layers=None):
    D, V, P = c.n_embd, c.vocab_size, c.n_positions
    F = c.n_inner or 4 * D
    block = (d * 3 * D + 3 * D) + (D * d + d) + (d * F + F) + (F * d + d) + 2 * d * d
    return V * d + P * d + c.n_layer * block + (V * d + V)  # the untied head gains the bias W_E·β_f


def _llama_params(c, d, slice_head=True):
    D, V, F, L = c.hidden_size, c.vocab_size, c.intermediate_size, c.num_hidden_layers
    hd = c.head_dim
    attn = d * c.num_attention_heads * hd + 2 * d * c.num_key_value_heads * hd + c.num_attention_heads * hd * d
    block = attn + 2 * d * F + F * d + 2 * d * d
    d_last = d if slice_head else D
    last_extra = (F * d_last + d * d_last) - (F * d + d * d)
    return V * d + L * block + last_extra + V * d_last


@pytest.mark.parametrize("tiny", ["hf:family/tiny-gpt2", "hf:tiny-llama"], indirect=True)
def test_sliced_shapes_and_parameter_count_are_exact(tiny):
    c = tiny.module.config
    result = slice_model(tiny, 0.25, progress=False)
    d = result.kept_width
    assert d == math.floor(0.75 * c.hidden_size) == 24
    counted = sum(p.numel() for p in result.module.parameters())
    expected = _gpt2_params(c, d) if result.architecture == "gpt2" else _llama_params(c, d)
    assert result.params_after == counted == expected
    assert result.params_before == sum(p.numel() for p in tiny.module.parameters())
    assert result.kept_fraction == counted / result.params_before
    shapes = {r.name: r.after for r in result.layers}
    if result.architecture == "gpt2":
        assert shapes["transformer.wte.weight"] == (c.vocab_size, d)
        assert shapes["transformer.h.1.attn.c_attn.weight"] == (d, 3 * c.n_embd)  # Conv1D stores [in, out]
        assert shapes["transformer.h.1.mlp.c_proj.weight"] == (4 * c.n_embd, d)
        assert shapes["transformer.h.0.ln_1.weight"] is None
    else:
        assert shapes["model.layers.1.self_attn.k_proj.weight"] == (c.num_key_value_heads * c.head_dim, d)
        assert shapes["model.layers.1.mlp.down_proj.weight"] == (d, c.intermediate_size)
    assert shapes["lm_head.weight"] == (c.vocab_size, d)
    assert sum(r.params_after for r in result.layers) == counted
    assert sum(r.params_before for r in result.layers) == result.params_before
    batch = tiny.preprocess(TEXTS)
    assert _logits(result.module, batch).shape == _logits(tiny.module, batch).shape
    assert all(math.isfinite(v) for v in tiny.quality(result.module).values())


def test_llama_without_slicing_the_head(model_root):
    llama = _perturbed(sparsekit.load_model("hf:tiny-llama"))
    c = llama.module.config
    result = slice_model(llama, 0.5, progress=False, slice_head=False)
    assert result.params_after == sum(p.numel() for p in result.module.parameters()) == \
        _llama_params(c, 16, slice_head=False)
    assert tuple(result.module.lm_head.weight.shape) == (c.vocab_size, c.hidden_size)
    assert math.isfinite(llama.quality(result.module)["perplexity"])


def test_first_rotation_is_the_pca_of_the_centred_embeddings(model_root):
    """The share of Σxᵀx kept at block 0's input, computed here from the dense embeddings (mean-subtracted per
    token, as LayerNorm does) with numpy's eigenvalues."""
    gpt2 = _perturbed(sparsekit.load_model("hf:family/tiny-gpt2"))
    result = slice_model(gpt2, 0.25, progress=False)
    cal = gpt2.calibration
    t = gpt2.module.transformer
    pos = torch.arange(cal["input_ids"].shape[1])
    h = (t.wte.weight[cal["input_ids"]] + t.wpe.weight[pos]).detach().double()
    h = h[cal["attention_mask"].bool()]
    h = h - h.mean(-1, keepdim=True)
    values = sorted(torch.linalg.eigvalsh(h.T @ h).clamp(min=0).tolist(), reverse=True)
    where, share = result.variance_kept[0]
    assert where == "block 0 input"
    assert share == pytest.approx(sum(values[:result.kept_width]) / sum(values), rel=1e-9)
    assert values[-1] < 1e-9 * values[0]  # the all-ones direction: a centred stream has no variance along it


def test_sliced_lm_small_runs_and_degrades_with_the_fraction():
    lm = shared_model("lm:small")
    before = {k: v.clone() for k, v in lm.module.state_dict().items()}
    tied = lm.module.lm_head.weight is lm.module.transformer.wte.weight
    agreement = []
    for fraction in (0.1, 0.4):
        result = slice_model(lm, fraction, progress=False)
        quality = lm.quality(result.module)
        assert all(math.isfinite(v) for v in quality.values())
        agreement.append(quality["top1_agreement"])
        out = result.module.generate(**lm.preprocess(["The cat"]), max_new_tokens=3, do_sample=False,
                                     pad_token_id=0)  # the cached decode path of transformers, at width d
        assert out.shape[1] >= 4
    assert 1.0 > agreement[0] > agreement[1]
    after = lm.module.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert (lm.module.lm_head.weight is lm.module.transformer.wte.weight) == tied
    assert lm.module.config.tie_word_embeddings is True
    assert type(lm.module.transformer.h[0]).__name__ == "GPT2Block"


def test_card_and_repr():
    result = slice_model(shared_model("lm:small"), 0.2, progress=False)
    card = result.summary_card()
    assert card.headline["residual width"] == "128 → 102"
    assert card.headline["parameters"] == f"{result.params_before:,} → {result.params_after:,}"
    assert "transformer.h.0.attn_shortcut" in result._repr_html_()
    assert repr(result).startswith("<SliceResult: slice 20.0% (gpt2)")


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5, float("nan"), True, "0.2"])
def test_bad_fractions(fraction):
    with pytest.raises(ValueError, match=r"fraction must be (a number )?in \[0, 1\)"):
        slice_model(shared_model("lm:small"), fraction, progress=False)


def test_a_fraction_that_leaves_no_dimension(model_root):
    assert sliced_width(32, 0.96) == 1
    with pytest.raises(ValueError, match="leaves no dimension"):
        slice_model(sparsekit.load_model("hf:family/tiny-gpt2"), 0.99, progress=False)


def test_models_it_does_not_apply_to(model_root):
    with pytest.raises(ValueError, match="pre-LayerNorm.*post-LN"):
        slice_model(sparsekit.load_model("hf:tiny-bert"), 0.2, progress=False)
    with pytest.raises(ValueError, match="post-LN"):
        slice_model(shared_model("minilm"), 0.2, progress=False)
    with pytest.raises(ValueError, match="no transformer blocks"):
        slice_model(shared_model("digits:mlp"), 0.2, progress=False)
    with pytest.raises(ValueError, match="on images"):  # the ViT is sliced (tests/test_slicegpt_vit.py), on images
        slice_model(shared_model("digits:vit"), 0.2, calibration=shared_model("lm:small").calibration,
                    progress=False)
    with pytest.raises(ValueError, match="slice_head=False needs Llama"):
        slice_model(shared_model("lm:small"), 0.2, progress=False, slice_head=False)
    with pytest.raises(ValueError, match="token tensors"):
        slice_model(shared_model("lm:small"), 0.2, calibration=torch.randn(2, 8), progress=False)
    gpt2 = sparsekit.load_model("hf:family/tiny-gpt2")
    with pytest.raises(ValueError, match="LoadedModel or an nn.Module"):
        slice_model(copy.copy(gpt2.info), 0.2, progress=False)


def test_result_names_its_model_as_the_other_results_do():
    import dataclasses

    from sparsekit.structured.slicegpt_result import SliceResult

    fields = {f.name: None for f in dataclasses.fields(SliceResult)}
    result = SliceResult(**{**fields, "module": torch.nn.Linear(2, 2)})
    assert result.model is result.module

"""Integrated Gradients (Captum) on digits and on a BERT encoder: completeness and dense-vs-sparse agreement."""
import math

import numpy as np
import pytest
import torch
from torch import nn

import sparsekit
from sparsekit import attribution as attr
from sparsekit.sparsify import SparsifyConfig, sparsify


@pytest.fixture(scope="module")
def mlp(digits_cache_dir):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPARSEKIT_CACHE_DIR", str(digits_cache_dir))
        yield sparsekit.load_model("digits:mlp")


def riemann_ig(module, x, target, steps=400):
    """Plain midpoint-rule Integrated Gradients from a zero baseline, with torch.autograd only."""
    total = torch.zeros_like(x)
    for k in range(steps):
        point = ((k + 0.5) / steps * x).detach().requires_grad_(True)
        out = module(point)[0, target]
        (grad,) = torch.autograd.grad(out, point)
        total += grad
    return x * total / steps


def test_ig_completeness_on_digits(mlp):
    images, labels = attr.digits_examples(6)
    with torch.no_grad():
        targets = mlp.module(images).argmax(-1)
        gap = mlp.module(images).gather(1, targets[:, None])[:, 0] - mlp.module(torch.zeros_like(images))[0, targets]
    maps, delta = attr.integrated_gradients(mlp.module, images, targets, n_steps=128)
    sums = maps.reshape(6, -1).sum(1)
    # Completeness: attributions add up to F(x) - F(baseline) (a ReLU net is piecewise linear, so
    # the quadrature error is small but not zero).
    assert torch.allclose(sums, gap, atol=2e-2 * float(gap.abs().max()))
    assert torch.allclose(delta.abs(), (sums - gap).abs(), atol=1e-4)
    reference = riemann_ig(mlp.module, images[:1], int(targets[0]))
    assert attr.pearson(reference, maps[:1]) > 0.999


def test_dense_vs_sparse_maps(mlp):
    images, labels = attr.digits_examples(12)
    same = attr.image_attribution(mlp.module, mlp.module, images, labels, n_steps=32)
    assert all(r == pytest.approx(1.0) for r in same.correlation)
    assert same.summary()["same_prediction"] == 1.0
    magnitude = attr.image_attribution(mlp.module, sparsify(mlp, SparsifyConfig()).model, images, labels, n_steps=32)
    random = attr.image_attribution(mlp.module, sparsify(mlp, SparsifyConfig(method="random")).model, images, labels,
                                    n_steps=32)
    for result in (magnitude, random):
        for i in range(12):
            assert result.correlation[i] == pytest.approx(np.corrcoef(result.dense[i].flatten(),
                                                                      result.sparse[i].flatten())[0, 1], abs=1e-9)
    # A random mask moves the evidence more than a magnitude mask at the same 2:4 budget.
    assert magnitude.summary()["mean_correlation"] > random.summary()["mean_correlation"]
    assert sorted(labels) == sorted(list(range(10)) + [0, 1])


def test_pearson_and_overlap():
    a, b = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([2.0, 1.0, 4.0, 3.0])
    assert attr.pearson(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1])
    assert math.isnan(attr.pearson(a, torch.ones(4)))
    assert attr.top_overlap(a, b, 2) == 1.0 and attr.top_overlap(a, -a, 1) == 1.0


@pytest.fixture(scope="module")
def tiny_bert():
    from transformers import AutoTokenizer, BertConfig, BertModel

    from sparsekit.models.text import minilm_dir

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, attn_implementation="eager")
    return BertModel(config, add_pooling_layer=False).eval(), AutoTokenizer.from_pretrained(str(minilm_dir()))


def test_lig_token_attributions_complete(tiny_bert):
    from sparsekit.models.text import sentence_embeddings

    model, tok = tiny_bert
    other = sentence_embeddings(model, *(lambda b: (b["input_ids"], b["attention_mask"]))(
        tok(["A cat sat on the mat."], return_tensors="pt"))).detach()
    tokens, per_token, value, delta = attr.token_attributions(model, tok, "The dog slept by the door.", other,
                                                              n_steps=48)
    ids = torch.tensor([tok("The dog slept by the door.")["input_ids"]])
    base = ids.clone()
    base[0, 1:-1] = tok.pad_token_id  # [CLS] and [SEP] stay
    with torch.no_grad():
        f_x = float((sentence_embeddings(model, ids, torch.ones_like(ids)) * other).sum())
        f_b = float((sentence_embeddings(model, base, torch.ones_like(base)) * other).sum())
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and len(tokens) == per_token.numel()
    assert value == pytest.approx(f_x, abs=1e-6)
    assert float(per_token.sum()) == pytest.approx(f_x - f_b, abs=5e-3)
    assert per_token[0] == 0 and per_token[-1] == 0  # unchanged tokens get nothing


def test_pair_agreement_on_tiny_bert(tiny_bert):
    model, tok = tiny_bert
    sparse = sparsify(model, SparsifyConfig()).model
    results, summary = attr.text_agreement(model, model, tok, attr.DEFAULT_PAIRS[:2], n_steps=8)
    assert summary["mean_correlation"] == pytest.approx(1.0) and summary["top_token_agreement"] == 1.0
    results, summary = attr.text_agreement(model, sparse, tok, attr.DEFAULT_PAIRS[:2], n_steps=8)
    assert summary["pairs"] == 2 and -1.0 <= summary["mean_correlation"] <= 1.0
    row = results[0].row()
    assert row["dense_similarity"] == pytest.approx(results[0].dense_similarity)


def test_bad_attribution_input(mlp):
    with pytest.raises(ValueError, match="n_steps must be"):
        attr.integrated_gradients(mlp.module, torch.zeros(1, 1, 8, 8), 0, n_steps=1)
    with pytest.raises(ValueError, match="non-empty"):
        attr.image_attribution(mlp.module, mlp.module, torch.zeros(0, 1, 8, 8))
    with pytest.raises(ValueError, match="count must be"):
        attr.digits_examples(0)
    with pytest.raises(ValueError, match="no token embedding"):
        attr.token_attributions(nn.Linear(2, 2), None, "hi", torch.zeros(2))
    with pytest.raises(ValueError, match="at least one sentence pair"):
        attr.text_agreement(nn.Linear(2, 2), nn.Linear(2, 2), None, [])


@pytest.mark.slow
def test_minilm_pair_attribution():
    loaded = sparsekit.load_model("minilm")
    sparse = sparsify(loaded, SparsifyConfig(method="wanda")).model
    results, summary = attr.text_agreement(loaded.module, sparse, loaded.tokenizer, attr.DEFAULT_PAIRS[:2], n_steps=16)
    assert summary["max_abs_delta"] < 1e-2
    assert 0.0 < summary["mean_correlation"] <= 1.0

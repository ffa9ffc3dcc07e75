"""GPT-2-size interactivity levers (#15): the evaluation token budget, packed calibration, the cached
dense outputs and when they are recomputed, the calibration forward that stops after the last
pruned layer, and the cost estimate shown before a calibrated method starts."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit.layers import prunable_layers
from sparsekit.methods.calibration import sequential_prune
from sparsekit.methods.cost import COLUMN_PASS_SLOWDOWN, estimate_seconds
from sparsekit.models.base import state_token
from sparsekit.models.sentences import SENTENCES
from sparsekit.models.text import (CALIBRATION_PACK_LENGTH, CALIBRATION_SENTENCES, HF_EVAL_TOKENS,
                                   NextTokenFidelity, budget_ids, pack, pick_sentences, tokenize)


@pytest.fixture
def gpt2(model_root):
    return sparsekit.load_model("hf:family/tiny-gpt2")


def test_budget_choice_is_the_largest_even_spread_that_fits(gpt2):
    tok = gpt2.tokenizer
    pool = SENTENCES[0::2]
    for budget in (40, 300, 1024, 10**6):
        ids = budget_ids(tok, 96, budget)
        n = len(ids)
        # Independent recomputation: n sentences spread over the even-index pool, by index.
        expected = [pool[(i * len(pool)) // n] for i in range(n)] if n < len(pool) else list(pool)
        assert ids == tokenize(tok, expected)
        total = sum(len(x) for x in ids)
        assert total <= budget or n == 1
        if n < 96:  # one more sentence, spread the same way, would not fit
            bigger = [pool[(i * len(pool)) // (n + 1)] for i in range(n + 1)]
            assert sum(len(x) for x in tokenize(tok, bigger)) > budget
    assert len(budget_ids(tok, 96, 10**6)) == 96
    assert len(budget_ids(tok, 96, 1)) == 1  # never empty
    with pytest.raises(ValueError, match="budget must be positive"):
        budget_ids(tok, 96, 0)


def test_hf_model_states_its_budget(gpt2):
    info = gpt2.info
    assert info["n_eval_tokens"] <= HF_EVAL_TOKENS
    assert f"{info['n_eval_sentences']} built-in sentences" in info["eval_budget"]
    assert f"{info['n_eval_tokens']:,} tokens" in info["eval_budget"]
    # The metric object scores exactly those tokens: positions with a next token, summed.
    scored = sum(int(b["attention_mask"][:, 1:].sum()) for b in gpt2.quality_fn.batches)
    assert scored == info["n_eval_tokens"] - info["n_eval_sentences"]


def test_pack_keeps_every_token_once_in_order():
    ids = [[1, 2, 3], [4], [5, 6, 7, 8, 9], [10, 11]]
    out = pack(ids, 4, pad_id=0)
    assert out["input_ids"].shape == (3, 4)
    flat = out["input_ids"][out["attention_mask"].bool()].tolist()
    assert flat == list(range(1, 12))
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 0]]
    with pytest.raises(ValueError, match="nothing to pack"):
        pack([[], []], 4, 0)


def test_causal_lm_calibrates_on_packed_rows(gpt2):
    calib = tokenize(gpt2.tokenizer, pick_sentences(CALIBRATION_SENTENCES, 1))
    ids = gpt2.calibration["input_ids"]
    mask = gpt2.calibration["attention_mask"].bool()
    assert ids.shape[1] == CALIBRATION_PACK_LENGTH
    assert ids[mask].tolist() == [t for x in calib for t in x]


def test_encoder_calibration_stays_one_sentence_per_row(model_root):
    bert = sparsekit.load_model("hf:tiny-bert")
    assert bert.calibration["input_ids"].shape[0] == CALIBRATION_SENTENCES


def _scale_(module: nn.Module, factor: float) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(factor)


def test_dense_reference_follows_in_place_changes(gpt2):
    # A private model: the shared one is never changed; this checks the cache would notice if it were.
    fidelity = gpt2.quality_fn
    sparse = sparsekit.sparsify(gpt2, sparsekit.SparsifyConfig()).model
    before = fidelity(sparse)
    token = state_token(gpt2.module)
    assert state_token(gpt2.module) == token  # nothing changed, same token
    first_dense = gpt2.quality()
    _scale_(gpt2.module.transformer.h[0].mlp.c_fc, 1.7)
    assert state_token(gpt2.module) != token
    fresh = NextTokenFidelity(gpt2.module, [t for b in fidelity.batches for t in _rows(b)], fidelity.pad_id,
                              gpt2.module.config.vocab_size)
    after = fidelity(sparse)
    assert after == fresh(sparse)
    assert after["top1_agreement"] != before["top1_agreement"]
    assert gpt2.quality()["top1_agreement"] == 1.0
    assert gpt2.quality()["perplexity"] != first_dense["perplexity"]


def _rows(batch):
    return [row[mask.bool()].tolist() for row, mask in zip(batch["input_ids"], batch["attention_mask"])]


def test_new_evaluation_set_recomputes_reference(gpt2):
    fidelity = gpt2.quality_fn
    sparse = sparsekit.sparsify(gpt2, sparsekit.SparsifyConfig()).model
    gpt2.quality()
    key = fidelity.eval_key
    other = tokenize(gpt2.tokenizer, pick_sentences(10, 1))
    fidelity.set_eval_ids(other)
    assert fidelity.eval_key != key
    fresh = NextTokenFidelity(gpt2.module, other, fidelity.pad_id, gpt2.module.config.vocab_size)
    assert fidelity(sparse) == fresh(sparse)
    assert gpt2.quality() == fresh(gpt2.module)  # the remembered dense score followed the new set
    with pytest.raises(ValueError, match="fewer than 2 tokens"):
        fidelity.set_eval_ids([[5]])


def test_calibration_forward_stops_after_last_pruned_layer(gpt2):
    model = copy.deepcopy(gpt2.module)
    calls = {"head": 0, "last_block": 0}
    model.lm_head.register_forward_hook(lambda *a: calls.__setitem__("head", calls["head"] + 1))
    model.transformer.h[1].register_forward_hook(lambda *a: calls.__setitem__("last_block", calls["last_block"] + 1))
    names = [n for n, _ in prunable_layers(model) if n.startswith("transformer.h.0.")]
    out = sequential_prune(model, names, sparsekit.SparsifyConfig(method="wanda"), gpt2.calibration, None,
                           _magnitude_keep, "norms")
    assert sorted(out.masks) == sorted(names)
    assert calls == {"head": 0, "last_block": 0}
    # Pruning the last block too runs it (its capture and its pruned forward), still not the head.
    model = copy.deepcopy(gpt2.module)
    calls = {"head": 0, "last_block": 0}
    model.lm_head.register_forward_hook(lambda *a: calls.__setitem__("head", calls["head"] + 1))
    model.transformer.h[1].register_forward_hook(lambda *a: calls.__setitem__("last_block", calls["last_block"] + 1))
    everything = [n for n, _ in prunable_layers(model) if n.startswith("transformer.h.")]
    out = sequential_prune(model, everything, sparsekit.SparsifyConfig(method="wanda"), gpt2.calibration, None,
                           _magnitude_keep, "norms")
    assert sorted(out.masks) == sorted(everything)
    assert calls == {"head": 0, "last_block": 1}  # the capture forward of block 1, then the stop


def _magnitude_keep(layer, weight, config, stats, notes):
    return torch.ones_like(weight, dtype=torch.bool), None


def test_early_stop_keeps_wanda_masks(gpt2):
    # Stopping early changes nothing pruned: masks equal those of a run that also selects the
    # last layer's predecessor set, recomputed by hand from full-forward input norms of block 0.
    model = copy.deepcopy(gpt2.module)
    names = [n for n, _ in prunable_layers(model) if n.startswith("transformer.h.0.")]
    cfg = sparsekit.SparsifyConfig(method="wanda", include=r"^transformer\.h\.0\.")
    result = sparsekit.sparsify(gpt2, cfg)
    captured = {}
    hooks = [dict(model.named_modules())[n].register_forward_pre_hook(
        lambda m, a, n=n: captured.setdefault(n, a[0].detach())) for n in names]
    with torch.no_grad():
        model(**gpt2.calibration, use_cache=False)
    for h in hooks:
        h.remove()
    mask = gpt2.calibration["attention_mask"].bool()
    # Block order: every layer of block 0 sees the dense block's inputs, so the full forward's
    # inputs are the same ones; Wanda 2:4 on |W| * ||x||, Conv1D weights stored [in, out].
    for n in names:
        x = captured[n][mask].double()
        norms = x.pow(2).sum(0).sqrt()
        w = dict(model.named_modules())[n].weight.detach().t()  # [out, in]
        scores = w.abs().double() * norms
        expected = torch.zeros_like(scores, dtype=torch.bool)
        groups = scores.reshape(scores.shape[0], -1, 4)
        top = groups.topk(2, dim=-1).indices
        expected.reshape(scores.shape[0], -1, 4).scatter_(-1, top, True)
        assert torch.equal(result.masks[n].t(), expected), n


def test_estimate_matches_its_formula():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16))
    calib = torch.randn(50, 32)
    spt = 1e-4
    weights = 32 * 64 + 64 * 16
    rate = 2 * weights / spt
    wanda = estimate_seconds(model, sparsekit.SparsifyConfig(method="wanda"), calib, spt)
    assert wanda == pytest.approx(2 * 2 * weights * 50 / rate)  # block order: two passes
    layer_order = estimate_seconds(model, sparsekit.SparsifyConfig(method="wanda", calibration_order="layer"), calib, spt)
    assert layer_order == pytest.approx(wanda / 2)
    gpt = estimate_seconds(model, sparsekit.SparsifyConfig(method="sparsegpt"), calib, spt)
    extra = 0.0
    for rows, cols in ((64, 32), (16, 64)):
        extra += 2 * 50 * cols**2 + 4 / 3 * cols**3 + rows * cols**2 + COLUMN_PASS_SLOWDOWN * 2 * rows * cols * min(128, cols)
    assert gpt == pytest.approx(wanda + extra / rate)
    assert estimate_seconds(model, sparsekit.SparsifyConfig(method="magnitude"), calib, spt) == 0.0
    with pytest.raises(ValueError, match="seconds_per_token must be positive"):
        estimate_seconds(model, sparsekit.SparsifyConfig(method="wanda"), calib, 0.0)
    assert math.isfinite(gpt)


def test_estimate_skips_tied_output_layer(gpt2):
    cfg = sparsekit.SparsifyConfig(method="wanda")
    spt = 1e-3
    module = gpt2.module
    body = sum(m.weight.numel() for n, m in prunable_layers(module) if n != "lm_head")
    total = body + module.lm_head.weight.numel()
    tokens = gpt2.calibration["input_ids"].numel()
    assert estimate_seconds(module, cfg, gpt2.calibration, spt) == pytest.approx(2 * 2 * body * tokens * spt / (2 * total))

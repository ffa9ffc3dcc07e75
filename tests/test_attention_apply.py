"""In-forward application changes outputs only where the mask says; the shared model is never
touched; the per-head search never goes above its budget."""
import pytest
import torch

import sparsekit
from sparsekit.attention import AttentionPlan, PatternSpec, calibration_captures, capture_attention, passage_ids
from sparsekit.attention import metrics as M
from sparsekit.attention.apply import SparseAttentionModel, apply_attention, attention_quality
from sparsekit.attention.patterns import materialize
from sparsekit.attention.search import SearchConfig, candidate_specs, search_heads
from sparsekit.cache import tensor_digest


def embed(module, batch):
    with torch.inference_mode():
        return module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state


def test_full_pattern_reproduces_dense_with_padding(minilm, vit):
    batch = {k: v[:8] for k, v in minilm.calibration.items()}  # 8 sentences of different lengths, padded
    assert (batch["attention_mask"] == 0).any()
    sparse = apply_attention(minilm, PatternSpec.of("full"))
    got, want = embed(sparse, batch), embed(minilm.module, batch)
    real = batch["attention_mask"].bool()
    assert (got[real] - want[real]).abs().max() < 1e-5
    assert torch.all(sparse.realised_density() == 1)
    x = vit.calibration[:32]
    with torch.inference_mode():
        assert torch.allclose(apply_attention(vit, PatternSpec.of("full"))(x), vit.module(x), atol=1e-5)


def test_masking_one_head_leaves_the_other_heads_identical(minilm):
    ids = passage_ids(minilm, 30)
    dense = capture_attention(minilm, ids)
    spec = PatternSpec.of("sliding_window", window=2)
    plan = AttentionPlan.uniform(spec, 6, 12, layers=[0], heads=[3])
    model = SparseAttentionModel(minilm, plan, record=True)
    with torch.inference_mode():
        model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, 30, dtype=torch.long))
    probs, value = model.recorded[0]
    out = (probs @ value)[0]
    dense_out = dense.probs[0] @ dense.value[0]
    others = [h for h in range(12) if h != 3]
    assert torch.allclose(out[others], dense_out[others], atol=1e-6)
    mask = materialize(spec.build(dense.context(0)), 30, 30)
    assert not (probs[0, 3][~mask]).any()  # nothing outside the window
    assert torch.allclose(out[3], M.masked_output(dense.scores[0, 3], dense.value[0, 3], mask), atol=1e-5)
    assert not torch.allclose(out[3], dense_out[3], atol=1e-3)
    assert model.realised_density()[0, 3].item() == pytest.approx(mask.float().mean().item())
    assert model.realised_density()[1:].eq(1).all()


def test_data_dependent_pattern_is_estimated_in_forward(vit):
    x = vit.calibration[:1]
    dense = capture_attention(vit, x)
    spec = PatternSpec.of("vertical_slash", vertical=2, slash=2)
    model = SparseAttentionModel(vit, AttentionPlan.uniform(spec, 2, 4), record=True)
    with torch.inference_mode():
        model(x)
    probs, _ = model.recorded[0]
    # Layer 0 sees the same input as the dense model, so the online estimate equals the one made
    # from the dense capture, and the probabilities are the renormalised dense ones.
    masks = M.plan_masks(dense, spec)[0]
    assert torch.allclose(probs[0], M.masked_softmax(dense.scores[0], masks), atol=1e-5)
    assert torch.equal(probs[0] > 0, masks)


def test_decoder_causal_pattern_changes_nothing(tmp_path, monkeypatch):
    from conftest import make_tiny_llama

    make_tiny_llama(tmp_path / "tiny-llama")
    monkeypatch.setenv("SPARSEKIT_MODEL_ROOTS", str(tmp_path))
    llama = sparsekit.load_model("hf:tiny-llama")
    batch = {k: v[:4] for k, v in llama.calibration.items()}
    with torch.inference_mode():
        want = llama.module(**batch, use_cache=False).logits
        # The causal pattern drops only keys the decoder gives zero weight: nothing may change.
        got = apply_attention(llama, PatternSpec.of("causal"))(**batch, use_cache=False).logits
        real = batch["attention_mask"].bool()
        assert torch.equal(got[real], want[real])
        windowed = apply_attention(llama, PatternSpec.of("sliding_window", window=1), layers=[1])
        changed = windowed(**batch, use_cache=False).logits
    assert not torch.allclose(changed[real], want[real])
    cap = capture_attention(llama, "The cat sat on the mat.")
    assert cap.causal and torch.all(cap.probs.triu(1) == 0) and cap.n_heads == 4  # GQA: K/V heads repeated


def test_quality_next_to_dense_and_shared_model_untouched(vit):
    before = tensor_digest(*vit.module.parameters())
    full = attention_quality(vit, PatternSpec.of("full"))
    assert full.sparse == full.dense and full.mean_density == 1
    window = attention_quality(vit, PatternSpec.of("sliding_window", window=2))
    n = 17
    expected = (n + 2 * (n - 1) + 2 * (n - 2)) / n**2
    assert torch.allclose(window.density, torch.full((2, 4), expected, dtype=torch.float32))
    assert window.sparse["accuracy"] < window.dense["accuracy"]
    only = attention_quality(vit, PatternSpec.of("sliding_window", window=2), layers=[1], heads=[0])
    assert only.density[0].eq(1).all() and only.density[1, 0].item() == pytest.approx(expected)
    assert tensor_digest(*vit.module.parameters()) == before
    assert all(blk.attn.score_mask is None and not blk.attn.record_attention for blk in vit.module.blocks)
    with pytest.raises(ValueError, match="the plan covers 1 layers x 4 heads"):
        apply_attention(vit, AttentionPlan.uniform(None, 1, 4))


def independent_density(captures, plan):
    """Density of each head's chosen pattern, from materialize and counting (no search/metrics code)."""
    out = torch.zeros(plan.n_layers, plan.n_heads, dtype=torch.float64)
    for cap in captures:
        n = cap.seq_len
        for layer in range(plan.n_layers):
            ctx = cap.context(layer)
            for head in range(plan.n_heads):
                mask = materialize(plan.heads[layer][head].build(ctx), n, n, head=head)
                out[layer, head] += int(mask.sum()) / (n * n)
    return out / len(captures)


@pytest.mark.parametrize("allocation", ["head", "global"])
def test_search_never_above_budget(vit, allocation):
    caps = calibration_captures(vit, 8)
    for budget in (0.12, 0.3, 0.6):
        res = search_heads(caps, SearchConfig(budget=budget, allocation=allocation))
        dens = independent_density(caps, res.plan)
        assert torch.allclose(dens, res.plan_density)
        if allocation == "head":
            assert dens.max().item() <= budget
            # Optimal per head: no candidate within budget has a higher recall.
            fits = res.density <= budget
            for layer in range(2):
                for head in range(4):
                    best = max(float(res.recall[c, layer, head]) for c in range(len(res.candidates)) if fits[c, layer, head])
                    assert res.plan_recall[layer, head].item() == pytest.approx(best)
        else:
            assert dens.mean().item() <= budget
        summary = res.summary()
        assert summary["uniform_density"] <= summary["plan_density"] + 1e-12
        assert summary["plan_recall"] >= summary["uniform_recall"] - 1e-9


def test_search_bad_budgets(vit):
    caps = calibration_captures(vit, 2)
    with pytest.raises(ValueError, match="budget must be above 0"):
        search_heads(caps, SearchConfig(budget=0))
    with pytest.raises(ValueError, match="below what the sparsest candidate needs"):
        search_heads(caps, SearchConfig(budget=0.01))
    with pytest.raises(ValueError, match="at least one pattern family"):
        search_heads(caps, SearchConfig(families=()))
    assert all(s.name == "sliding_window" for s in candidate_specs(["sliding_window"], 17))


def test_search_plan_beats_uniform_end_to_end(vit):
    res = search_heads(calibration_captures(vit, 16), SearchConfig(budget=0.3))
    plan_q = attention_quality(vit, res.plan)
    uniform_q = attention_quality(vit, res.uniform_spec)
    assert plan_q.mean_density <= 0.3 + 1e-9  # the ViT's inputs all have 17 tokens, like calibration
    assert uniform_q.mean_density <= plan_q.mean_density + 0.02
    assert plan_q.sparse["accuracy"] >= uniform_q.sparse["accuracy"]

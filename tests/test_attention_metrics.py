"""Capture and metrics: captured attention equals what the model itself reports, and density,
recall and output error equal loops over one head (and FlexAttention's own output)."""
import copy
import math

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from sparsekit.attention import AttentionCapture, PatternSpec, capture_attention, capture_batch, passage_ids
from sparsekit.attention import metrics as M
from sparsekit.attention.patterns import materialize_heads

from conftest import shared_model


def synthetic(n=9, heads=2, d=4, causal=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, heads, n, d, generator=g) for _ in range(3))
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    if causal:
        scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), -math.inf)
    return AttentionCapture(scores, scores.softmax(-1), q, k, v, [str(i) for i in range(n)], causal, ["l0"])


def test_minilm_capture_matches_output_attentions_and_leaves_model_alone(minilm):
    ids = passage_ids(minilm, 40)
    assert len(ids) == 40 and ids[0] == minilm.tokenizer.cls_token_id and ids[-1] == minilm.tokenizer.sep_token_id
    def hooks():
        return [(n, len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in minilm.module.named_modules()]

    before, hooks_before = minilm.module.config._attn_implementation, hooks()
    cap = capture_attention(minilm, ids)
    assert (cap.n_layers, cap.n_heads, cap.seq_len) == (6, 12, 40) and cap.query.shape == (6, 12, 40, 32)
    # An independent path: transformers' own eager attention with output_attentions, on a full copy
    # (transformers installs output-capturing hooks on the module it runs that way).
    with torch.inference_mode():
        out = copy.deepcopy(minilm.module)(input_ids=torch.tensor([ids]), output_attentions=True)
    ref = torch.stack([a[0] for a in out.attentions])
    assert torch.allclose(cap.probs, ref, atol=1e-6)
    assert torch.allclose(cap.scores.softmax(-1), cap.probs, atol=1e-6)
    assert cap.tokens[0] == "[CLS]" and cap.layer_names[0] == "encoder.layer.0.attention.self"
    assert minilm.module.config._attn_implementation == before == "eager"
    assert hooks() == hooks_before


def test_capture_batch_equals_one_by_one(minilm):
    texts = ["A short one.", "The cat sat on the mat and looked out of the window.", "A short two."]
    batch = capture_batch(minilm, texts)
    for text, cap in zip(texts, batch):
        alone = capture_attention(minilm, text)
        assert cap.tokens == alone.tokens
        assert torch.allclose(cap.probs, alone.probs, atol=1e-5)


def test_bad_text_inputs(minilm):
    with pytest.raises(ValueError, match="the text is empty"):
        capture_attention(minilm, "   ")
    with pytest.raises(ValueError, match="tokens long; the limit here is 256 tokens"):
        capture_attention(minilm, "word " * 400)
    with pytest.raises(ValueError, match="limit here is 10 tokens"):
        capture_attention(minilm, "one two three four five six seven eight nine ten", max_tokens=10)
    with pytest.raises(ValueError, match="no attention layers"):
        capture_attention(shared_model("digits:mlp"), torch.zeros(8, 8))


def test_model_whose_attention_cannot_be_read_says_so():
    from torch import nn
    from transformers import BertConfig

    from sparsekit.models.base import LoadedModel

    class NoInterface(nn.Module):  # looks like a transformers model, but its attention bypasses the interface
        def __init__(self):
            super().__init__()
            self.config = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2)
            self.emb = nn.Embedding(50, 8)

        def get_input_embeddings(self):
            return self.emb

        def forward(self, input_ids, attention_mask=None):
            return self.emb(input_ids)

    fake = LoadedModel(spec="hf:fake", name="fake", kind="encoder", module=NoInterface(), quality_fn=lambda m: {},
                       calibration=None)
    with pytest.raises(ValueError, match="does not route its attention through transformers' attention interface"):
        capture_attention(fake, [1, 2, 3])


def test_vit_capture_matches_the_models_own_record(vit):
    from sparsekit.models.digits import digits_split

    img = digits_split().x_test[:1]
    cap = capture_attention(vit, img)
    assert (cap.n_layers, cap.n_heads, cap.seq_len) == (2, 4, 17) and cap.tokens[:2] == ["CLS", "r0c0"]
    clone = copy.deepcopy(vit.module)  # the model's own recording switch, on a copy of our own
    for blk in clone.blocks:
        blk.attn.record_attention = True
    with torch.inference_mode():
        clone(img)
    ref = torch.stack([blk.attn.last_attention[0] for blk in clone.blocks])
    assert torch.allclose(cap.probs, ref, atol=1e-6)
    assert not any(blk.attn.record_attention for blk in vit.module.blocks)
    with pytest.raises(ValueError, match="0..16"):
        capture_attention(vit, torch.full((8, 8), 99.0))


def head_loops(probs, scores, value, mask):
    """Density, recall and error of one head with plain loops (float64)."""
    n, kv = len(probs), len(probs[0])
    kept = sum(mask[i][j] for i in range(n) for j in range(kv))
    rec = sum(sum(probs[i][j] for j in range(kv) if mask[i][j]) for i in range(n)) / n
    d = len(value[0])
    num = den = 0.0
    for i in range(n):
        ks = [j for j in range(kv) if mask[i][j] and scores[i][j] != -math.inf]
        if ks:
            top = max(scores[i][j] for j in ks)
            w = {j: math.exp(scores[i][j] - top) for j in ks}
            z = sum(w.values())
        for t in range(d):
            dense = sum(probs[i][j] * value[j][t] for j in range(kv))
            sparse = sum(w[j] / z * value[j][t] for j in ks) if ks else 0.0
            num += (sparse - dense) ** 2
            den += dense ** 2
    return kept / (n * kv), rec, math.sqrt(num) / math.sqrt(den)


@pytest.mark.parametrize("spec", [PatternSpec.of("sliding_window", window=1), PatternSpec.of("vertical_stripe", columns="0, 4"),
                                  PatternSpec.of("vertical_slash", vertical=1, slash=1),
                                  PatternSpec.of("block_topk", block=4, topk=1),
                                  PatternSpec.of("vertical_stripe", columns="8") & PatternSpec.of("causal")])
def test_metrics_match_loops(spec):
    cap = synthetic(n=9)
    got = M.measure(cap, spec)
    masks = M.plan_masks(cap, spec)
    for h in range(cap.n_heads):
        d, r, e = head_loops(cap.probs[0, h].double().tolist(), cap.scores[0, h].double().tolist(),
                             cap.value[0, h].double().tolist(), masks[0, h].tolist())
        assert got.density[0, h].item() == pytest.approx(d, abs=1e-12)
        assert got.recall[0, h].item() == pytest.approx(r, abs=1e-5)
        assert got.error[0, h].item() == pytest.approx(e, rel=1e-4, abs=1e-6)


def test_masked_output_equals_flex_attention():
    cap = synthetic(n=13, heads=2, d=8, seed=3)
    spec = PatternSpec.of("a_shape", sink=1, local=3)
    mm = spec.build(cap.context(0))
    bm = create_block_mask(mm, None, 2, 13, 13, device="cpu", BLOCK_SIZE=16)
    flex = flex_attention(cap.query, cap.key, cap.value, block_mask=bm, scale=1 / math.sqrt(8))
    ours = M.masked_output(cap.scores, cap.value, materialize_heads(mm, 2, 13, 13).unsqueeze(0))
    assert torch.allclose(ours, flex, atol=1e-5)


def test_full_recall_one_and_dense_output(minilm, vit):
    for cap in (capture_attention(minilm, passage_ids(minilm, 33)), capture_attention(vit, vit.calibration[:1])):
        got = M.measure(cap, PatternSpec.of("full"))
        assert torch.all(got.density == 1) and torch.allclose(got.recall, torch.ones_like(got.recall), atol=1e-5)
        assert got.error.max() < 1e-5
        dense = cap.probs @ cap.value
        assert torch.allclose(M.masked_output(cap.scores, cap.value, torch.ones_like(cap.probs, dtype=torch.bool)), dense, atol=1e-5)


def test_decoder_causal_pattern_changes_nothing():
    cap = synthetic(n=10, causal=True)
    got = M.measure(cap, PatternSpec.of("causal"))
    # Density counts only the pairs a decoder attends over, so the causal pattern is "dense".
    assert torch.all(got.density == 1) and torch.allclose(got.recall, torch.ones_like(got.recall))
    assert got.error.max() < 1e-6
    window = M.measure(cap, PatternSpec.of("sliding_window", window=2))
    assert window.density[0, 0].item() == pytest.approx((10 + 9 + 8) / 55)


def test_strict_measure_rejects_a_window_larger_than_the_input():
    cap = synthetic(n=9)
    with pytest.raises(ValueError, match="window 12 is larger than the sequence .9 tokens."):
        M.measure(cap, PatternSpec.of("sliding_window", window=12))
    loose = M.measure_many([cap, synthetic(n=5, seed=1)], PatternSpec.of("sliding_window", window=6))
    assert loose.n_inputs == 2 and loose.density.shape == (1, 2)
    assert "density" in M.measure(cap, PatternSpec.of("full")).to_csv().splitlines()[0]


def test_plan_comparison_rows_match_loops_over_heads():
    from sparsekit.attention.apply import AttentionQuality
    from sparsekit.attention.search import SearchConfig, SearchResult, plan_comparison_rows

    candidates = [PatternSpec.of("sliding_window", window=1), PatternSpec.of("sliding_window", window=4),
                  PatternSpec.of("a_shape", sink=1, local=2)]
    g = torch.Generator().manual_seed(3)
    dens = torch.rand(3, 2, 4, generator=g, dtype=torch.float64)
    rec = torch.rand(3, 2, 4, generator=g, dtype=torch.float64)
    choice = torch.tensor([[0, 2, 2, 1], [2, 0, 2, 2]])
    result = SearchResult(SearchConfig(budget=0.5), candidates, dens, rec, choice, uniform=1)
    plan_q = AttentionQuality({"acc": 90.0, "loss": 0.3}, {"acc": 85.0, "loss": 0.4},
                              torch.tensor([[0.2, float("nan")], [0.4, 0.6]]), "plan")
    uniform_q = AttentionQuality({"acc": 90.0, "loss": 0.3}, {"acc": 80.0, "loss": 0.5},
                                 torch.tensor([[0.5, 0.5], [0.5, 0.7]]), "uniform")
    rows = plan_comparison_rows(result, plan_q, uniform_q, {"acc": "accuracy (%)"})

    cells = [(layer, head) for layer in range(2) for head in range(4)]
    plan_density = sum(float(dens[choice[la, he], la, he]) for la, he in cells) / len(cells)
    plan_recall = sum(float(rec[choice[la, he], la, he]) for la, he in cells) / len(cells)
    families = {candidates[int(choice[la, he])].name for la, he in cells}
    assert [r["setting"] for r in rows] == ["dense", "per-head plan", "uniform"]
    assert rows[0] == {"setting": "dense", "pattern": "full attention", "calibration density": 1.0,
                       "calibration recall": 1.0, "evaluation density": 1.0, "accuracy (%)": 90.0, "loss": 0.3}
    plan = rows[1]
    assert plan["pattern"] == f"{len(families)} families"
    assert plan["calibration density"] == pytest.approx(plan_density)
    assert plan["calibration recall"] == pytest.approx(plan_recall)
    assert plan["evaluation density"] == pytest.approx((0.2 + 1.0 + 0.4 + 0.6) / 4)  # NaN: the head kept all
    assert (plan["accuracy (%)"], plan["loss"]) == (85.0, 0.4)
    uniform = rows[2]
    assert uniform["pattern"] == candidates[1].label
    assert uniform["calibration density"] == pytest.approx(sum(float(dens[1, la, he]) for la, he in cells) / 8)
    assert uniform["calibration recall"] == pytest.approx(sum(float(rec[1, la, he]) for la, he in cells) / 8)
    assert uniform["evaluation density"] == pytest.approx(0.55)
    assert (uniform["accuracy (%)"], uniform["loss"]) == (80.0, 0.5)

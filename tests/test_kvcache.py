"""KV-cache sparsity (sparsekit.kvcache): exact counts against brute-force loops, the authors' off-by-one,
bytes against plain counts, the dense window, pruning as tokens leave it, eviction baselines, sparsity 0
against the unpruned model, bad configs and models refused, the shared model left unchanged."""
from __future__ import annotations

import math

import pytest
import torch

from sparsekit.kvcache import (
    KVConfig, KVPruner, bitmap_bytes, cache_bytes, channel_mask, csr_bytes, evaluate_kv, greedy_generate,
    kept_count, mustafar_reference_mask, token_mask,
)
from conftest import make_tiny_llama, shared_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lm():
    return shared_model("lm:small")


@pytest.fixture(scope="module")
def ids(lm):
    from sparsekit.models.lm_small import lm_small_heldout

    text = " ".join(lm_small_heldout())
    return torch.tensor(lm.tokenizer(text[:4000], verbose=False)["input_ids"][:72])


def _zeroed_by_loop(n: int, s: float) -> int:
    """Largest z with z <= s * n, counted one by one (s * n compared after rounding away float noise)."""
    target = round(s * n, 9)
    z = 0
    while z + 1 <= target:
        z += 1
    return z


def _brute_keep(vec: list[float], keep: int) -> set[int]:
    ranked = sorted(range(len(vec)), key=lambda i: (-abs(vec[i]), i))
    return set(ranked[:keep])


def test_kept_count_matches_loop():
    for n in range(0, 70):
        for s in (0.0, 0.1, 0.25, 0.29, 0.3, 0.5, 0.7, 0.9, 0.99):
            assert kept_count(n, s) == n - _zeroed_by_loop(n, s), (n, s)
    assert kept_count(128, 0.5) == 64
    assert kept_count(100, 0.29) == 71  # 0.29 * 100 is 28.999999999999996 in floats
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        kept_count(8, 1.0)


def test_token_mask_matches_brute_force_with_ties():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(-3, 4, (2, 3, 5, 10), generator=gen).float()  # many ties and zeros
    for s in (0.0, 0.3, 0.5, 0.75):
        mask = token_mask(x, s)
        keep = kept_count(10, s)
        for b in range(2):
            for h in range(3):
                for t in range(5):
                    vec = x[b, h, t].tolist()
                    got = {i for i in range(10) if mask[b, h, t, i]}
                    assert got == _brute_keep(vec, keep), (s, b, h, t)


def test_channel_mask_matches_brute_force():
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(-4, 5, (1, 2, 9, 4), generator=gen).float()
    for s in (0.2, 0.5, 0.7):
        mask = channel_mask(x, s)
        keep = kept_count(9, s)
        for h in range(2):
            for d in range(4):
                col = x[0, h, :, d].tolist()
                got = {t for t in range(9) if mask[0, h, t, d]}
                assert got == _brute_keep(col, keep), (s, h, d)


def test_authors_rule_zeroes_one_fewer():
    x = torch.randn(3, 4, 6, 128, generator=torch.Generator().manual_seed(2))  # no ties
    for s, ours_zeroed in ((0.5, 64), (0.3, 38), (0.7, 89)):
        ref = mustafar_reference_mask(x, s)
        ours = token_mask(x, s)
        assert ((~ours).sum(-1) == ours_zeroed).all()
        assert ((~ref).sum(-1) == max(1, int(s * 128)) - 1).all()
        assert ((~ref).sum(-1) == ours_zeroed - 1).all()
        # What the authors keep is a superset of ours: the one extra entry is the k-th smallest.
        assert (ref | ~ours).all()


def test_bytes_formulas_match_plain_counts():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 7, 12, generator=gen)
    x = x * token_mask(x, 0.6)
    vectors = 2 * 3 * 7
    nonzero = 0
    for v in x.reshape(-1, 12).tolist():
        nonzero += sum(1 for e in v if e != 0)
    assert bitmap_bytes(x) == vectors * 2 + nonzero * 2  # ceil(12 / 8) = 2 bitmap bytes per vector
    assert csr_bytes(x) == nonzero * 2 + nonzero * 4 + 2 * 3 * (7 + 1) * 4
    assert nonzero == vectors * kept_count(12, 0.6)


def test_config_json_and_refusals():
    cfg = KVConfig(method="h2o", heavy=5, recent=3, axis="channel")
    assert KVConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="unknown|bogus"):
        KVConfig.from_json('{"bogus": 1}')
    cases = [
        (dict(method="snapkv"), "method must be one of"),
        (dict(k_sparsity=1.0), r"k_sparsity must be a number in \[0, 1\)"),
        (dict(v_sparsity=-0.1), r"v_sparsity must be a number in \[0, 1\)"),
        (dict(k_sparsity="0.5"), "k_sparsity"),
        (dict(axis="row"), "axis must be 'token'"),
        (dict(score="random"), "score must be 'magnitude'"),
        (dict(method="h2o", score="output"), "evicts whole tokens"),
        (dict(residual_length=-1), "residual_length must be a whole number"),
        (dict(window=2.5), "window must be a whole number"),
        (dict(method="streaming", sinks=0, window=0), "keeps no token"),
        (dict(method="h2o", heavy=0, recent=0), "keeps no token"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            KVConfig(**kwargs)  # type: ignore[arg-type]


def _no_cache_greedy(module, prompt: torch.Tensor, n: int) -> list[int]:
    seq = prompt.tolist()
    out = []
    with torch.inference_mode():
        for _ in range(n):
            nxt = int(module(input_ids=torch.tensor([seq])).logits[0, -1].argmax())
            out.append(nxt)
            seq.append(nxt)
    return out


def test_sparsity_zero_equals_unpruned_model(lm, ids):
    cfg = KVConfig(k_sparsity=0.0, v_sparsity=0.0, residual_length=4)
    res = evaluate_kv(lm, ids, cfg, prompt=24, new_tokens=10)
    with torch.inference_mode():
        logits = lm.module(input_ids=ids.unsqueeze(0)).logits[0, 23:-1]
    reference = math.exp(float(torch.nn.functional.cross_entropy(logits, ids[24:])))
    assert res.perplexity == pytest.approx(reference, rel=1e-5)
    assert res.dense_perplexity == pytest.approx(reference, rel=1e-6)
    assert res.agreement == 1.0
    expected = _no_cache_greedy(lm.module, ids[:24], 10)
    assert res.generated == expected
    assert res.dense_generated == expected
    assert res.kept_fraction > 0.99


def test_pruning_at_each_step_and_dense_window(lm, ids):
    from transformers import DynamicCache

    module = lm.module
    r, s = 8, 0.5
    pruner = KVPruner(KVConfig(k_sparsity=s, v_sparsity=0.3, residual_length=r))
    with torch.inference_mode():
        dense = module(input_ids=ids[:21].unsqueeze(0), use_cache=True, past_key_values=DynamicCache()).past_key_values
        out = module(input_ids=ids[:20].unsqueeze(0), use_cache=True)
        pruner.prune(out.past_key_values)
        cache = out.past_key_values
        d = cache.layers[0].keys.shape[-1]
        for layer in cache.layers:
            zk = (layer.keys == 0).sum(-1)[0]  # [heads, tokens]
            assert (zk[:, :12] == d - kept_count(d, s)).all()
            assert (zk[:, 12:] == 0).all()  # dense window untouched
            assert ((layer.values == 0).sum(-1)[0, :, :12] == d - kept_count(d, 0.3)).all()
        # Layer 0's window equals the unpruned cache (its inputs are the embeddings).
        assert torch.equal(cache.layers[0].keys[..., 12:, :], dense.layers[0].keys[..., 12:20, :])
        before = cache.layers[1].keys[..., 12, :].clone()
        assert (before != 0).all()
        out = module(input_ids=ids[20:21].unsqueeze(0), past_key_values=cache, use_cache=True,
                     position_ids=torch.tensor([[20]]), attention_mask=pruner.attention_mask(1))
        pruner.prune(out.past_key_values)
        for layer in out.past_key_values.layers:
            assert ((layer.keys == 0).sum(-1)[0, :, :13] == d - kept_count(d, s)).all()  # token 12 left the window
            assert ((layer.keys == 0).sum(-1)[0, :, 13:] == 0).all()
        after = out.past_key_values.layers[1].keys[..., 12, :]
        kept = token_mask(before, s)
        assert torch.equal(after, before * kept)


def test_channel_axis_counts_over_pruned_tokens(lm, ids):
    pruner = KVPruner(KVConfig(axis="channel", k_sparsity=0.5, v_sparsity=0.5, residual_length=6))
    with torch.inference_mode():
        out = lm.module(input_ids=ids[:19].unsqueeze(0), use_cache=True)
        pruner.prune(out.past_key_values)
    for layer in out.past_key_values.layers:
        for x in (layer.keys, layer.values):
            assert ((x[..., :13, :] == 0).sum(-2) == 13 - kept_count(13, 0.5)).all()
            assert (x[..., 13:, :] != 0).all()


def test_streaming_and_h2o_evict_the_right_tokens(lm, ids):
    res = evaluate_kv(lm, ids[:40], KVConfig(method="streaming", sinks=3, window=10), prompt=16, new_tokens=0)
    pruner = KVPruner(KVConfig(method="streaming", sinks=3, window=10))
    with torch.inference_mode():
        out = lm.module(input_ids=ids[:30].unsqueeze(0), use_cache=True)
        pruner.prune(out.past_key_values)
    assert pruner.evicted.tolist() == [False] * 3 + [True] * 17 + [False] * 10
    assert (out.past_key_values.layers[2].values[..., 3:20, :] == 0).all()
    assert pruner.attention_mask(1).tolist() == [[1] * 3 + [0] * 17 + [1] * 11]
    layers = out.past_key_values.layers
    _, heads, _, d = layers[0].keys.shape
    got = cache_bytes(out.past_key_values, KVConfig(method="streaming", sinks=3, window=10), pruner.evicted)
    assert got["full"] == 2 * len(layers) * heads * 30 * d * 2
    assert got["dense"] == 2 * len(layers) * heads * 13 * d * 2  # 3 sinks + 10 recent, stored dense
    assert res.perplexity != res.dense_perplexity

    h2o = KVPruner(KVConfig(method="h2o", heavy=5, recent=7))
    pos = 16
    with torch.inference_mode():
        out = lm.module(input_ids=ids[:pos].unsqueeze(0), use_cache=True, output_attentions=True)
        h2o.observe(out.attentions, pos)
        h2o.prune(out.past_key_values)
        assert int(h2o.evicted.sum()) == pos - 7 - 5
        # At the first eviction the heavy hitters are the top accumulated-attention old tokens.
        top = set(torch.sort(h2o.score[: pos - 7], descending=True, stable=True).indices[:5].tolist())
        assert {i for i in range(pos - 7) if not h2o.evicted[i]} == top
        for p in range(pos, pos + 6):
            out = lm.module(input_ids=ids[p:p + 1].unsqueeze(0), past_key_values=out.past_key_values,
                            use_cache=True, position_ids=torch.tensor([[p]]),
                            attention_mask=h2o.attention_mask(1), output_attentions=True)
            h2o.observe(out.attentions, p + 1)
            h2o.prune(out.past_key_values)
            length = p + 1
            assert int((~h2o.evicted[: length - 7]).sum()) == 5
            assert not h2o.evicted[length - 7: length].any()


def test_cache_bytes_matches_plain_count(lm, ids):
    cfg = KVConfig(k_sparsity=0.7, v_sparsity=0.3, residual_length=5)
    pruner = KVPruner(cfg)
    with torch.inference_mode():
        out = lm.module(input_ids=ids[:17].unsqueeze(0), use_cache=True)
        pruner.prune(out.past_key_values)
    got = cache_bytes(out.past_key_values, cfg)
    layers = out.past_key_values.layers
    _, heads, tokens, d = layers[0].keys.shape
    n = len(layers)
    old = tokens - 5
    kept_old = n * heads * old * (kept_count(d, 0.7) + kept_count(d, 0.3))
    window = 2 * n * heads * 5 * d * 2
    assert got["full"] == got["dense"] == 2 * n * heads * tokens * d * 2
    assert got["bitmap"] == window + 2 * n * heads * old * math.ceil(d / 8) + kept_old * 2
    assert got["csr"] == window + kept_old * 6 + 2 * n * heads * (old + 1) * 4


def test_model_not_mutated_and_encoder_refused(lm, ids):
    before = {k: v.clone() for k, v in lm.module.state_dict().items()}
    impl = lm.module.config._attn_implementation
    evaluate_kv(lm, ids[:40], KVConfig(method="h2o", heavy=4, recent=4), prompt=12, new_tokens=4)
    evaluate_kv(lm, ids[:40], KVConfig(k_sparsity=0.6, axis="channel", residual_length=4), prompt=12, new_tokens=4)
    after = lm.module.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert lm.module.config._attn_implementation == impl
    with pytest.raises(ValueError, match="needs a causal LM.*encoder"):
        evaluate_kv(shared_model("minilm"), ids[:20], KVConfig())
    with pytest.raises(ValueError, match="more than the model's 256 positions"):
        greedy_generate(lm, torch.cat([ids] * 4)[:250], 10)
    with pytest.raises(ValueError, match="prompt length"):
        evaluate_kv(lm, ids[:10], KVConfig(), prompt=11)


def test_tiny_llama_gqa_cache(tmp_path, monkeypatch):
    import sparsekit

    make_tiny_llama(tmp_path / "tiny-llama")
    monkeypatch.setenv("SPARSEKIT_MODEL_ROOTS", str(tmp_path))
    llama = sparsekit.load_model("hf:tiny-llama")
    ids = llama.calibration["input_ids"][0][llama.calibration["attention_mask"][0].bool()]
    ids = torch.cat([ids, ids])[:40]
    zero = evaluate_kv(llama, ids, KVConfig(k_sparsity=0.0, v_sparsity=0.0, residual_length=4), prompt=8,
                       new_tokens=6)
    assert zero.perplexity == pytest.approx(zero.dense_perplexity, rel=1e-5)
    assert zero.generated == _no_cache_greedy(llama.module, ids[:8], 6)
    pruned = evaluate_kv(llama, ids, KVConfig(k_sparsity=0.5, v_sparsity=0.5, residual_length=4), prompt=8,
                         new_tokens=6)
    assert pruned.perplexity != zero.perplexity
    heads, d = llama.module.config.num_key_value_heads, llama.module.config.head_dim
    old = 39 - 4  # 39 cached tokens at the end, 4 in the dense window
    layers = llama.module.config.num_hidden_layers
    entries = 2 * layers * heads * 39 * d
    assert pruned.kept_fraction == pytest.approx((entries - 2 * layers * heads * old * (d - kept_count(d, 0.5)))
                                                 / entries)

"""KV-cache sparsity, second part (issue #25 items 2, 3, 6): the output-aware score against its formula in
plain loops and its mask against a brute-force ranking (ties included), equal to the magnitude mask under
uniform queries/attention; attention over the pruned cache against a plain-torch softmax(qK^T/sqrt(d))V;
decode-time pruning equal to pruning the whole cache once at the end (per-token magnitude); per-head
attention-output errors against a plain computation; the KVResult card; kv_sweep rows and the figure."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from sparsekit.kvcache import (
    KVConfig, KVPruner, KVRecorder, SWEEP_METHODS, evaluate_kv, kept_count, kv_sweep, private_causal, run_kv,
    token_mask,
)
from sparsekit.stats import mean_interval
from conftest import shared_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lm():
    return shared_model("lm:small")


@pytest.fixture(scope="module")
def ids(lm):
    from sparsekit.models.lm_small import lm_small_heldout

    text = " ".join(lm_small_heldout())
    return torch.tensor(lm.tokenizer(text[:4000], verbose=False)["input_ids"][:56])


def _brute_keep(vec: list[float], keep: int) -> set[int]:
    ranked = sorted(range(len(vec)), key=lambda i: (-vec[i], i))
    return set(ranked[:keep])


def _feed(rec: KVRecorder, layer: int, query: torch.Tensor, probs: torch.Tensor) -> None:
    value = torch.zeros(*probs.shape[:2], probs.shape[-1], query.shape[-1])
    rec.after_softmax(layer, probs, probs, query, value, value, None)


def test_recorder_weights_match_plain_loops():
    gen = torch.Generator().manual_seed(5)
    b, heads, n_rep, d, window = 1, 4, 2, 3, 3
    rec = KVRecorder(window, n_rep)
    calls = [5, 1, 1, 1]  # a prefill of 5 positions, then three decode steps
    queries, rows = [], []
    keys = 0
    for n in calls:
        keys += n
        q = torch.randn(b, heads, n, d, generator=gen)
        p = torch.rand(b, heads, n, keys, generator=gen)
        _feed(rec, 0, q, p)
        queries += [q[0, :, i] for i in range(n)]
        rows += [p[0, :, i] for i in range(n)]
    last_q, last_rows = queries[-window:], rows[-window:]
    kw = rec.key_weight(0)  # [b, kv heads, 1, D]
    vw = rec.value_weight(0, keys)  # [b, kv heads, tokens, 1]
    for g in range(heads // n_rep):
        for c in range(d):
            want = sum(abs(float(q[h, c])) for q in last_q for h in range(g * n_rep, (g + 1) * n_rep))
            assert float(kw[0, g, 0, c]) == pytest.approx(want, rel=1e-6)
        for t in range(keys):
            want = sum(float(r[h, t]) for r in last_rows for h in range(g * n_rep, (g + 1) * n_rep)
                       if t < r.shape[-1])
            assert float(vw[0, g, t, 0]) == pytest.approx(want, rel=1e-6)


def _cache(keys: torch.Tensor, values: torch.Tensor) -> SimpleNamespace:
    return SimpleNamespace(layers=[SimpleNamespace(keys=keys.clone(), values=values.clone())])


class _FixedRecorder(KVRecorder):
    def __init__(self, kw: torch.Tensor, vw: torch.Tensor) -> None:
        super().__init__(1)
        self.kw, self.vw = kw, vw

    def key_weight(self, layer):
        return self.kw

    def value_weight(self, layer, tokens):
        return self.vw[..., :tokens, :]


@pytest.mark.parametrize("axis", ["token", "channel"])
def test_output_mask_is_brute_force_ranking_of_the_formula(axis):
    gen = torch.Generator().manual_seed(6)
    heads, tokens, d, r, s = 2, 9, 6, 3, 0.5
    k = torch.randint(-3, 4, (1, heads, tokens, d), generator=gen).float()  # ties and zeros
    v = torch.randint(-3, 4, (1, heads, tokens, d), generator=gen).float()
    kw = torch.randint(0, 3, (1, heads, 1, d), generator=gen).float()  # weights with ties and a 0
    vw = torch.randint(1, 4, (1, heads, tokens, 1), generator=gen).float()
    cache = _cache(k, v)
    pruner = KVPruner(KVConfig(k_sparsity=s, v_sparsity=s, axis=axis, score="output", residual_length=r),
                      recorder=_FixedRecorder(kw, vw))
    pruner.prune(cache)
    old = tokens - r
    for name, x, score_of in (("keys", k, lambda h, t, c: abs(float(k[0, h, t, c]) * float(kw[0, h, 0, c]))),
                              ("values", v, lambda h, t, c: abs(float(vw[0, h, t, 0]) * float(v[0, h, t, c])))):
        got = getattr(cache.layers[0], name)
        for h in range(heads):
            assert torch.equal(got[0, h, old:], x[0, h, old:])  # the window is never touched
            if axis == "token":
                for t in range(old):
                    keep = _brute_keep([score_of(h, t, c) for c in range(d)], kept_count(d, s))
                    want = [float(x[0, h, t, c]) if c in keep else 0.0 for c in range(d)]
                    assert got[0, h, t].tolist() == want, (name, h, t)
            else:
                for c in range(d):
                    keep = _brute_keep([score_of(h, t, c) for t in range(old)], kept_count(old, s))
                    want = [float(x[0, h, t, c]) if t in keep else 0.0 for t in range(old)]
                    assert got[0, h, :old, c].tolist() == want, (name, h, c)


@pytest.mark.parametrize("axis", ["token", "channel"])
def test_uniform_query_and_attention_give_the_magnitude_mask(axis):
    gen = torch.Generator().manual_seed(7)
    k = torch.randn(1, 2, 11, 8, generator=gen)
    v = torch.randn(1, 2, 11, 8, generator=gen)
    rec = _FixedRecorder(torch.full((1, 2, 1, 8), 0.7), torch.full((1, 2, 11, 1), 0.3))
    out = _cache(k, v)
    KVPruner(KVConfig(axis=axis, score="output", k_sparsity=0.6, v_sparsity=0.4, residual_length=2),
             recorder=rec).prune(out)
    mag = _cache(k, v)
    KVPruner(KVConfig(axis=axis, k_sparsity=0.6, v_sparsity=0.4, residual_length=2)).prune(mag)
    assert torch.equal(out.layers[0].keys, mag.layers[0].keys)
    assert torch.equal(out.layers[0].values, mag.layers[0].values)


def _layer0_plain(lm, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPT-2 layer 0's q, k, v ``[heads, tokens, D]`` from the weights, in plain torch."""
    gpt = lm.module.transformer
    block = gpt.h[0]
    heads = lm.module.config.n_head
    with torch.inference_mode():
        h = block.ln_1(gpt.wte(ids) + gpt.wpe(torch.arange(ids.numel())))
        qkv = h @ block.attn.c_attn.weight + block.attn.c_attn.bias
        q, k, v = qkv.split(lm.module.config.n_embd, dim=-1)
    return tuple(x.reshape(ids.numel(), heads, -1).transpose(0, 1) for x in (q, k, v))


def _plain_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1) @ v


def test_attention_over_pruned_cache_equals_plain_recomputation(lm, ids):
    prompt, r, s = 16, 6, 0.5
    cfg = KVConfig(k_sparsity=s, v_sparsity=0.3, residual_length=r)
    trace = run_kv(lm, ids, cfg, prompt)
    q, k, v = _layer0_plain(lm, ids)
    got = trace.recorder.head_outputs(0)[0]  # [heads, positions 0 .. n-2, D]
    assert got.shape[1] == ids.numel() - 1
    for p in range(ids.numel() - 1):
        # At position p the cache holds tokens 0..p; those that left the window before this step are pruned.
        old = 0 if p < prompt else max(0, p - r)
        km, vm = k[:, : p + 1].clone(), v[:, : p + 1].clone()
        km[:, :old] = km[:, :old] * token_mask(km[:, :old], s)
        vm[:, :old] = vm[:, :old] * token_mask(vm[:, :old], 0.3)
        want = _plain_attention(q[:, p:p + 1], km, vm)[:, 0]
        torch.testing.assert_close(got[:, p], want, atol=1e-6, rtol=1e-6)
    # The per-head error evaluate_kv reports for layer 0 is the plain one over the scored positions.
    res = evaluate_kv(lm, ids, cfg, prompt=prompt, new_tokens=0)
    dense = torch.stack([_plain_attention(q[:, p:p + 1], k[:, : p + 1], v[:, : p + 1])[:, 0]
                         for p in range(prompt - 1, ids.numel() - 1)], dim=1)
    pruned = got[:, prompt - 1:]
    for h in range(q.shape[0]):
        want = float((pruned[h] - dense[h]).norm() / dense[h].norm())
        assert res.attention_error[0][h] == pytest.approx(want, rel=1e-3, abs=1e-6)
        assert want > 1e-3
    assert len(res.attention_error) == lm.module.config.n_layer
    assert res.positions == ids.numel() - prompt


def test_decode_time_pruning_equals_pruning_once_at_the_end(lm, ids):
    cfg = KVConfig(k_sparsity=0.5, v_sparsity=0.7, residual_length=5)
    raw: list[list[tuple[torch.Tensor, torch.Tensor]]] = []

    class Snap(KVPruner):
        seen = 0

        def prune(self, cache):  # keep the tokens this step appended, before pruning
            length = cache.layers[0].keys.shape[-2]
            n, self.seen = length - self.seen, length
            raw.append([(la.keys[..., -n:, :].clone(), la.values[..., -n:, :].clone()) for la in cache.layers])
            super().prune(cache)

    from sparsekit.kvcache.loop import _step

    class AllQueries(KVRecorder):
        def after_softmax(self, layer, scores, probs, query, key, value, allowed):
            self.seen_q = getattr(self, "seen_q", {})
            self.seen_q.setdefault(layer, []).append(query.clone())
            super().after_softmax(layer, scores, probs, query, key, value, allowed)

    module, n_rep = private_causal(lm)
    pruner, rec = Snap(cfg), AllQueries(cfg.residual_length, n_rep, keep_outputs=True)
    prompt = 12
    with torch.inference_mode():
        out = _step(module, ids[:prompt].unsqueeze(0), None, pruner, 0, rec)
        for pos in range(prompt, ids.numel()):
            out = _step(module, ids[pos:pos + 1].unsqueeze(0), out.past_key_values, pruner, pos, rec)
    final = out.past_key_values
    length = ids.numel()
    old = length - cfg.residual_length
    for i, layer in enumerate(final.layers):
        full_k = torch.cat([step[i][0] for step in raw], dim=-2)
        full_v = torch.cat([step[i][1] for step in raw], dim=-2)
        assert full_k.shape[-2] == length
        end_k = torch.cat([full_k[..., :old, :] * token_mask(full_k[..., :old, :], 0.5), full_k[..., old:, :]], -2)
        end_v = torch.cat([full_v[..., :old, :] * token_mask(full_v[..., :old, :], 0.7), full_v[..., old:, :]], -2)
        assert torch.equal(layer.keys, end_k)
        assert torch.equal(layer.values, end_v)
        # Every layer's attention at every position = plain softmax(qK^T/sqrt(d))V over the cache as it was
        # then: the raw keys/values, those that had left the window before the step pruned once.
        q = torch.cat(rec.seen_q[i], dim=-2)[0]
        got = rec.head_outputs(i)[0]
        for p in range(length):
            gone = 0 if p < prompt else max(0, p - cfg.residual_length)
            km, vm = full_k[0, :, : p + 1].clone(), full_v[0, :, : p + 1].clone()
            km[:, :gone] = km[:, :gone] * token_mask(km[:, :gone], 0.5)
            vm[:, :gone] = vm[:, :gone] * token_mask(vm[:, :gone], 0.7)
            want = _plain_attention(q[:, p:p + 1], km, vm)[:, 0]
            torch.testing.assert_close(got[:, p], want, atol=1e-6, rtol=1e-6)
    # Layer 0 against the plain dense keys: the same, pruned once.
    _, k, _ = _layer0_plain(lm, ids)
    want = torch.cat([k[:, :old] * token_mask(k[:, :old], 0.5), k[:, old:]], dim=1)
    torch.testing.assert_close(final.layers[0].keys[0], want, atol=1e-6, rtol=1e-6)


def test_output_aware_run_keeps_exact_counts_and_differs_per_channel(lm, ids):
    prompt, r = 16, 4
    out_tok = run_kv(lm, ids, KVConfig(score="output", k_sparsity=0.5, v_sparsity=0.5, residual_length=r), prompt)
    mag_tok = run_kv(lm, ids, KVConfig(k_sparsity=0.5, v_sparsity=0.5, residual_length=r), prompt)
    out_ch = run_kv(lm, ids, KVConfig(score="output", axis="channel", k_sparsity=0.5, v_sparsity=0.5,
                                      residual_length=r), prompt)
    n = ids.numel() - 1
    old = n - r
    d = out_tok.cache.layers[0].keys.shape[-1]
    for layer in out_tok.cache.layers:
        for x in (layer.keys, layer.values):
            assert ((x[..., :old, :] == 0).sum(-1) == d - kept_count(d, 0.5)).all()
            assert (x[..., old:, :] != 0).all()
    for layer in out_ch.cache.layers:
        for x in (layer.keys, layer.values):
            assert ((x[..., :old, :] == 0).sum(-2) == old - kept_count(old, 0.5)).all()
    # Layer 0 sees the same inputs: per token, values (one weight per vector) match magnitude, keys do not.
    assert torch.equal(out_tok.cache.layers[0].values, mag_tok.cache.layers[0].values)
    assert not torch.equal(out_tok.cache.layers[0].keys, mag_tok.cache.layers[0].keys)


def test_result_card_shows_its_fields(lm, ids):
    res = evaluate_kv(lm, ids, KVConfig(k_sparsity=0.7, v_sparsity=0.7, residual_length=8), prompt=16,
                      new_tokens=4)
    card = res.summary_card()
    text = repr(res)
    assert "\n" not in text and len(text) < 300
    assert f"{res.perplexity:.4g}" in card.headline["perplexity"]
    assert f"{res.dense_perplexity:.4g}" in card.headline["perplexity"]
    assert card.headline["next-token agreement"] == f"{100 * res.agreement:.1f}%"
    assert card.headline["kept entries"] == f"{100 * res.kept_fraction:.1f}%"
    assert f"{res.bytes['bitmap']:,}" in card.headline["bytes (bitmap / dense)"]
    same = sum(a == b for a, b in zip(res.generated, res.dense_generated))
    assert card.headline["greedy tokens as dense"] == f"{same} / 4"
    assert len(card.rows) == len(res.attention_error)
    for i, row in enumerate(card.rows):
        assert row["max head error"] == f"{max(res.attention_error[i]):.4g}"
    html = res._repr_html_()
    assert "mustafar token magnitude" in html and "<table>" in html
    assert res.layer_errors()[0] == pytest.approx(sum(res.attention_error[0]) / len(res.attention_error[0]))


def test_sweep_rows_and_bad_input(lm, ids):
    texts = [ids[:40], ids[8:48]]
    seen: list[float] = []
    rows = kv_sweep(lm, methods=SWEEP_METHODS, sparsities=(0.5,), texts=texts,
                    progress=lambda f, m: seen.append(f), prompt=16, residual=4)
    assert len(rows) == len(SWEEP_METHODS) * 2
    assert seen == sorted(seen) and seen[-1] == 1.0
    cfg = lm.module.config
    d = cfg.n_embd // cfg.n_head
    dense_bytes = 2 * cfg.n_layer * cfg.n_head * 39 * d * 2  # K and V, fp16
    for r in rows:
        assert r["bytes_dense"] == dense_bytes
        assert r["bytes"] == (r["bytes_bitmap"] if r["method"].startswith("mustafar") else r["bytes_kept_dense"])
        assert KVConfig.from_json(r["config"]).to_json() == r["config"]
        if r["text"] == 1:  # one text per method: the row is evaluate_kv's result for its config
            res = evaluate_kv(lm, texts[1], KVConfig.from_json(r["config"]), prompt=16, new_tokens=0)
            assert (r["perplexity"], r["agreement"]) == (res.perplexity, res.agreement)
            flat = [e for layer in res.attention_error for e in layer]
            assert r["attention_error"] == pytest.approx(sum(flat) / len(flat))
    mus = [r for r in rows if r["method"] == "mustafar-token"]
    assert mus[0]["kept_fraction"] == pytest.approx((4 + 35 * kept_count(d, 0.5) / d) / 39)
    for method in ("streaming", "h2o"):
        ev = [r for r in rows if r["method"] == method]
        assert ev[0]["kept_fraction"] == pytest.approx(round(4 + 35 * kept_count(d, 0.5) / d) / 39)
    with pytest.raises(ValueError, match="unknown KV sweep method"):
        kv_sweep(lm, methods=("snapkv",), texts=texts, progress=False)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        kv_sweep(lm, methods=("h2o",), sparsities=(1.0,), texts=texts, progress=False)
    with pytest.raises(ValueError, match="more than the prompt"):
        kv_sweep(lm, methods=("h2o",), texts=[ids[:10]], progress=False)
    minilm = shared_model("minilm")
    with pytest.raises(ValueError, match="causal LM"):
        kv_sweep(minilm, texts=texts, progress=False)

    from sparsekit import viz

    fig = viz.kv_quality_bytes_figure(rows)
    names = [t.name for t in fig.data]
    assert names.count("dense cache") == 2
    for method in SWEEP_METHODS:
        traces = [t for t in fig.data if t.name == method]
        assert len(traces) == 2
        cell = [r for r in rows if r["method"] == method]
        assert traces[0].x[0] == pytest.approx(sum(r["bytes"] for r in cell) / 2)
        iv = mean_interval([r["perplexity"] for r in cell])
        assert traces[0].y[0] == pytest.approx(iv.mean)
        assert traces[0].error_y.array[0] == pytest.approx(iv.high - iv.mean)
        assert traces[1].y[0] == pytest.approx(sum(r["agreement"] for r in cell) / 2)
    assert "bytes" in fig.layout.xaxis.title.text
    with pytest.raises(ValueError, match="lacks"):
        viz.kv_quality_bytes_figure([{"method": "h2o"}])
    assert not viz.kv_quality_bytes_figure([]).data

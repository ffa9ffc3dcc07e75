"""The Attention page's KV-cache view through AppTest on lm:small: the default view shows what the library
computes for the same text and config (metrics, the pruned K/V of the chosen head, the per-head error), a
changed sparsity changes them to another direct call's numbers, the URL opens a view, an encoder gets one
line saying why the view does not apply, bad input gets a message and the page keeps running, and the
sweep runs as a KV study whose plotted points equal direct ``evaluate_kv`` calls."""
import json

import numpy as np
import pytest

from devtools.apptest import decode, figures, page_app
from sparsekit.kvcache import KVConfig, evaluate_kv, run_kv
from sparsekit.models.lm_small import heldout_rows, lm_small_heldout
from tests.conftest import shared_model

pytestmark = pytest.mark.usefixtures("one_thread")

TIMEOUT = 300


@pytest.fixture(scope="module")
def lm():
    return shared_model("lm:small")


def heldout(lm, index, tokens):
    """Held-out text ``index`` of ``tokens`` tokens, cut here from the packed rows (independent of the page)."""
    rows = heldout_rows(lm.tokenizer, lm_small_heldout(), tokens)
    return rows["input_ids"][index]


def run(source="lm:small", params=None, **state):
    at = page_app("attention", source, TIMEOUT, **state)
    at.query_params["att_view"] = "KV cache"
    at.query_params.update(params or {})
    at.run()
    assert not at.exception, at.exception
    return at


def metric(at, label):
    return next(m.value for m in at.metric if m.label == label)


def titled(at, words):
    return next(f for f in figures(at) if words in json.dumps(f["layout"].get("title")))


def test_default_view_equals_the_library(lm):
    at = run()
    assert not at.error, [e.value for e in at.error]
    ids = heldout(lm, 0, 96)
    cfg = KVConfig(k_sparsity=0.5, v_sparsity=0.5, axis="token", residual_length=16)
    direct = evaluate_kv(lm, ids, cfg, prompt=24, new_tokens=16, generation_prompt=96)
    assert metric(at, "Perplexity") == f"{direct.perplexity:.2f}"
    assert metric(at, "Next-token agreement") == f"{direct.agreement:.1%}"
    assert metric(at, "Cache bytes") == f"{direct.bytes['bitmap']:,}"
    assert any("keys keep N = 16 of 32" in c.value for c in at.caption)
    # The pruned keys of layer 0 head 0, zeros as gaps; the window's box over the last 16 cached tokens.
    keys = run_kv(lm, ids, cfg, 24).cache.layers[0].keys[0, 0].numpy()
    heat = titled(at, "pruned keys, layer 0 head 0")
    z = decode(heat["data"][0]["z"])
    assert z.shape == (95, 32) and np.array_equal(np.isnan(z), keys == 0)
    assert np.allclose(z[~np.isnan(z)], keys[keys != 0], atol=1e-6)
    assert ((keys[:79] != 0).sum(axis=1) == 16).all() and (keys[79:] != 0).all()  # N = 16 kept; window dense
    box = heat["layout"]["shapes"][0]
    assert (box["y0"], box["y1"]) == (78.5, 94.5)
    grid = titled(at, "attention-output error per layer")
    assert np.allclose(decode(grid["data"][0]["z"]), np.array(direct.attention_error), atol=1e-6)
    codes = [c.value for c in at.code]
    assert codes == [lm.tokenizer.decode(direct.dense_generated), lm.tokenizer.decode(direct.generated)]


@pytest.mark.slow
def test_changed_sparsity_and_method_show_another_direct_call(lm):
    at = run()
    at.number_input(key="kv_k").set_value(70.0).run()
    at.number_input(key="kv_v").set_value(30.0).run()
    at.selectbox(key="kv_method").set_value("mustafar-channel").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    ids = heldout(lm, 0, 96)
    cfg = KVConfig(k_sparsity=0.7, v_sparsity=0.3, axis="channel", residual_length=16)
    direct = evaluate_kv(lm, ids, cfg, prompt=24, new_tokens=16, generation_prompt=96)
    assert metric(at, "Perplexity") == f"{direct.perplexity:.2f}"
    assert metric(at, "Next-token agreement") == f"{direct.agreement:.1%}"
    assert any("keys keep N = 10 of 32, values N = 23 of 32" in c.value for c in at.caption)  # 32 - floor(s*32)
    # Streaming at the mean sparsity 0.5: 16 + round(79 * 16 / 32) = 56 tokens kept, 4 of them sinks.
    at.selectbox(key="kv_method").set_value("streaming").run()
    direct = evaluate_kv(lm, ids, KVConfig(method="streaming", sinks=4, window=52), prompt=24, new_tokens=16,
                         generation_prompt=96)
    assert metric(at, "Perplexity") == f"{direct.perplexity:.2f}"
    assert metric(at, "Cache bytes") == f"{direct.bytes['dense']:,}"
    assert any("keeps 56 of the 95 cached tokens" in c.value for c in at.caption)
    # Evicted tokens are grey rows: the 39 between the 4 sinks and the 52 newest.
    z = decode(titled(at, "pruned keys, layer 0 head 0")["data"][0]["z"])
    gone = np.isnan(z).all(axis=1)
    assert gone.sum() == 39 and gone[4:43].all() and "39 tokens evicted" in json.dumps(titled(at, "pruned keys")["layout"])


def test_url_opens_a_view(lm):
    at = run(params={"kv_k": "30.0", "kv_v": "30.0", "kv_text_index": "2", "kv_tokens": "64", "kv_window": "8",
                     "kv_layer": "2", "kv_head": "1"})
    assert not at.error, [e.value for e in at.error]
    ids = heldout(lm, 2, 64)
    cfg = KVConfig(k_sparsity=0.3, v_sparsity=0.3, residual_length=8)
    direct = evaluate_kv(lm, ids, cfg, prompt=16, new_tokens=16, generation_prompt=64)
    assert metric(at, "Perplexity") == f"{direct.perplexity:.2f}"
    values = run_kv(lm, ids, cfg, 16).cache.layers[2].values[0, 1].numpy()
    z = decode(titled(at, "pruned values, layer 2 head 1")["data"][0]["z"])
    assert np.array_equal(np.isnan(z), values == 0)


def test_encoder_says_why_not():
    at = run("minilm")
    assert not at.error
    assert any("does not apply" in i.value and "encoder" in i.value for i in at.info), [i.value for i in at.info]
    assert not figures(at)


@pytest.mark.parametrize("params, words", [
    ({"kv_k": "100.0"}, "would zero every entry"),
    ({"kv_window": "200"}, "nothing would be pruned"),
    ({"kv_tokens": "300"}, "past the model's context of 256 positions"),
    ({"kv_tokens": "250"}, "generate at most 6"),
    ({"kv_text_index": "5000"}, "held-out text 5000 does not exist"),
])
def test_bad_input_gets_a_message(params, words):
    at = run(params=params)
    assert any(words in e.value for e in at.error), [e.value for e in at.error]
    assert at.radio(key="att_view").value == "KV cache"  # the page still runs: fix the value and go on
    at.query_params.clear()
    at.number_input(key="kv_k").set_value(50.0)
    at.number_input(key="kv_window").set_value(16)
    at.number_input(key="kv_tokens").set_value(96)
    at.number_input(key="kv_text_index").set_value(0).run()
    assert not at.error and figures(at)


def test_your_text_past_the_context():
    at = run(params={"kv_source": "Your text"})
    at.text_area(key="kv_text").set_value("word " * 400).run()
    assert any("past the model's context of 256" in e.value for e in at.error)


def test_sweep_runs_as_a_study_and_plots_direct_numbers(lm, tmp_cache):
    at = run(kv_sweep_methods=["mustafar-token", "h2o"], kv_sweep_sparsities=[50, 90], kv_sweep_texts=2)
    assert [ms.key for ms in at.multiselect if not ms.proto.wrap] == []  # chips wrap, as on the other pages
    at.button(key="kv_sweep_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    library = titled(at, "KV cache: quality against cache bytes")
    ratio = titled(at, "perplexity relative to dense")
    lib = {t["name"]: t for t in library["data"] if t.get("xaxis", "x") == "x" and t["name"] != "dense cache"}
    mine = {t["name"]: t for t in ratio["data"]}
    assert set(lib) == set(mine) == {"mustafar-token", "h2o"}
    for method, sparsity in (("mustafar-token", 0.5), ("h2o", 0.9)):
        if method == "h2o":  # 16 + round(79 * (32 - 28) / 32) = 26 tokens, half recent
            cfg = KVConfig(method="h2o", heavy=13, recent=13)
        else:
            cfg = KVConfig(k_sparsity=sparsity, v_sparsity=sparsity, residual_length=16)
        runs = [evaluate_kv(lm, heldout(lm, t, 96), cfg, prompt=24, new_tokens=0) for t in (0, 1)]
        ppl = sum(r.perplexity for r in runs) / 2
        rel = sum(r.perplexity / r.dense_perplexity for r in runs) / 2
        own = sum(r.bytes["bitmap" if method != "h2o" else "dense"] for r in runs) / 2
        t = lib[method]
        i = t["text"].index(f"{sparsity:.0%}")
        assert decode(t["y"])[i] == pytest.approx(ppl, rel=1e-9) and decode(t["x"])[i] == pytest.approx(own)
        t = mine[method]
        i = t["text"].index(f"{sparsity:.0%}")
        assert decode(t["y"])[i] == pytest.approx(rel, rel=1e-9) and decode(t["x"])[i] == pytest.approx(own)
    # The sweep's cells are in the cache: a new session shows the figures without a press.
    again = run(kv_sweep_methods=["mustafar-token", "h2o"], kv_sweep_sparsities=[50, 90], kv_sweep_texts=2)
    assert titled(again, "perplexity relative to dense")


@pytest.mark.slow  # a fresh kernel runs the notebook
def test_notebook_reproduces_the_view(lm, downloads):
    nbclient = pytest.importorskip("nbclient")
    import nbformat

    from devtools import ROOT
    from sparsekit.recipes import parse_headline

    at = run(params={"kv_method": "H2O (heavy hitters + recent window)", "kv_k": "70.0", "kv_v": "50.0",
                     "kv_text_index": "1", "kv_tokens": "64", "kv_window": "8", "kv_new": "8", "kv_layer": "1",
                     "kv_head": "2"})
    assert not at.error, [e.value for e in at.error]
    nb = nbformat.reads(downloads["Open as notebook (.ipynb)"].decode(), as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "stream")
    head = parse_headline(text)
    # Independent: H2O sized at the mean sparsity 0.6: 8 + round(55 * (32 - 19) / 32) = 30 tokens, 15 recent.
    direct = evaluate_kv(lm, heldout(lm, 1, 64), KVConfig(method="h2o", heavy=15, recent=15), prompt=16,
                         new_tokens=8, generation_prompt=64)
    assert head["perplexity"] == pytest.approx(direct.perplexity, rel=1e-4)
    assert head["cache_bytes"] == direct.bytes["dense"] and metric(at, "Cache bytes") == f"{head['cache_bytes']:,}"
    assert metric(at, "Perplexity") == f"{head['perplexity']:.2f}"
    assert metric(at, "Next-token agreement") == f"{head['agreement']:.1%}"
    plots = [o["data"]["application/vnd.plotly.v1+json"] for c in nb.cells for o in c.get("outputs", [])
             if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert [p["layout"]["title"]["text"] for p in plots][:2] == ["pruned keys, layer 1 head 2",
                                                                 "pruned values, layer 1 head 2"]


def test_hf_llama_directory_with_grouped_query_attention(hf_root, monkeypatch):
    """An ``hf:`` LLaMA (2 KV heads for 4 query heads, head dim 8): the view picks among the KV heads, and its
    numbers equal a direct call on the same directory."""
    import sparsekit

    monkeypatch.setenv("SPARSEKIT_MODEL_ROOTS", str(hf_root))
    at = page_app("attention", "hf", TIMEOUT)
    at.query_params["att_view"] = "KV cache"
    at.run()
    at.sidebar.selectbox(key="hf_choice").set_value(str(hf_root / "tiny-llama")).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    llama = sparsekit.load_model(f"hf:{hf_root / 'tiny-llama'}")
    assert at.selectbox(key="kv_head").options == ["0", "1"]
    ids = heldout(llama, 0, 96)
    direct = evaluate_kv(llama, ids, KVConfig(k_sparsity=0.5, v_sparsity=0.5, residual_length=16), prompt=24,
                         new_tokens=16, generation_prompt=96)
    assert metric(at, "Perplexity") == f"{direct.perplexity:.2f}"
    assert metric(at, "Cache bytes") == f"{direct.bytes['bitmap']:,}"
    assert any("keys keep N = 4 of 8" in c.value for c in at.caption)
    z = decode(titled(at, "pruned keys, layer 0 head 0")["data"][0]["z"])
    assert z.shape == (95, 8)

"""lm:small, the shipped small GPT-2: it loads offline, computes what plain transformers computes from the same
files, is scored on text it never trained on, and goes through sparsify and attention capture like any causal LM."""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import importlib.util
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import sparsekit
from sparsekit.models import lm_corpus
from sparsekit.models.lm_small import LM_SMALL_DIR, SEQ_LEN, heldout_perplexity, heldout_rows, lm_small_heldout
from sparsekit.models.sentences import SENTENCES

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Python lists are mutable sequences, and the cook simmered the sauce"


@pytest.fixture(scope="module")
def record():
    return json.loads((LM_SMALL_DIR / "training.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def lm():
    return sparsekit.load_model("lm:small")


@pytest.fixture(scope="module")
def plain():
    """The shipped files read without sparsekit: a GPT2LMHeadModel built from config.json, the safetensors loaded
    by hand (tied output layer), and the tokenizers library's own reader of tokenizer.json."""
    from safetensors.torch import load_file
    from tokenizers import Tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = json.loads((LM_SMALL_DIR / "config.json").read_text(encoding="utf-8"))
    config = GPT2Config(**{k: cfg[k] for k in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head",
                                               "layer_norm_epsilon", "activation_function")})
    model = GPT2LMHeadModel(config).eval()
    state = load_file(str(LM_SMALL_DIR / "model.safetensors"))
    assert {v.dtype for v in state.values()} == {torch.float16}  # shipped as float16
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    assert set(missing) <= {"lm_head.weight"} and not unexpected
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    return model, Tokenizer.from_file(str(LM_SMALL_DIR / "tokenizer.json"))


def _nll(model, ids: list[int]) -> tuple[float, int]:
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = model(input_ids=x).logits[0, :-1]
    return F.cross_entropy(logits, x[0, 1:], reduction="sum").item(), len(ids) - 1


# ----------------------------------------------------------------------------- loading


def test_loads_offline_in_a_fresh_process(tmp_path, record):
    env = {k: v for k, v in os.environ.items() if k != "SPARSEKIT_MODEL_ROOTS"}
    # No hub, and any attempt at the network fails fast.
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HTTPS_PROXY="http://127.0.0.1:9",
               HTTP_PROXY="http://127.0.0.1:9", SPARSEKIT_CACHE_DIR=str(tmp_path), HF_HOME=str(tmp_path / "hf"))
    code = ("import json, sparsekit; m = sparsekit.load_model('lm:small'); "
            "print(json.dumps({'kind': m.kind, 'params': m.n_params, 'name': m.name, 'source': m.info['source'], "
            "'notes': m.info['notes'], 'vocab': len(m.tokenizer), 'dtype': m.info['dtype'], "
            "'metric': list(m.quality())}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["kind"] == "causal-lm" and got["source"] == "bundled" and got["dtype"] == "float32"
    assert got["params"] == record["model"]["parameters"] and got["vocab"] == record["model"]["vocab_size"]
    assert any("F16" in n and "float32" in n for n in got["notes"])
    assert got["metric"] == ["perplexity", "top1_agreement"]


def test_shipped_files_are_small_and_safetensors_only():
    files = {f.name: f.stat().st_size for f in LM_SMALL_DIR.iterdir()}
    assert "model.safetensors" in files and "tokenizer.json" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
    assert sum(files.values()) < 6 * 2**20


def test_logits_and_greedy_text_equal_plain_transformers(lm, plain):
    model, tok = plain
    ids = tok.encode(PROMPT).ids
    assert ids[0] == tok.token_to_id("<|endoftext|>")  # every piece starts with the separator, as in training
    assert lm.preprocess([PROMPT])["input_ids"][0].tolist() == ids
    x = torch.tensor([ids])
    with torch.no_grad():
        ours = lm.module(input_ids=x).logits
        theirs = model(input_ids=x).logits
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=1e-4)
    # Greedy continuation: the same 12 tokens both ways, and again on a second run.
    def greedy(m):
        seq = list(ids)
        with torch.no_grad():
            for _ in range(12):
                seq.append(int(m(input_ids=torch.tensor([seq])).logits[0, -1].argmax()))
        return seq
    first = greedy(lm.module)
    assert first == greedy(model) == greedy(lm.module)
    assert tok.decode(first[len(ids):]).strip()  # decodes to text


# ----------------------------------------------------------------------------- quality and held-out text


def test_quality_is_perplexity_on_the_builtin_evaluation_sentences(lm, plain, record):
    model, tok = plain
    q = lm.quality()
    # Plain loop: every even-index built-in sentence (the calibration ones are odd), one at a time.
    total, count = 0.0, 0
    for s in SENTENCES[0::2]:
        nll, n = _nll(model, tok.encode(s).ids)
        total, count = total + nll, count + n
    assert lm.info["n_eval_sentences"] == len(SENTENCES) // 2
    assert q["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-4)
    assert q["top1_agreement"] == 1.0
    assert q["perplexity"] == pytest.approx(record["loss"]["eval_sentence_perplexity"], rel=1e-3)
    vocab = record["model"]["vocab_size"]
    assert q["perplexity"] < vocab / 4  # far better than a uniform guess over the 4,096 ids


def test_heldout_perplexity_is_a_plain_mean_over_the_packed_rows(lm, plain, record):
    model, tok = plain
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        texts = lm_small_heldout()
    partial = [w for w in caught if "could not be rebuilt" in str(w.message)]
    flat = [t for s in texts for t in tok.encode(s).ids]
    total, count = 0.0, 0
    for i in range(0, len(flat), SEQ_LEN):
        nll, n = _nll(model, flat[i:i + SEQ_LEN])
        total, count = total + nll, count + n
    ppl = heldout_perplexity(lm.module, heldout_rows(lm.tokenizer, texts))
    assert ppl == pytest.approx(math.exp(total / count), rel=1e-4)
    if partial:  # other documentation topics: the recorded number is for text this Python cannot rebuild
        pytest.skip(f"recorded held-out perplexity not compared: {partial[0].message}")
    assert len(texts) == record["corpus"]["heldout_texts"]
    assert ppl == pytest.approx(record["loss"]["heldout_perplexity"], rel=1e-3)
    # It learned far more than token frequencies, and it is far from a uniform guess.
    assert ppl < 0.5 * record["loss"]["unigram_heldout_perplexity"] and ppl < record["model"]["vocab_size"] / 20


def _words(text):
    return re.findall(r"[a-z0-9]+", text.lower())


def test_heldout_and_evaluation_text_are_not_in_the_training_text(record):
    from sparsekit.data import recovery_corpus
    from sparsekit.models.lm_corpus import pydoc_digest, pydoc_units

    if pydoc_digest() != record["corpus"]["pydoc_sha256"]:
        pytest.skip("this Python's documentation topics differ from the ones lm:small was trained on")
    held = {"texts": lm_small_heldout(strict=True), "validation": lm_small_heldout(part="validation", strict=True)}
    norm = lambda s: " ".join(s.lower().split())
    out = {norm(s) for s in held["texts"] + held["validation"]}
    pieces, seen = [], set()
    for s in list(recovery_corpus()) + pydoc_units():
        if norm(s) not in seen:
            seen.add(norm(s))
            pieces.append(s)
    training = [s for s in pieces if norm(s) not in out]
    # The training text rebuilt here is the one the run trained on.
    assert hashlib.sha256("\n".join(training).encode()).hexdigest() == record["corpus"]["train_text_sha256"]
    assert len(held["texts"]) == record["corpus"]["heldout_texts"] >= 150
    assert all(norm(s) in seen for s in held["texts"])  # held-out text is corpus text
    w = _words(" ".join(training))
    grams = {tuple(w[i:i + 10]) for i in range(len(w) - 9)}
    lines = {norm(s) for s in training}
    for text in held["texts"] + list(SENTENCES):
        tw = _words(text)
        assert norm(text) not in lines, text
        assert not any(tuple(tw[i:i + 10]) in grams for i in range(len(tw) - 9)), text
    # Shorter runs: few of the held-out 6-word runs occur in training text (documentation repeats phrases).
    six = {tuple(w[i:i + 6]) for i in range(len(w) - 5)}
    runs = [tuple(tw[i:i + 6]) for tw in map(_words, held["texts"]) for i in range(len(tw) - 5)]
    assert sum(r in six for r in runs) / len(runs) < 0.5


# ----------------------------------------------------------------------------- held-out references, not text


def _heldout_file():
    return json.loads((LM_SMALL_DIR / "heldout.json").read_text(encoding="utf-8"))


def _topic_pieces(text):
    """A topic cut as lm_corpus documents it, written out again here (the reference for the locators)."""
    return [" ".join(p.split()) for p in re.split(r"(?<=[.!?])\s+|\n\s*\n", text) if len(p.split()) >= 3]


def test_heldout_file_holds_no_documentation_text():
    import pydoc_data.topics

    held = _heldout_file()
    entries = held["heldout"] + held["validation"]
    assert "texts" not in held and {e["source"] for e in entries} == {"recovery", "pydoc"}
    for e in entries:
        if e["source"] == "pydoc":
            assert set(e) == {"source", "topic", "index", "sha256"}, e  # a reference, no text
        else:
            assert set(e) == {"source", "index", "text", "sha256"}, e
    docs = " ".join(" ".join(t.lower().split()) for t in pydoc_data.topics.topics.values())
    found = [e["text"] for e in entries if "text" in e and " ".join(e["text"].lower().split()) in docs]
    assert not found
    # Every string of the file (about, names, hashes, texts): no piece of the documentation over five words is in one.
    def strings(x):
        if isinstance(x, dict):
            return [s for k, v in x.items() for s in [k, *strings(v)]]
        return [s for v in x for s in strings(v)] if isinstance(x, list) else [x] if isinstance(x, str) else []
    raw = "\n".join(" ".join(s.lower().split()) for s in strings(held))
    pieces = [p for t in pydoc_data.topics.topics.values() for p in _topic_pieces(t) if len(p.split()) > 5]
    assert len(pieces) > 2000 and not [p for p in pieces if p.lower() in raw]


def test_heldout_rebuilds_to_hash_matching_corpus_pieces(record):
    import pydoc_data.topics

    held = _heldout_file()
    if lm_corpus.pydoc_digest() != held["pydoc_sha256"]:
        pytest.skip("this Python's documentation topics differ from the ones heldout.json was written from")
    from sparsekit.data import recovery_corpus

    topics = pydoc_data.topics.topics
    for part, count in (("heldout", record["corpus"]["heldout_texts"]), ("validation",
                                                                        record["corpus"]["validation_texts"])):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            texts = lm_small_heldout(part=part)
        refs = held[part]
        assert len(texts) == len(refs) == count
        for text, ref in zip(texts, refs):
            want = (recovery_corpus()[ref["index"]] if ref["source"] == "recovery"
                    else _topic_pieces(topics[ref["topic"]])[ref["index"]])
            assert text == want and hashlib.sha256(text.encode()).hexdigest() == ref["sha256"]


def test_changed_or_missing_topics_give_the_matching_pieces_and_say_so(monkeypatch):
    import pydoc_data.topics

    refs = _heldout_file()["heldout"]
    full, failed = lm_corpus.rebuild_pieces(refs)
    assert not failed or lm_corpus.pydoc_digest() != _heldout_file()["pydoc_sha256"]
    used = sorted({r["topic"] for r in refs if r["source"] == "pydoc"})
    gone, shifted, edited = used[0], used[1], used[2]
    topics = dict(pydoc_data.topics.topics)
    del topics[gone]
    topics[shifted] = "A new opening sentence here.\n\n" + topics[shifted]  # every later index moves by one
    one = next(r for r in refs if r.get("topic") == edited)
    piece = _topic_pieces(topics[edited])[one["index"]]
    topics[edited] = topics[edited].replace(piece.split()[0], piece.split()[0] + "x")  # same pieces, other text
    monkeypatch.setattr(pydoc_data.topics, "topics", topics)
    # Expected, from the references alone: the refs of the removed and shifted topics fail, and of the edited
    # topic those whose piece (cut as documented) no longer has the recorded hash.
    def ok(r):
        if r["source"] == "recovery":
            return True
        if r["topic"] in (gone, shifted):
            return False
        cut = _topic_pieces(topics[r["topic"]])
        return r["index"] < len(cut) and hashlib.sha256(cut[r["index"]].encode()).hexdigest() == r["sha256"]
    keep = [t for t, r in zip(full, refs) if ok(r)]
    assert 0 < len(keep) < len(refs) and not ok(one)
    with pytest.warns(UserWarning, match=rf"rebuilt {len(keep)} of {len(refs)} pieces.*not comparable"):
        texts = lm_small_heldout()
    assert texts == keep
    with pytest.raises(ValueError, match=rf"rebuilt {len(keep)} of {len(refs)}"):
        lm_small_heldout(strict=True)


def test_bad_heldout_files_and_refs_are_refused(tmp_path):
    shutil.copy(LM_SMALL_DIR / "model.safetensors", tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="has no heldout.json"):
        lm_small_heldout(tmp_path)
    (tmp_path / "heldout.json").write_text(json.dumps({"heldout": [{"source": "elsewhere", "index": 0,
                                                                    "sha256": "0"}]}), encoding="utf-8")
    with pytest.raises(ValueError, match="source 'elsewhere'"):
        lm_small_heldout(tmp_path)
    with pytest.raises(ValueError, match="no list 'validation'"):
        lm_small_heldout(tmp_path, part="validation")
    with pytest.raises(ValueError, match="part must be"):
        lm_small_heldout(tmp_path, part="train")
    (tmp_path / "heldout.json").write_text(json.dumps({"heldout": [{"source": "pydoc", "topic": "x"}]}),
                                           encoding="utf-8")
    with pytest.raises(ValueError, match="integer 'index'"):
        lm_small_heldout(tmp_path)
    with pytest.raises(ValueError, match="not pieces of the recovery corpus"):
        lm_corpus.piece_refs(["A sentence written for this test and found nowhere else."])


def test_heldout_only_rewrites_the_shipped_file_from_the_seeded_split(tmp_path, record):
    if lm_corpus.pydoc_digest() != record["corpus"]["pydoc_sha256"]:
        pytest.skip("this Python's documentation topics differ from the ones lm:small was trained on")
    spec = importlib.util.spec_from_file_location("train_lm_small", ROOT / "scripts" / "train_lm_small.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    shutil.copy(LM_SMALL_DIR / "training.json", tmp_path / "training.json")
    script.heldout_only(tmp_path, seed=0)
    assert (tmp_path / "heldout.json").read_bytes() == (LM_SMALL_DIR / "heldout.json").read_bytes()
    with pytest.raises(SystemExit, match="not the split this model was trained on"):
        script.heldout_only(tmp_path, seed=1)


# ----------------------------------------------------------------------------- the rest of the library


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_sparsify_2_4(lm, plain, method):
    from sparsekit.sparsify import SparsifyConfig

    result = sparsekit.sparsify(lm, SparsifyConfig(pattern="nm", n=2, m=4, method=method), progress=False)
    assert len(result.masks) == 4 * lm.module.config.n_layer  # qkv, attention out, MLP in and out per block
    params = dict(result.model.named_parameters())
    for name, mask in result.masks.items():
        w = params[result.weight_names[name]].detach()
        assert w.shape == mask.shape
        # GPT-2's Conv1D weight is [in, out]: exactly 2 of every 4 consecutive inputs kept for each output.
        groups = mask.T.reshape(mask.shape[1], -1, 4)
        assert (groups.sum(-1) == 2).all()
        assert not w[~mask].any()
        if method == "magnitude":
            a = dict(lm.module.named_parameters())[result.weight_names[name]].detach().abs().T
            kept_min = a.reshape(a.shape[0], -1, 4).masked_fill(~groups, math.inf).min(-1).values
            dropped_max = a.reshape(a.shape[0], -1, 4).masked_fill(groups, -math.inf).max(-1).values
            assert (kept_min >= dropped_max).all()
    q = lm.quality(result.model)
    dense = lm.quality()
    # The reported perplexity is the pruned model's own, recomputed sentence by sentence; the pruning changed
    # some next-token predictions and not all.
    model, tok = plain
    total, count = 0.0, 0
    for s in SENTENCES[0::2]:
        nll, n = _nll(result.model, tok.encode(s).ids)
        total, count = total + nll, count + n
    assert q["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-4)
    assert q["perplexity"] != pytest.approx(dense["perplexity"], rel=1e-3)
    assert 0 < q["top1_agreement"] < 1
    assert lm.quality() == dense  # the shared model was not touched


def test_attention_capture_matches_plain_eager_attention(lm, plain):
    from sparsekit.attention.capture import capture_attention

    model, tok = plain
    cap = capture_attention(lm, PROMPT)
    ids = tok.encode(PROMPT).ids
    cfg = lm.module.config
    assert cap.causal and cap.probs.shape == (cfg.n_layer, cfg.n_head, len(ids), len(ids))
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        att = torch.stack(model(input_ids=torch.tensor([ids]), output_attentions=True).attentions)[:, 0]
    assert torch.allclose(cap.probs, att, atol=1e-5)
    assert not cap.probs.triu(1).any()


def test_bad_specs_and_weights_say_what_to_do(lm):
    with pytest.raises(ValueError, match="unknown causal LM 'lm:nope'") as err:
        sparsekit.load_model("lm:nope")
    for spec in ("lm:small", "minilm", "digits:mlp", "hf:"):
        assert spec in str(err.value)
    from safetensors.torch import save

    state = {k: v.detach().clone() for k, v in lm.module.state_dict().items() if k != "lm_head.weight"}
    state["transformer.ln_f.weight"] = state["transformer.ln_f.weight"] * 0.5
    other = sparsekit.load_model("lm:small", weights=save(state))
    assert other.info["source"] == "upload" and "upload_sha256" in other.info
    assert torch.equal(other.module.transformer.ln_f.weight, state["transformer.ln_f.weight"])
    assert other.quality()["perplexity"] != lm.quality()["perplexity"]
    wrong = dict(state, **{"lm_head.weight": state["transformer.wte.weight"] + 1})
    with pytest.raises(ValueError, match="ties the two"):
        sparsekit.load_model("lm:small", weights=save(wrong))
    with pytest.raises(ValueError, match="do not fit the lm:small"):
        sparsekit.load_model("lm:small", weights=save({"transformer.wte.weight": state["transformer.wte.weight"]}))


def test_pruned_export_reloads_through_the_loader(lm):
    from sparsekit.export import export_files, export_zip, reload_export
    from sparsekit.sparsify import SparsifyConfig

    result = sparsekit.sparsify(lm, SparsifyConfig(pattern="nm", n=2, m=4, method="magnitude"), progress=False)
    again, manifest, masks = reload_export(export_zip(export_files(result, lm)))
    assert manifest["spec"] == "lm:small" and again.info["source"] == "upload"
    x = lm.preprocess([PROMPT])
    with torch.no_grad():
        assert torch.equal(again.module(**x).logits, result.model(**x).logits)
    assert set(masks) == set(result.masks)


@pytest.mark.parametrize("page", ["model", "sparsify", "attention"])
def test_pages_run_on_lm_small_picked_in_the_sidebar(page, lm):
    from devtools.apptest import page_app

    at = page_app(page, "lm:small", 300)
    at.run()
    assert not at.exception, at.exception
    assert at.session_state["_model_key"].startswith("lm:small#")
    if page == "model":
        shown = {m.label: m.value for m in at.metric}
        assert shown["Parameters"] == f"{lm.n_params:,}"

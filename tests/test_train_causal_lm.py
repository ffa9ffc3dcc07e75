"""benchmarks/train_causal_lm.py: a tiny run learns, saves a folder sparsekit loads as a causal LM,
records what it did, and refuses a corpus that holds a built-in evaluation sentence."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from sparsekit.models.sentences import SENTENCES
from sparsekit.models.text import pick_sentences

_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_causal_lm.py"
_spec = importlib.util.spec_from_file_location("train_causal_lm", _SCRIPT)
tcl = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tcl)

STEPS, BATCH = 30, 4


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm-root")
    record = tcl.train(root / "tiny-lm", steps=STEPS, seed=0, layers=1, width=32, heads=2, batch_size=BATCH,
                       lr=1e-2, evals=1, log=lambda s: None)
    return root, record


def test_tiny_run_learns(trained):
    _, record = trained
    loss = record["loss"]
    # A freshly initialised model predicts almost uniformly: its first loss is near ln(vocab).
    assert loss["train_first"] == pytest.approx(math.log(30522), abs=0.5)
    assert loss["train_last"] < loss["train_first"] - 2.0
    assert loss["train_last"] < math.log(30522) - 2.0
    assert loss["val"] < math.log(30522) - 2.0


def test_folder_loads_as_causal_lm(trained, tmp_cache, monkeypatch):
    import sparsekit

    root, record = trained
    monkeypatch.setenv("SPARSEKIT_MODEL_ROOTS", str(root))
    loaded = sparsekit.load_model("hf:tiny-lm")
    assert loaded.kind == "causal-lm"
    assert loaded.higher_is_better == {"perplexity": False, "top1_agreement": True}
    assert loaded.n_params == record["model"]["parameters"]
    assert loaded.module.config.n_positions == 128 and loaded.module.config.vocab_size == 30522
    quality = loaded.quality()
    assert quality["top1_agreement"] == 1.0
    assert 1.0 < quality["perplexity"] < 30522  # better than a uniform guess on the evaluation sentences
    assert loaded.tokenizer.vocab_size == 30522


def test_training_json_matches(trained):
    root, record = trained
    on_disk = json.loads((root / "tiny-lm" / "training.json").read_text())
    assert on_disk["training"]["steps"] == STEPS
    assert on_disk["training"]["tokens_seen"] == STEPS * BATCH * 128
    assert on_disk["model"]["layers"] == 1 and on_disk["model"]["width"] == 32
    # GPT-2 with tied embeddings: token + position embeddings, per block 12w^2 + 13w, final LayerNorm 2w.
    w = 32
    assert on_disk["model"]["parameters"] == 30522 * w + 128 * w + (12 * w * w + 13 * w) + 2 * w
    assert math.exp(on_disk["loss"]["val"]) == pytest.approx(on_disk["loss"]["val_perplexity"])
    corpus = on_disk["corpus"]
    assert corpus["pieces"]["recovery"] == 810
    rows = corpus["train_rows"] + corpus["val_rows"]
    assert rows == sum(corpus["tokens"].values()) // 128
    assert corpus["val_rows"] == -(-rows // 20)
    assert (root / "tiny-lm" / "model.safetensors").is_file() and (root / "tiny-lm" / "vocab.txt").is_file()


def test_validation_rows_are_the_held_out_ones(trained):
    import torch
    import torch.nn.functional as F
    from transformers import GPT2LMHeadModel

    root, record = trained
    rows = tcl.validation_rows(root / "tiny-lm")
    assert len(rows) == record["corpus"]["val_rows"] and {len(r) for r in rows} == {128}
    # The recorded validation loss, recomputed as a plain mean next-token cross-entropy over the saved rows.
    model = GPT2LMHeadModel.from_pretrained(root / "tiny-lm").eval()
    x = torch.tensor(rows)
    with torch.no_grad():
        logits = model(input_ids=x).logits[:, :-1]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
    assert nll.item() == pytest.approx(record["loss"]["val"], rel=1e-4)
    with pytest.raises(ValueError, match="validation.json"):
        tcl.validation_rows(root)


def test_leakage_rejected():
    evaluation = pick_sentences(96, 0)[7]
    with pytest.raises(ValueError, match="appear in the training text"):
        tcl.train(Path("/nonexistent/never-written"), steps=1, extra_texts=[f"Some text.\n{evaluation}\n"])
    # Case and spacing do not hide a sentence, nor does cutting a long one short.
    with pytest.raises(ValueError, match="1 built-in"):
        tcl.check_no_leakage(["intro " + "  ".join(evaluation.upper().split())], sentences=[evaluation])
    long = max(SENTENCES, key=len)
    with pytest.raises(ValueError):
        tcl.check_no_leakage([" ".join(long.split()[3:15])], sentences=[long])
    tcl.check_no_leakage(["Python lists are mutable sequences."], sentences=[evaluation, long])


@pytest.mark.parametrize("kwargs, words", [
    (dict(), "minutes"), (dict(steps=0), "steps at least 1"), (dict(minutes=0.0), "minutes must be positive"),
    (dict(steps=1, width=30, heads=4), "not a multiple of heads"),
])
def test_bad_arguments_are_refused(kwargs, words):
    with pytest.raises(ValueError, match=words):
        tcl.train(Path("/nonexistent/never-written"), **kwargs)

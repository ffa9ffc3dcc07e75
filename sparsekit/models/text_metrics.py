"""Quality of a text model as fidelity to its dense self on the built-in sentences: batching
and tokenising the sentences, sentence embeddings, and the two metrics (embedding fidelity for
encoders, perplexity and next-token agreement for causal LMs).

Metrics re-run on every setting change in the app, so the sentences are tokenised once at load,
sorted by length and grouped into batches with almost no padding. Loading the models is ``text``,
which re-exports every name below.
"""
from __future__ import annotations

import hashlib
import math
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..cache import get_cache, make_key, model_fingerprint, read_entry, tensor_digest
from .base import state_token
from .sentences import SENTENCES
from .weights import safetensors_header

MAX_LENGTH = 128
"""Token limit per sentence (the built-in sentences are far shorter; user text is truncated)."""
BATCH_TOKENS = 768
"""Padded tokens per forward. On a 2-core CPU, MiniLM over the 240 built-in sentences took
0.56 s at 768 against 0.60-0.67 s at 384, 1024, 1536 and 2048 (one run, interleaved): bigger
batches pay for padding, smaller ones for per-call overhead."""
LOGIT_BUDGET = 2**25
"""Most logits (floats) one causal-LM batch may produce, so a 150k-token vocabulary stays near
128 MB per batch."""
TOP_K = 5
"""Neighbours compared by the top-k agreement metric."""
REFERENCE_VERSION = 1
"""Version of what the dense reference embeddings hold (``sentence_embeddings``, ``length_batches``): bump it
when that code changes, so the disk cache computes them again."""

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


def padding_id(tokenizer: Any) -> int:
    """The token id to pad a batch with: the tokenizer's pad token, else its end-of-sequence or
    unknown token (causal LMs such as GPT-2 have no pad token), else 0.

    Args:
        tokenizer: a Hugging Face tokenizer (or anything with those ``*_token_id`` attributes).

    Returns:
        The id.
    """
    for attr in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    return 0


def last_hidden_states(out: Any) -> torch.Tensor:
    """The last hidden states of a Hugging Face model's output: ``last_hidden_state`` where the
    output names it, else its first element (tuple outputs).

    Args:
        out: what the model's forward returned.

    Returns:
        ``[b, L, hidden]``.
    """
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
    hidden = last_hidden_states(module(input_ids=input_ids, attention_mask=attention_mask)).float()
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



def ids_digest(ids: Sequence[Sequence[int]]) -> str:
    """Content digest of evaluation token ids (for cache keys of results measured on them)."""
    h = hashlib.sha256()
    for x in ids:
        h.update(",".join(map(str, x)).encode())
        h.update(b";")
    return h.hexdigest()[:32]

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
        self.dense = dense
        self.pad_id = pad_id
        self.eval_key = 0
        self._loaded_state = state_token(dense)
        self.set_eval_ids(ids)

    def set_eval_ids(self, ids: Sequence[Sequence[int]]) -> None:
        """Evaluate on these token id lists from now on (the dense reference is recomputed)."""
        if len(ids) < 2:
            raise ValueError(f"embedding fidelity needs at least 2 evaluation sentences, got {len(ids)}")
        self.batches = length_batches(ids, self.pad_id)
        self.n = len(ids)
        self.k = min(TOP_K, self.n - 1)
        self.eval_key += 1
        self.eval_digest = ids_digest(ids)
        self._reference: torch.Tensor | None = None
        self._reference_neighbours: torch.Tensor | None = None
        self._reference_state: tuple | None = None

    # The reference is computed on first use, not at load: a model card opens without a forward pass.
    # It is recomputed when the dense module changed since (the shared model never should, but a
    # stale reference would make every score wrong without a sign).
    @property
    def reference(self) -> torch.Tensor:
        state = state_token(self.dense)
        if self._reference is None or self._reference_state != state:
            self._reference = self._stored_reference(state)
            self._reference_neighbours = None
            self._reference_state = state
        return self._reference

    def reference_key(self) -> str:
        """The disk cache key of the dense reference: the weights' fingerprint, the evaluation ids' digest,
        the padding id and batch size (the batches), the embedding code's version, the module's class and
        config, and torch's version, thread count, device and dtype (what the float order depends on)."""
        param = next(self.dense.parameters(), None)
        dtype = str(param.dtype) if param is not None else ""
        config = getattr(self.dense, "config", None)
        to_json = getattr(config, "to_json_string", None)
        return make_key("dense-embeddings", REFERENCE_VERSION, model_fingerprint(self.dense), self.eval_digest,
                        self.pad_id, BATCH_TOKENS, type(self.dense).__qualname__,
                        to_json() if callable(to_json) else repr(config),
                        str(getattr(config, "_attn_implementation", None)), torch.__version__,
                        torch.get_num_threads(), str(_device(self.dense)), dtype)

    def _stored_reference(self, state: tuple) -> torch.Tensor:
        """The dense embeddings from the disk cache, else computed and stored. Only for the weights as loaded:
        ``model_fingerprint`` remembers a module's first digest, so a module changed in place is computed."""
        if state != self._loaded_state:
            return self.embed(self.dense)
        key = self.reference_key()
        stored = read_entry(key, lambda raw: self._read_reference(raw, key))
        if stored is not None:
            return stored
        reference = self.embed(self.dense)
        from safetensors.torch import save

        get_cache().set(key, save({"reference": reference.contiguous()},
                                  metadata={"key": key, "digest": tensor_digest(reference)}))
        return reference

    def _read_reference(self, raw: Any, key: str) -> torch.Tensor:
        """A stored reference (safetensors bytes), checked against its key, shape and content digest;
        raises ValueError for anything else (the entry is then computed again)."""
        from safetensors import SafetensorError
        from safetensors.torch import load

        if not isinstance(raw, bytes):
            raise ValueError("the stored dense reference is not safetensors bytes")
        meta = safetensors_header(raw).get("__metadata__") or {}
        try:
            reference = load(raw)["reference"]
        except SafetensorError as err:
            raise ValueError(f"damaged dense reference: {err}") from err
        if (meta.get("key") != key or reference.dtype != torch.float32 or reference.dim() != 2
                or reference.shape[0] != self.n or meta.get("digest") != tensor_digest(reference)):
            raise ValueError("the stored dense reference does not match its key, shape or digest")
        return reference

    @property
    def reference_neighbours(self) -> torch.Tensor:
        reference = self.reference  # refreshes a stale reference first
        if self._reference_neighbours is None:
            self._reference_neighbours = top_k_neighbours(reference, self.k)
        return self._reference_neighbours

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
        # The dense model's own embeddings are the reference (the forward is deterministic), so its
        # score needs no second pass.
        emb = self.reference if module is self.dense else self.embed(module)
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
        self.dense = dense
        self.pad_id = pad_id
        self.max_tokens = max(1, min(BATCH_TOKENS, LOGIT_BUDGET // max(vocab_size, 1)))
        self.eval_key = 0
        self.set_eval_ids(ids)

    def set_eval_ids(self, ids: Sequence[Sequence[int]]) -> None:
        """Evaluate on these token id lists from now on (the dense reference is recomputed)."""
        ids = [x for x in ids if len(x) >= 2]  # a single token predicts nothing
        if not ids:
            raise ValueError("the tokenizer turned every evaluation sentence into fewer than 2 tokens")
        self.batches = [b for _, b in length_batches(ids, self.pad_id, self.max_tokens)]
        self.eval_key += 1
        self.eval_digest = ids_digest(ids)
        self._reference: list[torch.Tensor] | None = None
        self._reference_state: tuple | None = None

    @property
    def reference(self) -> list[torch.Tensor]:
        # Computed on first use, not at load; again if the dense module changed since.
        state = state_token(self.dense)
        if self._reference is None or self._reference_state != state:
            self._reference = [argmax for argmax, _, _ in self._scan(self.dense)]
            self._reference_state = state
        return self._reference

    def _scan(self, module: nn.Module) -> Iterator[tuple[torch.Tensor, float, int]]:
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

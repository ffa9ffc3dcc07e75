"""Run a causal LM token by token with its key/value cache pruned (Mustafar) or evicted (StreamingLLM, H2O).

``KVPruner`` holds the per-sequence state (the eviction mask, H2O's accumulated attention) and prunes a
transformers ``DynamicCache`` in place after the prefill and after every decode step: tokens that have
left the dense window are pruned (Mustafar: their zeroed entries stay zero; per-channel masks are
recomputed over all pruned tokens, so each channel keeps exactly ``kept_count(pruned tokens)``), and
evicted tokens (streaming, h2o) get a 0 in the attention mask passed to the next step (their cache
entries are zeroed too, so the byte count sees them gone). H2O evicts per token over all layers and heads
(attention summed over them), since the attention mask is per token.

``evaluate_kv`` measures, on one token sequence: perplexity under teacher forcing with the pruned cache
(over the positions after the prompt), next-token agreement with the dense model's full forward, and
greedy generation of ``new_tokens`` tokens dense against pruned; plus the cache bytes at the end.
The model is only read: no weight or config is changed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models.base import LoadedModel
from .config import KVConfig
from .masks import VALUE_BYTES, bitmap_bytes, channel_mask, csr_bytes, dense_bytes, token_mask

__all__ = ["KVPruner", "KVResult", "cache_bytes", "causal_module", "evaluate_kv", "greedy_generate"]


def causal_module(model: LoadedModel | nn.Module) -> nn.Module:
    """The module of a causal LM, or a ``ValueError`` saying why another model cannot have its cache pruned."""
    kind = getattr(model, "kind", None)
    module = getattr(model, "module", model)
    if kind is not None and kind != "causal-lm":
        raise ValueError(f"KV-cache pruning needs a causal LM (a decoder that keeps a key/value cache while it "
                         f"generates); {getattr(model, 'spec', 'this model')} is a {kind}, which keeps no cache")
    config = getattr(module, "config", None)
    if not isinstance(module, nn.Module) or config is None or not getattr(config, "use_cache", False) \
            or getattr(config, "is_encoder_decoder", False):
        raise ValueError("KV-cache pruning needs a Hugging Face causal LM that uses a key/value cache "
                         f"(got {type(module).__name__})")
    return module


def _max_positions(module: nn.Module) -> int | None:
    config: Any = module.config
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


@dataclass
class KVPruner:
    """Prunes one sequence's cache under ``config``; ``attention_mask`` is the mask for the next step."""

    config: KVConfig
    evicted: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))
    score: torch.Tensor = field(default_factory=lambda: torch.zeros(0))

    @property
    def needs_attention(self) -> bool:
        return self.config.method == "h2o"

    def attention_mask(self, new_tokens: int) -> torch.Tensor:
        """``[1, cached + new_tokens]`` mask: 0 on evicted tokens."""
        keep = torch.cat([~self.evicted, torch.ones(new_tokens, dtype=torch.bool)])
        return keep.long().unsqueeze(0)

    def observe(self, attentions: Any, length: int) -> None:
        """Add the attention each cached token received in this step (summed over layers, heads, queries)."""
        if self.score.numel() < length:
            self.score = torch.cat([self.score, torch.zeros(length - self.score.numel())])
        if attentions:
            for a in attentions:  # [batch, heads, queries, keys]
                self.score[: a.shape[-1]] += a.float().sum(dim=(0, 1, 2))

    def prune(self, cache: Any) -> None:
        """Prune ``cache`` (a ``DynamicCache``) in place for the tokens it holds now."""
        layers = cache.layers
        length = int(layers[0].keys.shape[-2])
        if self.evicted.numel() < length:
            self.evicted = torch.cat([self.evicted, torch.zeros(length - self.evicted.numel(), dtype=torch.bool)])
        cfg = self.config
        old = max(0, length - cfg.dense_tokens)  # tokens [0, old) have left the dense window
        if old == 0:
            return
        if cfg.method == "mustafar":
            for layer in layers:
                for name, s in (("keys", cfg.k_sparsity), ("values", cfg.v_sparsity)):
                    if s == 0:
                        continue
                    part = getattr(layer, name)[..., :old, :]
                    mask = token_mask(part, s) if cfg.axis == "token" else channel_mask(part, s)
                    part.masked_fill_(~mask, 0)
            return
        if cfg.method == "streaming":
            self.evicted[cfg.sinks:old] = True
        else:
            candidates = torch.arange(old)[~self.evicted[:old]]
            if candidates.numel() > cfg.heavy:
                order = torch.sort(self.score[candidates], descending=True, stable=True).indices
                self.evicted[candidates[order[cfg.heavy:]]] = True
        gone = self.evicted[:length]
        for layer in layers:
            layer.keys[..., gone, :] = 0
            layer.values[..., gone, :] = 0


def cache_bytes(cache: Any, config: KVConfig | None, evicted: torch.Tensor | None = None,
                value_bytes: int = VALUE_BYTES) -> dict[str, int]:
    """Bytes of a cache's keys and values, summed over layers.

    ``full``: every cached token, every entry at ``value_bytes`` (the unpruned cache). ``dense``: the tokens
    not evicted, stored dense (the layout StreamingLLM and H2O use; equal to ``full`` for mustafar).
    ``bitmap`` / ``csr``: the dense window at ``value_bytes`` an entry, the older tokens not evicted in
    Mustafar's bitmap layout / CSR (``sparsekit.kvcache.masks``). Evicted tokens cost nothing but in ``full``.
    """
    full = dense = bitmap = csr = 0
    for layer in cache.layers:
        for x in (layer.keys, layer.values):
            length = x.shape[-2]
            full += dense_bytes(x.numel(), value_bytes)
            window = 0 if config is None else min(length, config.dense_tokens)
            old = x[..., : length - window, :]
            if evicted is not None and evicted.numel():
                old = old[..., ~evicted[: length - window], :]
            recent = dense_bytes(x[..., length - window:, :].numel(), value_bytes)
            dense += recent + dense_bytes(old.numel(), value_bytes)
            bitmap += recent + bitmap_bytes(old, value_bytes)
            csr += recent + csr_bytes(old, value_bytes)
    return {"full": full, "dense": dense, "bitmap": bitmap, "csr": csr}


def _step(module: nn.Module, ids: torch.Tensor, cache: Any, pruner: KVPruner | None, start: int) -> Any:
    n = ids.shape[-1]
    kwargs: dict[str, Any] = {"input_ids": ids, "past_key_values": cache, "use_cache": True,
                              "position_ids": torch.arange(start, start + n).unsqueeze(0)}
    if pruner is not None:
        kwargs["attention_mask"] = pruner.attention_mask(n)
        if pruner.needs_attention:
            kwargs["output_attentions"] = True
    out = module(**kwargs)
    if pruner is not None:
        if pruner.needs_attention:
            pruner.observe(out.attentions, start + n)
        pruner.prune(out.past_key_values)
    return out


def _check_ids(module: nn.Module, ids: torch.Tensor, prompt: int, extra: int = 0) -> torch.Tensor:
    ids = torch.as_tensor(ids)
    if ids.dim() == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.dim() != 1:
        raise ValueError(f"give one token sequence (shape [tokens] or [1, tokens]), got shape {tuple(ids.shape)}")
    if not 1 <= prompt <= ids.numel():
        raise ValueError(f"the prompt length must be 1 to {ids.numel()} tokens, got {prompt}")
    limit = _max_positions(module)
    if limit is not None and ids.numel() + extra > limit:
        raise ValueError(f"{ids.numel() + extra} tokens are more than the model's {limit} positions")
    return ids.long()


def greedy_generate(model: LoadedModel | nn.Module, prompt_ids: torch.Tensor, new_tokens: int,
                    config: KVConfig | None = None) -> list[int]:
    """Greedy decoding of ``new_tokens`` tokens after ``prompt_ids``, the cache pruned by ``config`` (None: dense)."""
    module = causal_module(model)
    ids = _check_ids(module, prompt_ids, int(torch.as_tensor(prompt_ids).numel()), new_tokens)
    pruner = None if config is None else KVPruner(config)
    out_ids: list[int] = []
    with torch.inference_mode():
        out = _step(module, ids.unsqueeze(0), None, pruner, 0)
        pos = ids.numel()
        for i in range(new_tokens):
            nxt = int(out.logits[0, -1].argmax())
            out_ids.append(nxt)
            if i + 1 < new_tokens:
                out = _step(module, torch.tensor([[nxt]]), out.past_key_values, pruner, pos)
                pos += 1
    return out_ids


@dataclass
class KVResult:
    """``evaluate_kv``'s measurements (one run)."""

    config: KVConfig
    perplexity: float
    dense_perplexity: float
    agreement: float
    """Fraction of positions after the prompt where the pruned and the dense argmax agree."""
    generated: list[int]
    dense_generated: list[int]
    bytes: dict[str, int]
    """Cache bytes at the end of the teacher-forced run (``cache_bytes``)."""
    kept_fraction: float
    """Nonzero cache entries (of tokens not evicted) over all cache entries at the end."""


def evaluate_kv(model: LoadedModel | nn.Module, ids: torch.Tensor, config: KVConfig, *, prompt: int = 32,
                new_tokens: int = 16, generation_prompt: int | None = None) -> KVResult:
    """Teacher-forced perplexity, next-token agreement and greedy generation with the cache under ``config``.

    Args:
        model: a causal LM (``sparsekit.load_model("lm:small")`` or an ``hf:`` GPT-2/LLaMA).
        ids: one token sequence ``[tokens]``; the first ``prompt`` are the prefill.
        config: the pruning or eviction setting.
        prompt: prefill length; perplexity and agreement cover the later positions.
        new_tokens: greedy tokens generated, dense and pruned.
        generation_prompt: the first tokens of ``ids`` that greedy generation starts from (default
            ``prompt``); a longer one makes the eviction windows bite during generation.

    Returns:
        A ``KVResult``.
    """
    module = causal_module(model)
    ids = _check_ids(module, ids, prompt)
    if ids.numel() - prompt < 1:
        raise ValueError("the text needs at least one token after the prompt to measure perplexity")
    targets = ids[prompt:]
    pruner = KVPruner(config)
    with torch.inference_mode():
        full = torch.ones(1, ids.numel(), dtype=torch.long)
        dense_logits = module(input_ids=ids.unsqueeze(0), attention_mask=full).logits[0, prompt - 1:-1].float()
        out = _step(module, ids[:prompt].unsqueeze(0), None, pruner, 0)
        logits = [out.logits[0, -1].float()]
        for pos in range(prompt, ids.numel() - 1):
            out = _step(module, ids[pos:pos + 1].unsqueeze(0), out.past_key_values, pruner, pos)
            logits.append(out.logits[0, -1].float())
        pruned_logits = torch.stack(logits)
        cache = out.past_key_values
        nbytes = cache_bytes(cache, config, pruner.evicted)
        total = sum(x.numel() for layer in cache.layers for x in (layer.keys, layer.values))
        nonzero = sum(int(torch.count_nonzero(x)) for layer in cache.layers for x in (layer.keys, layer.values))
    ppl = math.exp(float(F.cross_entropy(pruned_logits, targets)))
    dense_ppl = math.exp(float(F.cross_entropy(dense_logits, targets)))
    agree = float((pruned_logits.argmax(-1) == dense_logits.argmax(-1)).float().mean())
    gen_prompt = prompt if generation_prompt is None else generation_prompt
    if not 1 <= gen_prompt <= ids.numel():
        raise ValueError(f"generation_prompt must be 1 to {ids.numel()} tokens, got {gen_prompt}")
    head = ids[:gen_prompt]
    return KVResult(
        config=config, perplexity=ppl, dense_perplexity=dense_ppl, agreement=agree,
        generated=greedy_generate(module, head, new_tokens, config) if new_tokens else [],
        dense_generated=greedy_generate(module, head, new_tokens) if new_tokens else [],
        bytes=nbytes, kept_fraction=nonzero / total if total else 0.0,
    )

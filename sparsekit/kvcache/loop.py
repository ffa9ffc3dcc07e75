"""Run a causal LM token by token with its key/value cache pruned (Mustafar) or evicted (StreamingLLM, H2O).

``KVPruner`` holds the per-sequence state (the eviction mask, H2O's accumulated attention) and prunes a
transformers ``DynamicCache`` in place after the prefill and after every decode step: tokens that have
left the dense window are pruned (Mustafar: their zeroed entries stay zero; per-channel masks are
recomputed over all pruned tokens, so each channel keeps exactly ``kept_count(pruned tokens)``), and
evicted tokens (streaming, h2o) get a 0 in the attention mask passed to the next step (their cache
entries are zeroed too, so the byte count sees them gone). H2O evicts per token over all layers and heads
(attention summed over them), since the attention mask is per token.

``run_kv`` runs one token sequence that way (the model's attention goes through
``sparsekit.attention.session`` on a private copy, so the queries, attention and per-head outputs are
read by a ``KVRecorder``); ``dense_reference`` is the full forward through the same attention code;
``sparsekit.kvcache.evaluate`` turns both into perplexity, agreement, errors and bytes.
The model is only read: no weight or config is changed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import torch
from torch import nn

from ..attention.session import active, private_copy
from ..models.base import LoadedModel
from .config import KVConfig
from .masks import VALUE_BYTES, bitmap_bytes, csr_bytes, dense_bytes, score_mask
from .score import KVRecorder, n_rep_of

__all__ = ["KVPruner", "KVTrace", "cache_bytes", "causal_module", "dense_reference", "greedy_generate",
           "private_causal", "run_kv"]


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


def private_causal(model: LoadedModel | nn.Module) -> tuple[nn.Module, int]:
    """A private copy of a causal LM (shared weights, new module objects) whose attention calls go through
    ``sparsekit.attention.session`` (so a ``KVRecorder`` sees them), and its query heads per key/value head."""
    module = causal_module(model)
    loaded = model if isinstance(model, LoadedModel) else cast(
        LoadedModel, SimpleNamespace(module=module, kind="causal-lm", name=type(module).__name__))
    return private_copy(loaded), n_rep_of(module.config)


@dataclass
class KVPruner:
    """Prunes one sequence's cache under ``config``; ``attention_mask`` is the mask for the next step.

    Mustafar per token prunes each token once, when it leaves the dense window (``done`` tokens so far);
    per channel, the mask is recomputed over every token out of the window at each step (each channel keeps
    ``kept_count(tokens out of the window)``). The output-aware score reads ``recorder`` (the step's
    ``KVRecorder``); a token's weights are fixed when it leaves the window.
    """

    config: KVConfig
    evicted: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))
    score: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    recorder: KVRecorder | None = None
    done: int = 0
    """Tokens that have left the dense window and been pruned."""
    weights: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)
    """(layer, ``keys``/``values``) -> the output-aware weights of the tokens out of the window (per channel)."""

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

    def _output_weight(self, layer: int, name: str, start: int, old: int) -> torch.Tensor:
        if self.recorder is None:
            raise RuntimeError("the output-aware score needs the attention recorder of the cache loop "
                               "(run through evaluate_kv or greedy_generate)")
        if name == "keys":
            w = self.recorder.key_weight(layer)
            return w.expand(*w.shape[:2], old - start, w.shape[-1])
        return self.recorder.value_weight(layer, old)[..., start:old, :]

    def _prune_mustafar(self, layers: Any, old: int) -> None:
        cfg = self.config
        start = self.done
        for i, layer in enumerate(layers):
            for name, s in (("keys", cfg.k_sparsity), ("values", cfg.v_sparsity)):
                if s == 0:
                    continue
                x = getattr(layer, name)
                lo = start if cfg.axis == "token" else 0
                part = x[..., lo:old, :]
                if cfg.score == "magnitude":
                    score = part.abs()
                else:
                    w = self._output_weight(i, name, start, old)
                    if cfg.axis == "channel":
                        prev = self.weights.get((i, name))
                        w = w if prev is None else torch.cat([prev, w], dim=-2)
                        self.weights[(i, name)] = w
                    score = (part.float() * w).abs()
                part.masked_fill_(~score_mask(score, s, cfg.axis), 0)

    def prune(self, cache: Any) -> None:
        """Prune ``cache`` (a ``DynamicCache``) in place for the tokens it holds now."""
        layers = cache.layers
        length = int(layers[0].keys.shape[-2])
        if self.evicted.numel() < length:
            self.evicted = torch.cat([self.evicted, torch.zeros(length - self.evicted.numel(), dtype=torch.bool)])
        cfg = self.config
        old = max(0, length - cfg.dense_tokens)  # tokens [0, old) have left the dense window
        if old <= self.done:
            return
        if cfg.method == "mustafar":
            self._prune_mustafar(layers, old)
            self.done = old
            return
        self.done = old
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


def _step(module: nn.Module, ids: torch.Tensor, cache: Any, pruner: KVPruner | None, start: int,
          recorder: KVRecorder | None = None) -> Any:
    n = ids.shape[-1]
    kwargs: dict[str, Any] = {"input_ids": ids, "past_key_values": cache, "use_cache": True,
                              "position_ids": torch.arange(start, start + n).unsqueeze(0)}
    if pruner is not None:
        kwargs["attention_mask"] = pruner.attention_mask(n)
        if pruner.needs_attention:
            kwargs["output_attentions"] = True
        pruner.recorder = recorder
    if recorder is None:
        out = module(**kwargs)
    else:
        with active(recorder):
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
    module, n_rep = private_causal(model)
    ids = _check_ids(module, prompt_ids, int(torch.as_tensor(prompt_ids).numel()), new_tokens)
    pruner = None if config is None else KVPruner(config)
    recorder = None if config is None else KVRecorder(config.residual_length, n_rep)
    out_ids: list[int] = []
    with torch.inference_mode():
        out = _step(module, ids.unsqueeze(0), None, pruner, 0, recorder)
        pos = ids.numel()
        for i in range(new_tokens):
            nxt = int(out.logits[0, -1].argmax())
            out_ids.append(nxt)
            if i + 1 < new_tokens:
                out = _step(module, torch.tensor([[nxt]]), out.past_key_values, pruner, pos, recorder)
                pos += 1
    return out_ids


@dataclass
class KVTrace:
    """One token-by-token run with the cache under a config (``run_kv``)."""

    logits: torch.Tensor
    """``[positions, vocab]``: the next-token logits at positions ``prompt - 1 .. tokens - 2``."""
    cache: Any
    """The pruned ``DynamicCache`` at the end (tokens ``0 .. tokens - 2``)."""
    pruner: KVPruner
    recorder: KVRecorder
    """With each layer's per-head attention outputs of positions ``0 .. tokens - 2``."""


def run_kv(model: LoadedModel | nn.Module, ids: torch.Tensor, config: KVConfig, prompt: int = 32) -> KVTrace:
    """Prefill ``ids[:prompt]``, then feed ``ids[prompt:-1]`` one token a step (teacher forcing), the cache
    pruned after the prefill and after every step; records every layer's attention outputs per head.

    Args:
        model: a causal LM.
        ids: one token sequence ``[tokens]``.
        config: the pruning or eviction setting.
        prompt: prefill length (1 to ``tokens - 1``).

    Returns:
        A ``KVTrace``.
    """
    module, n_rep = private_causal(model)
    ids = _check_ids(module, ids, prompt)
    if ids.numel() - prompt < 1:
        raise ValueError("the text needs at least one token after the prompt to measure perplexity")
    pruner = KVPruner(config)
    recorder = KVRecorder(config.residual_length, n_rep, keep_outputs=True)
    with torch.inference_mode():
        out = _step(module, ids[:prompt].unsqueeze(0), None, pruner, 0, recorder)
        logits = [out.logits[0, -1].float()]
        for pos in range(prompt, ids.numel() - 1):
            out = _step(module, ids[pos:pos + 1].unsqueeze(0), out.past_key_values, pruner, pos, recorder)
            logits.append(out.logits[0, -1].float())
    return KVTrace(torch.stack(logits), out.past_key_values, pruner, recorder)


def dense_reference(model: LoadedModel | nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, KVRecorder]:
    """One full forward of ``ids`` without a cache through the same attention code as ``run_kv``: the logits
    ``[tokens, vocab]`` and a recorder with every layer's per-head attention outputs."""
    module, n_rep = private_causal(model)
    ids = _check_ids(module, ids, 1)
    recorder = KVRecorder(1, n_rep, keep_outputs=True)
    with torch.inference_mode(), active(recorder):
        full = torch.ones(1, ids.numel(), dtype=torch.long)
        logits = module(input_ids=ids.unsqueeze(0), attention_mask=full, use_cache=False).logits[0].float()
    return logits, recorder

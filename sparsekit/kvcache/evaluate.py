"""What a pruned or evicted cache costs on one token sequence: ``evaluate_kv`` -> ``KVResult``.

Perplexity under teacher forcing with the pruned cache and next-token agreement with the dense full
forward (over the positions after the prompt), each layer's and head's attention-output error against the
dense forward, the cache's bytes per layout at the end, and greedy generation dense against pruned.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..display import Card, Shown, fmt, percent
from ..models.base import LoadedModel
from .config import KVConfig
from .loop import cache_bytes, dense_reference, greedy_generate, run_kv
from .score import KVRecorder

__all__ = ["KVResult", "attention_errors", "evaluate_kv"]


def attention_errors(pruned: torch.Tensor, dense: torch.Tensor) -> list[float]:
    """Relative Frobenius error of each head: ``||O_pruned - O_dense||_F / ||O_dense||_F`` over positions.

    Args:
        pruned: ``[batch, heads, positions, D]`` attention outputs with the pruned cache.
        dense: the same positions with the dense model.

    Returns:
        One number per head (0 where both are exactly equal; ``inf`` where the dense output is 0 and the
        pruned one is not).
    """
    if pruned.shape != dense.shape:
        raise ValueError(f"attention outputs differ in shape: {tuple(pruned.shape)} vs {tuple(dense.shape)}")
    heads = pruned.shape[1]
    diff = (pruned.double() - dense.double()).transpose(0, 1).reshape(heads, -1).norm(dim=-1)
    ref = dense.double().transpose(0, 1).reshape(heads, -1).norm(dim=-1)
    out = []
    for d, r in zip(diff.tolist(), ref.tolist()):
        out.append(0.0 if d == 0 else (d / r if r > 0 else math.inf))
    return out


@dataclass(repr=False)
class KVResult(Shown):
    """``evaluate_kv``'s measurements (one run); Jupyter shows a card, ``repr`` one line."""

    config: KVConfig
    perplexity: float
    dense_perplexity: float
    agreement: float
    """Fraction of positions after the prompt where the pruned and the dense argmax agree."""
    generated: list[int]
    dense_generated: list[int]
    bytes: dict[str, int]
    """Cache bytes at the end of the teacher-forced run (``cache_bytes``: full, dense, bitmap, csr)."""
    kept_fraction: float
    """Nonzero cache entries (of tokens not evicted) over all cache entries at the end."""
    attention_error: list[list[float]] = field(default_factory=list)
    """``[layer][head]``: relative Frobenius error of the head's attention output with the pruned cache
    against the dense forward, over the scored positions (``prompt - 1 .. tokens - 2``; errors of earlier
    layers propagate into later ones, as in the model)."""
    positions: int = 0
    """Positions scored (perplexity, agreement, attention error)."""

    def layer_errors(self) -> list[float]:
        """Mean attention-output error over the heads of each layer."""
        return [sum(row) / len(row) if row else math.nan for row in self.attention_error]

    def summary_card(self) -> Card:
        """Quality against dense, kept entries and bytes, and one row per layer (Jupyter shows it as HTML)."""
        cfg = self.config
        if cfg.method == "mustafar":
            title = (f"KVResult: mustafar {cfg.axis} {cfg.score}, K {percent(cfg.k_sparsity, 0)} "
                     f"V {percent(cfg.v_sparsity, 0)}, window {cfg.residual_length}")
        elif cfg.method == "streaming":
            title = f"KVResult: streaming, sinks {cfg.sinks} + window {cfg.window}"
        else:
            title = f"KVResult: h2o, heavy {cfg.heavy} + recent {cfg.recent}"
        head = {"perplexity": f"{fmt(self.perplexity)} (dense {fmt(self.dense_perplexity)})",
                "next-token agreement": percent(self.agreement),
                "kept entries": percent(self.kept_fraction),
                "bytes (bitmap / dense)": f"{fmt(self.bytes.get('bitmap', 0))} / {fmt(self.bytes.get('full', 0))}"}
        if self.generated:
            same = sum(a == b for a, b in zip(self.generated, self.dense_generated))
            head["greedy tokens as dense"] = f"{same} / {len(self.dense_generated)}"
        rows = [{"layer": i, "mean head error": fmt(sum(r) / len(r)) if r else "—",
                 "max head error": fmt(max(r)) if r else "—"} for i, r in enumerate(self.attention_error)]
        note = f"{self.positions} positions scored; attention-output error relative to the dense forward"
        return Card(title, head, rows, note)


def evaluate_kv(model: LoadedModel | nn.Module, ids: torch.Tensor, config: KVConfig, *, prompt: int = 32,
                new_tokens: int = 16, generation_prompt: int | None = None,
                dense: tuple[torch.Tensor, KVRecorder] | None = None) -> KVResult:
    """Teacher-forced perplexity, next-token agreement, attention-output error and greedy generation with
    the cache under ``config``.

    Args:
        model: a causal LM (``sparsekit.load_model("lm:small")`` or an ``hf:`` GPT-2/LLaMA).
        ids: one token sequence ``[tokens]``; the first ``prompt`` are the prefill.
        config: the pruning or eviction setting.
        prompt: prefill length; perplexity, agreement and attention error cover the later positions.
        new_tokens: greedy tokens generated, dense and pruned.
        generation_prompt: the first tokens of ``ids`` that greedy generation starts from (default
            ``prompt``); a longer one makes the eviction windows bite during generation.
        dense: ``dense_reference(model, ids)`` computed once, to reuse across configs on the same text.

    Returns:
        A ``KVResult``.
    """
    trace = run_kv(model, ids, config, prompt)
    ids = torch.as_tensor(ids).reshape(-1).long()
    dense_all, dense_rec = dense_reference(model, ids) if dense is None else dense
    targets = ids[prompt:]
    dense_logits = dense_all[prompt - 1:-1]
    errors = []
    for layer in range(dense_rec.recorded_layers):
        pruned_out = trace.recorder.head_outputs(layer)[..., prompt - 1:, :]
        dense_out = dense_rec.head_outputs(layer)[..., prompt - 1:-1, :]
        errors.append(attention_errors(pruned_out, dense_out))
    cache: Any = trace.cache
    nbytes = cache_bytes(cache, config, trace.pruner.evicted)
    total = sum(x.numel() for layer in cache.layers for x in (layer.keys, layer.values))
    nonzero = sum(int(torch.count_nonzero(x)) for layer in cache.layers for x in (layer.keys, layer.values))
    ppl = math.exp(float(F.cross_entropy(trace.logits, targets)))
    dense_ppl = math.exp(float(F.cross_entropy(dense_logits, targets)))
    agree = float((trace.logits.argmax(-1) == dense_logits.argmax(-1)).float().mean())
    gen_prompt = prompt if generation_prompt is None else generation_prompt
    if not 1 <= gen_prompt <= ids.numel():
        raise ValueError(f"generation_prompt must be 1 to {ids.numel()} tokens, got {gen_prompt}")
    head = ids[:gen_prompt]
    return KVResult(
        config=config, perplexity=ppl, dense_perplexity=dense_ppl, agreement=agree,
        generated=greedy_generate(model, head, new_tokens, config) if new_tokens else [],
        dense_generated=greedy_generate(model, head, new_tokens) if new_tokens else [],
        bytes=nbytes, kept_fraction=nonzero / total if total else 0.0,
        attention_error=errors, positions=int(targets.numel()),
    )

"""Every KV method at several sparsities over several texts: ``kv_sweep`` -> rows for a table or the
quality-against-bytes figure (``sparsekit.viz.kv_quality_bytes_figure``).

Methods (``SWEEP_METHODS``): ``mustafar-token`` / ``mustafar-channel`` (magnitude, K and V at the row's
sparsity), ``mustafar-token-output`` / ``mustafar-channel-output`` (Mustafar's output-aware score), and the
eviction baselines ``streaming`` (4 sinks + a recent window) and ``h2o`` (heavy hitters + as many recent
tokens, half and half), sized so that at the end of the text they keep as many entries as Mustafar does at
that sparsity: ``residual + (tokens_cached - residual) * kept_count(D, s) / D`` tokens (rounded).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..models.base import LoadedModel
from ..progress import ProgressArg, reporter
from .config import KVConfig
from .evaluate import evaluate_kv
from .loop import causal_module, dense_reference
from .masks import kept_count

__all__ = ["DEFAULT_SPARSITIES", "SWEEP_METHODS", "kv_sweep", "sweep_config"]

SWEEP_METHODS = ("mustafar-token", "mustafar-channel", "mustafar-token-output", "mustafar-channel-output",
                 "streaming", "h2o")
DEFAULT_SPARSITIES = (0.3, 0.5, 0.7, 0.9)
DEFAULT_TEXTS = 8
"""Held-out rows of ``lm:small`` used when ``texts`` is not given."""
STREAMING_SINKS = 4


def sweep_config(method: str, sparsity: float, *, tokens_cached: int, head_dim: int, residual: int = 16) -> KVConfig:
    """The ``KVConfig`` of one sweep cell (see the module docstring for how eviction is sized).

    Args:
        method: one of ``SWEEP_METHODS``.
        sparsity: in [0, 1).
        tokens_cached: tokens in the cache at the end of the text (its length minus one).
        head_dim: ``D``, entries per head vector.
        residual: Mustafar's dense window.

    Returns:
        The config.
    """
    if method not in SWEEP_METHODS:
        raise ValueError(f"unknown KV sweep method {method!r}; choose from {', '.join(SWEEP_METHODS)}")
    if method.startswith("mustafar"):
        parts = method.split("-")
        return KVConfig(k_sparsity=sparsity, v_sparsity=sparsity, axis=parts[1],
                        score="output" if len(parts) > 2 else "magnitude", residual_length=residual)
    kept = kept_count(head_dim, sparsity)
    tokens = max(2, round(residual + max(0, tokens_cached - residual) * kept / head_dim))
    if method == "streaming":
        sinks = min(STREAMING_SINKS, tokens - 1)
        return KVConfig(method="streaming", sinks=sinks, window=tokens - sinks)
    return KVConfig(method="h2o", heavy=tokens - tokens // 2, recent=tokens // 2)


def _texts(loaded: LoadedModel, texts: Any) -> list[torch.Tensor]:
    if texts is None or isinstance(texts, int):
        if getattr(loaded, "spec", "") != "lm:small":
            raise ValueError("give texts= (strings or token ids) for a model other than lm:small; "
                             "its held-out rows are the default only for lm:small")
        from ..models.lm_small import heldout_rows, lm_small_heldout

        rows = heldout_rows(loaded.tokenizer, lm_small_heldout())
        n = DEFAULT_TEXTS if texts is None else int(texts)
        full = rows["attention_mask"].all(dim=1)  # the last row is padded: left out
        ids = rows["input_ids"][full]
        if not 1 <= n <= len(ids):
            raise ValueError(f"lm:small has {len(ids)} full held-out rows; asked for {n}")
        return list(ids[:n])
    out = []
    for text in texts:
        if isinstance(text, str):
            if loaded.tokenizer is None:
                raise ValueError("text given as a string but the model has no tokenizer")
            out.append(torch.tensor(loaded.tokenizer(text, verbose=False)["input_ids"]))
        else:
            out.append(torch.as_tensor(text).reshape(-1).long())
    if not out:
        raise ValueError("texts is empty")
    return out


def kv_sweep(loaded: LoadedModel, methods: Sequence[str] = SWEEP_METHODS,
             sparsities: Sequence[float] = DEFAULT_SPARSITIES, texts: Any = None, progress: ProgressArg = True,
             *, prompt: int = 32, residual: int = 16) -> list[dict[str, Any]]:
    """Perplexity, next-token agreement and cache bytes for every method x sparsity x text.

    Args:
        loaded: a causal LM.
        methods: from ``SWEEP_METHODS``.
        sparsities: each in [0, 1).
        texts: None (the first 8 full held-out rows of ``lm:small``), a number of those rows, or a sequence of
            strings / token-id sequences (each longer than ``prompt``).
        progress: True (a bar), False/None, or ``progress(fraction, message)``.
        prompt: prefill tokens; quality is scored on the later positions.
        residual: Mustafar's dense window (``residual_length``).

    Returns:
        One dict per cell, in method, sparsity, text order: ``method``, ``sparsity``, ``text`` (index),
        ``tokens``, ``perplexity``, ``dense_perplexity``, ``agreement``, ``kept_fraction``, ``bytes_dense``
        (the unpruned cache), ``bytes_bitmap``, ``bytes_csr``, ``bytes_kept_dense`` (kept tokens stored dense),
        ``bytes`` (the method's own layout: bitmap for Mustafar, kept tokens dense for eviction),
        ``attention_error`` (the mean over layers and heads of ``KVResult.attention_error``) and ``config``
        (the ``KVConfig`` as JSON).
    """
    module = causal_module(loaded)
    for m in methods:
        if m not in SWEEP_METHODS:
            raise ValueError(f"unknown KV sweep method {m!r}; choose from {', '.join(SWEEP_METHODS)}")
    for s in sparsities:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 <= s < 1.0:
            raise ValueError(f"each sparsity must be a number in [0, 1), got {s!r}")
    ids_list = _texts(loaded, texts)
    for i, ids in enumerate(ids_list):
        if ids.numel() <= prompt:
            raise ValueError(f"text {i} has {ids.numel()} tokens; it needs more than the prompt ({prompt})")
    config: Any = module.config
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
    rows: list[dict[str, Any]] = []
    total = len(methods) * len(sparsities) * len(ids_list)
    dense = {}
    with reporter(progress, "KV sweep") as report:
        for method in methods:
            for s in sparsities:
                for t, ids in enumerate(ids_list):
                    if report is not None:
                        report(len(rows) / total, f"{method} s={s:g} text {t + 1}/{len(ids_list)}")
                    cfg = sweep_config(method, float(s), tokens_cached=ids.numel() - 1, head_dim=head_dim,
                                       residual=residual)
                    if t not in dense:
                        dense[t] = dense_reference(loaded, ids)
                    r = evaluate_kv(loaded, ids, cfg, prompt=prompt, new_tokens=0, dense=dense[t])
                    own = r.bytes["bitmap"] if method.startswith("mustafar") else r.bytes["dense"]
                    rows.append({
                        "method": method, "sparsity": float(s), "text": t, "tokens": int(ids.numel()),
                        "perplexity": r.perplexity, "dense_perplexity": r.dense_perplexity,
                        "agreement": r.agreement, "kept_fraction": r.kept_fraction,
                        "bytes_dense": r.bytes["full"], "bytes_bitmap": r.bytes["bitmap"],
                        "bytes_csr": r.bytes["csr"], "bytes_kept_dense": r.bytes["dense"], "bytes": own,
                        "attention_error": sum(map(sum, r.attention_error)) / max(1, sum(map(len, r.attention_error))),
                        "config": cfg.to_json(),
                    })
        if report is not None:
            report(1.0, "done")
    return rows

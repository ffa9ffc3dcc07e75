"""Run a model with an attention pattern applied inside its attention, and measure its quality.

``SparseAttentionModel(loaded, plan)`` wraps a private copy of the model (shared weights, nothing
of the loaded model changes) and, in every forward, masks each layer's attention scores with the
plan's pattern for each head before the softmax: dropped keys get the most negative finite score,
so the softmax renormalises over the kept keys, and a query left with no kept key outputs zeros
(as FlexAttention does). Heads the plan leaves dense run exactly as before.

Patterns are positional, so each sequence of a padded batch gets the pattern of its own length
over its own tokens; data-dependent patterns (vertical-slash, block top-k) are estimated online
from the current layer's dense scores or Q/K of that sequence, the way MInference estimates
them during prefill. The density each head actually had is counted over the pairs the model
allows (``realised_density``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, TypeAlias

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.base import LoadedModel
from ..models.digits_nets import Attention as DigitsAttention
from .masks import PatternContext, materialize_heads
from .session import Session, _digits_attention, active, private_copy
from .specs import AttentionPlan, PatternSpec, layer_mask, static_mask

_AttentionPreHook: TypeAlias = Callable[[DigitsAttention, tuple[Tensor, ...]], None]
_ProjPreHook: TypeAlias = Callable[[nn.Linear, tuple[Tensor, ...]], "tuple[Tensor] | None"]
_ValueHook: TypeAlias = Callable[[nn.Linear, tuple[Tensor, ...], Tensor], None]


def model_shape(loaded: LoadedModel) -> tuple[int, int]:
    """``(attention layers, heads per layer)`` of a model whose attention sparsekit can run.

    Args:
        loaded: the model.

    Returns:
        The two counts.
    """
    found = _digits_attention(loaded.module)
    if found:
        return len(found), found[0][1].n_heads
    config = getattr(loaded.module, "config", None)
    layers = getattr(config, "num_hidden_layers", None)
    heads = getattr(config, "num_attention_heads", None)
    if not isinstance(layers, int) or not isinstance(heads, int):
        raise ValueError(f"cannot tell how many attention layers and heads {loaded.name} has")
    return layers, heads


class SparseAttentionModel(nn.Module):
    """The model with a plan applied inside its attention; call it like the original.

    Attributes:
        plan: the plan applied.
        recorded: with ``record=True``, ``recorded[layer] = (probs [b, h, q, k], value [b, h, k, d])``
            of the latest forward (probabilities after masking).
    """

    def __init__(self, loaded: LoadedModel, plan: AttentionPlan, *, record: bool = False) -> None:
        super().__init__()
        n_layers, n_heads = model_shape(loaded)
        if (plan.n_layers, plan.n_heads) != (n_layers, n_heads):
            raise ValueError(
                f"the plan covers {plan.n_layers} layers x {plan.n_heads} heads; {loaded.name} has "
                f"{n_layers} x {n_heads}"
            )
        self.inner = private_copy(loaded)
        self.plan = plan
        self.causal = loaded.kind == "causal-lm"
        self.record = record
        self.recorded: dict[int, tuple[Tensor, Tensor]] = {}
        self._density_sum = torch.zeros(n_layers, n_heads, dtype=torch.float64)
        self._density_count = torch.zeros(n_layers, dtype=torch.float64)
        self._static: dict[tuple[int, int], Tensor] = {}
        self._keep_rows: Tensor | None = None
        self._value: Tensor | None = None
        self._digits = _digits_attention(self.inner)
        if self._digits:
            self._hook_digits()

    # -- masks -------------------------------------------------------------------------------

    def _group_mask(self, layer: int, scores: Tensor, query: Tensor, key: Tensor) -> Tensor:
        """Bool ``[r, h, n, n]`` for ``r`` sequences of the same length ``n`` (no padding)."""
        r, h, n, _ = scores.shape
        groups = self.plan.groups(layer)
        if not any(spec.needs for spec in groups):
            cached = self._static.get((layer, n))
            if cached is None:
                cached = self._static[(layer, n)] = layer_mask(self.plan, layer, PatternContext(n, n, self.causal),
                                                               n_heads=h)
            return cached.expand(r, h, n, n)
        out = torch.ones(r, h, n, n, dtype=torch.bool)
        for spec, heads in groups.items():
            if not spec.needs:
                out[:, heads] = static_mask(spec, n, n, self.causal)
                continue
            # Sequences x heads are independent estimates: build them all in one call.
            k = len(heads)
            ctx = PatternContext(n, n, self.causal, probs=F.softmax(scores[:, heads].float(), dim=-1).flatten(0, 1),
                                 query=query[:, heads].float().flatten(0, 1), key=key[:, heads].float().flatten(0, 1))
            out[:, heads] = materialize_heads(spec.build(ctx), r * k, n, n).view(r, k, n, n)
        return out

    def _count(self, layer: int, mask: Tensor) -> None:
        n = mask.shape[-1]
        allowed = torch.ones(n, n, dtype=torch.bool)
        if self.causal:
            allowed = allowed.tril()
        self._density_sum[layer] += ((mask & allowed).sum((-2, -1)).double() / allowed.sum()).sum(0)
        self._density_count[layer] += mask.shape[0]

    def _layer_mask(self, layer: int, scores: Tensor, query: Tensor, key: Tensor, valid: Tensor | None) -> Tensor:
        """Bool ``[b, h, q, k]`` for one layer, each sequence masked over its own tokens."""
        b, h, lq, lk = scores.shape
        if valid is None:
            mask = self._group_mask(layer, scores, query, key)
            self._count(layer, mask)
            return mask
        out = torch.ones(b, h, lq, lk, dtype=torch.bool)
        lengths = valid.sum(1)
        prefix = [bool(valid[row, : int(lengths[row])].all()) for row in range(b)]
        by_len: dict[int, list[int]] = {}
        for row in range(b):
            if prefix[row] and lengths[row] > 0:
                by_len.setdefault(int(lengths[row]), []).append(row)
        for n, rows in by_len.items():  # right padding: each sequence is a prefix
            idx = torch.tensor(rows)
            m = self._group_mask(layer, scores[idx, :, :n, :n], query[idx, :, :n], key[idx, :, :n])
            out[idx, :, :n, :n] = m
            self._count(layer, m)
        for row in range(b):
            if prefix[row] or lengths[row] == 0:
                continue
            # Padding inside or on the left: gather the real tokens, scatter the mask back.
            pos = valid[row].nonzero().squeeze(1)
            s = scores[row : row + 1][:, :, pos][:, :, :, pos]
            m = self._group_mask(layer, s, query[row : row + 1][:, :, pos], key[row : row + 1][:, :, pos])
            out[row][:, pos.unsqueeze(1), pos.unsqueeze(0)] = m[0]
            self._count(layer, m)
        return out

    # -- Hugging Face path -------------------------------------------------------------------

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self._digits:
            return self.inner(*args, **kwargs)
        valid = kwargs.get("attention_mask")
        if valid is None and args and isinstance(args[0], Tensor) and len(args) > 1:
            valid = args[1]
        valid = None if valid is None else valid.bool()
        session = _MaskSession(self, valid)
        with active(session):
            out = self.inner(*args, **kwargs)
        if session.n_layers != self.plan.n_layers:
            raise ValueError(
                f"the model ran {session.n_layers} attention layers through sparsekit's attention, the plan has "
                f"{self.plan.n_layers}; this architecture cannot take attention patterns"
            )
        return out

    # -- digits ViT path ---------------------------------------------------------------------

    def _hook_digits(self) -> None:
        for layer, (_, attn) in enumerate(self._digits):
            if not self.plan.groups(layer) and not self.record:
                continue
            attn.register_forward_pre_hook(self._digits_pre(layer, attn))
            attn.proj.register_forward_pre_hook(self._digits_proj(layer, attn))
            if self.record:
                attn.record_attention = True
                attn.v.register_forward_hook(self._digits_value(layer, attn))

    def _digits_pre(self, layer: int, attn: DigitsAttention) -> _AttentionPreHook:
        def hook(mod: DigitsAttention, args: tuple[Tensor, ...]) -> None:
            self._keep_rows = None
            if not self.plan.groups(layer):
                mod.score_mask = None
                return None
            x = args[0]
            b, t, _ = x.shape

            def heads(y: Tensor) -> Tensor:
                return y.view(b, t, mod.n_heads, mod.head_dim).transpose(1, 2)

            q, k = heads(mod.q(x)), heads(mod.k(x))
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(mod.head_dim)
            mask = self._layer_mask(layer, scores, q, k, None)
            mod.score_mask = mask
            self._keep_rows = mask.any(-1)
            return None

        return hook

    def _digits_proj(self, layer: int, attn: DigitsAttention) -> _ProjPreHook:
        def hook(mod: nn.Linear, args: tuple[Tensor, ...]) -> tuple[Tensor] | None:
            keep = self._keep_rows
            if self.record:
                # The attention module recorded its probabilities and the value hook its output
                # in this same forward, before the projection runs.
                probs, value = attn.last_attention, self._value
                assert probs is not None and value is not None
                if keep is not None:
                    probs = probs * keep.unsqueeze(-1)
                self.recorded[layer] = (probs, value)
            if keep is None or bool(keep.all()):
                return None
            x = args[0]
            b, t, c = x.shape
            # [b, h, t] -> [b, t, h * head_dim]: zero the heads' slices of rows with no kept key.
            scale = keep.transpose(1, 2).repeat_interleave(attn.head_dim, dim=2).to(x.dtype)
            return (x * scale,)

        return hook

    def _digits_value(self, layer: int, attn: DigitsAttention) -> _ValueHook:
        def hook(mod: nn.Linear, args: tuple[Tensor, ...], out: Tensor) -> None:
            b, t, _ = out.shape
            self._value = out.view(b, t, attn.n_heads, attn.head_dim).transpose(1, 2)

        return hook

    # -- reports -----------------------------------------------------------------------------

    def realised_density(self) -> Tensor:
        """Mean density per layer and head over every sequence run so far (dense heads: 1;
        layers never run: NaN).

        Returns:
            float ``[layers, heads]``.
        """
        count = self._density_count.clamp(min=1).unsqueeze(1)
        out = (self._density_sum / count).float()
        for layer in range(self.plan.n_layers):
            if self._density_count[layer] == 0:
                out[layer] = 1.0 if not self.plan.groups(layer) else math.nan
        return out


class _MaskSession(Session):
    def __init__(self, owner: SparseAttentionModel, valid: Tensor | None) -> None:
        super().__init__()
        self.owner = owner
        self.valid = valid

    def before_softmax(self, layer: int, scores: Tensor, query: Tensor, key: Tensor,
                       allowed: Tensor | None) -> tuple[Tensor, Tensor | None]:
        owner = self.owner
        if layer >= owner.plan.n_layers:
            raise ValueError(f"the model has more attention layers than the plan's {owner.plan.n_layers}")
        if scores.shape[1] != owner.plan.n_heads:
            raise ValueError(f"layer {layer} has {scores.shape[1]} heads; the plan has {owner.plan.n_heads}")
        if not owner.plan.groups(layer):
            return scores, None
        valid = self.valid
        if valid is not None and valid.shape[-1] != scores.shape[-1]:
            valid = None  # a cache or offset changed the key length: treat every key as real
        mask = owner._layer_mask(layer, scores, query, key, valid)
        kept = mask if allowed is None else mask & allowed
        return scores.masked_fill(~mask, torch.finfo(scores.dtype).min), kept.any(-1)

    def after_softmax(self, layer: int, scores: Tensor, probs: Tensor, query: Tensor, key: Tensor,
                      value: Tensor, allowed: Tensor | None) -> None:
        if self.owner.record:
            self.owner.recorded[layer] = (probs.detach(), value.detach())


def apply_attention(loaded: LoadedModel, pattern: PatternSpec | AttentionPlan | None, *,
                    layers: list[int] | None = None, heads: list[int] | None = None) -> SparseAttentionModel:
    """The model with a pattern inside its attention (all layers and heads, or the chosen ones).

    Args:
        loaded: the model (never modified).
        pattern: a spec (applied to the chosen layers/heads), a full per-head plan, or None
            (dense: the wrapper then reproduces the model).
        layers: layer indices for a spec (default all).
        heads: head indices for a spec (default all).

    Returns:
        A module to call like ``loaded.module`` (e.g. ``loaded.quality(model)``).
    """
    n_layers, n_heads = model_shape(loaded)
    if isinstance(pattern, AttentionPlan):
        if layers is not None or heads is not None:
            raise ValueError("layers/heads select where a single pattern goes; a plan already says it per head")
        plan = pattern
    else:
        plan = AttentionPlan.uniform(pattern, n_layers, n_heads, layers=layers, heads=heads)
    return SparseAttentionModel(loaded, plan)


@dataclass
class AttentionQuality:
    """End-to-end quality of a model with an attention plan, next to dense."""

    dense: dict[str, float]
    """The model's quality metric, dense."""
    sparse: dict[str, float]
    """The same metric with the plan applied."""
    density: Tensor
    """float ``[layers, heads]``: mean density each head had on the evaluation inputs."""
    label: str
    """What was applied."""

    @property
    def mean_density(self) -> float:
        """Mean over all heads of the realised density."""
        return float(torch.nan_to_num(self.density, nan=1.0).mean())

    def rows(self, metric_names: dict[str, str] | None = None) -> list[dict[str, str | float]]:
        """One dict per metric: metric, dense, sparse, change."""
        names = metric_names or {}
        return [{"metric": names.get(k, k), "dense": self.dense[k], "sparse": self.sparse[k],
                 "change": self.sparse[k] - self.dense[k]} for k in self.sparse]


def attention_quality(loaded: LoadedModel, pattern: PatternSpec | AttentionPlan | None, *,
                      layers: list[int] | None = None, heads: list[int] | None = None) -> AttentionQuality:
    """The model's quality metric (MiniLM fidelity, ViT accuracy, ...) with a pattern applied
    inside its attention, next to dense.

    Args:
        loaded: the model.
        pattern: a spec for the chosen layers/heads, or a per-head plan.
        layers: layer indices for a spec (default all).
        heads: head indices for a spec (default all).

    Returns:
        Dense and sparse quality and the density each head had on the evaluation inputs.
    """
    model = apply_attention(loaded, pattern, layers=layers, heads=heads)
    sparse = loaded.quality(model)
    if isinstance(pattern, AttentionPlan):
        label = "per-head plan"
    elif pattern is None:
        label = "dense"
    else:
        label = pattern.label
    return AttentionQuality(dense=loaded.quality(), sparse=sparse, density=model.realised_density(), label=label)

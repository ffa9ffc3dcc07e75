"""Serialisable pattern choices: ``PatternSpec`` (a registered pattern with explicit parameters,
or an and/or composition of specs) and ``AttentionPlan`` (a spec, or dense, per layer and head),
both with a JSON round trip for cache keys, downloads and URLs; and the boolean masks they give.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Mapping

import torch
from torch import Tensor

from .. import serial
from .masks import PATTERNS, MaskMod, PatternContext, and_masks, materialize, materialize_heads, or_masks

COMBINATORS = ("and", "or")
"""How specs combine: ``"and"`` keeps the intersection, ``"or"`` the union."""


@dataclass(frozen=True)
class PatternSpec:
    """A pattern with explicit parameters, or an and/or composition of specs. Hashable and
    JSON-serialisable (cache keys, downloads); ``build`` turns it into a ``mask_mod``."""

    name: str
    """A ``PATTERNS`` key, or ``"and"`` / ``"or"``."""
    params: tuple[tuple[str, int | bool | str], ...] = ()
    """``(name, value)`` for every parameter of the pattern, in registry order."""
    parts: tuple["PatternSpec", ...] = ()
    """The combined specs of an ``"and"`` / ``"or"``."""

    @staticmethod
    def of(name: str, **params: Any) -> "PatternSpec":
        """A spec with defaults filled in and every value checked.

        Args:
            name: a ``PATTERNS`` key.
            **params: parameter values (others take their defaults).

        Returns:
            The spec.

        Raises:
            ValueError: unknown pattern or parameter, or a value out of bounds.
        """
        info = PATTERNS.get(name)
        if info is None:
            raise ValueError(f"unknown attention pattern {name!r}; choose one of {', '.join(PATTERNS)}")
        return PatternSpec(name, info.values(params))

    @staticmethod
    def combine(op: str, *parts: "PatternSpec") -> "PatternSpec":
        """``op`` = ``"and"`` (intersection) or ``"or"`` (union) of at least two specs."""
        if op not in COMBINATORS:
            raise ValueError(f"combine with 'and' or 'or', got {op!r}")
        if len(parts) < 2:
            raise ValueError("combining needs at least two patterns")
        return PatternSpec(op, (), tuple(parts))

    def __and__(self, other: "PatternSpec") -> "PatternSpec":
        return PatternSpec.combine("and", self, other)

    def __or__(self, other: "PatternSpec") -> "PatternSpec":
        return PatternSpec.combine("or", self, other)

    def param(self, name: str) -> int | bool | str:
        """The value of parameter ``name`` (``KeyError`` if the pattern has none)."""
        for key, value in self.params:
            if key == name:
                return value
        raise KeyError(f"{self.name} has no parameter {name!r}")

    @property
    def needs(self) -> frozenset[str]:
        """Data a context must carry to build this spec (``"probs"``, ``"qk"``)."""
        if self.parts:
            return frozenset().union(*(p.needs for p in self.parts))
        need = PATTERNS[self.name].needs
        return frozenset({need}) if need else frozenset()

    @property
    def label(self) -> str:
        """Short text, e.g. ``sliding_window(window=8)`` or ``(a) | (b)``."""
        if self.parts:
            sym = " & " if self.name == "and" else " | "
            return sym.join(f"({p.label})" if p.parts else p.label for p in self.parts)
        defaults = {p.name: p.default for p in PATTERNS[self.name].params}
        # Flags at their default (causal=False, part='both') would only clutter the label.
        shown = [f"{k}={v}" for k, v in self.params if not (isinstance(v, (bool, str)) and v == defaults[k])
                 or k == "columns"]
        return f"{self.name}({', '.join(shown)})"

    def validate(self, q_len: int, kv_len: int | None = None) -> None:
        """Raise ``ValueError`` when a length-like parameter does not fit a sequence (e.g. a window
        larger than the sequence), naming the largest value that does.

        Args:
            q_len: number of queries.
            kv_len: number of keys (default ``q_len``).
        """
        kv_len = q_len if kv_len is None else kv_len
        if q_len < 1 or kv_len < 1:
            raise ValueError("the sequence is empty")
        if self.parts:
            for p in self.parts:
                p.validate(q_len, kv_len)
            return
        PATTERNS[self.name].check(q_len, kv_len, dict(self.params))

    def build(self, ctx: PatternContext, *, strict: bool = False) -> MaskMod:
        """The ``mask_mod`` of this spec for a context.

        Args:
            ctx: lengths, and the attention or Q/K for data-dependent patterns.
            strict: first ``validate`` the parameters against the lengths (otherwise a window
                longer than the sequence simply covers all of it).

        Returns:
            The ``mask_mod``.
        """
        if strict:
            self.validate(ctx.q_len, ctx.kv_len)
        if self.parts:
            mods = [p.build(ctx) for p in self.parts]
            return and_masks(*mods) if self.name == "and" else or_masks(*mods)
        return PATTERNS[self.name].build(ctx, dict(self.params))

    def to_dict(self) -> dict[str, Any]:
        """``{"name", "params"}`` or ``{"name": "and"|"or", "parts": [...]}`` (JSON-ready)."""
        if self.parts:
            return {"name": self.name, "parts": [p.to_dict() for p in self.parts]}
        return {"name": self.name, "params": dict(self.params)}

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> "PatternSpec":
        """Inverse of ``to_dict``; every value is checked as by ``PatternSpec.of``."""
        if not isinstance(data, Mapping) or "name" not in data:
            raise ValueError("a pattern must be an object with a 'name'")
        serial.check_keys(data, ("name", "params", "parts"), what="attention pattern")
        if data["name"] in COMBINATORS:
            return PatternSpec.combine(data["name"], *(PatternSpec.from_dict(p) for p in data.get("parts", [])))
        return PatternSpec.of(data["name"], **dict(data.get("params", {})))

    def to_json(self) -> str:
        """``to_dict`` as canonical JSON (sorted keys): a stable cache key."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> "PatternSpec":
        """Inverse of ``to_json``."""
        return PatternSpec.from_dict(json.loads(text))


@lru_cache(maxsize=256)
def static_mask(spec: PatternSpec, q_len: int, kv_len: int, causal: bool = False) -> Tensor:
    """``materialize`` of a static (data-free) spec, cached: the same windows are asked for again
    and again (every layer, every head, every sentence of the same length).

    Args:
        spec: a spec with no data needs.
        q_len: number of queries.
        kv_len: number of keys.
        causal: the model is a decoder (passed to the context; static patterns ignore it).

    Returns:
        Bool ``[q_len, kv_len]`` (shared: do not modify it).
    """
    if spec.needs:
        raise ValueError(f"{spec.label} depends on the attention; build it from a context with data")
    return materialize(spec.build(PatternContext(q_len, kv_len, causal)), q_len, kv_len)


# ---------------------------------------------------------------------------------------------
# Plans: a pattern (or dense) per layer and head


@dataclass(frozen=True)
class AttentionPlan:
    """Which pattern each attention head uses; ``None`` leaves a head dense."""

    heads: tuple[tuple[PatternSpec | None, ...], ...]
    """``heads[layer][head]``."""

    @staticmethod
    def uniform(
        spec: PatternSpec | None,
        n_layers: int,
        n_heads: int,
        *,
        layers: Iterable[int] | None = None,
        heads: Iterable[int] | None = None,
    ) -> "AttentionPlan":
        """The same spec on the chosen layers and heads (all by default), dense elsewhere.

        Args:
            spec: the pattern (None: everything dense).
            n_layers: attention layers of the model.
            n_heads: heads per layer.
            layers: layer indices to sparsify (default all).
            heads: head indices to sparsify in those layers (default all).

        Returns:
            The plan.
        """
        layer_set = set(range(n_layers)) if layers is None else set(layers)
        head_set = set(range(n_heads)) if heads is None else set(heads)
        bad = sorted(i for i in layer_set if not 0 <= i < n_layers)
        if bad:
            raise ValueError(f"layers {bad} do not exist (the model has {n_layers})")
        bad = sorted(i for i in head_set if not 0 <= i < n_heads)
        if bad:
            raise ValueError(f"heads {bad} do not exist (each layer has {n_heads})")
        return AttentionPlan(tuple(
            tuple(spec if (layer in layer_set and head in head_set) else None for head in range(n_heads))
            for layer in range(n_layers)
        ))

    @property
    def n_layers(self) -> int:
        """Layers covered."""
        return len(self.heads)

    @property
    def n_heads(self) -> int:
        """Heads per layer."""
        return len(self.heads[0]) if self.heads else 0

    def spec(self, layer: int, head: int) -> PatternSpec | None:
        """The spec of one head (None: dense)."""
        return self.heads[layer][head]

    def groups(self, layer: int) -> dict[PatternSpec, list[int]]:
        """Heads of one layer grouped by spec (dense heads left out)."""
        out: dict[PatternSpec, list[int]] = {}
        for head, spec in enumerate(self.heads[layer]):
            if spec is not None:
                out.setdefault(spec, []).append(head)
        return out

    @property
    def is_dense(self) -> bool:
        """No head has a pattern."""
        return all(s is None for row in self.heads for s in row)

    def labels(self) -> list[list[str]]:
        """``labels()[layer][head]``: the spec label, or ``"dense"``."""
        return [[s.label if s is not None else "dense" for s in row] for row in self.heads]

    def to_json(self) -> str:
        """``{"heads": [[spec dict or null, ...], ...]}`` as canonical JSON."""
        return json.dumps({"heads": [[s.to_dict() if s is not None else None for s in row] for row in self.heads]},
                          sort_keys=True)

    @staticmethod
    def from_json(text: str) -> "AttentionPlan":
        """Inverse of ``to_json`` (``ValueError`` for a malformed plan)."""
        data = json.loads(text)
        if isinstance(data, dict):
            serial.check_keys(data, ("heads",), what="attention plan")
        rows = data.get("heads") if isinstance(data, dict) else None
        if not isinstance(rows, list) or not rows or len({len(r) for r in rows}) != 1:
            raise ValueError("a plan needs 'heads': a non-empty list of equally long lists")
        return AttentionPlan(tuple(
            tuple(PatternSpec.from_dict(s) if s is not None else None for s in row) for row in rows
        ))


def layer_mask(
    plan: AttentionPlan, layer: int, ctx: PatternContext, *, n_heads: int | None = None, strict: bool = False
) -> Tensor:
    """The boolean mask of every head of one layer under a plan.

    Args:
        plan: the plan.
        layer: layer index.
        ctx: lengths and (for data-dependent specs) this layer's attention or Q/K, one entry per
            head.
        n_heads: heads (default ``plan.n_heads``).
        strict: validate every spec against the lengths first.

    Returns:
        Bool ``[heads, q_len, kv_len]``; dense heads are all True.
    """
    n_heads = plan.n_heads if n_heads is None else n_heads
    out = torch.ones(n_heads, ctx.q_len, ctx.kv_len, dtype=torch.bool)
    for spec, heads in plan.groups(layer).items():
        if strict:
            spec.validate(ctx.q_len, ctx.kv_len)
        if spec.needs:
            mask = materialize_heads(spec.build(ctx), n_heads, ctx.q_len, ctx.kv_len)[heads]
        else:
            mask = static_mask(spec, ctx.q_len, ctx.kv_len, ctx.causal)
        out[heads] = mask
    return out


__all__ = ["AttentionPlan", "COMBINATORS", "PatternSpec", "layer_mask", "static_mask"]

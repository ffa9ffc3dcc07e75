"""The units of the per-head search: one layer's numbers for every candidate, measured on the
calibration captures and kept in the disk cache as soon as they are done.

A search that is stopped (``stop``, Ctrl-C, Streamlit's Stop, a killed process) keeps every finished
layer; the same call run again reads them back and measures only the missing layers. The units are
keyed by the captures' content and the candidate list, not by the budget or the allocation: a search
with another budget over the same captures and families measures nothing again.

Each unit is JSON (float64 values written with ``repr``, so they read back bit for bit); an entry
that cannot be read or does not fit the search (another shape, values outside 0..1, NaN) is measured again.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from ..cache import get_cache, make_key, read_entry, tensor_digest
from .capture import AttentionCapture
from .metrics import density, recall, spec_masks
from .specs import PatternSpec

UNIT_VERSION = 1
"""Bump when a stored unit's contents or meaning change."""
SLACK = 1e-4
"""How far above 1 a stored recall may read (float32 rounding) before the unit counts as damaged."""
_FIELDS = ("scores", "probs", "query", "key", "value")


@dataclass(frozen=True)
class LayerUnit:
    """One measured layer: mean density and recall of every candidate at every head."""

    density: Tensor
    """float64 ``[candidates, heads]``."""
    recall: Tensor
    """float64 ``[candidates, heads]``."""
    seconds: float = 0.0
    """How long it took to measure (its share of a block of layers measured together)."""

    def to_json(self) -> str:
        return json.dumps({"density": self.density.tolist(), "recall": self.recall.tolist(),
                           "seconds": self.seconds})

    @classmethod
    def from_json(cls, text: Any) -> "LayerUnit":
        data = json.loads(text)
        dens = torch.tensor(data["density"], dtype=torch.float64)
        rec = torch.tensor(data["recall"], dtype=torch.float64)
        if dens.dim() != 2 or dens.shape != rec.shape:
            raise ValueError("a search unit holds two [candidates, heads] tables")
        for t in (dens, rec):
            # A recall summed in float32 can pass 1 by a rounding step; NaN fails both tests.
            if not bool(((t >= 0) & (t <= 1 + SLACK)).all()):
                raise ValueError("a search unit's densities and recalls lie in 0..1")
        return cls(dens, rec, float(data["seconds"]))


def search_key(captures: Sequence[AttentionCapture], specs: Sequence[PatternSpec]) -> str:
    """The key of a search's units: the captures' content (every tensor, the causal flag) and the candidates."""
    digest = tensor_digest(*(getattr(c, name) for c in captures for name in _FIELDS))
    return make_key("attention-search", UNIT_VERSION, digest, [bool(c.causal) for c in captures],
                    [s.to_json() for s in specs])


def unit_key(key: str, layer: int) -> str:
    """Where layer ``layer`` of the search keyed ``key`` is stored."""
    return make_key("attention-search-unit", UNIT_VERSION, key, layer)


def load_units(key: str, n_layers: int, n_candidates: int, n_heads: int) -> dict[int, LayerUnit]:
    """The stored layers of a search (layer -> unit); units of another shape read as missing."""
    out = {}
    for layer in range(n_layers):
        unit = read_entry(unit_key(key, layer), LayerUnit.from_json)
        if unit is not None and tuple(unit.density.shape) == (n_candidates, n_heads):
            out[layer] = unit
    return out


def save_unit(key: str, layer: int, unit: LayerUnit) -> None:
    """Store one measured layer (at once: a stop or a crash after this keeps it)."""
    get_cache()[unit_key(key, layer)] = unit.to_json()


def stack_by_length(captures: Sequence[AttentionCapture]) -> list[tuple[AttentionCapture, int]]:
    """Captures of equal length merged into one (inputs stacked along the layer axis), so each
    candidate is built once per length instead of once per input."""
    by_len: dict[int, list[AttentionCapture]] = {}
    for cap in captures:
        by_len.setdefault(cap.seq_len, []).append(cap)
    merged = []
    for group in by_len.values():
        first = group[0]
        scores, probs, query, key, value = (torch.cat([getattr(c, name) for c in group]) for name in _FIELDS)
        merged.append((AttentionCapture(scores, probs, query, key, value, first.tokens, first.causal,
                                        first.layer_names, first.model), len(group)))
    return merged


def _layers_of(merged: AttentionCapture, count: int, n_layers: int, layers: Sequence[int]) -> AttentionCapture:
    """The chosen layers of a merged capture (inputs stacked along the layer axis), stacked the same way."""
    if list(layers) == list(range(n_layers)):
        return merged
    idx = torch.tensor(list(layers))

    def pick(t: Tensor) -> Tensor:
        return t.view(count, n_layers, *t.shape[1:])[:, idx].flatten(0, 1)

    return AttentionCapture(pick(merged.scores), pick(merged.probs), pick(merged.query), pick(merged.key),
                            pick(merged.value), merged.tokens, merged.causal, [merged.layer_names[i] for i in layers],
                            merged.model)


def measure_layers(groups: Sequence[tuple[AttentionCapture, int]], specs: Sequence[PatternSpec],
                   layers: Sequence[int], n_layers: int, n_inputs: int) -> tuple[Tensor, Tensor]:
    """Mean density and recall of every candidate at every head of ``layers``.

    Every number is computed per head and per input and then summed over the inputs in their order, so
    a layer's numbers do not depend on which other layers are measured with it (bit for bit).

    Args:
        groups: ``stack_by_length`` of the captures.
        specs: the candidates.
        layers: which layers.
        n_layers: layers of the captures.
        n_inputs: how many captures ``groups`` holds.

    Returns:
        ``(density, recall)``, each float64 ``[candidates, len(layers), heads]``.
    """
    n_heads = groups[0][0].n_heads
    dens = torch.zeros(len(specs), len(layers), n_heads, dtype=torch.float64)
    rec = torch.zeros_like(dens)
    for merged, count in groups:
        part = _layers_of(merged, count, n_layers, layers)
        allowed = part.allowed
        for c, spec in enumerate(specs):
            mask = spec_masks(part, spec, strict=False)
            dens[c] += density(mask, allowed).view(count, len(layers), n_heads).sum(0)
            rec[c] += recall(part.probs, mask).double().view(count, len(layers), n_heads).sum(0)
    return dens / n_inputs, rec / n_inputs


def block_size(last: tuple[int, float] | None, target: float, remaining: int) -> int:
    """How many layers to measure together next: one first; then twice the last block while it took less
    than ``target`` seconds, half of it when it took over twice that, else as many again.

    Layers measured together share the per-call overhead of building each candidate (a block of four
    MiniLM layers took about 1.5 times one layer), so a search runs in a few blocks; a stop waits for the
    block under way, about ``target`` seconds at most twice over.

    Args:
        last: ``(layers, seconds)`` of the last block, None before the first.
        target: seconds a block should take.
        remaining: layers still to measure.
    """
    if last is None:
        return 1
    size, seconds = last
    if seconds < target:
        size *= 2
    elif seconds > 2 * target:
        size //= 2
    return max(1, min(remaining, size))


__all__ = ["LayerUnit", "UNIT_VERSION", "block_size", "load_units", "measure_layers", "save_unit", "search_key",
           "stack_by_length", "unit_key"]

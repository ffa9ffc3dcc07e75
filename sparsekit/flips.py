"""How restless a sparse topology is from one optimiser step to the next: flip rate and mask oscillation.

SAD (``sparsekit.sad``, ``sparsekit.topology``) compares two snapshots: a weight that left the
mask and came back in between counts zero. The two measures here look at every step instead:

- **Flip rate** (Hu et al. 2024, arXiv 2404.01847): the fraction of mask entries whose keep/prune
  bit changed between two consecutive steps, ``r_t = ‖E_t − E_{t−1}‖₁ / D`` with ``D`` the number
  of entries; over several layers the entries are pooled (the changed entries of all layers over
  all their entries), as in the authors' code. Over a window of steps, the *mean* flip rate is the
  summed changes divided by ``steps × D``.
- **Mask oscillation**: within a window of consecutive masks ``E_a, …, E_b`` of a layer, an entry
  *oscillates* when its bit changed at least twice, ``#{t in (a, b] : E_t ≠ E_{t−1}} ≥ 2``. A bit
  has two states, so its second change always brings it back to a state it held earlier in the
  window (kept → pruned → kept, or pruned → kept → pruned): the training undid one of its own
  topology decisions. An entry that changed once moved for good and does not count. The
  oscillation rate is the oscillating entries over ``D``. S-STE (Hu et al., NeurIPS 2024) names
  this oscillation as a weakness of hard-threshold STE.

``FlipTracker`` accumulates both while training runs (one ``update`` per step, one ``close`` per
window); ``flip_rate``, ``change_counts`` and ``oscillating`` compute the same from a sequence of
masks held in memory.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from . import serial

__all__ = ["FlipTracker", "FlipWindow", "change_counts", "flip_rate", "oscillating", "window_series"]

WINDOW_MEASURES = ("flip_rate", "flips", "oscillating", "oscillation_rate")
"""What ``window_series`` can extract from a list of ``FlipWindow``s."""


def _pairs(prev: Any, cur: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if isinstance(prev, Mapping) != isinstance(cur, Mapping):
        raise ValueError("compare two tensors or two dicts of tensors, not one of each")
    if isinstance(prev, Mapping):
        if set(prev) != set(cur):
            raise ValueError(f"mask dicts have different layers: {sorted(set(prev) ^ set(cur))}")
        pairs = [(prev[k], cur[k]) for k in prev]
    else:
        pairs = [(prev, cur)]
    for a, b in pairs:
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.dtype != torch.bool \
                or b.dtype != torch.bool:
            raise ValueError("masks must be bool tensors (True = kept)")
        if a.shape != b.shape:
            raise ValueError(f"mask shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return pairs


def flip_rate(prev: torch.Tensor | Mapping[str, torch.Tensor], cur: torch.Tensor | Mapping[str, torch.Tensor]) -> float:
    """Fraction of mask entries whose keep/prune bit differs between two consecutive masks.

    Args:
        prev: the earlier mask, or a dict layer -> mask.
        cur: the later mask (same shape), or a dict with the same layers.

    Returns:
        Changed entries / all entries (pooled over the layers of a dict); 0.0 for empty masks.
    """
    pairs = _pairs(prev, cur)
    changed = sum(int((a != b).sum()) for a, b in pairs)
    total = sum(a.numel() for a, _ in pairs)
    return changed / total if total else 0.0


def change_counts(masks: Sequence[torch.Tensor]) -> torch.Tensor:
    """How many times each entry changed state along a sequence of masks of one layer.

    Args:
        masks: consecutive bool masks of one shape (at least one).

    Returns:
        An int32 tensor of that shape; its sum is the summed flips of all consecutive pairs.
    """
    if not masks:
        raise ValueError("change_counts needs at least one mask")
    counts = torch.zeros(masks[0].shape, dtype=torch.int32)
    for a, b in zip(masks, masks[1:]):
        _pairs(a, b)
        counts += (a != b).to(torch.int32)
    return counts


def oscillating(masks: Sequence[torch.Tensor]) -> torch.Tensor:
    """The entries that oscillate within a window of consecutive masks (changed at least twice, so
    each of them returned to a state it held earlier in the window).

    Args:
        masks: consecutive bool masks of one layer (the window).

    Returns:
        A bool tensor, True where the entry oscillated.
    """
    return change_counts(masks) >= 2


@dataclass(frozen=True)
class FlipWindow:
    """Flips of each layer over a window of consecutive optimiser steps.

    Attributes:
        steps: steps in the window (mask comparisons made); 0 for the window before training.
        numel: layer -> mask entries.
        flips: layer -> summed per-step changes (``Σ_t ‖E_t − E_{t−1}‖₁`` over the window).
        oscillating: layer -> entries that changed at least twice within the window.
    """

    steps: int
    numel: dict[str, int]
    flips: dict[str, int] = field(default_factory=dict)
    oscillating: dict[str, int] = field(default_factory=dict)

    @classmethod
    def empty(cls, numel: Mapping[str, int]) -> "FlipWindow":
        """A window of zero steps (the point before training)."""
        return cls(0, dict(numel), {k: 0 for k in numel}, {k: 0 for k in numel})

    def _names(self, layer: str | None) -> list[str]:
        if layer is None:
            return list(self.numel)
        if layer not in self.numel:
            raise ValueError(f"unknown layer {layer!r}; layers: {', '.join(self.numel)}")
        return [layer]

    def flip_rate(self, layer: str | None = None) -> float:
        """Mean per-step flip rate over the window (0.0 for a window of no steps).

        Args:
            layer: one layer, or None to pool every layer's entries.
        """
        names = self._names(layer)
        denom = self.steps * sum(self.numel[k] for k in names)
        return sum(self.flips[k] for k in names) / denom if denom else 0.0

    def oscillation_rate(self, layer: str | None = None) -> float:
        """Oscillating entries as a fraction of the entries (one layer, or pooled)."""
        names = self._names(layer)
        denom = sum(self.numel[k] for k in names)
        return sum(self.oscillating[k] for k in names) / denom if denom else 0.0

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (``from_json`` reads it back; ``sparsekit.serial.to_json``)."""
        return serial.to_json(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "FlipWindow":
        """Inverse of ``to_json``, under ``sparsekit.serial``'s rule."""
        return serial.from_json(cls, data)


def window_series(windows: Sequence[FlipWindow], measure: str = "flip_rate", layer: str | None = None) -> np.ndarray:
    """One number per window.

    Args:
        windows: consecutive windows (e.g. one per snapshot interval of a run).
        measure: ``flip_rate`` (mean per-step), ``flips`` (summed changes), ``oscillating``
            (entries) or ``oscillation_rate`` (fraction of the entries).
        layer: one layer, or None for all layers pooled.

    Returns:
        float64 array, one entry per window.
    """
    if measure not in WINDOW_MEASURES:
        raise ValueError(f"measure must be one of {WINDOW_MEASURES}, got {measure!r}")
    out = []
    for w in windows:
        if measure == "flip_rate":
            out.append(w.flip_rate(layer))
        elif measure == "oscillation_rate":
            out.append(w.oscillation_rate(layer))
        else:
            counts = w.flips if measure == "flips" else w.oscillating
            out.append(float(sum(counts[k] for k in w._names(layer))))
    return np.asarray(out, dtype=np.float64)


class _Counts:
    """Accumulators of one open window: summed flips, a change counter per entry saturating at 2
    (oscillation only asks whether an entry changed twice; 1 byte per entry), and the steps."""

    def __init__(self, masks: Mapping[str, torch.Tensor]) -> None:
        self.counts = {k: torch.zeros(v.shape, dtype=torch.uint8) for k, v in masks.items()}
        self.flips = {k: 0 for k in masks}
        self.steps = 0

    def add(self, name: str, diff: torch.Tensor, changed: int) -> None:
        self.flips[name] += changed
        if changed:
            self.counts[name].add_(diff.to(torch.uint8)).clamp_(max=2)

    def close(self, numel: dict[str, int]) -> FlipWindow:
        window = FlipWindow(self.steps, dict(numel), dict(self.flips),
                            {k: int((c >= 2).sum()) for k, c in self.counts.items()})
        for c in self.counts.values():
            c.zero_()
        self.flips = {k: 0 for k in self.flips}
        self.steps = 0
        return window


class FlipTracker:
    """Streaming flip rate and oscillation: ``update`` with the masks after every step, ``close``
    at the end of each window; with ``run_window``, ``close_run`` also gives one window over every
    step since the start (each step's masks are compared once for both).

    Memory: per layer the previous mask and one byte per entry for each open window.

    Args:
        masks: layer -> bool mask at the start (the state before the first step).
        run_window: also keep the whole-run window.
    """

    def __init__(self, masks: Mapping[str, torch.Tensor], *, run_window: bool = False) -> None:
        self.numel = {k: int(v.numel()) for k, v in masks.items()}
        # Cloned: callers may refresh their mask buffers in place.
        self._prev = {k: v.detach().clone() for k, v in masks.items()}
        self._windows = [_Counts(masks)] + ([_Counts(masks)] if run_window else [])

    @property
    def total_numel(self) -> int:
        """Entries over all tracked layers."""
        return sum(self.numel.values())

    def update(self, masks: Mapping[str, torch.Tensor]) -> dict[str, int]:
        """Record one step.

        Args:
            masks: layer -> the masks after the step (the same layers and shapes as at the start).

        Returns:
            layer -> entries that changed at this step.
        """
        pairs = _pairs(self._prev, masks)
        changed = {}
        for name, (prev, cur) in zip(list(self._prev), pairs):
            diff = prev != cur
            changed[name] = int(diff.sum())
            for window in self._windows:
                window.add(name, diff, changed[name])
            if changed[name]:
                self._prev[name] = cur.detach().clone()
        for window in self._windows:
            window.steps += 1
        return changed

    def tick(self) -> dict[str, int]:
        """Record one step in which no mask changed (a frozen mask: nothing to compare).

        Returns:
            layer -> 0.
        """
        for window in self._windows:
            window.steps += 1
        return {k: 0 for k in self.numel}

    def step_rate(self, changed: Mapping[str, int]) -> float:
        """The pooled flip rate of one step from ``update``'s result."""
        total = self.total_numel
        return sum(changed.values()) / total if total else 0.0

    def close(self) -> FlipWindow:
        """End the current window and start the next one.

        Returns:
            The window's ``FlipWindow``.
        """
        return self._windows[0].close(self.numel)

    def close_run(self) -> FlipWindow:
        """The window over every step since the start (needs ``run_window=True``).

        Returns:
            The whole run's ``FlipWindow``.
        """
        if len(self._windows) < 2:
            raise ValueError("this tracker keeps no whole-run window; create it with run_window=True")
        return self._windows[1].close(self.numel)

    def to_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Everything the tracker holds, to continue it later (``from_state``): the previous masks and
        each open window's per-entry counters as tensors (``prev/<i>``, ``w<j>/<i>``, ``i`` the layer's
        position), the layers, summed flips and steps as JSON."""
        names = list(self.numel)
        tensors = {f"prev/{i}": self._prev[k] for i, k in enumerate(names)}
        for j, window in enumerate(self._windows):
            tensors.update({f"w{j}/{i}": window.counts[k] for i, k in enumerate(names)})
        meta = {"layers": names, "windows": [{"flips": [w.flips[k] for k in names], "steps": w.steps}
                                             for w in self._windows]}
        return {k: v.detach().clone() for k, v in tensors.items()}, meta

    @classmethod
    def from_state(cls, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> "FlipTracker":
        """Inverse of ``to_state``: a tracker that goes on exactly as the saved one would have.

        Raises:
            ValueError: a state that is not a tracker's (missing tensors, other shapes or dtypes).
        """
        try:
            names = [str(k) for k in meta["layers"]]
            prev = {k: tensors[f"prev/{i}"] for i, k in enumerate(names)}
            windows = list(meta["windows"])
            if not 1 <= len(windows) <= 2:
                raise ValueError(f"a tracker has one or two windows, not {len(windows)}")
            tracker = cls(prev, run_window=len(windows) == 2)
            for j, (counts, saved) in enumerate(zip(tracker._windows, windows)):
                for i, k in enumerate(names):
                    c = tensors[f"w{j}/{i}"]
                    if c.dtype != torch.uint8 or c.shape != prev[k].shape:
                        raise ValueError(f"window counters of {k!r} do not match its mask")
                    counts.counts[k] = c.clone()
                    counts.flips[k] = int(saved["flips"][i])
                counts.steps = int(saved["steps"])
        except (KeyError, IndexError, TypeError) as err:
            raise ValueError(f"not a flip tracker's state: {err!r}") from None
        if any(v.dtype != torch.bool for v in prev.values()):
            raise ValueError("not a flip tracker's state: previous masks must be bool")
        return tracker

"""How a sparse topology moves during training: bit-packed mask snapshots and SAD between them.

A ``MaskHistory`` keeps each sparse layer's keep-mask at chosen training steps, one bit per weight
(``numpy.packbits``), so a snapshot of a layer costs about ``numel / 8`` bytes. ``sad_report``
turns the history into SAD series (Sparse Architecture Divergence, ‖E_a − E_b‖₁ of the SR-STE
paper, always computed with the contract's ``sparsekit.sad``): between consecutive snapshots, from
the first snapshot and to the final one, per layer and in total, as raw counts or as a fraction of
the weights. ``flip_counts`` says how often each single weight changed state.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch

from .layers import matrix_view
from .masks import sad

__all__ = ["MaskHistory", "SAD_KINDS", "SadReport", "flip_counts", "matrix_view", "pack_mask", "sad_report",
           "unpack_mask"]

SAD_KINDS = ("interval", "cumulative", "from_first", "to_final")
"""``interval``: SAD between each snapshot and the one before; ``cumulative``: running sum of the
interval SADs; ``from_first``: SAD between the first snapshot and each one; ``to_final``: SAD
between each snapshot and the last one."""


def pack_mask(mask: torch.Tensor) -> bytes:
    """Bit-pack a keep-mask (row-major, first element in the most significant bit).

    Args:
        mask: a bool tensor (True = kept), any shape.

    Returns:
        ``ceil(numel / 8)`` bytes.
    """
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"pack_mask expects a bool tensor, got {getattr(mask, 'dtype', type(mask).__name__)}")
    return np.packbits(mask.detach().cpu().reshape(-1).numpy()).tobytes()


def unpack_mask(data: bytes, shape: Sequence[int]) -> torch.Tensor:
    """Inverse of ``pack_mask``.

    Args:
        data: the packed bytes.
        shape: the mask's shape.

    Returns:
        A bool tensor of ``shape``.
    """
    numel = int(np.prod(shape)) if len(shape) else 1
    if len(data) != (numel + 7) // 8:
        raise ValueError(f"{len(data)} packed bytes do not fit a mask of shape {tuple(shape)} ({numel} bits)")
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=numel)
    return torch.from_numpy(bits.astype(np.bool_)).reshape(tuple(shape))


@dataclass
class MaskHistory:
    """Bit-packed keep-masks of the sparse layers at chosen training steps.

    Attributes:
        shapes: layer name -> weight shape, in model order.
        steps: the optimiser step of each snapshot (0 = before training).
        epochs: the same points in epochs (step / steps per epoch).
        packed: layer name -> one ``pack_mask`` result per snapshot.
    """

    shapes: dict[str, tuple[int, ...]]
    steps: list[int] = field(default_factory=list)
    epochs: list[float] = field(default_factory=list)
    packed: dict[str, list[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.shapes = {k: tuple(int(s) for s in v) for k, v in self.shapes.items()}
        for name in self.shapes:
            self.packed.setdefault(name, [])

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def layers(self) -> list[str]:
        """Layer names, in model order."""
        return list(self.shapes)

    def numel(self, layer: str | None = None) -> int:
        """Weights in one layer, or in all recorded layers (``layer=None``)."""
        if layer is None:
            return sum(self.numel(name) for name in self.shapes)
        return int(np.prod(self.shapes[layer])) if self.shapes[layer] else 1

    @property
    def nbytes(self) -> int:
        """Bytes held by all packed snapshots."""
        return sum(len(b) for blobs in self.packed.values() for b in blobs)

    def record(self, step: int, epoch: float, masks: Mapping[str, torch.Tensor]) -> None:
        """Append one snapshot.

        Args:
            step: optimiser steps done when the masks were taken; must grow from one snapshot to the next.
            epoch: the same point in epochs.
            masks: layer name -> bool mask, for exactly the layers in ``shapes``.
        """
        if set(masks) != set(self.shapes):
            raise ValueError(f"snapshot layers {sorted(masks)} differ from the recorded layers {sorted(self.shapes)}")
        if self.steps and step <= self.steps[-1]:
            raise ValueError(f"snapshot step {step} does not follow the previous snapshot step {self.steps[-1]}")
        for name, shape in self.shapes.items():
            mask = masks[name]
            if tuple(mask.shape) != shape:
                raise ValueError(f"mask of {name} has shape {tuple(mask.shape)}, expected {shape}")
            self.packed[name].append(pack_mask(mask))
        self.steps.append(int(step))
        self.epochs.append(float(epoch))

    def mask(self, layer: str, index: int) -> torch.Tensor:
        """The mask of ``layer`` at snapshot ``index`` (negative indices count from the end)."""
        return unpack_mask(self.packed[layer][index], self.shapes[layer])

    def masks(self, index: int) -> dict[str, torch.Tensor]:
        """All layers' masks at snapshot ``index``."""
        return {name: self.mask(name, index) for name in self.shapes}

    def density(self, index: int, layer: str | None = None) -> float:
        """Kept fraction at snapshot ``index`` of one layer or of all layers together."""
        names = [layer] if layer is not None else self.layers
        kept = sum(int(self.mask(name, index).sum()) for name in names)
        total = sum(self.numel(name) for name in names)
        return kept / total if total else 1.0


@dataclass(frozen=True)
class SadReport:
    """SAD series of a ``MaskHistory``; arrays are int64 counts, one entry per snapshot.

    ``interval[i]`` is the SAD between snapshot ``i - 1`` and ``i`` (0 for the first snapshot, so
    every series lines up with ``steps``); ``from_first[i]`` the SAD between snapshot 0 and ``i``;
    ``to_final[i]`` the SAD between snapshot ``i`` and the last one.

    Attributes:
        layers: layer names, in model order.
        numel: layer name -> number of weights.
        steps: optimiser step of each snapshot.
        epochs: the same points in epochs.
        interval, from_first, to_final: layer name -> counts.
    """

    layers: list[str]
    numel: dict[str, int]
    steps: list[int]
    epochs: list[float]
    interval: dict[str, np.ndarray]
    from_first: dict[str, np.ndarray]
    to_final: dict[str, np.ndarray]

    @property
    def total_numel(self) -> int:
        """Weights in all layers together."""
        return sum(self.numel.values())

    def series(self, kind: str = "interval", layer: str | None = None, *, fraction: bool = False) -> np.ndarray:
        """One SAD series.

        Args:
            kind: one of ``SAD_KINDS``.
            layer: a layer name, or None for the sum over all layers.
            fraction: divide by the weights counted (the layer's, or all layers') instead of raw counts.

        Returns:
            float64 array with one entry per snapshot.
        """
        if kind not in SAD_KINDS:
            raise ValueError(f"kind must be one of {SAD_KINDS}, got {kind!r}")
        if layer is not None and layer not in self.numel:
            raise ValueError(f"unknown layer {layer!r}; recorded layers: {', '.join(self.layers)}")
        names = self.layers if layer is None else [layer]
        source = {"interval": self.interval, "cumulative": self.interval,
                  "from_first": self.from_first, "to_final": self.to_final}[kind]
        out = np.zeros(len(self.steps), dtype=np.float64)
        for name in names:
            out += source[name]
        if kind == "cumulative":
            out = np.cumsum(out)
        if fraction:
            denom = sum(self.numel[name] for name in names)
            out = out / denom if denom else out
        return out

    def matrix(self, kind: str = "interval", *, fraction: bool = False) -> np.ndarray:
        """``[layers, snapshots]`` array of one kind (for a layer × time heatmap)."""
        if not self.layers:
            return np.zeros((0, len(self.steps)))
        return np.stack([self.series(kind, name, fraction=fraction) for name in self.layers])

    def rows(self) -> list[dict]:
        """Long table: one dict per (snapshot, layer), plus ``layer="(all)"`` totals, for CSV export."""
        out = []
        for i, (step, epoch) in enumerate(zip(self.steps, self.epochs)):
            for name in [*self.layers, None]:
                row = {"snapshot": i, "step": step, "epoch": epoch, "layer": name or "(all)",
                       "numel": self.numel[name] if name else self.total_numel}
                for kind in SAD_KINDS:
                    row[f"sad_{kind}"] = int(self.series(kind, name)[i])
                    row[f"sad_{kind}_fraction"] = float(self.series(kind, name, fraction=True)[i])
                out.append(row)
        return out


def sad_report(history: MaskHistory) -> SadReport:
    """SAD between consecutive snapshots, from the first and to the final one, per layer.

    Args:
        history: the recorded snapshots (may be empty).

    Returns:
        A ``SadReport``; every count comes from ``sparsekit.sad``.
    """
    n = len(history)
    interval, from_first, to_final = {}, {}, {}
    for name in history.layers:
        masks = [history.mask(name, i) for i in range(n)]
        interval[name] = np.array([0] + [sad(masks[i - 1], masks[i]) for i in range(1, n)], dtype=np.int64)[:n]
        from_first[name] = np.array([sad(masks[0], mk) for mk in masks], dtype=np.int64)
        to_final[name] = np.array([sad(mk, masks[-1]) for mk in masks], dtype=np.int64)
    return SadReport(
        layers=history.layers,
        numel={name: history.numel(name) for name in history.layers},
        steps=list(history.steps),
        epochs=list(history.epochs),
        interval=interval,
        from_first=from_first,
        to_final=to_final,
    )


def flip_counts(history: MaskHistory, layer: str) -> torch.Tensor:
    """How many times each weight of ``layer`` changed keep/prune state between consecutive snapshots.

    Args:
        history: the recorded snapshots.
        layer: a recorded layer name.

    Returns:
        An int32 tensor of the layer's weight shape; it sums to the layer's total interval SAD.
    """
    if layer not in history.shapes:
        raise ValueError(f"unknown layer {layer!r}; recorded layers: {', '.join(history.layers)}")
    shape = history.shapes[layer]
    counts = np.zeros(history.numel(layer), dtype=np.int32)
    blobs = history.packed[layer]
    # XOR of packed bytes first: one byte op covers eight weights, and only the changes are unpacked.
    for prev, cur in zip(blobs, blobs[1:]):
        diff = np.bitwise_xor(np.frombuffer(prev, np.uint8), np.frombuffer(cur, np.uint8))
        counts += np.unpackbits(diff, count=counts.size)
    return torch.from_numpy(counts).reshape(shape)


def run_tensors(weights: Mapping[str, torch.Tensor], history: MaskHistory) -> dict[str, torch.Tensor]:
    """A saved run's tensors: ``weight/<name>`` for each weight and ``masks/<layer>`` (uint8, one row of
    packed bits per snapshot) for each layer of ``history`` (training and recovery runs share this)."""
    tensors = {f"weight/{k}": v.contiguous() for k, v in weights.items()}
    for layer, blobs in history.packed.items():
        width = (history.numel(layer) + 7) // 8
        arr = np.frombuffer(b"".join(blobs), dtype=np.uint8).reshape(len(blobs), width)
        tensors[f"masks/{layer}"] = torch.from_numpy(arr.copy())
    return tensors


def read_run_tensors(tensors: Mapping[str, torch.Tensor], history: MaskHistory) -> dict[str, torch.Tensor]:
    """Inverse of ``run_tensors``: fills ``history.packed`` (its shapes already set) and returns the weights."""
    for layer in history.shapes:
        history.packed[layer] = [row.tobytes() for row in tensors[f"masks/{layer}"].numpy()]
    return {k[len("weight/"):]: v for k, v in tensors.items() if k.startswith("weight/")}

"""The finished layers of a calibrated ``sparsify`` run, kept on disk so an interrupted run goes on.

Wanda and SparseGPT prune a model copy block by block over one calibration forward
(``methods.calibration.sequential_prune``). A run stopped half-way (Ctrl-C, Jupyter's stop button, a
killed process) leaves here, under a key made of the run's inputs (the model's weights, the config, the
calibration batch, the allocation), every layer it finished: its mask (bits) and, for methods that
rewrite weights (SparseGPT), the new kept values. The same call run again takes those layers from here
instead of computing them; the calibration forward still runs through them, on their stored weights, so
every later layer sees exactly the inputs it saw in the uninterrupted run and the result is the same,
bit for bit. A finished run removes its layers.

Layers are written only once a run has gone on for ``CHECKPOINT_AFTER_S`` seconds (then every layer
finished so far at once): a short call writes nothing. An entry that cannot be read, or does not fit
the layer (another shape), reads as missing and the layer is computed again.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from .cache import get_cache, make_key
from .store import RecordHeader, pack_run, unpack_run
from .topology import pack_mask, unpack_mask

__all__ = ["CHECKPOINT_AFTER_S", "FORMAT_VERSION", "PrunedLayerStore", "StoredLayer"]

FORMAT_VERSION = 1
"""Version of a stored layer's entry; another version reads as missing."""
HEADER = RecordHeader("sparsekit-pruned-layer", FORMAT_VERSION, "pruned layer")
CHECKPOINT_AFTER_S = 2.0
"""A run writes its finished layers only once it has run this long (short calls write nothing)."""


@dataclass
class StoredLayer:
    """One finished layer: its mask (True = kept, the weight's layout), its new weight (None = the
    method did not change the kept values) and the method's remark on it ('' = none)."""

    mask: torch.Tensor
    weight: torch.Tensor | None = None
    note: str = ""

    def to_bytes(self) -> bytes:
        mask = self.mask.detach().cpu().bool()
        tensors = {"mask_bits": torch.frombuffer(bytearray(pack_mask(mask)), dtype=torch.uint8)}
        if self.weight is not None:
            # Only the kept values: the pruned ones are zero by definition.
            tensors["kept_values"] = self.weight.detach().cpu()[mask].contiguous()
        record = {"shape": list(mask.shape), "note": self.note,
                  "dtype": str(self.weight.dtype).removeprefix("torch.") if self.weight is not None else None}
        return pack_run(HEADER, tensors, record)

    @classmethod
    def from_bytes(cls, blob: bytes, shape: tuple[int, ...]) -> "StoredLayer":
        """Read an entry back; ``ValueError`` when it is damaged or was written for another shape."""
        try:
            record, tensors = unpack_run(HEADER, blob)
        except Exception as err:  # safetensors raises its own error type for damaged bytes
            raise ValueError(f"unreadable pruned layer: {err}") from None
        if tuple(record.get("shape", ())) != tuple(shape):
            raise ValueError(f"stored layer of shape {record.get('shape')} does not fit {list(shape)}")
        mask = unpack_mask(tensors["mask_bits"].numpy().tobytes(), shape)
        weight = None
        if "kept_values" in tensors:
            values = tensors["kept_values"]
            if values.numel() != int(mask.sum()) or str(values.dtype).removeprefix("torch.") != record["dtype"]:
                raise ValueError("stored kept values do not fit the stored mask")
            weight = torch.zeros(shape, dtype=values.dtype)
            weight[mask] = values
        return cls(mask=mask, weight=weight, note=str(record.get("note", "")))


@dataclass
class PrunedLayerStore:
    """The finished layers of one calibrated run, by layer name.

    Attributes:
        key: the run's key (``run_key``); each layer is stored under it and its name.
        delay_s: layers are written once the run has gone on this long (None: ``CHECKPOINT_AFTER_S`` as
            it is when the layer finishes).
        taken: layers read back from an interrupted run (filled by ``get``).
        computed: layers this run computed (filled by ``put``).
    """

    key: str
    delay_s: float | None = None
    taken: list[str] = field(default_factory=list)
    computed: list[str] = field(default_factory=list)
    _pending: dict[str, StoredLayer] = field(default_factory=dict)
    _written: list[str] = field(default_factory=list)
    _start: float = field(default_factory=time.perf_counter)

    @staticmethod
    def run_key(*parts: Any) -> str:
        """The key of a run from its inputs (digests, configs as JSON)."""
        return make_key("sparsify-layers", FORMAT_VERSION, *parts)

    def _layer_key(self, name: str) -> str:
        return make_key("sparsify-layer", FORMAT_VERSION, self.key, name)

    def get(self, name: str, shape: tuple[int, ...]) -> StoredLayer | None:
        """The stored layer ``name`` of weight shape ``shape``, or None (missing or unreadable)."""
        raw = get_cache().get(self._layer_key(name))
        if raw is None:
            return None
        try:
            layer = StoredLayer.from_bytes(raw, tuple(shape))
        except (ValueError, KeyError, TypeError):
            return None
        self.taken.append(name)
        self._written.append(name)  # removed with the others when the run finishes
        return layer

    def put(self, name: str, mask: torch.Tensor, weight: torch.Tensor | None, note: str) -> None:
        """A layer this run finished (its mask, its new weight or None, the method's remark): written at
        once when the run has gone on ``delay_s``, else kept in memory until it has (with every layer
        before it). The tensors are not copied: the run must not change them afterwards."""
        self.computed.append(name)
        self._pending[name] = StoredLayer(mask, weight, note)
        delay = CHECKPOINT_AFTER_S if self.delay_s is None else self.delay_s
        if time.perf_counter() - self._start >= delay:
            self.flush()

    def flush(self) -> None:
        """Write every layer not written yet."""
        cache = get_cache()
        while self._pending:
            name = next(iter(self._pending))
            cache.set(self._layer_key(name), self._pending[name].to_bytes())
            del self._pending[name]
            self._written.append(name)

    def clear(self) -> None:
        """The run finished: remove its stored layers."""
        cache = get_cache()
        for name in dict.fromkeys(self._written):
            cache.delete(self._layer_key(name))
        self._written.clear()
        self._pending.clear()

"""What every pruning method reads and returns, below the registry and the calibration code.

``PruneSettings`` is the part of a ``sparsekit.config.SparsifyConfig`` a method reads. It is a
protocol, so the methods need not import the config (which sits above them: it asks the registry
whether a method name exists).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator, Protocol

import torch

from ..progress import ProgressFn

Calibration = torch.Tensor | dict[str, torch.Tensor]
"""Calibration inputs: a float batch (images) or a dict of token tensors (``input_ids``,
``attention_mask``)."""


class PruneSettings(Protocol):
    """The settings a method reads (``SparsifyConfig`` has them all)."""

    @property
    def pattern(self) -> str: ...
    @property
    def n(self) -> int: ...
    @property
    def m(self) -> int: ...
    @property
    def sparsity(self) -> float: ...
    @property
    def method(self) -> str: ...
    @property
    def seed(self) -> int: ...
    @property
    def conv_grouping(self) -> str: ...
    @property
    def calibration_order(self) -> str: ...


class FinishedLayer(Protocol):
    """A layer an interrupted run finished: its mask (True = kept), its new weight (None = unchanged)
    and the method's remark on it."""

    @property
    def mask(self) -> torch.Tensor: ...
    @property
    def weight(self) -> torch.Tensor | None: ...
    @property
    def note(self) -> str: ...


class LayerJournal(Protocol):
    """Where a calibrated run keeps its finished layers so that the same call, interrupted, goes on
    (``sparsekit.pruned_layers.PrunedLayerStore``)."""

    def get(self, name: str, shape: tuple[int, ...]) -> FinishedLayer | None: ...
    def put(self, name: str, mask: torch.Tensor, weight: torch.Tensor | None, note: str) -> None: ...


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the block on one torch thread (restored afterwards)."""
    # The column-by-column passes run thousands of tiny ops; with intra-op threads each one waits at
    # an OpenMP barrier, which on a busy machine made SparseGPT 10-50x slower (measured on 2 cores).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class MethodOutput:
    """What a method gives ``sparsify`` for the selected layers of its working copy."""

    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    """layer -> mask (True = kept), already applied to the copy in place (Wanda, SparseGPT)."""
    scores: dict[str, torch.Tensor] = field(default_factory=dict)
    """layer -> importance scores in the weight's layout (``sparsify`` then masks as usual)."""
    notes: dict[str, str] = field(default_factory=dict)
    """layer -> remark (e.g. not reached by the calibration forward, extra dampening)."""
    order: str = ""
    """Wanda/SparseGPT: the calibration order used, ``block`` or ``layer`` (a model without
    transformer blocks falls back to ``layer``)."""
    order_note: str = ""
    """One line saying which order was used and why."""


__all__ = ["Calibration", "FinishedLayer", "LayerJournal", "MethodOutput", "ProgressFn", "PruneSettings", "one_thread"]

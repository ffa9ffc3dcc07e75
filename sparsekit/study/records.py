"""A study cell's record: what ``run_cell`` returns for one cell, done or failed (``CellRecord``).

The cache (``study.store``) keeps records as JSON text, ``CellRecord.to_json``'s dict; ``read_record`` turns
that text back into a ``CellRecord`` under ``sparsekit.serial``'s rule (an unknown field, a missing field
without a default, or a detail that does not read as its kind's type make the entry unreadable, so the cell
is computed again). Records hold strict JSON values: a NaN metric is None (``store.finite_json``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from .. import serial
from ..evaluate import CompareRow

if TYPE_CHECKING:
    from ..training.seedresults import SeedRun

STATUSES = ("done", "failed")


@dataclass(frozen=True, kw_only=True)
class CellRecord:
    """The result of one study cell (``cells.run_cell``), or the error of a cell that raised.

    The first six fields are the cell's axis values (``Cell.labels``); cells that share a cache key share
    one stored record and differ only in these (``runner.relabel``).
    """

    kind: str
    """``oneshot``, ``training`` or ``kv``."""
    model: str
    """Model spec (``digits:mlp``, ``minilm``, ``hf:...``)."""
    method: str
    """Pruning method (oneshot) or ``ste``/``srste`` (training)."""
    pattern: str
    """Canonical pattern: ``2:4`` or ``unstructured:0.5``."""
    seed: int
    lambda_w: float | None = None
    """SR-STE's λ_w (training cells of ``srste``), else None."""
    status: str
    """``done``, or ``failed`` (the cell raised; it is run again next time)."""
    error: str | None = None
    """Failed: the error's type and message (at most 2000 characters)."""
    metrics: dict[str, float | None] = field(default_factory=dict)
    """Metric -> value (None where the value was NaN or infinite)."""
    higher_is_better: dict[str, bool] = field(default_factory=dict)
    """Metric -> its direction."""
    kept_fraction: float | None = None
    """Kept share of the prunable weights (training: N/M)."""
    memory_bytes: int | None = None
    """Oneshot: weight memory of the Linear/Conv layers, each in its cheapest format."""
    dense_bytes: int | None = None
    """Oneshot: the same, dense."""
    seed_matters: bool | None = None
    """Whether the seed changes the result (False for magnitude: its seeds repeat one number)."""
    seed_effect: str = ""
    """What the seed changes (``calibration subset``, ``random mask``, ...), when it matters."""
    calibration: dict[str, Any] | None = None
    """Oneshot cells with a seeded calibration draw: ``source``, ``pool``, ``drawn`` and ``seed``."""
    seconds: float | None = None
    """Compute seconds of the cell."""
    detail: dict[str, Any] | None = None
    """The full result as JSON: a ``CompareRow`` (oneshot, ``compare_row``) or a ``SeedRun`` (training,
    ``seed_run``); None when failed."""
    worker: dict[str, Any] | None = None
    """``{"pid", "host"}`` of the process that computed it."""
    key: str = ""
    """The cell's cache key (set when a record is given out for a cell, ``runner.relabel``; not stored, and
    empty in a freshly computed record)."""

    @property
    def done(self) -> bool:
        """Whether the cell finished (a failed one is run again)."""
        return self.status == "done"

    def compare_row(self) -> CompareRow:
        """A oneshot record's ``detail`` as the ``CompareRow`` (``cached`` False; NaN quality as NaN).

        Raises:
            ValueError: not a finished oneshot record, or a detail that does not read as a row.
        """
        if self.kind != "oneshot" or self.detail is None:
            raise ValueError(f"a {self.status} {self.kind} record has no compare row")
        return CompareRow.from_json(self.detail)

    def seed_run(self) -> "SeedRun":
        """A training record's ``detail`` as the ``SeedRun`` (``training.seedresults``).

        Raises:
            ValueError: not a finished training record, or a detail that does not read as a run.
        """
        from ..training.seedresults import SeedRun

        if self.kind != "training" or self.detail is None:
            raise ValueError(f"a {self.status} {self.kind} record has no seed run")
        return serial.from_json(SeedRun, self.detail, what="seed run")

    def to_json(self) -> dict[str, Any]:
        """The record as JSON-able data (``sparsekit.serial.to_json``)."""
        return serial.to_json(self)

    @classmethod
    def from_json(cls, data: str | Mapping[str, Any]) -> "CellRecord":
        """Inverse of ``to_json``, under ``sparsekit.serial``'s rule.

        Raises:
            ValueError: not a JSON object, an unknown field, a missing required field (the axis values and
                ``status``), or an unknown status.
        """
        record = serial.from_json(cls, data, what="study cell record")
        if record.status not in STATUSES:
            raise ValueError(f"unknown study cell record status {record.status!r}; known: {', '.join(STATUSES)}")
        return record


def read_record(raw: object) -> CellRecord | None:
    """A stored record's text as a ``CellRecord``, or None when it is not one (not text, not JSON, an
    unknown or missing field, or a finished record whose detail does not read as its kind's type)."""
    if not isinstance(raw, str):
        return None
    try:
        record = CellRecord.from_json(json.loads(raw))
        if record.done and record.kind == "oneshot":
            record.compare_row()
        elif record.done and record.kind in ("kv", "soup") and not isinstance(record.detail, dict):
            return None
        elif record.done and record.kind not in ("kv", "soup"):
            record.seed_run()
    except (ValueError, TypeError):
        return None
    return record


__all__ = ["STATUSES", "CellRecord", "read_record"]

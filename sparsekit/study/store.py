"""Where a study's results and progress live: the one disk cache (``sparsekit.cache``).

Every finished cell is written at once under its cell key, as JSON text, by the process that drives the
study (workers only compute), so a study killed half way loses only the cells that were running. A
failed cell is written too, with ``status`` ``failed`` and its message: it is reported, and tried again
on the next run. The progress of a running study is one JSON entry under ``study-status:<study id>``,
rewritten as cells finish, so any process (a page, ``python -m sparsekit.study status``) can read it.
diskcache is safe across processes.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from .. import serial
from ..cache import get_cache
from ..store import finite_dumps, owner_alive
from .records import CellRecord, read_record

STATES = ("not started", "running", "finished", "stopped", "interrupted", "error")


def load_record(key: str) -> CellRecord | None:
    """The stored record of a cell key, or None (missing or unreadable: ``records.read_record``)."""
    return read_record(get_cache().get(key))


def save_record(key: str, record: CellRecord) -> None:
    """Store a cell's record as JSON text: ``CellRecord.to_json`` without ``key`` (the entry's own key), strict
    JSON (NaN/inf as null)."""
    data = record.to_json()
    del data["key"]
    get_cache().set(key, finite_dumps(data, sort_keys=True))


def lookup(keys: Iterable[str]) -> dict[str, CellRecord]:
    """key -> stored record, for the keys that have one (done or failed)."""
    out = {}
    for key in dict.fromkeys(keys):
        record = load_record(key)
        if record is not None:
            out[key] = record
    return out


def is_done(record: CellRecord | None) -> bool:
    """Whether a stored record is a finished cell (a failed one is run again)."""
    return record is not None and record.done


@dataclass(frozen=True)
class StudyStatus:
    """Where a study stands; written to the cache while it runs and readable from any process."""

    study_id: str
    name: str
    state: str = "not started"
    """``not started``, ``running``, ``finished``, ``stopped``, ``interrupted`` (its driver ended without
    finishing) or ``error``."""
    total: int = 0
    """Cells in the study."""
    done: int = 0
    """Cells with a result (computed now or earlier, by this or another study)."""
    running: int = 0
    """Cells being computed right now."""
    failed: int = 0
    """Cells whose last attempt raised (tried again on the next run)."""
    retries: int = 0
    """Extra attempts after a worker died (Ray task retries, local pool restarts)."""
    computed: int = 0
    """Cells computed by the current (or last) run."""
    eta_s: float | None = None
    """Seconds left, from this run's rate (None before the first computed cell)."""
    elapsed_s: float = 0.0
    backend: str = ""
    """``local`` (with its worker count) or ``ray`` (with its address)."""
    workers: tuple[dict[str, Any], ...] = ()
    """Running cells: ``{"cell", "pid", "host"}`` each (where the backend knows them)."""
    message: str = ""
    """Last event, or the error that ended the run."""
    owner: str = ""
    """``process_token`` of the driving process."""
    updated: float = field(default=0.0)
    """``time.time()`` of the last write."""

    @property
    def pending(self) -> int:
        """Cells neither done, failed nor running."""
        return max(0, self.total - self.done - self.failed - self.running)

    def line(self) -> str:
        """One line for a terminal: ``[12/40] 2 running, 1 failed, 1 retry, about 30 s left``."""
        parts = [f"[{self.done}/{self.total}] {self.state}"]
        if self.running:
            parts.append(f"{self.running} running")
        if self.failed:
            parts.append(f"{self.failed} failed")
        if self.retries:
            parts.append(f"{self.retries} retr{'y' if self.retries == 1 else 'ies'}")
        if self.eta_s is not None and self.state == "running":
            parts.append(f"about {self.eta_s:.0f} s left")
        text = ", ".join(parts)
        return f"{text}: {self.message}" if self.message else text

    def as_dict(self) -> dict[str, Any]:
        """JSON-able fields (``sparsekit.serial.to_json``), plus ``pending``."""
        return {**serial.to_json(self), "pending": self.pending}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "StudyStatus":
        """Inverse of ``as_dict`` (``pending`` is derived, so dropped), under ``sparsekit.serial``'s rule."""
        return serial.from_json(cls, {k: v for k, v in data.items() if k != "pending"}, what="study status")


def status_key(study_id: str) -> str:
    """Cache key of a study's status entry."""
    return f"study-status:{study_id}"


def write_status(status: StudyStatus) -> StudyStatus:
    """Store a status (stamped with the time); returns what was stored."""
    stamped = StudyStatus.from_dict({**status.as_dict(), "updated": time.time()})
    get_cache().set(status_key(status.study_id), finite_dumps(stamped.as_dict()))
    return stamped


def read_status(study_id: str) -> StudyStatus | None:
    """The last status written for a study, or None. A ``running`` study whose driving process is known
    to have ended reads as ``interrupted``."""
    raw = get_cache().get(status_key(study_id))
    if not isinstance(raw, str):
        return None
    try:
        status = StudyStatus.from_dict(json.loads(raw))
    except (ValueError, TypeError):
        return None
    if status.state == "running" and status.owner and owner_alive(status.owner) is False:
        status = StudyStatus.from_dict({**status.as_dict(), "state": "interrupted", "running": 0, "workers": ()})
    return status


def count_cells(keys: list[str]) -> tuple[int, int]:
    """``(done, failed)`` among cells with these keys (a key shared by several cells counts for each)."""
    stored = lookup(keys)
    done = sum(1 for k in keys if is_done(stored.get(k)))
    failed = sum(1 for k in keys if k in stored and not is_done(stored[k]))
    return done, failed

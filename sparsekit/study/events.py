"""What a study backend reports while it runs cells: ``Event``s, and how often it reports.

Both backends (``backends.LocalBackend``, ``ray_backend.RayBackend``) and the runner read this module;
it imports nothing of the study package but the record type, so the backends need not import each other.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .records import CellRecord

POLL_S = 0.5
"""How often a waiting backend reports a tick (and the runner asks ``stop``)."""


@dataclass(frozen=True)
class Event:
    """What a backend reports."""

    kind: str
    """``start``, ``done`` or ``tick``."""
    key: str = ""
    """The cell key (``start``/``done``)."""
    record: CellRecord | None = None
    """The cell's record (``done``)."""
    running: int = 0
    """Cells running after this event."""
    retries: int = 0
    """Retries so far in this run."""
    workers: tuple[dict[str, Any], ...] = field(default=())
    """Running cells with their process (where known)."""


__all__ = ["Event", "POLL_S"]

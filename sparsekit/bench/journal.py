"""The per-case store that lets a stopped benchmark run go on.

Each finished case (one shape: its dense baseline and every sparse kernel at it) is written to the disk
cache as soon as it is measured, under the run's key (the settings that decide what is measured, the
device and the versions it is measured with) and the case's index and label; so is the run's header (its
environment, the device ceilings measured once at the start, and that device identity), under the
settings alone. A run that is stopped (``stop``, Ctrl-C,
Streamlit's Stop, an exception, a killed process) is continued by the same call, which reads the stored
cases back verbatim and measures only the missing ones. A run that finishes clears its entries: the next
call measures afresh (timings are measurements, not results to cache; the page keeps finished runs in its
history, the CLI in its JSON file).

Each entry is one diskcache write (one transaction): a kill mid-write leaves the old entry or none. An
entry that cannot be read (another version's, a damaged one, another case's) reads as missing and is
measured again.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from .. import serial
from ..cache import get_cache, make_key, read_entry
from .harness import SCHEMA_VERSION, CaseResult

JOURNAL_VERSION = 1
"""Bump when a stored case's contents or meaning change (the suites' inputs, what a case holds)."""
IDENTITY_FIELDS = ("device", "device_name", "compute_capability", "cusparselt", "torch", "cuda", "python",
                   "cpu_count", "threads")
"""The environment fields that decide whether a stored timing still holds: the device and the versions."""


def device_identity(env: dict[str, Any]) -> dict[str, Any]:
    """What of ``harness.environment``'s answer a stored case must match (not the time it was measured at)."""
    return {k: env.get(k) for k in IDENTITY_FIELDS}


def settings_key(settings: dict[str, Any]) -> str:
    """The key of a run's header: its settings (``runner.journal_settings``) alone, so that looking for a
    stopped run does not need to ask the device anything (a page draw must not start CUDA)."""
    return make_key("bench-journal", JOURNAL_VERSION, SCHEMA_VERSION, settings)


def run_key(settings: str, identity: dict[str, Any]) -> str:
    """The key of one run's cases: its settings key, the device and the versions (``device_identity``)."""
    return make_key("bench-run-cases", JOURNAL_VERSION, settings, identity)


def case_key(key: str, index: int, label: str) -> str:
    """Where case ``index`` (labelled ``label``) of the run keyed ``key`` is stored."""
    return make_key("bench-case", JOURNAL_VERSION, key, index, label)


def header_key(settings: str) -> str:
    return make_key("bench-header", JOURNAL_VERSION, settings)


@dataclass(frozen=True)
class StoredCase:
    """One finished case as stored: its label, its results as measured, and the seconds it took."""

    label: str
    results: tuple[CaseResult, ...]
    seconds: float = 0.0

    def to_json(self) -> str:
        # Plain ``json``: an infinite relative error (a wrong output shape) must come back as it was stored.
        return json.dumps({"label": self.label, "seconds": self.seconds,
                           "results": [serial.to_json(r) for r in self.results]})

    @classmethod
    def from_json(cls, text: Any) -> StoredCase:
        data = json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("results"), list):
            raise ValueError("a stored benchmark case needs a results list")
        results = tuple(serial.from_json(CaseResult, r, what="stored case result") for r in data["results"])
        if not results:
            raise ValueError("a stored benchmark case has no results")
        return cls(label=str(data["label"]), results=results, seconds=float(data["seconds"]))


@dataclass(frozen=True)
class Header:
    """What a run measured once at its start: the environment and the device's ceilings, and the device
    identity its cases are stored under."""

    env: dict[str, Any]
    ceilings: dict[str, Any]
    identity: dict[str, Any]
    seconds: float = 0.0
    created: float = field(default_factory=time.time)
    """When the run started (a continued run keeps it)."""

    def to_json(self) -> str:
        return json.dumps({"env": self.env, "ceilings": self.ceilings, "identity": self.identity,
                           "seconds": self.seconds, "created": self.created}, default=str)

    @classmethod
    def from_json(cls, text: Any) -> Header:
        data = json.loads(text)
        if not all(isinstance(data.get(k), dict) for k in ("env", "ceilings", "identity")):
            raise ValueError("a stored benchmark header needs env, ceilings and identity objects")
        return cls(env=data["env"], ceilings=data["ceilings"], identity=data["identity"],
                   seconds=float(data["seconds"]), created=float(data["created"]))


def load_cases(key: str, labels: Sequence[str]) -> dict[int, StoredCase]:
    """The stored cases of a run (index -> case); an entry of another label or unreadable reads as missing."""
    out = {}
    for i, label in enumerate(labels):
        case = read_entry(case_key(key, i, label), StoredCase.from_json)
        if case is not None and case.label == label:
            out[i] = case
    return out


def save_case(key: str, index: int, case: StoredCase) -> None:
    """Store one finished case (at once: a stop or a crash after this keeps it)."""
    get_cache()[case_key(key, index, case.label)] = case.to_json()


def load_header(settings: str) -> Header | None:
    """The header of the run whose settings key is ``settings`` (None: no stopped run of these settings)."""
    return read_entry(header_key(settings), Header.from_json)


def save_header(settings: str, header: Header) -> None:
    get_cache()[header_key(settings)] = header.to_json()


def clear(settings: str, key: str, labels: Sequence[str]) -> None:
    """Forget a run's header and cases (it finished, or it starts afresh)."""
    cache = get_cache()
    cache.delete(header_key(settings))
    for i, label in enumerate(labels):
        cache.delete(case_key(key, i, label))

"""Benchmark runs as JSON: one format for the CLI output, the disk-cache history and page imports."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from ..store import RunStore, finite_dumps, finite_json
from .harness import SCHEMA_VERSION, CaseResult

MAX_IMPORT_BYTES = 50 * 2**20
_STATUSES = {"ok", "failed", "skipped", "oom", "error"}


@dataclass
class BenchRun:
    """A set of results measured in one run, with the environment and the device's ceilings."""

    env: dict[str, Any]
    results: list[CaseResult]
    ceilings: dict[str, float] = field(default_factory=dict)
    suites: list[str] = field(default_factory=list)
    name: str = ""
    created: float = field(default_factory=time.time)

    def to_json(self) -> str:
        return finite_dumps({
            "schema": "sparsekit.bench", "schema_version": SCHEMA_VERSION, "name": self.name,
            "created": self.created, "suites": self.suites, "env": self.env, "ceilings": self.ceilings,
            "results": [dataclasses.asdict(r) for r in self.results],
        }, indent=1, default=str)

    @classmethod
    def from_json(cls, text: str | bytes) -> "BenchRun":
        """Parse a run; ``ValueError`` saying what is wrong for anything malformed."""
        if isinstance(text, bytes):
            if len(text) > MAX_IMPORT_BYTES:
                raise ValueError(f"benchmark file is {len(text) / 2**20:.0f} MB; the limit is {MAX_IMPORT_BYTES // 2**20} MB")
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError("benchmark file is not UTF-8 text (expected the JSON written by sparsekit.bench)") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"benchmark file is not valid JSON: {err}") from None
        if not isinstance(data, dict) or data.get("schema") != "sparsekit.bench":
            raise ValueError("not a sparsekit benchmark file (missing \"schema\": \"sparsekit.bench\")")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"unsupported schema_version {data.get('schema_version')!r} (this version reads {SCHEMA_VERSION})")
        if not isinstance(data.get("results"), list) or not isinstance(data.get("env"), dict):
            raise ValueError("benchmark file needs a \"results\" list and an \"env\" object")
        known = {f.name for f in dataclasses.fields(CaseResult)}
        results = []
        for n, raw in enumerate(data["results"]):
            if not isinstance(raw, dict):
                raise ValueError(f"result {n} is not an object")
            missing = {"suite", "case", "backend", "device", "dtype"} - set(raw)
            if missing:
                raise ValueError(f"result {n} lacks {sorted(missing)}")
            if raw.get("status", "ok") not in _STATUSES:
                raise ValueError(f"result {n} has unknown status {raw.get('status')!r}")
            for key in ("median_ms", "speedup", "baseline_ms", "q1_ms", "q3_ms", "rel_error"):
                value = raw.get(key)
                if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                    raise ValueError(f"result {n}: {key} must be a number, got {value!r}")
            if not isinstance(raw.get("params", {}), dict):
                raise ValueError(f"result {n}: params must be an object")
            results.append(CaseResult(**{k: v for k, v in raw.items() if k in known}))
        return cls(env=data["env"], results=results, ceilings=data.get("ceilings") or {},
                   suites=list(data.get("suites") or []), name=str(data.get("name") or ""),
                   created=float(data.get("created") or time.time()))

    @property
    def key(self) -> str:
        digest = hashlib.sha256(self.to_json().encode()).hexdigest()[:16]
        return _STORE.key(digest)

    def title(self) -> str:
        return _title(self.summary())

    def summary(self) -> dict[str, Any]:
        """What the history index keeps of the run: enough for its title without reading the results."""
        return {"name": self.name, "suites": list(self.suites), "created": self.created,
                "device": self.env.get("device_name") or self.env.get("device", "?")}


def _title(summary: dict[str, Any]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(summary.get("created") or 0.0))
    what = summary.get("name") or ", ".join(summary.get("suites") or []) or "run"
    return f"{what} · {summary.get('device') or '?'} · {when}"


def sanitize(run: BenchRun) -> BenchRun:
    """A copy with non-finite numbers replaced by None (so it serialises as strict JSON)."""
    results = [CaseResult(**finite_json(dataclasses.asdict(r))) for r in run.results]
    return BenchRun(env=finite_json(run.env), results=results, ceilings=finite_json(run.ceilings),
                    suites=list(run.suites), name=run.name, created=run.created)


# The history: entries keep the keys of earlier versions (``bench-run:<digest>``, the public key), and
# the index key too; an index of bare keys, as earlier versions wrote it, is read as such.
_KIND = "bench-run"
_STORE = RunStore(_KIND, index_key="bench-runs:index", summarize=lambda text: BenchRun.from_json(text).summary(),
                  hash_ids=False)


def _run_id(key: str) -> str | None:
    prefix = f"{_KIND}:"
    return key[len(prefix):] if isinstance(key, str) and key.startswith(prefix) else None


def save_run(run: BenchRun) -> str:
    """Store a run in the disk cache history (non-finite numbers as null).

    Args:
        run: the run; storing the same results again keeps one entry.

    Returns:
        Its key, for ``load_run``/``delete_run``.
    """
    run = sanitize(run)
    key = run.key
    _STORE.put(_run_id(key), run.to_json(), run.summary())
    return key


def list_runs() -> list[tuple[str, str]]:
    """The stored runs, newest first.

    Returns:
        ``(key, title)`` per run whose entry exists.
    """
    return [(_STORE.key(e["run_id"]), _title(e)) for e in reversed(_STORE.summaries())]


def load_run(key: str) -> BenchRun | None:
    """A stored run.

    Args:
        key: as ``save_run``/``list_runs`` gave it.

    Returns:
        The ``BenchRun``, or None when there is no such run or its entry is unreadable.
    """
    run_id = _run_id(key)
    text = _STORE.get(run_id) if run_id is not None else None
    if not isinstance(text, str):
        return None
    try:
        return BenchRun.from_json(text)
    except ValueError:
        return None


def delete_run(key: str) -> None:
    """Remove a stored run (an unknown key is ignored).

    Args:
        key: as ``save_run``/``list_runs`` gave it.
    """
    run_id = _run_id(key)
    if run_id is not None:
        _STORE.delete(run_id)


def results_csv(run: BenchRun) -> str:
    """All results as CSV (times in ms; params flattened as ``p_<name>`` columns)."""
    import csv
    import io

    rows = [r.as_row() for r in run.results]
    columns: list[str] = []
    for row in rows:
        for k in row:
            if k not in columns:
                columns.append(k)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns or ["suite"])
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()

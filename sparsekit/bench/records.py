"""Benchmark runs as JSON: one format for the CLI output, the disk-cache history and page imports."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from ..cache import get_cache
from .harness import SCHEMA_VERSION, CaseResult

_INDEX_KEY = "bench-runs:index"
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
        return json.dumps(_clean({
            "schema": "sparsekit.bench", "schema_version": SCHEMA_VERSION, "name": self.name,
            "created": self.created, "suites": self.suites, "env": self.env, "ceilings": self.ceilings,
            "results": [dataclasses.asdict(r) for r in self.results],
        }), indent=1, allow_nan=False, default=str)

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
        return f"bench-run:{digest}"

    def title(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.created))
        device = self.env.get("device_name") or self.env.get("device", "?")
        return f"{self.name or ', '.join(self.suites) or 'run'} · {device} · {when}"


def _clean(value: Any) -> Any:
    # JSON has no inf/nan; store them as null.
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def sanitize(run: BenchRun) -> BenchRun:
    """A copy with non-finite numbers replaced by None (so it serialises as strict JSON)."""
    results = [CaseResult(**_clean(dataclasses.asdict(r))) for r in run.results]
    return BenchRun(env=_clean(run.env), results=results, ceilings=_clean(run.ceilings), suites=list(run.suites),
                    name=run.name, created=run.created)


def _index() -> list[str]:
    # Stored as JSON text so that nothing in the cache needs unpickling.
    raw = get_cache().get(_INDEX_KEY)
    try:
        keys = json.loads(raw) if isinstance(raw, str) else []
    except json.JSONDecodeError:
        keys = []
    return [k for k in keys if isinstance(k, str)]


def _set_index(keys: list[str]) -> None:
    get_cache().set(_INDEX_KEY, json.dumps(keys))


def save_run(run: BenchRun) -> str:
    """Store a run in the disk cache history; returns its key."""
    run = sanitize(run)
    cache = get_cache()
    key = run.key
    cache.set(key, run.to_json())
    index = _index()
    if key not in index:
        index.append(key)
    _set_index(index)
    return key


def list_runs() -> list[tuple[str, str]]:
    """(key, title) of stored runs, newest first; unreadable entries are skipped."""
    out = []
    for key in reversed(_index()):
        run = load_run(key)
        if run is not None:
            out.append((key, run.title()))
    return out


def load_run(key: str) -> BenchRun | None:
    text = get_cache().get(key)
    if not isinstance(text, str):
        return None
    try:
        return BenchRun.from_json(text)
    except ValueError:
        return None


def delete_run(key: str) -> None:
    get_cache().delete(key)
    _set_index([k for k in _index() if k != key])


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

"""Benchmark runs as JSON: one format for the CLI output, the disk-cache history and page imports."""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from .. import serial
from ..display import Card, Shown, fmt
from ..store import RecordHeader, RunStore, finite_dumps, finite_json
from .harness import SCHEMA_VERSION, CaseResult
from .suites import verdicts

MAX_IMPORT_BYTES = 50 * 2**20
_STATUSES = {"ok", "failed", "skipped", "oom", "error"}
HEADER = RecordHeader("sparsekit.bench", SCHEMA_VERSION, "benchmark file", format_key="schema",
                      version_key="schema_version")
"""The header of a benchmark file (the CLI's output, a stored run, an import)."""


@dataclass(repr=False)
class BenchRun(Shown):
    """A set of results measured in one run, with the environment and the device's ceilings."""

    env: dict[str, Any]
    results: list[CaseResult]
    ceilings: dict[str, float | str] = field(default_factory=dict)
    """``harness.ceilings``: the measured TFLOP/s and GB/s, and the matmul's size and dtype."""
    suites: list[str] = field(default_factory=list)
    """The suites every case of which is in ``results``."""
    name: str = ""
    created: float = field(default_factory=time.time)
    complete: bool = True
    """False for a run that was stopped: its finished cases only (``run_benchmarks`` continues it)."""
    cases_total: int = 0
    """Cases the run planned (one shape: a dense baseline and every sparse kernel at it); 0: not recorded."""
    not_reached: list[str] = field(default_factory=list)
    """The cases a stopped run did not get to (empty when complete)."""

    @property
    def cases_done(self) -> int:
        """Cases finished (of ``cases_total``)."""
        return self.cases_total - len(self.not_reached)

    FIGURE = "bench_run_figure"

    def summary_card(self) -> Card:
        """What it ran on, the cases measured and skipped, and a speedup verdict per Linear shape (2:4) and
        per sparse backend of the other suites."""
        env, res = self.env, self.results
        count = {s: sum(1 for r in res if r.status == s) for s in _STATUSES}
        timed = [r for r in res if r.status == "ok" and r.speedup is not None]
        head = {"environment": f"{env.get('device_name') or env.get('device', '?')} ({env.get('device', '?')}), "
                               f"torch {env.get('torch', '?')}, {env.get('threads', '?')} threads",
                "cases": f"{count['ok']} ok, {count['skipped']} skipped"
                         + "".join(f", {count[s]} {s}" for s in ("failed", "oom", "error") if count[s]),
                "faster than dense": f"{sum(1 for r in timed if (r.speedup or 0.0) > 1.0)} of {len(timed)} timed"}
        if not self.complete:
            head["complete"] = f"no: stopped after {self.cases_done} of {self.cases_total} cases"
        if self.ceilings:
            head["ceilings"] = (f"{fmt(self.ceilings.get('matmul_tflops'), 3)} TFLOP/s matmul, "
                                f"{fmt(self.ceilings.get('copy_gbps'), 3)} GB/s copy")
        rows: list[dict[str, Any]] = [{"suite": "linear", "backend": v["backend"], "case": v["shape"],
                                       "best speedup": v["best_speedup"], "verdict": v["verdict"]}
                                      for v in verdicts(res)]
        groups: dict[tuple[str, str], list[CaseResult]] = {}
        for r in res:
            if r.suite != "linear":
                groups.setdefault((r.suite, r.backend), []).append(r)
        for (suite, backend), rs in groups.items():
            ok = [r.speedup for r in rs if r.status == "ok" and r.speedup is not None]
            if not ok and all(r.status == "ok" for r in rs):
                continue  # the dense baseline the others are timed against
            verdict = (f"faster in {sum(1 for v in ok if v > 1.0)} of {len(ok)} timed" if ok else
                       "not measured: " + "; ".join(sorted({r.message or r.status for r in rs}))[:200])
            rows.append({"suite": suite, "backend": backend, "case": f"{len(rs)} cases",
                         "best speedup": max(ok) if ok else None, "verdict": verdict})
        return Card(f"BenchRun {self.title()}", head, rows, "speedup = dense time / sparse time (> 1 is faster)")

    def to_json(self) -> str:
        return finite_dumps({
            "schema": HEADER.format, "schema_version": HEADER.version, "name": self.name,
            "created": self.created, "suites": self.suites, "env": self.env, "ceilings": self.ceilings,
            "results": [serial.to_json(r) for r in self.results],
            **({} if self.complete else {"complete": False, "not_reached": self.not_reached}),
            **({"cases_total": self.cases_total} if self.cases_total else {}),
        }, indent=1, default=str)

    @classmethod
    def from_json(cls, text: str | bytes) -> "BenchRun":
        """Parse a run; ``ValueError`` saying what is wrong for anything malformed."""
        if isinstance(text, bytes):
            if len(text) > MAX_IMPORT_BYTES:
                raise ValueError(f"benchmark file is {len(text) / 2**20:.0f} MB; "
                                 f"the limit is {MAX_IMPORT_BYTES // 2**20} MB")
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError("benchmark file is not UTF-8 text "
                                 "(expected the JSON written by sparsekit.bench)") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"benchmark file is not valid JSON: {err}") from None
        HEADER.check(data if isinstance(data, dict) else {})
        if not isinstance(data.get("results"), list) or not isinstance(data.get("env"), dict):
            raise ValueError("benchmark file needs a \"results\" list and an \"env\" object")
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
            results.append(serial.from_json(CaseResult, raw, what=f"result {n}"))
        not_reached = data.get("not_reached") or []
        if not isinstance(not_reached, list) or not isinstance(data.get("complete", True), bool):
            raise ValueError("benchmark file: \"not_reached\" must be a list and \"complete\" true or false")
        total = data.get("cases_total") or 0
        if isinstance(total, bool) or not isinstance(total, int) or total < 0:
            raise ValueError(f"benchmark file: cases_total must be a whole number, got {total!r}")
        return cls(env=data["env"], results=results, ceilings=data.get("ceilings") or {},
                   suites=list(data.get("suites") or []), name=str(data.get("name") or ""),
                   created=float(data.get("created") or time.time()), complete=data.get("complete", True),
                   cases_total=total, not_reached=[str(c) for c in not_reached])

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
    results = [serial.from_json(CaseResult, finite_json(serial.to_json(r))) for r in run.results]
    return BenchRun(env=finite_json(run.env), results=results, ceilings=finite_json(run.ceilings),
                    suites=list(run.suites), name=run.name, created=run.created, complete=run.complete,
                    cases_total=run.cases_total, not_reached=list(run.not_reached))


# The history: entries keep the keys of earlier versions (``bench-run:<digest>``, the public key), and
# the index key too; an index of bare keys, as earlier versions wrote it, is read as such.
_KIND = "bench-run"
_STORE: RunStore[BenchRun] = RunStore(_KIND, what="benchmark run", index_key="bench-runs:index",
                                      to_bytes=BenchRun.to_json, from_bytes=BenchRun.from_json, hash_ids=False)


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
    _STORE.save(run, run_id=_run_id(key))
    return key


def list_runs() -> list[tuple[str, str]]:
    """The stored runs, newest first.

    Returns:
        ``(key, title)`` per run whose entry exists.
    """
    return [(_STORE.key(e["run_id"]), _title(e)) for e in _STORE.runs()]


def load_run(key: str) -> BenchRun | None:
    """A stored run.

    Args:
        key: as ``save_run``/``list_runs`` gave it.

    Returns:
        The ``BenchRun``, or None when there is no such run or its entry is unreadable.
    """
    run_id = _run_id(key)
    if run_id is None:
        return None
    try:
        return _STORE.load(run_id)
    except (KeyError, ValueError):
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

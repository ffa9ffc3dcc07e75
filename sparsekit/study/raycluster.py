"""A throwaway one-node Ray cluster on localhost, for tests and benchmarks (``LocalRayCluster``).

It runs ``ray start --head --block`` in its own process group and is stopped by that pid (SIGTERM, then
SIGKILL to the group if it lingers): never ``ray stop``, which would stop every Ray cluster of the user on
this machine. Nothing here imports ray.
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


class LocalRayCluster:
    """``ray start --head`` on 127.0.0.1 with a few CPUs, as a context manager.

    Args:
        temp_dir: Ray's session folder (keep it short: Ray's socket paths must fit 107 characters).
        num_cpus: CPUs the node offers.
        env: extra environment variables for the cluster's processes.
        start_timeout: seconds to wait for the head to accept connections.
    """

    def __init__(self, temp_dir: str | os.PathLike, *, num_cpus: int = 2, env: Mapping[str, str] | None = None,
                 start_timeout: float = 90.0) -> None:
        self.temp_dir = Path(temp_dir)
        self.num_cpus = num_cpus
        self.port = free_port()
        self.env = {**os.environ, **(env or {})}
        self.env.pop("RAY_ADDRESS", None)
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.log = self.temp_dir / "ray-start.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "LocalRayCluster":
        """Start the head and wait until its GCS port accepts connections.

        Raises:
            RuntimeError: the head exited or did not come up in time (the log's tail is in the message).
        """
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        ray_cli = Path(sys.executable).with_name("ray")
        cmd = [str(ray_cli), "start", "--head", "--block", f"--port={self.port}", f"--num-cpus={self.num_cpus}",
               "--num-gpus=0", "--include-dashboard=false", "--node-ip-address=127.0.0.1",
               f"--temp-dir={self.temp_dir}", "--disable-usage-stats",
               # A port that defaults to a fixed number, which a second cluster on this machine would hit.
               f"--dashboard-agent-listen-port={free_port()}"]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True)
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

    def _tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-1500:]
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the head by its pid (SIGTERM, wait), then kill its process group if anything is left."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # our own session: the head's raylet, GCS and workers
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def __enter__(self) -> "LocalRayCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""The whole app in a server of its own on a free localhost port, health-checked and stopped by its pid
(the browser tests, the benchmarks and the screenshot script)."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

from devtools import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served_app(script: Sequence[str] = ("-m", "streamlit", "run", "app.py"), *, options: Sequence[str] = (),
               env: dict | None = None, log_path: Path | None = None, timeout: float = 60.0) -> Iterator[str]:
    """Run the app in a server of its own on a free localhost port; yields its URL once the health
    check answers, and stops that process by its pid at the end (browser tests, benchmarks, screenshots).

    Args:
        script: what follows the Python executable (default ``-m streamlit run app.py``; the launcher
            ``scripts/serve.py`` takes Streamlit's options the same way).
        options: extra Streamlit options, e.g. ``["--theme.base", "dark"]``.
        env: the server's environment (default: this process's).
        log_path: where its output goes (default: discarded).
        timeout: seconds to wait for the health check.

    Raises:
        RuntimeError: the server exited or did not answer in time (with the end of its log).
    """
    port = free_port()
    log = open(log_path, "w+") if log_path else open(os.devnull, "w")
    proc = subprocess.Popen([sys.executable, *script, "--server.port", str(port), "--server.address", "127.0.0.1",
                             "--server.headless", "true", *options],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.perf_counter() + timeout
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.05)
            if proc.poll() is not None or time.perf_counter() > deadline:
                tail = ""
                if log_path:
                    log.seek(0)
                    tail = log.read()[-3000:]
                raise RuntimeError(f"streamlit did not start (exit code {proc.poll()}):\n{tail}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()

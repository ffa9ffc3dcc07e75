"""Drive one page with Streamlit's AppTest, or the whole app in a server of its own (used by the
tests, the benchmarks and the screenshot script).

AppTest re-runs of an ``st.navigation`` app drop the entry script's sidebar widgets (a limitation
of the test runner, not of the served app), so this harness draws the same sidebar and then runs a
single page file, which AppTest can re-run any number of times.
"""
from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]

_HARNESS = """
import runpy, sys
sys.path.insert(0, {root!r})
import streamlit as st
from ui.state import sidebar_model
loaded, key = sidebar_model()
st.session_state["_loaded"] = loaded
st.session_state["_model_key"] = key
runpy.run_path({page!r}, run_name="__page__")
"""


def page_app(page: str, source: str = "digits:mlp", timeout: float = 120, **state) -> AppTest:
    """An AppTest of ``views/<page>.py`` with ``source`` picked in the sidebar (not yet run).

    Extra keyword arguments are put into session state before the first run.
    """
    script = _HARNESS.format(root=str(ROOT), page=str(ROOT / "views" / f"{page}.py"))
    at = AppTest.from_string(script, default_timeout=timeout)
    at.session_state["model_source"] = source
    for key, value in state.items():
        at.session_state[key] = value
    return at


def figures(at: AppTest) -> list[dict]:
    """The plotly figure specs (JSON) of every chart on the page, in order."""
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def decode(arr) -> np.ndarray:
    """A plotly array as floats: plotly ships numbers as lists or as base64 typed arrays."""
    if isinstance(arr, dict):
        shape = tuple(int(x) for x in str(arr.get("shape", "-1")).split(","))
        return np.frombuffer(base64.b64decode(arr["bdata"]), dtype=arr["dtype"]).reshape(shape).astype(float)
    return np.asarray(arr, dtype=float)


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

"""Load the default model while the server starts and the browser fetches the page; warm the rest after
the first page was drawn.

``scripts/serve.py`` (what ``scripts/run_app.sh`` runs) calls ``start("minilm")`` before handing
over to Streamlit; the sidebar's cached loader then ``take``s the finished model instead of loading
it again. Importing transformers' BERT code and reading the weights is most of a cold start
(about 3 s of 5.7 s on 2 cores), and it overlaps here with work in other processes (the browser).

Once the first page of such a server was drawn, ``after_first_page`` runs one background task
(``ui.state.warm_up``: the libraries of the other pages imported, the Sparsify page's default setting
computed), so a first visit to another page does not pay for them. Only a process that called
``start(..., warm_up=True)`` does (tests and ``streamlit run app.py`` by hand warm nothing). This module imports nothing heavy
itself.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import logging
import os
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable

_ROOT = Path(__file__).resolve().parents[1]
_futures: dict[str, Future] = {}
_lock = threading.Lock()
_state = {"started": False, "warm": False}
TIMING_LOG = logging.getLogger("sparsekit.timing")  # the same logger as ui.state's (SPARSEKIT_LOG_TIMINGS=1)
WARM_DELAY_S = 1.0
"""Seconds the background warm-up waits after the first page: the browser draws that page meanwhile."""


def _load(spec: str, future: Future) -> None:
    try:
        t0 = time.perf_counter()
        import sparsekit  # noqa: PLC0415 (the point is to import it off the main thread)

        t1 = time.perf_counter()
        loaded = sparsekit.load_model(spec)
        t2 = time.perf_counter()
        # The first page's libraries (pandas, plotly, sparsekit.viz) import beside the dense pass, which
        # runs in torch's threads without the interpreter lock: the page no longer imports them after it.
        threading.Thread(target=warm_imports, args=(page_libraries(_ROOT, ["model"]),), name="preload-imports",
                         daemon=True).start()
        loaded.quality()  # the dense reference, which the Model page shows first
        TIMING_LOG.info("preload %s import %.3f load %.3f quality %.3f s", spec, t1 - t0, t2 - t1,
                        time.perf_counter() - t2)
        future.set_result(loaded)
    except BaseException as err:  # reported to whoever takes it; the loader then tries itself
        future.set_exception(err)


def start(spec: str = "minilm", *, warm_up: bool = False) -> None:
    """Begin loading ``spec`` on a daemon thread (once per process); ``warm_up``: this process is the app's
    server (``scripts/serve.py``), which also warms the other pages after its first one (``after_first_page``)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads; see app.py
    with _lock:
        _state["started"] = _state["started"] or warm_up
        if spec in _futures:
            return
        future: Future = Future()
        _futures[spec] = future
    threading.Thread(target=_load, args=(spec, future), name=f"preload-{spec}", daemon=True).start()


def started() -> bool:
    """Whether this process is a server that warms up (``start(..., warm_up=True)``: ``scripts/serve.py``)."""
    return _state["started"]


def warm_scheduled() -> bool:
    """Whether ``after_first_page`` has scheduled this process's warm-up already."""
    return _state["warm"]


def take(spec: str) -> Any | None:
    """The preloaded model for ``spec`` (waiting for it if still loading), once; None when it was
    not preloaded or its load failed (the caller loads it the usual way and sees the error)."""
    with _lock:
        future = _futures.pop(spec, None)
    if future is None:
        return None
    try:
        return future.result()
    except Exception:
        return None


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def page_libraries(root: Path, pages: list[str] | None = None) -> list[str]:
    """The library modules (``sparsekit.*``, pandas, plotly...) that the page scripts ``views/<page>.py``
    (default: every page) and the ``ui/*.py`` helpers they import import at their top: what a first visit
    to those pages would import."""
    files = sorted((root / "views").glob("*.py")) if pages is None else [root / "views" / f"{p}.py" for p in pages]
    names: set[str] = set()
    for path in files:
        names |= _imports(path)
    for helper in sorted(n for n in names if n.startswith("ui.")):
        if (root / "ui" / f"{helper[3:]}.py").is_file():
            names |= _imports(root / "ui" / f"{helper[3:]}.py")
    keep = ("sparsekit", "pandas", "plotly", "numpy")
    return sorted(n for n in names if n.split(".")[0] in keep)


def warm_imports(names: list[str]) -> list[str]:
    """Import ``names`` (a ``from x import y`` name that is not a module is skipped); returns those that
    failed (logged: the page that needs one will show its error itself)."""
    failed = []
    for name in names:
        try:
            if name in _MISSING or importlib.util.find_spec(name) is None:
                continue
            importlib.import_module(name)
        except ModuleNotFoundError:  # ``from pkg import function``: pkg.function is no module
            _MISSING.add(name)
        except Exception as err:  # noqa: BLE001 (a warm-up must not take the server down)
            TIMING_LOG.info("warm-up could not import %s: %s", name, err)
            failed.append(name)
    return failed


_MISSING: set[str] = set()


def after_first_page(task: Callable[[], None], delay: float | None = None) -> bool:
    """Run ``task`` on a daemon thread after ``delay`` seconds (default ``WARM_DELAY_S``), once per
    process and only in a process that preloads (``started``). Returns whether it was scheduled now."""
    with _lock:
        if not _state["started"] or _state["warm"]:
            return False
        _state["warm"] = True

    def run() -> None:
        time.sleep(WARM_DELAY_S if delay is None else delay)
        t0 = time.perf_counter()
        try:
            task()
        except Exception as err:  # noqa: BLE001 (the pages compute what the warm-up could not)
            TIMING_LOG.info("warm-up failed: %s", err)
        TIMING_LOG.info("warm-up %.3f s", time.perf_counter() - t0)

    threading.Thread(target=run, name="warm-up", daemon=True).start()
    return True

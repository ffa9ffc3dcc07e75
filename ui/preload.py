"""Load the default model while the server starts and the browser fetches the page.

``scripts/serve.py`` (what ``scripts/run_app.sh`` runs) calls ``start("minilm")`` before handing
over to Streamlit; the sidebar's cached loader then ``take``s the finished model instead of loading
it again. Importing transformers' BERT code and reading the weights is most of a cold start
(about 3 s of 5.7 s on 2 cores), and it overlaps here with work in other processes (the browser).
This module imports nothing heavy itself.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import Future
from typing import Any

_futures: dict[str, Future] = {}
_lock = threading.Lock()


def _load(spec: str, future: Future) -> None:
    try:
        import sparsekit  # noqa: PLC0415 (the point is to import it off the main thread)

        loaded = sparsekit.load_model(spec)
        loaded.quality()  # the dense reference, which the Model page shows first
        future.set_result(loaded)
    except BaseException as err:  # reported to whoever takes it; the loader then tries itself
        future.set_exception(err)


def start(spec: str = "minilm") -> None:
    """Begin loading ``spec`` on a daemon thread (once per process)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads; see app.py
    with _lock:
        if spec in _futures:
            return
        future: Future = Future()
        _futures[spec] = future
    threading.Thread(target=_load, args=(spec, future), name=f"preload-{spec}", daemon=True).start()


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

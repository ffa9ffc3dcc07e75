"""The server-wide queue of heavy jobs, Streamlit side: pages wrap a heavy library call in
``with heavy_job(kind, loaded, method=...)``. The library says what is heavy
(``sparsekit.jobs.is_heavy``); a light job runs at once, a heavy one waits for one of the
``SPARSEKIT_HEAVY_JOBS`` slots (``ui.jobqueue``) showing "waiting: k jobs ahead", and leaves the
line when its session goes away or its script is stopped or rerun. A running job whose session
closed gives up its slot within the queue's ``reap_every`` (half a second), not at its next progress
update (its script stops there)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import streamlit as st
from streamlit.runtime import Runtime
from streamlit.runtime.scriptrunner import get_script_run_ctx

from sparsekit.jobs import is_heavy
from sparsekit.layers import prunable_layers
from ui.jobqueue import JobQueue, held, slots_from_env

POLL_SECONDS = 0.5
"""How often a waiting job redraws its place in line (each redraw is also where a Stop, a rerun or a
closed session interrupts the wait)."""


@st.cache_resource(show_spinner=False)
def _done() -> set[str]:
    """Keys of server-cached heavy jobs that have run (``heavy_job(once=...)``)."""
    return set()


@st.cache_resource(show_spinner=False)
def server_queue() -> JobQueue:
    """The one queue of this server (shared by every session)."""
    return JobQueue(slots_from_env())


def _session_alive(session_id: str) -> bool:
    if not Runtime.exists():
        return True  # AppTest and bare scripts: no runtime to ask
    return Runtime.instance().is_active_session(session_id)


def prunable_weight_count(loaded) -> int | None:
    return None if loaded is None else sum(int(m.weight.numel()) for _, m in prunable_layers(loaded.module))


def waiting_text(ahead: int) -> str:
    return f"waiting: {ahead} job{'s' if ahead != 1 else ''} ahead (heavy jobs run a few at a time on this server)"


@contextlib.contextmanager
def heavy_job(kind: str, loaded=None, *, method: str | None = None, label: str = "",
              where=None, once: str | None = None) -> Iterator[None]:
    """Run the body now when the job is light, else after a slot of the server's queue is free.

    Args:
        kind: the job's kind (``sparsekit.jobs.KINDS``).
        loaded: the model it runs on (its size decides for the kinds that depend on it).
        method: a sparsify job's method.
        label: what the job is, for the queue's snapshot.
        where: a container to draw the waiting message in (default: the page at this point).
        once: for a job whose result the server caches (a ``st.cache_*`` call): its cache key. After
            it has run once, later calls (cache hits) run at once.
    """
    if (once is not None and once in _done()) or not is_heavy(kind, weights=prunable_weight_count(loaded),
                                                               method=method):
        yield
        return
    ctx = get_script_run_ctx()
    owner = ctx.session_id if ctx is not None else "script"
    slot = (where if where is not None else st).empty()
    shown: list[int] = []

    def on_wait(ahead: int) -> None:
        shown.append(ahead)
        slot.info(waiting_text(ahead), icon=":material/hourglass_top:")

    with held(server_queue(), owner, label or kind, on_wait=on_wait, alive=lambda: _session_alive(owner),
              poll=POLL_SECONDS):
        if shown:
            slot.empty()  # (a stopped or rerun wait is cleared by the next run)
        yield
    if once is not None:
        _done().add(once)

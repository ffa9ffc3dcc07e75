"""Long jobs on a page: a progress bar that estimates the time left, and jobs whose finished parts
outlive the script run.

A Streamlit button press reruns the script, which interrupts the run still computing. So a Stop
button works by being pressed: the job's finished parts were kept in session state as they came,
and the new run shows them instead of starting again. Any other widget change interrupts the
run the same way; the job then carries on from its finished parts.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import streamlit as st

STATUSES = ("idle", "running", "stopped", "done")


def time_left(fraction: float, elapsed: float) -> float | None:
    """Seconds still to go if the rest runs at the rate so far.

    Args:
        fraction: share done, 0..1.
        elapsed: seconds since the start.

    Returns:
        The estimate, or None while too little is done (under 2 % or 1 s) to go by.
    """
    if fraction < 0.02 or elapsed < 1.0:
        return None
    return elapsed * (1.0 - min(fraction, 1.0)) / fraction


def duration_text(seconds: float) -> str:
    """``about 40 s`` or ``about 3 min``."""
    if seconds < 90:
        return f"about {max(1, round(seconds))} s"
    return f"about {round(seconds / 60)} min"


class EstimatingProgress:
    """``st.progress`` called as ``bar(fraction, message)`` (the library's progress callback); its
    text adds the share done and, once it can, the time left. Updates come at most every ``every``
    seconds (each one is also where a Stop press can interrupt the run)."""

    def __init__(self, label: str, *, every: float = 0.1) -> None:
        self.label = label
        self.every = every
        self.start = time.monotonic()
        self.last = -every
        self.bar = st.progress(0.0, text=label)

    def __call__(self, fraction: float, message: str) -> None:
        f = min(max(float(fraction), 0.0), 1.0)
        now = time.monotonic()
        if now - self.last < self.every and f < 1.0:
            return  # a search reports every round: no need to send the browser each one
        self.last = now
        left = time_left(f, now - self.start)
        eta = f", {duration_text(left)} left" if left is not None else ""
        self.bar.progress(f, text=f"{self.label}: {f:.0%}{eta} · {message}")

    def empty(self) -> None:
        self.bar.empty()


class ResumedProgress:
    """The bar of a job whose finished parts may come back from disk (a continued scan, search or
    benchmark run): parts done of all (or the share done, without ``total``) and, from the first part
    computed in this run on, the time left; parts a stopped run finished come back at once and do not
    count towards the rate.

    Args:
        verb: the bar's word (``Scanning``).
        total: parts in all, or None to show the share done.
        unit: the parts' name in the plural (``units``).
        counts: whether a message starts the clock (a warm-up message, say, does not).
    """

    def __init__(self, verb: str, total: int | None = None, unit: str = "", *,
                 counts: Callable[[str], bool] = lambda message: True) -> None:
        self.verb, self.total, self.unit, self.counts = verb, total, unit, counts
        self.first: tuple[float, float] | None = None
        self.bar = st.progress(0.0, text=f"{verb}…")

    def __call__(self, fraction: float, message: str) -> None:
        now = time.monotonic()
        if self.first is None and self.counts(message):
            self.first = (fraction, now)
        f0, t0 = self.first or (fraction, now)
        left = (now - t0) * (1 - fraction) / (fraction - f0) if fraction > f0 else None
        if left is not None:
            eta = f", {duration_text(left)} left"
        else:
            eta = f" (time left: after the first {self.unit[:-1]})" if self.total is not None else ""
        done = (f"{round(fraction * self.total)} of {self.total} {self.unit} done" if self.total is not None
                else f"{fraction:.0%}")
        self.bar.progress(min(max(fraction, 0.0), 1.0), text=f"{self.verb}: {done}{eta} · {message}")

    def empty(self) -> None:
        self.bar.empty()


def job_state(name: str, job_id: str) -> dict[str, Any]:
    """The session's record of one job: ``status`` (idle, running, stopped, done), ``parts`` (what
    finished so far, to hand back as ``resume``) and ``result``."""
    jobs = st.session_state.setdefault(name, {})
    return jobs.setdefault(job_id, {"status": "idle", "parts": [], "result": None})


def job_buttons(job: dict[str, Any], where: Any, key: str, start: str, unit: str = "parts") -> Any:
    """One button that fits the job's status, with a press applied: ``start`` when idle, Stop
    while running, Continue when stopped (keys ``{key}_run``, ``{key}_stop``, ``{key}_continue``);
    their help names what the job finishes one by one (``unit``, plural: ``units``, ``cases``, ``runs``).

    Returns:
        The placeholder holding the button, to clear once the job has finished in this run.
    """
    slot = where.empty()
    stop_drawn = job["status"] == "running"
    stop_help = f"keep the {unit} finished so far and show them"
    if stop_drawn and slot.button("Stop", key=f"{key}_stop", help=stop_help):
        job["status"], job["result"] = "stopped", None
    # A press changes the status within this run: the placeholder then shows the next button.
    if job["status"] == "idle" and slot.button(start, key=f"{key}_run"):
        job["status"] = "running"
    elif job["status"] == "stopped" and slot.button("Continue", key=f"{key}_continue",
                                                    help=f"carry on from the {unit} already done"):
        job["status"], job["result"] = "running", None
    if job["status"] == "running" and not stop_drawn:
        slot.button("Stop", key=f"{key}_stop", help=stop_help)
    return slot

"""A fair first-come-first-served queue of tickets for the server's heavy jobs (no Streamlit here).

At most ``slots`` tickets run at once; the others wait in the order they came. A ticket knows how
many jobs are ahead of it (the running ones plus those ahead in line), may stop waiting after a
timeout or when its owner is gone, and leaves the queue in every case (``leave``), running or not.
A ticket entered with an ``alive`` check is watched by the queue's reaper thread: once its owner is
gone (a closed browser tab) it leaves within ``reap_every`` seconds, running or waiting, so the next
job gets the slot without waiting for the orphaned job's next progress update.
``ui.heavy`` is the Streamlit side: one queue per server, shown as "waiting: k jobs ahead".
"""
from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

ENV = "SPARSEKIT_HEAVY_JOBS"


def slots_from_env(environ: dict[str, str] | None = None, cpus: int | None = None) -> int:
    """Heavy jobs run at once: ``SPARSEKIT_HEAVY_JOBS`` if set, else 1 on up to 4 cores and one per 4
    cores above.

    Raises:
        ValueError: the variable is not a whole number of at least 1.
    """
    raw = (os.environ if environ is None else environ).get(ENV, "").strip()
    if not raw:
        n = cpus if cpus is not None else (os.cpu_count() or 1)
        return max(1, n // 4)
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{ENV} must be a whole number of heavy jobs run at once, at least 1; got {raw!r}")
    return value


@dataclass(eq=False)
class Ticket:
    """One job's place: ``owner`` (e.g. a session id) and ``label`` say whose and what it is."""
    owner: str
    label: str = ""
    number: int = 0
    entered: float = field(default_factory=time.monotonic)
    running: bool = False
    left: bool = False
    alive: Callable[[], bool] | None = field(default=None, repr=False)
    """Whether the owner is still there (checked by the reaper; None: never reaped)."""


class JobQueue:
    """Thread-safe FIFO of tickets with ``slots`` running at once."""

    def __init__(self, slots: int, *, reap_every: float = 0.5) -> None:
        if slots < 1:
            raise ValueError(f"a job queue needs at least one slot, got {slots}")
        if reap_every <= 0:
            raise ValueError(f"reap_every must be a positive number of seconds, got {reap_every}")
        self.slots = slots
        self.reap_every = reap_every
        self._cond = threading.Condition()
        self._waiting: deque[Ticket] = deque()
        self._running: list[Ticket] = []
        self._numbers = itertools.count(1)
        self._reaper: threading.Thread | None = None

    def enter(self, owner: str, label: str = "", alive: Callable[[], bool] | None = None) -> Ticket:
        """A new ticket at the end of the line (it runs at once when a slot is free and nobody waits).
        With ``alive``, the reaper takes it out once ``alive()`` says False (``reap``)."""
        with self._cond:
            ticket = Ticket(owner, label, next(self._numbers), alive=alive)
            self._waiting.append(ticket)
            self._grant()
            if alive is not None and (self._reaper is None or not self._reaper.is_alive()):
                self._reaper = threading.Thread(target=self._reap_loop, name="jobqueue-reaper", daemon=True)
                self._reaper.start()
            return ticket

    def _watched(self) -> list[Ticket]:
        return [t for t in [*self._running, *self._waiting] if t.alive is not None]

    def reap(self) -> list[Ticket]:
        """Take out every ticket, running or waiting, whose ``alive`` check says its owner is gone (a
        check that raises counts as alive); returns them. The reaper thread calls this every
        ``reap_every`` seconds while watched tickets are in the queue."""
        with self._cond:
            watched = self._watched()
        gone = []
        for ticket in watched:
            try:
                ok = ticket.alive is None or ticket.alive()
            except Exception:  # noqa: BLE001 (a failing check must not drop a live job)
                ok = True
            if not ok:
                gone.append(ticket)
        for ticket in gone:
            self.leave(ticket)
        return gone

    @property
    def watching(self) -> bool:
        """Whether the reaper thread runs (it ends once no watched ticket is left)."""
        with self._cond:
            return self._reaper is not None and self._reaper.is_alive()

    def _reap_loop(self) -> None:
        while True:
            with self._cond:
                if not self._watched():
                    self._reaper = None  # the next watched ticket starts a new one
                    return
            time.sleep(self.reap_every)
            self.reap()

    def _grant(self) -> None:
        while self._waiting and len(self._running) < self.slots:
            ticket = self._waiting.popleft()
            ticket.running = True
            self._running.append(ticket)
        self._cond.notify_all()

    def ahead(self, ticket: Ticket) -> int:
        """Jobs ahead of ``ticket``: the running ones plus those before it in line (0 once it runs)."""
        with self._cond:
            if ticket.running or ticket.left:
                return 0
            return len(self._running) + self._waiting.index(ticket)

    def wait(self, ticket: Ticket, timeout: float | None = None) -> bool:
        """Block until ``ticket`` runs or ``timeout`` seconds pass; True when it runs.

        Raises:
            ValueError: the ticket has left the queue.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not ticket.running:
                if ticket.left:
                    raise ValueError(f"ticket {ticket.number} has left the queue")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def leave(self, ticket: Ticket) -> None:
        """Take ``ticket`` out, running or waiting (done, stopped, timed out or owner gone); the next
        in line gets its slot. Leaving twice is harmless."""
        with self._cond:
            if ticket.left:
                return
            ticket.left = True
            if ticket.running:
                self._running.remove(ticket)
                ticket.running = False
            else:
                self._waiting.remove(ticket)
            self._grant()

    def drop_gone(self, alive: Callable[[str], bool]) -> list[Ticket]:
        """Remove every waiting or running ticket whose owner ``alive`` says is gone; returns them."""
        with self._cond:
            gone = [t for t in [*self._running, *self._waiting] if not alive(t.owner)]
        for ticket in gone:
            self.leave(ticket)
        return gone

    def snapshot(self) -> dict[str, list[tuple[str, str]]]:
        """``{"running": [(owner, label)], "waiting": [...]}`` in order."""
        with self._cond:
            return {"running": [(t.owner, t.label) for t in self._running],
                    "waiting": [(t.owner, t.label) for t in self._waiting]}


class QueueTimeout(TimeoutError):
    """A heavy job waited longer than it may."""


class OwnerGone(RuntimeError):
    """The session that queued a job went away while it waited."""


@contextlib.contextmanager
def held(queue: JobQueue, owner: str, label: str = "", *, on_wait: Callable[[int], None] | None = None,
         alive: Callable[[], bool] | None = None, poll: float = 0.5,
         timeout: float | None = None) -> Iterator[Ticket]:
    """Hold a slot of ``queue`` for the body of the ``with``: wait in line first, calling
    ``on_wait(jobs ahead)`` on entry and every ``poll`` seconds while waiting (it may raise to give
    up, e.g. Streamlit stopping the script), and leave the queue at the end in every case. With
    ``alive``, the queue's reaper also frees the slot once the owner is gone while the body still
    runs (an orphaned job's body goes on until its own code stops it; the next job need not wait).

    Raises:
        OwnerGone: ``alive()`` said False while waiting (or the reaper took the ticket out).
        QueueTimeout: still waiting after ``timeout`` seconds.
    """
    ticket = queue.enter(owner, label, alive=alive)

    def runs(seconds: float) -> bool:
        try:
            return queue.wait(ticket, seconds)
        except ValueError:  # the reaper took the ticket out: its owner is gone
            raise OwnerGone(f"{owner} went away while its job waited") from None

    try:
        start = time.monotonic()
        while not runs(0):
            if alive is not None and not alive():
                raise OwnerGone(f"{owner} went away while its job waited")
            if timeout is not None and time.monotonic() - start > timeout:
                raise QueueTimeout(f"waited {timeout:g} s for a heavy-job slot: {queue.ahead(ticket)} jobs still ahead")
            if on_wait is not None:
                on_wait(queue.ahead(ticket))
            runs(poll)
        yield ticket
    finally:
        queue.leave(ticket)

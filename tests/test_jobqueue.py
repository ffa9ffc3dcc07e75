"""The heavy-job queue's mechanics (``ui.jobqueue``, threads, no Streamlit) and the library's word
on what is heavy (``sparsekit.jobs``)."""
import threading
import time

import pytest

from sparsekit.jobs import HEAVY_WEIGHTS, is_heavy
from ui.jobqueue import JobQueue, OwnerGone, QueueTimeout, held, slots_from_env


def test_one_slot_runs_in_order_and_counts_jobs_ahead():
    q = JobQueue(1)
    a, b, c = q.enter("a"), q.enter("b"), q.enter("c")
    assert a.running and not b.running and not c.running
    assert [q.ahead(t) for t in (a, b, c)] == [0, 1, 2]
    assert not q.wait(b, timeout=0.01)
    q.leave(a)
    assert b.running and q.ahead(c) == 1
    q.leave(c)  # a waiting ticket leaves: nobody else moves into a slot
    assert q.snapshot() == {"running": [("b", "")], "waiting": []}
    q.leave(b)
    q.leave(b)  # twice is harmless
    assert q.snapshot() == {"running": [], "waiting": []}


def test_k_slots_run_k_at_once():
    q = JobQueue(2)
    tickets = [q.enter(str(i)) for i in range(4)]
    assert [t.running for t in tickets] == [True, True, False, False]
    assert q.ahead(tickets[2]) == 2 and q.ahead(tickets[3]) == 3


@pytest.mark.parametrize("slots", [1, 2])
def test_threads_never_exceed_the_slots_and_are_served_first_come_first_served(slots):
    q = JobQueue(slots)
    running, peak, order = [0], [0], []
    lock = threading.Lock()
    gate = threading.Event()

    def job(i):
        with held(q, f"s{i}", poll=0.01):
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
                order.append(i)
            gate.wait(5)
            time.sleep(0.01)
            with lock:
                running[0] -= 1

    threads = []
    for i in range(8):
        t = threading.Thread(target=job, args=(i,))
        t.start()
        threads.append(t)
        deadline = time.monotonic() + 5  # each thread has its ticket before the next one starts
        while sum(len(v) for v in q.snapshot().values()) < i + 1 and time.monotonic() < deadline:
            time.sleep(0.001)
    assert len(q.snapshot()["waiting"]) == 8 - slots
    gate.set()
    for t in threads:
        t.join(10)
    assert peak[0] == slots and running[0] == 0
    # Granted in order; jobs granted together may start in either order.
    assert sorted(order) == list(range(8)) and max(abs(o - i) for i, o in enumerate(order)) < slots
    assert q.snapshot() == {"running": [], "waiting": []}


def test_held_reports_the_place_while_waiting_and_leaves_on_an_exception():
    q = JobQueue(1)
    first = q.enter("first")
    seen = []

    def on_wait(ahead):
        seen.append(ahead)
        if len(seen) == 3:
            raise KeyboardInterrupt  # what a stopped script does: the ticket must still leave

    with pytest.raises(KeyboardInterrupt):
        with held(q, "second", on_wait=on_wait, poll=0.01):
            pytest.fail("must not run while the slot is taken")
    assert seen == [1, 1, 1]
    assert q.snapshot() == {"running": [("first", "")], "waiting": []}
    q.leave(first)


def test_a_waiting_job_whose_owner_went_away_leaves_the_line():
    q = JobQueue(1)
    first = q.enter("first")
    alive = [True]
    errors = []

    def waiter():
        try:
            with held(q, "gone", alive=lambda: alive[0], poll=0.01):
                pass
        except OwnerGone as err:
            errors.append(err)

    t = threading.Thread(target=waiter)
    t.start()
    while not q.snapshot()["waiting"]:
        time.sleep(0.001)
    alive[0] = False
    t.join(5)
    assert errors and "went away" in str(errors[0])
    assert q.snapshot() == {"running": [("first", "")], "waiting": []}
    assert q.drop_gone(lambda owner: owner != "first") == [first]
    assert q.snapshot() == {"running": [], "waiting": []}


def test_a_running_job_whose_owner_went_away_gives_up_its_slot_before_its_body_ends():
    # A closed tab's job may compute for long between progress updates (where Streamlit would stop
    # it): the reaper frees its slot meanwhile, and the next job in line runs.
    q = JobQueue(1, reap_every=0.01)
    alive, in_body, release = [True], threading.Event(), threading.Event()

    def orphan():
        with held(q, "closed tab", alive=lambda: alive[0], poll=0.01):
            in_body.set()
            release.wait(30)  # a long step without a progress update

    t = threading.Thread(target=orphan)
    t.start()
    assert in_body.wait(10)
    nxt = q.enter("next")
    assert not nxt.running and q.ahead(nxt) == 1
    assert not q.wait(nxt, 0.05)  # the owner is still there: the slot stays taken
    alive[0] = False
    assert q.wait(nxt, 10), "the slot of a gone owner's running job was not freed"
    assert t.is_alive() and not release.is_set()  # freed while the orphan's body still runs
    assert q.snapshot() == {"running": [("next", "")], "waiting": []}
    release.set()
    t.join(10)
    assert q.snapshot() == {"running": [("next", "")], "waiting": []}  # its late leave takes nothing
    q.leave(nxt)
    deadline = time.monotonic() + 10  # nothing left to watch: the reaper thread ends
    while q.watching:
        assert time.monotonic() < deadline, "the reaper thread outlived the last watched ticket"
        time.sleep(0.01)


def test_reap_takes_out_gone_owners_only_and_a_reaped_waiter_raises_owner_gone():
    q = JobQueue(1, reap_every=600)  # the thread's first reap is minutes away: reap() is called by hand
    status = {"a": True, "b": True, "c": True}

    def check(owner):
        def alive():
            if owner == "c":
                raise RuntimeError("cannot tell")  # counts as alive
            return status[owner]
        return alive

    a, b, c = (q.enter(o, alive=check(o)) for o in "abc")
    plain = q.enter("no check")
    assert q.watching and q.reap() == []
    status["a"] = status["b"] = False
    assert q.reap() == [a, b]
    assert a.left and b.left and c.running and not plain.running
    assert q.snapshot() == {"running": [("c", "")], "waiting": [("no check", "")]}

    errors = []
    gone = [False]

    def waiter():
        try:
            with held(q, "w", alive=lambda: not gone[0], poll=60):  # only the reaper can notice
                pass
        except OwnerGone as err:
            errors.append(err)

    th = threading.Thread(target=waiter)
    th.start()
    while len(q.snapshot()["waiting"]) < 2:
        time.sleep(0.001)
    gone[0] = True
    assert [t.owner for t in q.reap()] == ["w"]
    th.join(10)
    assert not th.is_alive() and errors and "went away" in str(errors[0])
    with pytest.raises(ValueError, match="reap_every must be a positive"):
        JobQueue(1, reap_every=0)


def test_a_wait_times_out_with_a_message_and_leaves():
    q = JobQueue(1)
    q.enter("first")
    with pytest.raises(QueueTimeout, match="1 jobs still ahead"):
        with held(q, "late", poll=0.01, timeout=0.05):
            pass
    assert q.snapshot()["waiting"] == []


def test_a_ticket_that_left_cannot_wait():
    q = JobQueue(1)
    q.enter("first")
    t = q.enter("second")
    q.leave(t)
    with pytest.raises(ValueError, match="left the queue"):
        q.wait(t, 0.01)


def test_slots_come_from_the_environment_or_the_cores():
    assert slots_from_env({}, cpus=2) == 1
    assert slots_from_env({}, cpus=4) == 1
    assert slots_from_env({}, cpus=16) == 4
    assert slots_from_env({"SPARSEKIT_HEAVY_JOBS": " 3 "}, cpus=2) == 3
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(ValueError, match="SPARSEKIT_HEAVY_JOBS must be a whole number"):
            slots_from_env({"SPARSEKIT_HEAVY_JOBS": bad})
    with pytest.raises(ValueError, match="at least one slot"):
        JobQueue(0)


def test_the_library_says_what_is_heavy():
    small, large = 50_000, HEAVY_WEIGHTS + 1
    assert not is_heavy("sparsify", weights=small, method="wanda")
    assert not is_heavy("sparsify", weights=large, method="magnitude")
    assert is_heavy("sparsify", weights=large, method="wanda")
    assert is_heavy("sparsify", weights=large, method="sparsegpt")
    for kind in ("training", "scan", "study", "recovery", "benchmark", "seed_study"):
        assert is_heavy(kind, weights=small)
    assert not is_heavy("sweep", weights=small) and is_heavy("sweep", weights=large)
    assert is_heavy("attention_search")  # size unknown: counted as large
    with pytest.raises(ValueError, match="unknown job kind 'nap'"):
        is_heavy("nap")
    with pytest.raises(ValueError, match="pass method="):
        is_heavy("sparsify", weights=large)
    with pytest.raises(ValueError, match="method must be one of"):
        is_heavy("sparsify", weights=large, method="banana")


def _light_and_heavy_page():
    import threading
    import types

    import streamlit as st
    import torch

    from ui.heavy import heavy_job, server_queue

    server_queue.clear()  # a queue of SPARSEKIT_HEAVY_JOBS=1 slot, whatever ran before
    queue = server_queue()
    other = queue.enter("another session")  # the only slot is taken
    tiny = types.SimpleNamespace(module=torch.nn.Sequential(torch.nn.Linear(4, 4)))
    with heavy_job("sparsify", tiny, method="wanda"):  # calibrated, but on a tiny model: light
        st.write("light ran at once")
    threading.Timer(1.0, queue.leave, args=(other,)).start()
    with heavy_job("training", label="digits"):  # heavy: waits for the slot
        st.write(f"heavy ran after the other job left: {other.left}")
    st.write(f"queue empty: {queue.snapshot() == {'running': [], 'waiting': []}}")


def test_the_streamlit_side_runs_light_jobs_at_once_and_queues_heavy_ones(monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("SPARSEKIT_HEAVY_JOBS", "1")
    at = AppTest.from_function(_light_and_heavy_page).run(timeout=60)
    assert not at.exception
    texts = [m.value for m in at.markdown]
    assert texts == ["light ran at once", "heavy ran after the other job left: True", "queue empty: True"]

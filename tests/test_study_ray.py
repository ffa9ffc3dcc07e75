"""Studies on a real Ray cluster: a one-node cluster on localhost (2 CPUs, no dashboard), started for
this module by conftest's ``ray_cluster`` (``ray start --head --block``) and stopped by its pid. The
records must equal the local backend's; a worker killed mid-study must cost only a retry. The fault tests
(#23) kill the attempts actor and a second node by pid (only processes of the clusters started here), start
a head without CPUs, connect through ``ray://`` and check the one-line errors of unreachable addresses."""
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace

import pytest

from sparsekit import study
from sparsekit.study import StudySpec, cells

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow  # a cluster start and worker processes: tens of seconds

SPEC = StudySpec(name="ray", models=("digits:mlp",), methods=("magnitude", "wanda", "random"),
                 patterns=("2:4", "unstructured:0.5"), seeds=(0, 1))


def _local_records(tmp_path, monkeypatch, spec):
    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(tmp_path / "local-cache"))
    records = study.run_study(spec, "local").records
    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(tmp_path / "ray-cache"))
    return [cells.comparable(r) for r in records]


def test_cluster_resources(ray_cluster):
    res = study.cluster_resources(ray_cluster.address)
    assert res["cpus"] == 2 and res["nodes"] == 1 and res["memory_bytes"] > 0
    assert res["per_node"][0]["alive"] and res["per_node"][0]["cpus"] == 2


def test_ray_records_equal_local_records(ray_cluster, tmp_path, monkeypatch):
    expected = _local_records(tmp_path, monkeypatch, SPEC)
    seen = []
    result = study.run_study(SPEC, "ray", ray_address=ray_cluster.address, progress=seen.append)
    assert result.status.state == "finished" and result.status.backend == f"ray at {ray_cluster.address}"
    assert [cells.comparable(r) for r in result.records] == expected
    workers = {r.worker["pid"] for r in result.records}
    assert os.getpid() not in workers  # computed in Ray worker processes
    assert any(s.running and s.workers for s in seen)
    # Stored by the driver as they came: a second run computes nothing.
    again = study.run_study(SPEC, "ray", ray_address=ray_cluster.address)
    assert again.status.computed == 0 and again.status.done == SPEC.cell_count()


def test_killed_worker_costs_one_retry(ray_cluster, tmp_path, monkeypatch):
    spec = replace(SPEC, methods=("magnitude", "random"), patterns=("2:4",), seeds=(0, 1, 2))
    expected = _local_records(tmp_path, monkeypatch, spec)
    # Slow cells (the setting reaches the workers with every SPARSEKIT_* variable), so a kill lands mid-cell.
    monkeypatch.setenv(cells.DELAY_ENV, "3")
    killed: list[int] = []

    def kill_one(status):
        if not killed and status.workers:
            pid = status.workers[0]["pid"]
            assert pid != os.getpid()
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    result = study.run_study(spec, "ray", ray_address=ray_cluster.address, progress=kill_one)
    assert killed, "no running worker was seen"
    assert result.status.state == "finished" and result.status.retries >= 1
    assert study.study_status(spec).retries >= 1  # what another process reads
    assert len(result.records) == spec.cell_count() and all(r.status == "done" for r in result.records)
    assert len({r.key for r in result.records}) == len({c.key for c in spec.cells()})  # nothing twice
    assert [cells.comparable(r) for r in result.records] == expected
    assert killed[0] not in {r.worker["pid"] for r in result.records}


# --- Faults: issue #23 item 2. A study survives the death of any Ray process but the driver. ---

SMALL = replace(SPEC, methods=("magnitude", "random"), patterns=("2:4",), seeds=(0, 1, 2))


def _cli(args, env, timeout=240):
    return subprocess.run([sys.executable, "-m", "sparsekit.study", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=timeout)


def _assert_once(spec, records, expected):
    assert len(records) == spec.cell_count() and all(r.status == "done" for r in records)
    assert len({r.key for r in records}) == len({c.key for c in spec.cells()})  # nothing twice
    assert [cells.comparable(r) for r in records] == expected


def _kill_when(condition, deadline_s=180):
    """A thread that calls ``condition()`` every 0.3 s until it returns a pid, SIGKILLs it, and stops."""
    killed: list[int] = []
    done = threading.Event()

    def watch():
        end = time.monotonic() + deadline_s
        while not done.is_set() and time.monotonic() < end:
            pid = condition()
            if pid:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.3)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return killed, done, thread


def test_killed_attempts_actor_costs_nothing(ray_cluster, tmp_path, monkeypatch):
    """The repro of #23: the CLI on the cluster, ``kill -9`` of the process titled ``ray::_Attempts``."""
    expected = _local_records(tmp_path, monkeypatch, SMALL)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(SMALL.to_json())
    before = {pid for pid, title in ray_cluster.processes() if "ray::_Attempts" in title}

    def actor_while_cells_run():
        procs = ray_cluster.processes()
        running = any("_cell_task" in title for _pid, title in procs)
        actors = [pid for pid, title in procs if "ray::_Attempts" in title and pid not in before]
        return actors[0] if running and actors else None

    killed, done, thread = _kill_when(actor_while_cells_run)
    try:
        run = _cli(["run", str(spec_file), "--ray", ray_cluster.address],
                   {"SPARSEKIT_CACHE_DIR": str(tmp_path / "ray-cache"), cells.DELAY_ENV: "3"})
    finally:
        done.set()
        thread.join(5)
    assert killed, f"the _Attempts actor was never seen: {run.stderr[-2000:]}"
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr and "ActorDiedError" not in run.stderr
    assert f"[{SMALL.cell_count()}/{SMALL.cell_count()}]" in run.stderr
    _assert_once(SMALL, study.study_records(SMALL), expected)


def test_lost_node_cells_run_again(ray_cluster, tmp_path, monkeypatch):
    """A second node joins the cluster, runs cells and is killed (every process of it, by pid)."""
    expected = _local_records(tmp_path, monkeypatch, SMALL)
    monkeypatch.setenv(cells.DELAY_ENV, "4")
    node = ray_cluster.add_node(num_cpus=2)
    try:
        end = time.monotonic() + 120
        while study.cluster_resources(ray_cluster.address)["cpus"] < 4:
            assert time.monotonic() < end, "the second node did not join"
            time.sleep(1)
        killed: list[int] = []
        on_node: list[str] = []

        def kill_node(status):
            if killed:
                return
            node_pids = {pid for pid, _title in node.processes()}
            mine = [w for w in status.workers if w["pid"] in node_pids]
            if mine:
                on_node.extend(w["cell"] for w in mine)
                killed.extend(node_pids)
                node.kill()

        result = study.run_study(SMALL, "ray", ray_address=ray_cluster.address, progress=kill_node)
        assert killed, "no cell ran on the second node"
        assert result.status.state == "finished"
        _assert_once(SMALL, result.records, expected)
        assert not {r.worker["pid"] for r in result.records} & set(killed)
        end = time.monotonic() + 120  # the head's own CPUs, once the cluster has noticed the node is gone
        while study.cluster_resources(ray_cluster.address)["cpus"] != 2:
            assert time.monotonic() < end, "the killed node still counts"
            time.sleep(1)
    finally:
        node.stop()
    assert node.proc is None and not node.processes()


def test_cpus_that_come_later(tmp_path_factory, tmp_path, monkeypatch):
    """A head without CPUs (as autoscaling clusters start): refused after the wait the caller set, with one
    line; run once a node with CPUs joins."""
    from sparsekit.study.ray_backend import NoCPUsError, RayBackend, disconnect
    from sparsekit.study.raycluster import LocalRayCluster

    spec = replace(SMALL, seeds=(0,))
    expected = _local_records(tmp_path, monkeypatch, spec)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(spec.to_json())
    disconnect()
    head = LocalRayCluster(tmp_path_factory.mktemp("ray0"), num_cpus=0).start()
    try:
        run = _cli(["run", str(spec_file), "--ray", head.address],
                   {"SPARSEKIT_CACHE_DIR": str(tmp_path / "cli-cache"), "SPARSEKIT_RAY_CPU_WAIT_S": "2"})
        assert run.returncode == 2, run.stderr[-3000:]
        lines = [line for line in run.stderr.splitlines() if line.strip()]
        assert "waiting up to 2 s" in lines[1] and lines[-1].startswith("error: ") and "no CPUs for 2 s" in lines[-1]
        assert len(lines) == 3 and "Traceback" not in run.stderr

        messages: list[str] = []
        joined = threading.Event()

        def join_when_told(message):
            messages.append(message)
            if "no CPUs yet" in message and not joined.is_set():
                joined.set()
                head.add_node(num_cpus=2)

        backend = RayBackend(head.address, cpu_wait_s=150, notify=join_when_told)
        with pytest.raises(NoCPUsError):
            RayBackend(head.address, cpu_wait_s=0.5, notify=messages.append).worker_budget()
        messages.clear()
        result = study.run_study(spec, backend)
        assert joined.is_set() and "CPUs joined" in messages[-1]
        assert result.status.state == "finished"
        _assert_once(spec, result.records, expected)
    finally:
        disconnect()
        head.stop()
    assert not head.processes()


def test_ray_client_address(ray_cluster, tmp_path, monkeypatch):
    """``ray://`` (Ray Client, ``ray[client]`` = grpcio, pinned) to the test cluster's client server."""
    pytest.importorskip("grpc")
    from sparsekit.study import ray_backend

    spec = replace(SMALL, seeds=(0,))
    expected = _local_records(tmp_path, monkeypatch, spec)
    try:
        result = study.run_study(spec, "ray", ray_address=ray_cluster.client_address)
        assert result.status.state == "finished"
        assert result.status.backend == f"ray at {ray_cluster.client_address}"
        _assert_once(spec, result.records, expected)
        assert os.getpid() not in {r.worker["pid"] for r in result.records}
    finally:
        ray_backend.disconnect()


def test_unreachable_address_is_one_line(tmp_path):
    """Nothing listening, or something that is not Ray: one ``error:`` line on stderr and exit code 2,
    no C++ warnings of Ray's around it."""
    from sparsekit.study.raycluster import free_port

    spec_file = tmp_path / "spec.json"
    spec_file.write_text(SMALL.to_json())
    with socket.socket() as server:  # accepts connections, never answers
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        busy = server.getsockname()[1]
        for address in (f"127.0.0.1:{free_port()}", f"127.0.0.1:{busy}", f"ray://127.0.0.1:{busy}"):
            run = _cli(["run", str(spec_file), "--ray", address], {"SPARSEKIT_CACHE_DIR": str(tmp_path / "c")},
                       timeout=120)
            lines = [line for line in run.stderr.splitlines() if line.strip()]
            assert run.returncode == 2, run.stderr
            assert len(lines) == 2 and lines[0].startswith("study ") and lines[1].startswith("error: "), run.stderr
            assert address in lines[1] and not run.stdout

"""Studies on a real Ray cluster: a one-node cluster on localhost (2 CPUs, no dashboard), started for
this module by conftest's ``ray_cluster`` (``ray start --head --block``) and stopped by its pid. The
records must equal the local backend's; a worker killed mid-study must cost only a retry."""
import os
import signal
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

"""Issue #13's acceptance: a 2-method x 3-sparsity x 4-seed MiniLM one-shot grid and an 8-seed SR-STE vs
STE training grid, each run from the Studies page and from the command line, on the local backend and
on a real Ray cluster (conftest's ``ray_cluster``: ``ray start --head --block`` on localhost, stopped by its pid).
Every run has a cache of its own, so each one computes its cells; the records must agree."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from sparsekit import study
from sparsekit.study import CellRecord, StudySpec, cells
from sparsekit.training import default_train_config

pytest.importorskip("ray")

pytestmark = pytest.mark.slow  # four runs of two grids and a Ray cluster: minutes
ROOT = Path(__file__).resolve().parents[1]

MINILM = StudySpec(name="minilm grid", models=("minilm",), methods=("magnitude", "wanda"),
                   patterns=("unstructured:0.3", "unstructured:0.5", "unstructured:0.7"), seeds=(0, 1, 2, 3))
TRAINING = StudySpec(name="srste vs ste", kind="training", models=(), methods=("ste", "srste"), patterns=("2:4",),
                     seeds=tuple(range(8)), lambda_w=(2e-4,),
                     train=default_train_config("mlp", epochs=2))


def _same(a: list[CellRecord], b: list[CellRecord]) -> None:
    """Equal records: labels, counts and kept fractions exactly; quality to float tolerance (a Ray
    worker may run torch on another thread count, which can reorder float sums)."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        x, y = cells.comparable(x), cells.comparable(y)
        assert x.keys() == y.keys()
        for k in x:
            if k == "metrics":
                assert x[k] == pytest.approx(y[k], rel=1e-5, abs=1e-7), (x["method"], x["pattern"], x["seed"])
            elif isinstance(x[k], float):
                assert x[k] == pytest.approx(y[k], rel=1e-9)
            else:
                assert x[k] == y[k], k


def _page_run(monkeypatch, cache: Path, spec: StudySpec, ray_address: str | None) -> list[CellRecord]:
    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(cache))
    if ray_address:
        monkeypatch.setenv("SPARSEKIT_RAY_ADDRESS", ray_address)
    else:
        monkeypatch.delenv("SPARSEKIT_RAY_ADDRESS", raising=False)
    at = AppTest.from_file("../app.py", default_timeout=900)
    at.run()
    at.switch_page("views/study.py")
    at.run()
    if spec.kind == "oneshot":
        at.multiselect(key="st_models").set_value(list(spec.models))
        at.multiselect(key="st_methods").set_value(list(spec.methods))
        at.multiselect(key="st_patterns").set_value(list(spec.patterns))
        at.number_input(key="st_seeds").set_value(len(spec.seeds))
        at.text_input(key="st_name").set_value(spec.name)
    else:
        at.radio(key="st_kind").set_value("training").run()
        at.selectbox(key="st_arch").set_value(spec.train.arch)
        at.number_input(key="st_epochs").set_value(spec.train.epochs)
        at.number_input(key="st_lambda").set_value(spec.lambda_w[0])
        at.number_input(key="st_tseeds").set_value(len(spec.seeds))
        at.text_input(key="st_tname").set_value(spec.name)
    at.run()
    if ray_address:
        assert at.radio(key="st_backend").value == "ray"
        assert any("2 CPUs" in c.value for c in at.caption)
    at.button(key="st_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.exception] + [e.value for e in at.error]
    n = spec.cell_count()
    assert any(f"{n} of {n} cells done" in s.value for s in at.success)
    assert at.get("plotly_chart")
    records = study.study_records(spec)
    assert len(records) == n and all(r.status == "done" for r in records)
    return records


def _cli_run(monkeypatch, tmp_path: Path, cache: Path, spec: StudySpec, ray_address: str | None) -> list[CellRecord]:
    path = tmp_path / f"{spec.name.replace(' ', '_')}.json"
    path.write_text(spec.to_json())
    env = {k: v for k, v in os.environ.items() if k != "SPARSEKIT_RAY_ADDRESS"}
    env["SPARSEKIT_CACHE_DIR"] = str(cache)
    extra = ["--ray", ray_address] if ray_address else ["--backend", "local"]
    out = subprocess.run([sys.executable, "-m", "sparsekit.study", "run", str(path), *extra], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    status = subprocess.run([sys.executable, "-m", "sparsekit.study", "status", str(path)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    n = spec.cell_count()
    assert status.returncode == 0 and status.stdout.startswith(f"[{n}/{n}] finished"), status.stdout
    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(cache))
    records = study.study_records(spec)
    assert len(records) == n and all(r.status == "done" for r in records)
    return records


@pytest.mark.parametrize("spec", [MINILM, TRAINING], ids=["minilm-oneshot", "srste-training"])
def test_grid_from_page_and_cli_on_local_and_ray(ray_cluster, tmp_path, monkeypatch, spec):
    page_local = _page_run(monkeypatch, tmp_path / "page-local", spec, None)
    page_ray = _page_run(monkeypatch, tmp_path / "page-ray", spec, ray_cluster.address)
    cli_local = _cli_run(monkeypatch, tmp_path, tmp_path / "cli-local", spec, None)
    cli_ray = _cli_run(monkeypatch, tmp_path, tmp_path / "cli-ray", spec, ray_cluster.address)
    _same(page_local, page_ray)
    _same(page_local, cli_local)
    _same(page_local, cli_ray)
    workers = {r.worker["pid"] for r in page_ray + cli_ray}
    assert os.getpid() not in workers  # the Ray runs really ran in Ray's worker processes
    if spec.kind == "training":
        groups = study.summarize(page_local)
        assert {g.variant for g in groups} == {"ste", "srste λ=0.0002"}
        assert all(len(g.seeds) == 8 for g in groups)
        assert study.paired_differences(page_local, "late_sad_pct")

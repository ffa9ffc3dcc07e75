"""The GPU check as it runs on a stock CUDA image: no streamlit/plotly there, wheels installed offline
from a folder, a dry run on the CPU (scripts/gpu_check.sh --dry-run), and the whole-model forward on
a model built from its config (no weight files)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# A meta-path finder that refuses the app-only packages, as on a GPU image that lacks them.
BLOCKER = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("streamlit", "plotly"):
            raise ImportError(f"{name} is blocked: the GPU check must not need it")
        return None
sys.meta_path.insert(0, _Block())
"""


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["SPARSEKIT_CACHE_DIR"] = str(tmp_path / "cache")
    return env


def test_sparsekit_and_the_bench_cli_run_without_streamlit_or_plotly(tmp_path):
    out = tmp_path / "run.json"
    code = BLOCKER + f"""
import runpy
import sparsekit, sparsekit.bench, sparsekit.bench.suites, sparsekit.bench.runner
sys.argv = ["sparsekit.bench", "--suites", "formats", "--device", "cpu", "--quick", "--densities", "0.5",
            "--repeats", "1", "--out", {str(out)!r}]
try:
    runpy.run_module("sparsekit.bench", run_name="__main__", alter_sys=True)
except SystemExit as e:
    assert not e.code, e.code
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("streamlit", "plotly"))
assert not bad, bad
print("IMPORT-OK")
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "IMPORT-OK" in proc.stdout, proc.stderr[-3000:]
    run = json.loads(out.read_text())
    assert run["suites"] == ["formats"] and all(r["status"] == "ok" for r in run["results"])


def test_the_blocker_does_block(tmp_path):
    code = BLOCKER + "import plotly.graph_objects\n"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0 and "blocked" in proc.stderr


def _probe_wheel(folder: Path) -> Path:
    """A minimal pure-Python wheel, so the offline install runs here without a download."""
    folder.mkdir(parents=True)
    path = folder / "gpucheckprobe-0.1-py3-none-any.whl"
    info = "gpucheckprobe-0.1.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("gpucheckprobe.py", "WHERE = __file__\n")
        z.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: gpucheckprobe\nVersion: 0.1\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return path


def test_gpu_check_dry_run_installs_wheels_runs_everything_but_cuda_and_summarises(tmp_path):
    wheels = tmp_path / "wheels"
    _probe_wheel(wheels)
    out = tmp_path / "out"
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--wheels", str(wheels), "--dry-run", str(out)], cwd=ROOT,
                          env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    assert "installed 1 wheel(s) into" in proc.stderr
    summary = (out / "summary.txt").read_text()
    assert summary.strip() in proc.stdout  # printed at the end, and kept
    assert "DRY RUN" in summary and "wheels: gpucheckprobe-0.1-py3-none-any.whl" in summary
    assert re.search(r"CUDA tests: 0 passed, 0 failed, 0 errors, \d+ skipped", summary), summary
    for heading in ("2:4 vs dense F.linear", "FlexAttention block-sparse vs dense SDPA", "whole model", "cases:"):
        assert heading in summary, summary
    assert len(summary.splitlines()) <= 45  # one screen
    run = json.loads((out / "gpu-bench.json").read_text())
    assert run["suites"] == ["linear", "model", "attention", "formats", "kv"]
    assert run["env"]["device"] == "cpu"
    flex = [r for r in run["results"] if r["backend"].startswith("flex")]
    assert flex and all(r["status"] == "ok" for r in flex)
    # The app's model's shapes come from its config (the MiniLM package need not be installed).
    shapes = {(r["params"]["out_features"], r["params"]["in_features"]) for r in run["results"] if r["suite"] == "linear"}
    assert {(384, 384), (1536, 384), (384, 1536)} <= shapes
    assert "== linear ==" in (out / "gpu-bench.txt").read_text()
    assert (out / "cuda-tests.xml").exists()


def test_gpu_check_refuses_an_empty_wheel_folder_and_unknown_options(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--wheels", str(tmp_path / "empty"), "--dry-run",
                           str(tmp_path / "out")], cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "no .whl files" in proc.stderr
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--bogus"], cwd=ROOT, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown option" in proc.stderr


def test_gpu_wheels_are_pinned_in_requirements():
    script = (ROOT / "scripts" / "gpu_wheels.sh").read_text()
    names = re.findall(r'"\$\(pin ([A-Za-z0-9_.-]+)\)"', script)
    assert names, "gpu_wheels.sh lists no wheels"
    pins = {line.split("==")[0].lower() for line in (ROOT / "requirements.txt").read_text().splitlines()
            if "==" in line and not line.startswith("#")}
    assert {n.lower() for n in names} <= pins
    assert "--no-deps" in script and "--python-version 3.12" in script and "/.gpu-wheels/" in (
        ROOT / ".gitignore").read_text()


def test_cli_layer_shapes_and_config_models():
    from sparsekit.bench.__main__ import main as cli_main  # noqa: F401  (the module imports)
    from sparsekit.bench.__main__ import _shapes, build_config
    import argparse

    assert _shapes("11008x4096, 4096X11008") == ((11008, 4096), (4096, 11008))
    with pytest.raises(argparse.ArgumentTypeError, match="OUTxIN"):
        _shapes("11008by4096")
    parser_args = argparse.Namespace(
        gpu_all=False, suites=["model"], quick=False, device="cpu", dtype=None, repeats=None, window=None,
        time_budget_s=None, model="config:bert-base", sizes=None, batches=None, densities=None, seq_lens=None,
        layer_shapes=((11008, 4096),), model_shapes="config:minilm")
    cfg = build_config(parser_args)
    assert cfg.model == "config:bert-base"
    assert (11008, 4096) in cfg.layer_shapes and {(384, 384), (1536, 384), (384, 1536)} <= set(cfg.layer_shapes)


def test_model_suite_on_a_config_model_converts_every_linear_emulated(monkeypatch):
    from sparsekit.bench import suites

    with pytest.raises(ValueError, match="unknown config model"):
        suites.config_model("config:nope")
    model = suites.config_model("config:minilm")
    assert model.tokenizer is None and model.info["random_inputs"]
    calls = []

    def convert(weight, backend):
        assert suites.is_2_4(weight)
        calls.append(tuple(weight.shape))
        return weight.clone()

    monkeypatch.setattr(suites, "semi_structured_available", lambda device: "")
    monkeypatch.setattr(suites, "_backends", lambda device: ["cutlass"])
    monkeypatch.setattr(suites, "_to_semi_structured", convert)
    res = suites.model_suite(model, [1, 2], device="cpu", dtype=torch.float32, seq_len=16, repeats=2)
    assert len(calls) == 36
    assert [r.backend for r in res] == ["dense", "2:4"] * 2
    assert all(r.status == "ok" and r.rel_error < 1e-6 for r in res), [(r.status, r.message) for r in res]
    assert res[1].params["converted_linears"] == 36 and "random weights" in res[1].params["model"]

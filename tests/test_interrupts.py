"""Ctrl-C in a notebook or a terminal keeps finished work: a study, a sensitivity scan, a seed study, a
training run, a recovery run, a calibrated sparsify (SparseGPT) and a channel permutation search, each in its own Python process with its own disk cache, get SIGINT once
their first unit (cell, layer, run; a training epoch, a recovery evaluation interval; a pruned or permuted layer) has finished; the
same call run again computes only what is missing, and its result equals an uninterrupted run's."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from devtools import ROOT

COMMON = """
import json, os, sys, time
from dataclasses import asdict, replace
DELAY = float(os.environ.get("PAUSE_AFTER_UNIT", "0"))

def finished(what, count):  # a unit is on disk: say so, and give the test time to interrupt
    print(what, count, flush=True)
    time.sleep(DELAY)
"""

JOBS = {
    "study": """
from sparsekit import study
from sparsekit.study import StudySpec
spec = StudySpec(name="interrupted", models=("digits:mlp",), methods=("magnitude", "random"),
                 patterns=("2:4", "unstructured:0.5"), seeds=(0, 1))
seen = [0]
def progress(status):
    if status.computed > seen[0]:
        seen[0] = status.computed
        finished("UNIT", status.computed)
res = study.run_study(spec, "local", progress=progress)
print("COMPUTED", res.status.computed, flush=True)
print("RESULT", json.dumps(sorted([r.method, r.pattern, r.seed, r.metrics] for r in res.records)))
""",
    "scan": """
import sparsekit
from sparsekit import sensitivity_units
from sparsekit.sensitivity import SensitivityConfig, sensitivity_scan
real = sensitivity_units.save_unit
computed = []
def save(key, index, row):
    real(key, index, row)
    computed.append(index)
    finished("UNIT", len(computed))
sensitivity_units.save_unit = save
scan = sensitivity_scan(sparsekit.load_model("digits:mlp"), SensitivityConfig(sparsities=(0.5, 0.9), nm=((2, 4),)),
                        progress=False)
print("COMPUTED", len(computed), flush=True)
print("RESULT", json.dumps([scan.units, scan.quality, scan.drop, scan.proxy, scan.notes, scan.complete]))
""",
    "seeds": """
from sparsekit.seedstudy import SeedStudyConfig, run_seed_study
from sparsekit.training import TrainConfig
cfg = SeedStudyConfig(train=TrainConfig(arch="mlp", epochs=2, batch_size=256), patterns=((2, 4),), seeds=2,
                      lambda_sweep=())
seen = [0]
def progress(p):
    if p.computed > seen[0]:
        seen[0] = p.computed
        finished("UNIT", p.computed)
res = run_seed_study(cfg, progress=progress)
print("COMPUTED", res.computed, flush=True)
print("RESULT", json.dumps([asdict(replace(r, seconds=0)) for r in res.runs]))
""",
    "train": """
from sparsekit.cache import tensor_digest
from sparsekit.training import default_train_config, run_and_save
cfg = default_train_config("mlp", method="srste", epochs=3, batch_size=256)
epochs, steps = [0], [0]
def callback(p):
    if p.event == "step":
        steps[0] += 1
    if p.event == "epoch":
        epochs[0] += 1
        finished("UNIT", epochs[0])
rec = run_and_save(cfg, callback=callback, progress=False)
assert steps[0] == epochs[0] * rec.steps_per_epoch, (steps, epochs)  # whole epochs only
print("COMPUTED", epochs[0], flush=True)
out = rec.to_dict(include_masks=True)
for key in ("run_id", "created", "seconds", "owner"):
    out.pop(key)
for e in out["epochs"]:
    e.pop("seconds")
out["weights"] = tensor_digest(*(rec.weights[k] for k in sorted(rec.weights)))
print("RESULT", json.dumps([rec.status, out], sort_keys=True))
""",
    "recovery": """
import sparsekit
from sparsekit.cache import tensor_digest
from sparsekit.recovery import default_recovery_config, recover_and_save
mlp = sparsekit.load_model("digits:mlp")
result = sparsekit.sparsify(mlp, sparsekit.SparsifyConfig(pattern="nm", n=2, m=4))
cfg = default_recovery_config("image-classifier", mode="srste", steps=60, eval_every=20)
evals, steps = [0], [0]
def progress(p):
    if p.event == "step":
        steps[0] += 1
    if p.event == "eval":
        evals[0] += 1
        finished("UNIT", evals[0])
rec = recover_and_save(result, mlp, cfg, progress=progress)
assert steps[0] == evals[0] * cfg.eval_every, (steps, evals)  # whole intervals only
print("COMPUTED", evals[0], flush=True)
out = rec.to_dict()
for key in ("run_id", "created", "seconds", "owner"):
    out.pop(key)
for iv in out["intervals"]:
    iv.pop("seconds")
out["weights"] = tensor_digest(*(rec.weights[k] for k in sorted(rec.weights)))
print("RESULT", json.dumps([rec.status, rec.step_loss, rec.step_flip_rate, out], sort_keys=True))
""",
    "sparsify": """
import sparsekit
from sparsekit import pruned_layers
from sparsekit.cache import tensor_digest
pruned_layers.CHECKPOINT_AFTER_S = 0.0  # write every finished layer (a real run waits 2 s before the first)
real = pruned_layers.PrunedLayerStore.put
computed = []
def put(self, name, mask, weight, note):
    real(self, name, mask, weight, note)
    computed.append(name)
    finished("UNIT", len(computed))
pruned_layers.PrunedLayerStore.put = put
vit = sparsekit.load_model("digits:vit")
result = sparsekit.sparsify(vit, sparsekit.SparsifyConfig(method="sparsegpt", pattern="nm", n=2, m=4),
                            progress=False)
assert len(computed) + len(result.resumed_layers) == len(result.masks)
print("COMPUTED", len(computed), flush=True)
state = result.model.state_dict()
print("RESULT", json.dumps([tensor_digest(*(result.masks[k] for k in sorted(result.masks))),
                            tensor_digest(*(state[k] for k in sorted(state))), result.notes]))
""",
    "permute": """
import sparsekit
from sparsekit.permutation import permute_channels
searched = []
def on_layer(row):
    searched.append(row["layer"])
    finished("UNIT", len(searched))
perm = permute_channels(sparsekit.load_model("digits:mlp"), 2, 4, max_seconds_per_layer=1e9, on_layer=on_layer,
                        progress=False)
print("COMPUTED", len(searched), flush=True)
print("RESULT", json.dumps([[r["layer"], r["perm"], r["kept_after"]] for r in perm.rows]))
""",
}
TOTAL = {"study": 6, "scan": 3, "seeds": 4, "train": 3, "recovery": 3, "sparsify": 14, "permute": 2}
"""Units each job computes from nothing (the study's magnitude cells share one key per pattern; a training
run's epochs; a recovery run's evaluation intervals)."""
AGAIN = {"train": 3, "recovery": 3, "sparsify": 14}
"""Units the job computes when run once more after finishing: studies, scans and permutation searches find
every unit cached (0); a training, recovery or sparsify run that completed is not a cache of results, so the
same call is a new run."""


def _command(job: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(COMMON) + textwrap.dedent(JOBS[job])]


def _env(cache, pause: float = 0.0) -> dict[str, str]:
    return {**os.environ, "SPARSEKIT_CACHE_DIR": str(cache), "PAUSE_AFTER_UNIT": str(pause),
            "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}


def _run(job: str, cache) -> tuple[int, object]:
    """Run the job to the end: (units computed, its result)."""
    out = subprocess.run(_command(job), env=_env(cache), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if line.startswith(("COMPUTED", "RESULT")))
    return int(lines["COMPUTED"]), json.loads(lines["RESULT"])


@pytest.mark.slow
@pytest.mark.parametrize("job", sorted(JOBS))
def test_sigint_keeps_finished_units_and_the_rerun_computes_only_the_rest(job, tmp_path):
    cache = tmp_path / "cache"
    proc = subprocess.Popen(_command(job), env=_env(cache, pause=30.0), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # blocks until the first unit is on disk (or the process ends)
        assert first.startswith("UNIT 1"), (first, proc.stderr.read() if proc.stderr else "")
        proc.send_signal(signal.SIGINT)  # Ctrl-C while it pauses after that unit
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0 and "KeyboardInterrupt" in err, err[-3000:]
    assert "RESULT" not in out
    done_before = 1 + sum(line.startswith("UNIT") for line in out.splitlines())
    assert done_before < TOTAL[job]
    computed, resumed = _run(job, cache)
    assert computed == TOTAL[job] - done_before  # no finished unit was computed again
    again, _ = _run(job, cache)
    assert again == AGAIN.get(job, 0)
    fresh_count, fresh = _run(job, tmp_path / "fresh")
    assert fresh_count == TOTAL[job] and resumed == fresh

"""The seed study's mechanics: which runs, their numbers recomputed independently, caching and
resuming, pairing, the command line. (Whether SR-STE wins is the study's output, not a test.)"""
import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from sparsekit import seedstudy
from sparsekit.models.digits import digits_split
from sparsekit.seedstudy import SeedRun, SeedStudyConfig, SeedStudyResult, run_metrics, run_seed_study
from sparsekit.training import TrainConfig, train
from devtools import ROOT

TINY = TrainConfig(arch="mlp", epochs=2, batch_size=256)


@pytest.fixture(scope="module")
def data():
    return digits_split()


def test_runs_of_a_study_are_paired_and_deduplicated():
    cfg = SeedStudyConfig(train=TINY, patterns=((2, 4), (1, 4)), seeds=3, lambda_sweep=(0.0, 2e-4, 1e-3))
    runs = cfg.run_configs()
    # 2 patterns × 2 methods × 3 seeds, plus λ=1e-3 at 2:4 (λ=0 is the STE run, 2e-4 the main SR-STE run).
    assert len(runs) == 12 + 3
    assert len({r.to_json() for r in runs}) == len(runs)
    assert all(r.snapshot_unit == "epoch" and r.snapshot_every == 1 for r in runs)
    ste = {(r.n, r.m, r.seed) for r in runs if r.method == "ste"}
    sr = {(r.n, r.m, r.seed) for r in runs if r.method == "srste" and r.lambda_w == 2e-4}
    assert ste == sr == {(n, m, s) for n, m in ((2, 4), (1, 4)) for s in range(3)}
    assert SeedStudyConfig.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize("kw,message", [
    ({"seeds": 1}, "between 2 and"),
    ({"train": TrainConfig(lambda_w=0.0)}, "λ_w must be > 0"),
    ({"lambda_sweep": (-1.0,)}, ">= 0"),
    ({"patterns": ((4, 4),)}, "1 <= N < M"),
    ({"seeds": 64, "patterns": ((2, 4), (1, 4), (2, 8), (1, 8), (4, 8), (3, 4))}, "over the limit"),
])
def test_bad_studies_get_clear_messages(kw, message):
    with pytest.raises(ValueError, match=message):
        SeedStudyConfig(**kw).validate()


def test_parsers():
    assert seedstudy.parse_patterns("2:4, 1:4;2:4") == [(2, 4), (1, 4)]
    assert seedstudy.parse_floats("0, 2e-4,, 2e-4") == [0.0, 2e-4]
    with pytest.raises(ValueError, match="N:M"):
        seedstudy.parse_patterns("2-4")
    with pytest.raises(ValueError, match="number"):
        seedstudy.parse_floats("0, abc")


def test_run_metrics_equal_a_direct_count(data):
    rec = train(TrainConfig(arch="cnn", method="ste", epochs=4, batch_size=256), data=data)
    got = run_metrics(rec)
    masks = [rec.history.masks(i) for i in range(len(rec.history))]
    total = sum(m.numel() for m in masks[0].values())
    changes = [0] + [sum(int((masks[i][k] != masks[i - 1][k]).sum()) for k in masks[i]) for i in range(1, 5)]
    assert got.early_sad_pct == pytest.approx(100 * (changes[1] + changes[2]) / total)
    assert got.late_sad_pct == pytest.approx(100 * (changes[3] + changes[4]) / total)
    late_changed = sum(int(((masks[2][k] != masks[3][k]) | (masks[3][k] != masks[4][k])).sum()) for k in masks[0])
    assert got.late_flipped_pct == pytest.approx(100 * late_changed / total)
    assert got.accuracy == rec.final_accuracy and got.sparse_weights == total


def test_srste_at_lambda_zero_is_ste(data):
    ste = run_metrics(train(replace(TINY, method="ste"), data=data))
    zero = run_metrics(train(replace(TINY, method="srste", lambda_w=0.0), data=data))
    for key in ("accuracy", "late_sad_pct", "early_sad_pct", "late_flipped_pct"):
        assert getattr(ste, key) == getattr(zero, key)


def test_study_caches_stops_and_resumes(tmp_cache, data):
    cfg = SeedStudyConfig(train=TINY, patterns=((2, 4),), seeds=2, lambda_sweep=(0.0, 1e-3))
    total = len(cfg.run_configs())
    assert total == 6
    stopped = run_seed_study(cfg, data=data, progress=lambda p: p.done >= 2)
    assert not stopped.complete and stopped.computed == 2 and len(stopped.runs) == 2
    assert seedstudy.cached_runs(cfg)[0] == 2
    seen = []
    full = run_seed_study(cfg, data=data, progress=seen.append)
    assert full.complete and full.computed == total - 2  # the two finished runs were not retrained
    assert [p.done for p in seen] == list(range(1, total + 1))
    again = run_seed_study(cfg, data=data)
    assert again.computed == 0 and again.runs == full.runs
    fresh = run_seed_study(cfg, data=data, use_cache=False)
    # Same seeds, same machine: identical numbers (only the wall time differs).
    assert [replace(r, seconds=0) for r in fresh.runs] == [replace(r, seconds=0) for r in full.runs]
    # Summaries and pairing come from those runs.
    ste = full.values("ste", 2, 4, 0.0, "late_sad_pct")
    sr = full.values("srste", 2, 4, 2e-4, "late_sad_pct")
    comp = next(c for c in full.comparisons() if c.metric == "late_sad_pct")
    assert comp.paired.diff.mean == pytest.approx(np.mean([sr[s] - ste[s] for s in (0, 1)]))
    doc = json.loads(full.to_json())
    assert doc["format"] == "sparsekit-seed-study" and len(doc["runs"]) == total
    assert [r["lambda_w"] for r in doc["lambda_sweep"]] == [0.0, 1e-3]
    assert "λ_w sweep at 2:4" in full.markdown()
    assert full.runs_csv().count("\n") == total + 1


def _run(method, seed, lam, late):
    return SeedRun(method=method, n=2, m=4, lambda_w=lam, seed=seed, accuracy=95.0, late_sad_pct=late,
                   early_sad_pct=40.0, late_flipped_pct=late / 2, sparse_weights=100, seconds=1.0)


def test_pairing_by_seed_and_plain_words():
    cfg = SeedStudyConfig(train=TINY, patterns=((2, 4),), seeds=3, lambda_sweep=())
    runs = [_run("ste", s, 0.0, v) for s, v in zip(range(3), (3.0, 2.0, 4.0))]
    runs += [_run("srste", s, 2e-4, v) for s, v in zip((2, 0, 1), (3.5, 2.5, 1.5))]  # other order on purpose
    result = SeedStudyResult(cfg, runs)
    comp = next(c for c in result.comparisons() if c.metric == "late_sad_pct")
    # Paired by seed: differences -0.5, -0.5, -0.5 → a zero-width interval below zero.
    assert comp.paired.diff.mean == pytest.approx(-0.5) and comp.paired.a_lower == 3
    assert "SR-STE is lower than STE" in comp.sentence
    acc = next(c for c in result.comparisons() if c.metric == "accuracy")
    assert acc.paired.diff.mean == 0 and "includes zero" in acc.sentence and "3 ties" in acc.sentence


def test_command_line(tmp_path):
    env_cache = tmp_path / "cache"
    out = tmp_path / "study.json"
    cmd = [sys.executable, "-m", "sparsekit.seedstudy", "--arch", "mlp", "--epochs", "2", "--seeds", "2",
           "--patterns", "2:4", "--lambdas", "", "--json", str(out)]
    env = {**__import__("os").environ, "SPARSEKIT_CACHE_DIR": str(env_cache)}
    done = subprocess.run(cmd, cwd=str(ROOT), capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert "| 2:4 | STE |" in done.stdout and "SR-STE − STE" in done.stdout
    assert "[4/4]" in done.stderr
    assert len(json.loads(out.read_text())["runs"]) == 4
    bad = subprocess.run([*cmd[:3], "--seeds", "1"], cwd=str(ROOT), capture_output=True, text=True, timeout=120,
                         env=env)
    assert bad.returncode == 2 and "between 2 and" in bad.stderr

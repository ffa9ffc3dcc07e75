"""Progress of long calls: a tqdm bar by default (after a delay), silence on request, callbacks as before."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit import progress as P


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))


def test_reporter_passes_callbacks_and_silence_through():
    seen = []

    def cb(f, m):
        seen.append((f, m))

    with P.reporter(cb, "x") as r:
        assert r is cb
    for quiet in (False, None):
        with P.reporter(quiet, "x") as r:
            assert r is None
    with pytest.raises(TypeError, match="progress must be"):
        with P.reporter("yes", "x"):
            pass


def test_bar_shows_fraction_and_message(capfd, monkeypatch):
    monkeypatch.setattr(P, "BAR_DELAY_S", 0.0)
    with P.reporter(True, "unit work") as r:
        r(0.25, "a quarter")
        r(1.0, "all of it")
    err = capfd.readouterr().err
    assert "unit work" in err and "100%" in err and "all of it" in err


def test_short_calls_print_nothing_and_callbacks_still_work(capfd, monkeypatch):
    # A call that ends within the delay prints nothing. The delay is set far above any run time, so a
    # loaded machine (where this call can take seconds) cannot make the bar appear.
    monkeypatch.setattr(P, "BAR_DELAY_S", 3600.0)
    sparsekit.sparsify(net(), sparsekit.SparsifyConfig())  # default progress=True, far under the delay
    assert capfd.readouterr().err == ""
    seen = []
    sparsekit.sparsify(net(), sparsekit.SparsifyConfig(), progress=lambda f, m: seen.append(f))
    assert seen and seen[-1] == 1.0 and all(0.0 <= f <= 1.0 for f in seen)
    monkeypatch.setattr(P, "BAR_DELAY_S", 0.0)
    sparsekit.sparsify(net(), sparsekit.SparsifyConfig())
    err = capfd.readouterr().err
    assert "sparsify" in err and "100%" in err
    sparsekit.sparsify(net(), sparsekit.SparsifyConfig(), progress=False)
    assert capfd.readouterr().err == ""


def test_bar_closes_when_the_call_fails(capfd, monkeypatch):
    monkeypatch.setattr(P, "BAR_DELAY_S", 0.0)
    with pytest.raises(ValueError):
        sparsekit.sparsify(net(), sparsekit.SparsifyConfig(pattern="nm", n=4, m=4))
    assert "sparsify" in capfd.readouterr().err  # closed and flushed, not left hanging


# ----------------------------------------------------------------------------- training, studies, recovery, bench

@pytest.fixture(scope="module")
def digits():
    from sparsekit.models.digits import digits_split

    return digits_split()


def tiny_train(**kw):
    from sparsekit.training import TrainConfig

    return TrainConfig(**{"arch": "mlp", "method": "ste", "epochs": 1, "batch_size": 512, **kw})


def test_training_shows_steps_and_callbacks_still_work(capfd, monkeypatch, digits):
    from sparsekit.training import run_and_save, train

    monkeypatch.setattr(P, "BAR_DELAY_S", 0.0)
    events, fractions = [], []
    rec = train(tiny_train(), data=digits, callback=lambda p: events.append(p.event))
    err = capfd.readouterr().err
    total = rec.total_steps
    assert "train" in err and "100%" in err and "accuracy" in err and total == 3
    assert events == ["start", "step", "step", "step", "epoch"]  # the step callback as before
    train(tiny_train(), data=digits, progress=lambda f, m: fractions.append((f, m)))
    assert [f for f, _ in fractions] == [0.0, 1 / 3, 2 / 3, 1.0, 1.0] and "step 2/3" in fractions[2][1]
    stopped = train(tiny_train(epochs=2), data=digits, progress=False, callback=lambda p: p.step == 2)
    assert stopped.status == "stopped" and capfd.readouterr().err == ""
    saved = run_and_save(tiny_train(), data=digits)
    assert saved.run_id and "train" in capfd.readouterr().err
    run_and_save(tiny_train(), data=digits, progress=False)
    assert capfd.readouterr().err == ""


def test_seed_study_shows_runs_and_its_trainings_stay_quiet(capfd, monkeypatch, digits):
    from sparsekit.seedstudy import SeedStudyConfig, run_seed_study

    cfg = SeedStudyConfig(train=tiny_train(epochs=2), patterns=((2, 4),), seeds=2, lambda_sweep=())
    monkeypatch.setattr(P, "BAR_DELAY_S", 0.0)
    result = run_seed_study(cfg, data=digits)
    err = capfd.readouterr().err
    assert len(result.runs) == 4 and "seed study" in err and "4/4 runs" in err
    assert "train:" not in err  # the study's own training runs draw no bar
    seen = []
    assert run_seed_study(cfg, data=digits, progress=seen.append).complete
    assert [(p.done, p.total) for p in seen] == [(i, 4) for i in range(1, 5)] and capfd.readouterr().err == ""
    stopped = run_seed_study(cfg, data=digits, progress=lambda p: True)
    assert not stopped.complete
    run_seed_study(cfg, data=digits, progress=False)
    assert capfd.readouterr().err == ""


def test_study_shows_cells_done_of_all(capfd, monkeypatch):
    from sparsekit import study
    from sparsekit.study import StudySpec

    spec = StudySpec(name="bar", models=("digits:mlp",), methods=("magnitude",), patterns=("2:4", "1:4"), seeds=(0,))
    monkeypatch.setattr(P, "BAR_DELAY_S", 0.0)
    result = study.run_study(spec, "local")
    err = capfd.readouterr().err
    assert len(result.done) == 2 and "study bar" in err and "2/2 cells done" in err and "100%" in err
    assert "sparsify:" not in err  # the cells prune silently
    seen = []
    study.run_study(spec, "local", progress=seen.append)
    assert seen and seen[-1].done == 2 and seen[-1].state == "finished" and capfd.readouterr().err == ""
    study.run_study(spec, "local", progress=False)
    assert capfd.readouterr().err == ""


@pytest.fixture(scope="module")
def mlp_pair():
    mlp = sparsekit.load_model("digits:mlp")
    return mlp, sparsekit.sparsify(mlp, sparsekit.SparsifyConfig(pattern="nm", n=2, m=4), progress=False)


def test_recovery_shows_steps_and_callbacks_still_work(capfd, monkeypatch, mlp_pair):
    from sparsekit import recovery

    mlp, pruned = mlp_pair
    cfg = recovery.default_recovery_config("image-classifier", mode="ste", steps=4, eval_every=2)
    monkeypatch.setattr(P, "BAR_DELAY_S", 0.0)
    rec = recovery.recover(pruned, mlp, cfg)
    err = capfd.readouterr().err
    assert rec.status == "complete" and "recover" in err and "100%" in err and "accuracy" in err
    events = []
    recovery.recover(pruned, mlp, cfg, progress=lambda p: events.append((p.event, p.step)))
    assert events == [("start", 0), ("step", 1), ("step", 2), ("eval", 2), ("step", 3), ("step", 4), ("eval", 4)]
    assert capfd.readouterr().err == ""
    recovery.recover(pruned, mlp, cfg, progress=False)
    assert capfd.readouterr().err == ""
    saved = recovery.recover_and_save(pruned, mlp, cfg)
    assert saved.run_id and "recover" in capfd.readouterr().err
    recovery.recover_and_save(pruned, mlp, cfg, progress=None)
    assert capfd.readouterr().err == ""


def test_benchmarks_show_a_bar_and_callbacks_still_work(capfd, monkeypatch):
    from sparsekit.bench import BenchConfig, run_benchmarks

    cfg = BenchConfig(suites=("formats",), device="cpu", formats_shape=(64, 64), formats_cols=8, densities=(0.5,),
                      repeats=2)
    monkeypatch.setattr(P, "BAR_DELAY_S", 0.0)
    run_benchmarks(cfg)
    err = capfd.readouterr().err
    assert "benchmarks" in err and "100%" in err
    seen = []
    run_benchmarks(cfg, progress=lambda f, m: seen.append((f, m)))
    assert seen[0][0] == 0.0 and seen[-1] == (1.0, "done") and capfd.readouterr().err == ""
    run_benchmarks(cfg, progress=False)
    assert capfd.readouterr().err == ""

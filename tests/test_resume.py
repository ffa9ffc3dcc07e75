"""A training or recovery run stopped half-way (stop callback, an exception, Ctrl-C, its process gone) keeps
its last checkpoint, and the same call run again continues from it: only the remaining steps are trained,
and the finished run equals an uninterrupted one (weights, metrics, masks, step losses, flip rates: exact,
same process and one thread, so the same float operations in the same order). Also: resume=False starts
afresh, and a damaged, foreign-version or misfitting resume entry is ignored (a fresh start, no crash).
The state's parts (flip tracker, optimiser) are checked against uninterrupted references on their own."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import sparsekit
from sparsekit import resume as rs
from sparsekit.cache import get_cache
from sparsekit.flips import FlipTracker
from sparsekit.models.digits import digits_split
from sparsekit.recovery import default_recovery_config, load_recovery, recover, recover_and_save, resumable_recovery
from sparsekit.recovery.store import resume_key as recovery_key
from sparsekit.store import process_token
from sparsekit.training import (
    default_train_config, delete_run, load_run, resumable_run, run_and_save, save_run, train,
)
from sparsekit.training.store import resume_key as training_key

pytestmark = pytest.mark.usefixtures("one_thread", "tmp_cache")

EPOCHS = 3


def small(method: str = "srste", **kw) -> sparsekit.training.TrainConfig:
    return default_train_config("mlp", method=method, epochs=EPOCHS, batch_size=256, **kw)


class Counter:
    """A training callback counting the optimiser steps it sees; stops (or raises) where asked."""

    def __init__(self, stop_after_epoch: int | None = None, raise_at_step: int | None = None,
                 error: type[BaseException] = RuntimeError) -> None:
        self.steps = 0
        self.first_step: int | None = None
        self.stop_after_epoch, self.raise_at_step, self.error = stop_after_epoch, raise_at_step, error
        self.start_status: str | None = None

    def __call__(self, p) -> bool:
        if p.event == "start":
            self.first_step = p.step
            if p.record.run_id:
                self.start_status = load_run(p.record.run_id).status
        if p.event == "step":
            self.steps += 1
            if self.raise_at_step is not None and p.step == self.raise_at_step:
                raise self.error("boom")
        return p.event == "epoch" and self.stop_after_epoch is not None \
            and p.step == self.stop_after_epoch * p.record.steps_per_epoch


def same_training(a, b) -> None:
    """Two finished training runs are the same run (wall times aside)."""
    assert a.status == b.status == "complete" and a.steps_done == b.steps_done
    assert a.step_loss == b.step_loss
    assert a.step_flip_rate == b.step_flip_rate
    assert [dataclasses.replace(e, seconds=0.0) for e in a.epochs] == [dataclasses.replace(e, seconds=0.0)
                                                                       for e in b.epochs]
    assert a.history.steps == b.history.steps and a.history.epochs == b.history.epochs
    assert a.history.packed == b.history.packed
    assert a.flip_windows == b.flip_windows and a.prune_steps == b.prune_steps
    assert a.weights.keys() == b.weights.keys() and all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)


@pytest.fixture(scope="module")
def data():
    return digits_split()


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("cfg", [
    small("srste"),
    small("gradual", optimizer="adamw", lr=3e-3, schedule="constant", prune_every=2),
    small("random", snapshot_unit="step", snapshot_every=4),
], ids=["srste-sgd-cosine", "gradual-adamw", "random-step-snapshots"])
def test_training_stopped_after_an_epoch_resumes_and_equals_an_uninterrupted_run(cfg, data):
    first = Counter(stop_after_epoch=1)
    stopped = run_and_save(cfg, data=data, callback=first, progress=False)
    spe = stopped.steps_per_epoch
    assert stopped.status == "stopped" and stopped.steps_done == spe and first.steps == spe
    assert resumable_run(cfg, data).run_id == stopped.run_id
    again = Counter()
    resumed = run_and_save(cfg, data=data, callback=again, progress=False)
    assert again.first_step == spe and again.start_status == "running"
    assert again.steps == EPOCHS * spe - spe  # no finished step trained again
    assert resumed.run_id == stopped.run_id and load_run(resumed.run_id).status == "complete"
    same_training(resumed, train(cfg, data=data, progress=False))
    same_training(load_run(resumed.run_id), resumed)
    # Completed: the state is gone, and the next call is a new run from step 0.
    assert get_cache().get(training_key(cfg, data)) is None and resumable_run(cfg, data) is None
    third = Counter()
    fresh = run_and_save(cfg, data=data, callback=third, progress=False)
    assert fresh.run_id != resumed.run_id and third.steps == EPOCHS * spe


def test_training_exception_mid_epoch_then_rerun_resumes_from_the_last_epoch(data):
    cfg = small("ste")
    probe = train(cfg, data=data, progress=False)
    spe = probe.steps_per_epoch
    broken = Counter(raise_at_step=spe + 2)
    with pytest.raises(RuntimeError, match="boom"):
        run_and_save(cfg, data=data, callback=broken, progress=False)
    [summary] = sparsekit.training.list_runs()
    assert summary["status"] == "failed" and broken.steps == spe + 2
    again = Counter()
    resumed = run_and_save(cfg, data=data, callback=again, progress=False)
    assert again.steps == EPOCHS * spe - spe and resumed.run_id == summary["run_id"]
    same_training(resumed, probe)


def test_training_ctrl_c_then_rerun_resumes(data):
    cfg = small("srste", seed=3)
    spe = train(dataclasses.replace(cfg, epochs=1), data=data, progress=False).steps_per_epoch
    with pytest.raises(KeyboardInterrupt):
        run_and_save(cfg, data=data, callback=Counter(raise_at_step=2 * spe + 1, error=KeyboardInterrupt),
                     progress=False)
    stored = load_run(sparsekit.training.list_runs()[0]["run_id"])
    assert stored.status == "stopped" and stored.steps_done == 2 * spe + 1
    again = Counter()
    resumed = run_and_save(cfg, data=data, callback=again, progress=False)
    assert again.first_step == 2 * spe and again.steps == spe
    same_training(resumed, train(cfg, data=data, progress=False))


def test_training_run_whose_process_died_is_continued(data):
    cfg = small("ste", seed=5)
    stopped = run_and_save(cfg, data=data, callback=Counter(stop_after_epoch=2), progress=False)
    # As a server killed mid-run leaves it: still 'running', owned by a process that is gone.
    stopped.status, stopped.owner = "running", "somehost-that-is-not-this:1:1"
    save_run(stopped)
    assert resumable_run(cfg, data) is None  # another host's process may be alive: not taken over
    stopped.owner = process_token(2**22 + 12345)  # this host, a pid that does not run
    save_run(stopped)
    assert load_run(stopped.run_id).status == "stopped"  # the store sees it orphaned
    again = Counter()
    resumed = run_and_save(cfg, data=data, callback=again, progress=False)
    assert again.steps == stopped.steps_per_epoch and resumed.run_id == stopped.run_id
    same_training(resumed, train(cfg, data=data, progress=False))


def test_training_resume_false_starts_afresh_and_a_deleted_run_is_not_continued(data):
    cfg = small("srste", seed=1)
    stopped = run_and_save(cfg, data=data, callback=Counter(stop_after_epoch=1), progress=False)
    spe = stopped.steps_per_epoch
    fresh_count = Counter()
    fresh = run_and_save(cfg, data=data, callback=fresh_count, progress=False, resume=False)
    assert fresh.run_id != stopped.run_id and fresh_count.steps == EPOCHS * spe
    assert load_run(stopped.run_id).status == "stopped"  # left as it was
    same_training(fresh, train(cfg, data=data, progress=False))
    # Stopped again, then deleted by the user: the next call starts a new run.
    again = run_and_save(cfg, data=data, callback=Counter(stop_after_epoch=1), progress=False)
    delete_run(again.run_id)
    after = Counter()
    third = run_and_save(cfg, data=data, callback=after, progress=False)
    assert third.run_id not in (again.run_id, stopped.run_id) and after.steps == EPOCHS * spe


def _damage(key: str, how: str) -> None:
    blob = get_cache().get(key)
    assert isinstance(blob, bytes)
    if how == "garbage":
        get_cache().set(key, b"\x00not safetensors" + blob[:100])
    elif how == "truncated":
        get_cache().set(key, blob[: len(blob) // 2])
    else:
        state = rs.ResumeState.from_bytes(blob)
        if how == "version":
            header = dataclasses.replace(rs.HEADER, version=rs.FORMAT_VERSION + 1)
            get_cache().set(key, rs.pack_run(header, state.tensors, {"kind": state.kind, "step": state.step,
                                                                     "meta": state.meta}))
        elif how == "shape":  # readable, but its weights do not fit the model
            name = next(k for k in state.tensors if k.startswith("model/"))
            state.tensors[name] = torch.zeros(3, 3)
            get_cache().set(key, state.to_bytes())
        elif how == "kind":
            state.kind = "recovery"
            get_cache().set(key, state.to_bytes())


@pytest.mark.parametrize("how", ["garbage", "truncated", "version", "shape", "kind"])
def test_training_damaged_or_unknown_resume_state_is_ignored(how, data):
    cfg = small("ste", seed=2)
    stopped = run_and_save(cfg, data=data, callback=Counter(stop_after_epoch=1), progress=False)
    _damage(training_key(cfg, data), how)
    counter = Counter()
    rerun = run_and_save(cfg, data=data, callback=counter, progress=False)
    assert counter.first_step == 0 and counter.steps == EPOCHS * stopped.steps_per_epoch
    assert rerun.run_id != stopped.run_id
    same_training(rerun, train(cfg, data=data, progress=False))


def test_train_refuses_a_state_of_another_config(data):
    cfg = small("ste", seed=4)
    states: list[rs.ResumeState] = []
    train(cfg, data=data, progress=False, save_state=states.append)
    assert [s.step for s in states] == [states[0].step, 2 * states[0].step]  # every epoch but the last
    with pytest.raises(rs.ResumeError, match="another training config"):
        train(dataclasses.replace(cfg, lr=0.05), data=data, progress=False, resume_from=states[0])
    # The explicit state continues exactly, at the lower level too.
    same_training(train(cfg, data=data, progress=False, resume_from=states[1]), train(cfg, data=data, progress=False))


# ----------------------------------------------------------------------------- recovery


@pytest.fixture(scope="module")
def mlp():
    return sparsekit.load_model("digits:mlp")


@pytest.fixture(scope="module")
def mlp24(mlp):
    return sparsekit.sparsify(mlp, sparsekit.SparsifyConfig(pattern="nm", n=2, m=4))


class Steps:
    """A recovery progress callback counting optimiser steps; raises where asked."""

    def __init__(self, raise_at: int | None = None, error: type[BaseException] = RuntimeError) -> None:
        self.steps, self.first, self.raise_at, self.error = 0, None, raise_at, error

    def __call__(self, p) -> None:
        if p.event == "start":
            self.first = p.step
        if p.event == "step":
            self.steps += 1
            if p.step == self.raise_at:
                raise self.error("boom")


def same_recovery(a, b) -> None:
    def plain(iv):  # json text: NaN (the training loss at step 0) compares equal to itself
        return json.dumps({**iv.to_json(), "seconds": 0.0})

    assert a.status == b.status == "complete" and a.steps_done == b.steps_done
    assert a.step_loss == b.step_loss and a.step_flip_rate == b.step_flip_rate
    assert [plain(iv) for iv in a.intervals] == [plain(iv) for iv in b.intervals]
    assert a.run_flips == b.run_flips and a.history.steps == b.history.steps and a.history.packed == b.history.packed
    assert a.dense_quality == b.dense_quality
    assert a.weights.keys() == b.weights.keys() and all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)


@pytest.mark.parametrize("mode,extra", [("srste", {}), ("fixed", {"optimizer": "sgd", "train": "all"})])
def test_recovery_stopped_at_an_evaluation_resumes_and_equals_an_uninterrupted_run(mode, extra, mlp, mlp24):
    cfg = default_recovery_config("image-classifier", mode=mode, steps=60, eval_every=20, **extra)
    first = Steps()
    stopped = recover_and_save(mlp24, mlp, cfg, progress=first, stop=lambda: first.steps >= 25)
    assert stopped.status == "stopped" and stopped.steps_done == 25
    assert resumable_recovery(mlp24, mlp, cfg).run_id == stopped.run_id
    again = Steps()
    resumed = recover_and_save(mlp24, mlp, cfg, progress=again)
    assert again.first == 20 and again.steps == 60 - 20  # from the last evaluation
    assert resumed.run_id == stopped.run_id and load_recovery(resumed.run_id).status == "complete"
    same_recovery(resumed, recover(mlp24, mlp, cfg, progress=False))
    assert get_cache().get(recovery_key(mlp24, mlp, cfg)) is None and resumable_recovery(mlp24, mlp, cfg) is None


def test_recovery_exception_then_rerun_and_resume_false(mlp, mlp24):
    cfg = default_recovery_config("image-classifier", mode="ste", steps=45, eval_every=15, seed=7)
    with pytest.raises(RuntimeError, match="boom"):
        recover_and_save(mlp24, mlp, cfg, progress=Steps(raise_at=33))
    [summary] = sparsekit.recovery.list_recoveries()
    assert summary["status"] == "failed"
    reference = recover(mlp24, mlp, cfg, progress=False)
    again = Steps()
    same_recovery(recover_and_save(mlp24, mlp, cfg, progress=again), reference)
    assert again.first == 30 and again.steps == 15
    # resume=False: a new run from step 0, even with a stopped one waiting.
    with pytest.raises(KeyboardInterrupt):
        recover_and_save(mlp24, mlp, cfg, progress=Steps(raise_at=20, error=KeyboardInterrupt))
    fresh = Steps()
    rec = recover_and_save(mlp24, mlp, cfg, progress=fresh, resume=False)
    assert fresh.first == 0 and fresh.steps == 45 and rec.run_id != summary["run_id"]
    same_recovery(rec, reference)


@pytest.mark.parametrize("how", ["garbage", "version", "shape"])
def test_recovery_damaged_resume_state_is_ignored(how, mlp, mlp24):
    cfg = default_recovery_config("image-classifier", mode="fixed", steps=40, eval_every=10, seed=11)
    counter = Steps()
    recover_and_save(mlp24, mlp, cfg, progress=counter, stop=lambda: counter.steps >= 15)
    _damage(recovery_key(mlp24, mlp, cfg), how)
    again = Steps()
    same_recovery(recover_and_save(mlp24, mlp, cfg, progress=again), recover(mlp24, mlp, cfg, progress=False))
    assert again.first == 0 and again.steps == 40


def test_recovery_state_is_keyed_by_the_pruned_result(mlp, mlp24):
    cfg = default_recovery_config("image-classifier", mode="fixed", steps=40, eval_every=10, seed=12)
    counter = Steps()
    recover_and_save(mlp24, mlp, cfg, progress=counter, stop=lambda: counter.steps >= 15)
    other = sparsekit.sparsify(mlp, sparsekit.SparsifyConfig(pattern="nm", n=1, m=4))
    assert recovery_key(other, mlp, cfg) != recovery_key(mlp24, mlp, cfg)
    assert resumable_recovery(other, mlp, cfg) is None and resumable_recovery(mlp24, mlp, cfg) is not None


# ----------------------------------------------------------------------------- the state's parts


def test_flip_tracker_state_continues_exactly():
    gen = torch.Generator().manual_seed(0)
    masks = [{"a": torch.rand(6, 8, generator=gen) > 0.5, "b": torch.rand(4, 4, generator=gen) > 0.3}
             for _ in range(9)]
    whole = FlipTracker(masks[0], run_window=True)
    split = FlipTracker(masks[0], run_window=True)
    for m in masks[1:5]:
        whole.update(m)
        split.update(m)
    tensors, meta = split.to_state()
    blob = rs.ResumeState("x", 0, {"flips": meta}, {f"flips/{k}": v for k, v in tensors.items()}).to_bytes()
    back = rs.ResumeState.from_bytes(blob)
    cont = FlipTracker.from_state(back.part("flips"), json.loads(json.dumps(back.meta["flips"])))
    for m in masks[5:]:
        assert cont.update(m) == whole.update(m)
    assert cont.close() == whole.close() and cont.close_run() == whole.close_run()
    with pytest.raises(ValueError, match="flip tracker"):
        FlipTracker.from_state({}, meta)
    bad = dict(tensors, **{"w0/0": torch.zeros(2, 2, dtype=torch.uint8)})
    with pytest.raises(ValueError, match="do not match"):
        FlipTracker.from_state(bad, meta)


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_optimizer_state_round_trip_continues_exactly(kind):
    torch.manual_seed(0)

    def make():
        torch.manual_seed(0)
        net = torch.nn.Linear(5, 3)
        opt = (torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9) if kind == "sgd"
               else torch.optim.AdamW(net.parameters(), lr=0.01, betas=(0.8, 0.95)))
        return net, opt

    x = torch.randn(8, 5)

    def step(net, opt):
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()

    net, opt = make()
    for _ in range(3):
        step(net, opt)
    tensors, meta = rs.optimizer_state(opt)
    saved = {k: v.clone() for k, v in net.state_dict().items()}
    net2, opt2 = make()
    net2.load_state_dict(saved)
    rs.restore_optimizer(opt2, tensors, json.loads(json.dumps(meta)))
    for _ in range(3):
        step(net, opt)
        step(net2, opt2)
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), net2.parameters()))
    _, opt3 = make()
    with pytest.raises(rs.ResumeError):
        rs.restore_optimizer(opt3, {"0/momentum_buffer" if kind == "sgd" else "0/exp_avg": torch.zeros(2)}, meta)


def test_resume_state_refuses_bad_bytes():
    for blob in (b"", b"junk", "text"):
        with pytest.raises(rs.ResumeError):
            rs.ResumeState.from_bytes(blob)  # type: ignore[arg-type]
    get_cache().set("k", b"junk")
    assert rs.load_state("k", "training") is None


# ----------------------------------------------------------------------------- study cells (seed study)


def test_study_training_cell_interrupted_half_way_continues_from_its_last_epoch(data, monkeypatch):
    """A seed-study / training-study cell goes through ``train_resuming``: Ctrl-C in its third epoch,
    then the same cell again trains only the last epoch (counted at the epoch evaluations) and gives
    the record of an uninterrupted run."""
    from sparsekit.study import StudySpec
    from sparsekit.study.cells import run_training
    from sparsekit.training import loop

    spec = StudySpec(name="t", kind="training", methods=("srste",), patterns=("2:4",), seeds=(1,),
                     train=sparsekit.training.TrainConfig(arch="mlp", epochs=EPOCHS, batch_size=256))
    [cell] = spec.cells()
    real = loop._epoch_metrics
    epochs: list[int] = []

    def counting(*args, **kwargs):
        epochs.append(args[2])  # the step the epoch ended at
        if interrupt_at is not None and len(epochs) == interrupt_at:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "_epoch_metrics", counting)
    interrupt_at: int | None = EPOCHS  # after epochs 1 and 2 are done (and the state of epoch 2 kept)
    with pytest.raises(KeyboardInterrupt):
        run_training(cell, data=data)
    spe = epochs[0]
    interrupt_at, epochs = None, []
    resumed = run_training(cell, data=data)
    assert epochs == [EPOCHS * spe]  # only the last epoch trained again
    cfg = cell.train_config()
    assert get_cache().get(training_key(cfg, data, owner="study-cell")) is None  # done: the state is gone
    epochs.clear()
    fresh = run_training(cell, data=data)  # nothing kept now: a run from step 0
    assert len(epochs) == EPOCHS
    assert resumed.metrics == fresh.metrics and resumed.detail == {**fresh.detail, "seconds": resumed.detail["seconds"]}
    same_training(loop.train(cfg, data=data, progress=False), loop.train_resuming(cfg, data=data))

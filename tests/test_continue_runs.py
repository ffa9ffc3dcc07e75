"""Stop and Continue on the Training and Recovery pages (AppTest): a run stopped mid-way shows "Stopped at step
k of N" with its curves so far, also after a reload; Continue trains only what is left (the optimiser steps are
counted: no finished epoch or evaluation interval is trained again), and the finished run equals an
uninterrupted one (the stored run exactly; the page's numbers to their print precision)."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import streamlit as st

import sparsekit
from devtools.apptest import page_app
from sparsekit import recovery, training
from sparsekit.models.digits import digits_split
from sparsekit.recovery import default_recovery_config
from sparsekit.training import default_train_config

TIMEOUT = 300


class Counting:
    """Wraps a library entry point: counts the optimiser steps each call trains; ``stop_at`` makes the
    next call stop (as a Stop press would) once that many steps of it are done."""

    def __init__(self, real, kind: str) -> None:
        self.real, self.kind = real, kind
        self.steps: list[int] = []
        self.stop_at: int | None = None

    def __call__(self, *args, **kwargs):
        self.steps.append(0)
        stop_at, self.stop_at = self.stop_at, None
        page = kwargs.get("callback" if self.kind == "train" else "progress")

        def seen(p):
            if p.event == "step":
                self.steps[-1] += 1
            out = page(p) if callable(page) else None
            return out or (self.kind == "train" and stop_at is not None and self.steps[-1] >= stop_at)

        kwargs["callback" if self.kind == "train" else "progress"] = seen
        if self.kind == "recover" and stop_at is not None:
            kwargs["stop"] = lambda: self.steps[-1] >= stop_at
        return self.real(*args, **kwargs)


# ----------------------------------------------------------------------------- Training


@pytest.fixture
def training_page(tmp_cache, monkeypatch):
    monkeypatch.delenv("SPARSEKIT_MODEL_ROOTS", raising=False)

    def make():
        at = page_app("training", "hf", TIMEOUT)
        at.run()
        at.selectbox(key="tr_arch").set_value("mlp")
        at.multiselect(key="tr_methods").set_value(["srste"])
        at.text_input(key="tr_patterns").set_value("2:4")
        at.number_input(key="tr_epochs").set_value(3)
        at.number_input(key="tr_batch").set_value(256)
        at.run()
        assert not at.exception and not at.error, at.exception
        return at

    return make


def _same_training(a, b) -> None:
    assert a.status == b.status == "complete" and a.step_loss == b.step_loss and a.step_flip_rate == b.step_flip_rate
    assert [dataclasses.replace(e, seconds=0.0) for e in a.epochs] == [dataclasses.replace(e, seconds=0.0)
                                                                       for e in b.epochs]
    assert a.history.packed == b.history.packed and a.flip_windows == b.flip_windows
    assert all(torch.equal(a.weights[k], b.weights[k]) for k in b.weights)


def test_training_page_stop_then_continue_trains_only_the_remaining_epochs(training_page, monkeypatch):
    counting = Counting(training.run_and_save, "train")
    monkeypatch.setattr(training, "run_and_save", counting)
    at = training_page()
    cfg = default_train_config("mlp", method="srste", n=2, m=4, epochs=3, batch_size=256)
    spe = cfg.steps_per_epoch()
    counting.stop_at = spe + 2  # stopped two steps into the second epoch
    at.button(key="tr_go").click().run()
    assert not at.exception and counting.steps == [spe + 2]
    [entry] = training.list_runs()
    assert entry["status"] == "stopped"
    stopped_id = entry["run_id"]
    at.run()  # the next script run (any click) shows the stopped run
    warning = " ".join(w.value for w in at.warning)
    assert f"stopped at step {spe + 2:,} of {3 * spe:,}" in warning and f"end of epoch 1 (step {spe:,})" in warning
    assert any(b.label == "Continue" for b in at.button)
    partial = next(f for f in at.get("plotly_chart") if f.key == "tr_stopped_curves")
    assert json.loads(partial.proto.spec)["data"]
    # A reload (a new session) finds it too, training nothing.
    reload = training_page()
    assert f"stopped at step {spe + 2:,} of {3 * spe:,}" in " ".join(w.value for w in reload.warning)
    assert counting.steps == [spe + 2]
    reload.button(key="tr_continue").click().run()
    assert not reload.exception and not reload.error
    assert counting.steps == [spe + 2, 2 * spe]  # from the end of epoch 1: no finished step trained again
    [entry] = training.list_runs()
    assert entry["run_id"] == stopped_id and entry["status"] == "complete"
    done = training.load_run(entry["run_id"])
    reference = training.train(cfg, data=digits_split(), progress=False)
    _same_training(done, reference)
    table = reload.dataframe[0].value
    assert list(table["status"]) == ["complete"]
    assert float(table["accuracy (%)"].iloc[0]) == pytest.approx(reference.final_accuracy, abs=1e-6)
    reload.run()  # finished: nothing left to continue
    assert not any(b.label == "Continue" for b in reload.button) and counting.steps == [spe + 2, 2 * spe]


def test_training_page_continue_also_trains_the_runs_a_stop_kept_from_starting(training_page, monkeypatch):
    counting = Counting(training.run_and_save, "train")
    monkeypatch.setattr(training, "run_and_save", counting)
    at = training_page()
    at.multiselect(key="tr_methods").set_value(["ste", "srste"]).run()
    cfg = default_train_config("mlp", method="ste", n=2, m=4, epochs=3, batch_size=256)
    spe = cfg.steps_per_epoch()
    counting.stop_at = 2 * spe + 1

    def stop_the_page(*args, **kwargs):  # a Stop press interrupts the script: the second run never starts
        out = counting(*args, **kwargs)
        assert out.status == "stopped"
        st.stop()  # a BaseException out of the page's run loop, as Streamlit's interruption is

    monkeypatch.setattr(training, "run_and_save", stop_the_page)
    at.button(key="tr_go").click().run()
    monkeypatch.setattr(training, "run_and_save", counting)
    at.run()
    assert "stopped at step" in " ".join(w.value for w in at.warning)
    at.button(key="tr_continue").click().run()
    assert not at.exception
    # The stopped STE run: its third epoch only; the SR-STE run it kept from starting: from scratch.
    assert counting.steps[1:] == [spe, 3 * spe]
    runs = {r["config"]["method"]: r for r in training.list_runs()}
    assert {m: r["status"] for m, r in runs.items()} == {"ste": "complete", "srste": "complete"}
    _same_training(training.load_run(runs["ste"]["run_id"]), training.train(cfg, data=digits_split(), progress=False))


# ----------------------------------------------------------------------------- Recovery


def _recovery_page():
    at = page_app("recovery", "digits:mlp", TIMEOUT)
    at.run()
    at.multiselect(key="rc_modes").set_value(["fixed", "srste"])
    at.number_input(key="rc_steps").set_value(30)
    at.number_input(key="rc_every").set_value(10)
    at.run()
    assert not at.exception and not at.error, at.exception
    return at


def _same_recovery(a, b) -> None:
    def plain(iv):
        return json.dumps({**iv.to_json(), "seconds": 0.0})

    assert a.status == b.status == "complete" and a.step_loss == b.step_loss and a.step_flip_rate == b.step_flip_rate
    assert [plain(iv) for iv in a.intervals] == [plain(iv) for iv in b.intervals]
    assert all(torch.equal(a.weights[k], b.weights[k]) for k in b.weights)


def test_recovery_page_stop_then_continue_runs_only_the_steps_left(tmp_cache, monkeypatch):
    counting = Counting(recovery.recover_and_save, "recover")
    monkeypatch.setattr(recovery, "recover_and_save", counting)
    at = _recovery_page()
    assert any(b.label.startswith("Recover (2 runs") for b in at.button)
    # Fixed mask runs to the end; SR-STE is stopped at step 15 (after its evaluation at step 10).
    real = counting.__call__
    calls = [0]

    def second_stops(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:
            counting.stop_at = 15
        return real(*args, **kwargs)

    monkeypatch.setattr(recovery, "recover_and_save", second_stops)
    at.button(key="rc_run").click().run()
    assert not at.exception and not at.error and counting.steps == [30, 15]
    warning = " ".join(w.value for w in at.warning)
    assert "SR-STE: stopped at step 15 of 30" in warning and "last evaluation (step 10)" in warning
    assert any(b.label == "Continue" for b in at.button)
    assert any(f.key == "rc_partial" for f in at.get("plotly_chart"))
    # A reload (a new session) shows the same stopped batch, computing nothing.
    reload = _recovery_page()
    assert "SR-STE: stopped at step 15 of 30" in " ".join(w.value for w in reload.warning)
    assert counting.steps == [30, 15]
    reload.button(key="rc_continue").click().run()
    assert not reload.exception and not reload.error, reload.exception
    # Fixed mask is not run again; SR-STE runs from step 10: 20 steps.
    assert counting.steps == [30, 15, 20]
    assert not any(b.label in ("Continue", "Stop") for b in reload.button)
    saved = {r["config"]["mode"]: r for r in recovery.list_recoveries()}
    assert len(recovery.list_recoveries()) == 2 and {r["status"] for r in saved.values()} == {"complete"}
    loaded = sparsekit.load_model("digits:mlp")
    continued = {mode: recovery.load_recovery(saved[mode]["run_id"]) for mode in saved}
    for mode, done in continued.items():
        assert done.config == default_recovery_config(loaded.kind, mode=mode, steps=30, eval_every=10)
    summary = reload.dataframe[0].value
    for _, row in summary.iterrows():
        mode = next(m for m in saved if recovery.MODE_LABELS[m] == row["mode"])
        assert row["after"] == pytest.approx(saved[mode]["after"], rel=1e-9)
    # The same batch run on the page without a stop, in a cache of its own, gives the same runs exactly.
    # (Compared page with page: Streamlit runs the page in its own thread, whose BLAS threading may sum in
    # another order than this thread after other tests; the library's own exact check is in test_resume.py.)
    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(tmp_cache.parent / "uninterrupted"))
    whole = _recovery_page()
    whole.button(key="rc_run").click().run()
    assert not whole.exception and not whole.error and counting.steps == [30, 15, 20, 30, 30]
    fresh = {r["config"]["mode"]: recovery.load_recovery(r["run_id"]) for r in recovery.list_recoveries()}
    assert fresh.keys() == continued.keys()
    for mode, done in continued.items():
        _same_recovery(done, fresh[mode])

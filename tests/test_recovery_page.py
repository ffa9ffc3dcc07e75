"""The Recovery page on the shipped digits MLP: three modes on one budget, figures and a summary that
agree with the saved runs, and a clear stop when there is nothing pruned to recover; the Saved runs
view: a table that agrees with the run store, reopening, deleting, and damaged or missing entries."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
from conftest import shared_model
from streamlit.testing.v1 import AppTest

import sparsekit
from sparsekit import recovery
from sparsekit.cache import get_cache, make_key
from sparsekit.store import process_token

TWO_FOUR = sparsekit.SparsifyConfig(pattern="nm", n=2, m=4)
HALF = sparsekit.SparsifyConfig(pattern="unstructured", sparsity=0.5)


def _app(tmp_cache, pattern: str | None = None) -> AppTest:
    at = AppTest.from_file("../app.py", default_timeout=300)
    at.run()
    at.selectbox(key="model_source").set_value("digits:mlp").run()
    at.switch_page("views/sparsify.py")
    at.run()
    if pattern:
        at.radio(key="sp_pattern").set_value(pattern).run()
    at.switch_page("views/recovery.py")
    at.run()
    assert not at.exception
    return at


def test_three_modes_on_one_budget(tmp_cache):
    at = _app(tmp_cache)
    at.number_input(key="rc_steps").set_value(30)
    at.number_input(key="rc_every").set_value(10)
    at.run()
    at.button(key="rc_run").click().run()
    assert not at.exception and not at.error
    saved = {r["run_id"]: recovery.load_recovery(r["run_id"]) for r in recovery.list_recoveries()}
    assert sorted(r.config.mode for r in saved.values()) == ["fixed", "srste", "ste"]
    summary = at.dataframe[0].value
    for _, row in summary.iterrows():
        rec = next(r for r in saved.values() if recovery.MODE_LABELS[r.config.mode] == row["mode"])
        assert row["after"] == pytest.approx(rec.intervals[-1].quality["accuracy"])
        assert rec.steps_done == 30 and [i.step for i in rec.intervals] == [0, 10, 20, 30]
        assert row["gap recovered"] == pytest.approx(rec.gap_recovered, nan_ok=True)
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
    assert len(titles) == 5
    assert any(b.label == "Recovered weights (.safetensors)" for b in at.get("download_button"))

    # The same three runs, reopened from the store in the Saved runs view.
    _saved_view(at)
    assert len(at.dataframe[0].value) == 3 and len(at.dataframe[1].value) == 3
    assert sorted(at.multiselect(key="rc_saved_pick").value) == sorted(saved)
    # Back to New recovery: the same settings show the runs just made again, without recovering again.
    # (AppTest keeps unrendered widget values anyway, so this does not check persist_state itself.)
    at.radio(key="rc_view").set_value("New recovery").run()
    assert not at.exception and at.number_input(key="rc_steps").value == 30
    assert len(at.dataframe[0].value) == 3 and len(recovery.list_recoveries()) == 3


def test_dense_setting_says_what_to_do(tmp_cache):
    at = _app(tmp_cache, pattern="dense")
    assert any("Prune the model on the Sparsify page first" in i.value for i in at.info)
    assert not [b for b in at.button if b.key == "rc_run"]


# ---------------------------------------------------------------------------------------------
# Saved runs


def _save_runs(*settings: tuple[sparsekit.SparsifyConfig, str]) -> list[str]:
    """Recover the digits MLP from each (setting, mode) for a few steps; the run ids, oldest first."""
    loaded = shared_model("digits:mlp")
    ids = []
    for config, mode in settings:
        result = sparsekit.sparsify(loaded, config)
        cfg = recovery.default_recovery_config(loaded.kind, mode=mode, steps=6, eval_every=3)
        ids.append(recovery.recover_and_save(result, loaded, cfg).run_id)
    return ids


def _saved_view(at: AppTest) -> None:
    at.radio(key="rc_view").set_value("Saved runs").run()
    assert not at.exception


def _same(a, b) -> bool:
    missing = [v is None or (isinstance(v, float) and math.isnan(v)) for v in (a, b)]
    return all(missing) or (not any(missing) and a == pytest.approx(b))


def _titles(at: AppTest) -> list[str]:
    return [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]


def test_saved_runs_table_and_reopen(tmp_cache, monkeypatch):
    oldest, middle, newest = _save_runs((HALF, "fixed"), (TWO_FOUR, "fixed"), (TWO_FOUR, "ste"))
    at = _app(tmp_cache)
    decoded = []
    real_load = recovery.load_recovery
    monkeypatch.setattr(recovery, "load_recovery", lambda rid: decoded.append(rid) or real_load(rid))
    _saved_view(at)
    assert not at.error

    table = at.dataframe[0].value
    assert len(table) == len(recovery.list_recoveries()) == 3
    assert list(table["id"]) == [newest, middle, oldest]
    for _, row in table.iterrows():
        rec = real_load(row["id"])
        assert row["model"] == "digits:mlp" and row["status"] == "complete"
        assert row["starting setting"] == rec.sparsify_config.label()
        assert row["mode"] == recovery.MODE_LABELS[rec.config.mode] and row["steps"] == "6 / 6"
        for column in ("before", "after", "dense", "gap recovered"):
            assert _same(row[column], getattr(rec, column.replace(" ", "_"))), column
        assert row["before"] == pytest.approx(rec.intervals[0].quality["accuracy"])
        assert row["after"] == pytest.approx(rec.intervals[-1].quality["accuracy"])

    # Default: the newest run and the others of its model and setting, with everything a fresh run shows.
    assert at.multiselect(key="rc_saved_pick").value == [newest, middle]
    assert len(_titles(at)) == 5
    assert any(b.label == "Recovered weights (.safetensors)" for b in at.get("download_button"))
    summary = at.dataframe[1].value
    for (_, row), rid in zip(summary.iterrows(), [newest, middle]):
        rec = real_load(rid)
        assert row["mode"] == recovery.MODE_LABELS[rec.config.mode] and row["model"] == "digits:mlp"
        assert row["starting setting"] == TWO_FOUR.label()
        assert row["accuracy before"] == pytest.approx(rec.before) and row["after"] == pytest.approx(rec.after)
        assert _same(row["gap recovered"], rec.gap_recovered) and row["status"] == "complete"

    # Reruns do not decode the runs again.
    assert sorted(decoded) == sorted([newest, middle])
    at.run()
    assert sorted(decoded) == sorted([newest, middle])

    # Any runs can be reopened together; the per-layer SAD picker follows the choice.
    at.multiselect(key="rc_saved_pick").set_value([newest, middle, oldest]).run()
    assert not at.exception and len(at.dataframe[1].value) == 3
    assert list(at.dataframe[1].value["starting setting"]) == [TWO_FOUR.label(), TWO_FOUR.label(), HALF.label()]
    at.selectbox(key="rc_saved_layer_run").set_value(2).run()
    assert _titles(at)[-1] == f"SAD per layer and interval · {real_load(oldest).label}"
    assert sorted(decoded) == sorted([newest, middle, oldest])


def test_saved_runs_with_dense_setting_and_other_models(tmp_cache):
    (mlp_run,) = _save_runs((TWO_FOUR, "srste"))
    rec = recovery.load_recovery(mlp_run)
    # A run of another model, and one whose process died mid-run (no weights saved yet).
    cnn_run = recovery.save_recovery(dataclasses.replace(rec, run_id="", model_spec="digits:cnn",
                                                         created=rec.created + 1))
    dead = process_token(2**30)  # above any pid_max: no such process
    died = recovery.save_recovery(dataclasses.replace(rec, run_id="", status="running", owner=dead, weights={},
                                                      created=rec.created + 2))
    at = _app(tmp_cache, pattern="dense")
    assert any("Prune the model on the Sparsify page first" in i.value for i in at.info)
    _saved_view(at)
    assert not at.error
    table = at.dataframe[0].value
    assert list(table["id"]) == [died, cnn_run, mlp_run]
    assert list(table["model"]) == ["digits:mlp", "digits:cnn", "digits:mlp"]
    stopped = table.iloc[0]
    assert stopped["status"] == "stopped" and "ended without saving a final status" in stopped["message"]
    # The newest (stopped) run opens with the other MLP run of its setting; the picker starts on it,
    # and it has nothing to download, and says so.
    assert at.multiselect(key="rc_saved_pick").value == [died, mlp_run]
    files = [b for b in at.get("download_button") if b.proto.label != "Open as notebook (.ipynb)"]
    assert len(_titles(at)) == 5 and not files
    assert any("no recovered weights" in c.value for c in at.caption)
    at.multiselect(key="rc_saved_pick").set_value([cnn_run, mlp_run]).run()
    assert not at.exception and list(at.dataframe[1].value["model"]) == ["digits:cnn", "digits:mlp"]
    assert at.get("download_button")


def test_delete_saved_run(tmp_cache):
    keep, gone = _save_runs((TWO_FOUR, "fixed"), (TWO_FOUR, "ste"))
    at = _app(tmp_cache)
    _saved_view(at)
    assert at.button(key="rc_delete").disabled  # (AppTest refuses to click a disabled button, like a browser)
    at.selectbox(key="rc_delete_run").set_value(gone).run()
    assert at.button(key="rc_delete").disabled
    assert {r["run_id"] for r in recovery.list_recoveries()} == {keep, gone}

    at.checkbox(key="rc_confirm").check().run()
    assert not at.button(key="rc_delete").disabled
    at.button(key="rc_delete").click().run()
    assert not at.exception and not at.error
    assert [r["run_id"] for r in recovery.list_recoveries()] == [keep]
    assert list(at.dataframe[0].value["id"]) == [keep]
    assert any(s.value == "Deleted." for s in at.success)
    assert at.multiselect(key="rc_saved_pick").value == [keep]
    assert at.button(key="rc_delete").disabled  # the confirmation does not carry over to the next run


def test_damaged_entry_is_named_and_the_rest_still_shows(tmp_cache):
    first, second, damaged = _save_runs((HALF, "fixed"), (TWO_FOUR, "fixed"), (TWO_FOUR, "ste"))
    # RunStore keeps each run under make_key(kind, run_id) in the disk cache.
    get_cache().set(make_key("recovery-run", damaged), b"not a safetensors file")
    at = _app(tmp_cache)
    _saved_view(at)
    assert len(at.error) == 1 and damaged in at.error[0].value
    assert list(at.dataframe[0].value["id"]) == [damaged, second, first]
    assert at.multiselect(key="rc_saved_pick").value == [damaged, second]
    assert len(at.dataframe[1].value) == 1 and len(_titles(at)) == 5
    at.multiselect(key="rc_saved_pick").set_value([first]).run()
    assert not at.exception and not at.error and len(at.dataframe[1].value) == 1
    # A damaged run can still be deleted.
    at.selectbox(key="rc_delete_run").set_value(damaged)
    at.checkbox(key="rc_confirm").check().run()
    at.button(key="rc_delete").click().run()
    assert not at.exception and not at.error
    assert [r["run_id"] for r in recovery.list_recoveries()] == [first, second]


def test_empty_store_says_how_to_make_a_run(tmp_cache):
    at = _app(tmp_cache)
    _saved_view(at)
    assert any("No saved recovery runs yet" in i.value for i in at.info)
    assert not at.dataframe and not at.get("plotly_chart")

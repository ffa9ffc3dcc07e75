"""The Recovery page on the shipped digits MLP: three modes on one budget, figures and a summary that
agree with the saved runs, and a clear stop when there is nothing pruned to recover."""
from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest

from sparsekit import recovery


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


def test_dense_setting_says_what_to_do(tmp_cache):
    at = _app(tmp_cache, pattern="dense")
    assert any("Prune the model on the Sparsify page first" in i.value for i in at.info)
    assert not [b for b in at.button if b.key == "rc_run"]

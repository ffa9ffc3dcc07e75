"""The Sensitivity page and the allocation choice on the Sparsify page, on the shipped digits MLP."""
from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest

import sparsekit
from sparsekit.sensitivity import SensitivityConfig, sensitivity_scan


def _app(page: str, tmp_cache) -> AppTest:
    at = AppTest.from_file("../app.py", default_timeout=300)
    at.run()
    at.selectbox(key="model_source").set_value("digits:mlp").run()
    at.switch_page(page)
    at.run()
    assert not at.exception
    return at


def test_scan_runs_on_click_and_figure_holds_the_drops(tmp_cache):
    at = _app("views/sensitivity.py", tmp_cache)
    at.multiselect(key="sen_pcts").set_value([50, 90])
    at.multiselect(key="sen_nm").set_value([])
    at.run()
    assert any("Run scan" == b.label for b in at.button) and not at.get("plotly_chart")
    at.button(key="sen_run").click().run()
    assert not at.exception and not at.error
    heat = json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]
    loaded = sparsekit.load_model("digits:mlp")
    scan = sensitivity_scan(loaded, SensitivityConfig(sparsities=(0.5, 0.9)))  # from the cache the page filled
    assert heat["z"] == [list(row) for row in scan.drop]
    # A zeroed-out digit classifier layer at 90 % costs accuracy: every drop is a number, none negative by much.
    assert all(d is not None for row in scan.drop for d in row)
    table = at.dataframe[0].value
    assert list(table["unit"]) == list(scan.units) and list(table["drop 90%"]) == [row[1] for row in scan.drop]
    labels = {b.label for b in at.get("download_button")}
    assert "Scan (.csv)" in labels
    # Sensitivity-guided allocation keeps the overall share pruned.
    at.slider(key="sen_target").set_value(70).run()
    at.button(key="sen_alloc").click().run()
    assert not at.exception and not at.error
    shares = at.dataframe[1].value["pruned share"].tolist()
    assert shares == [pytest.approx(0.7, abs=1e-3), pytest.approx(0.7, abs=1e-4)]


def test_no_setting_gets_a_message(tmp_cache):
    at = _app("views/sensitivity.py", tmp_cache)
    at.multiselect(key="sen_pcts").set_value([])
    at.multiselect(key="sen_nm").set_value([])
    at.run()
    assert not at.exception and at.error and "Cannot scan" in at.error[0].value


def test_owl_allocation_on_the_sparsify_page(tmp_cache):
    at = _app("views/sparsify.py", tmp_cache)
    at.radio(key="sp_pattern").set_value("unstructured").run()
    at.slider(key="sp_sparsity").set_value(60).run()
    at.selectbox(key="sp_allocation").set_value("owl").run()
    assert not at.exception and not at.error
    assert any(c.value.startswith("Allocation:") for c in at.caption)
    kept = next(m for m in at.metric if m.label == "Kept in pruned layers")
    assert kept.value == "40.0%"

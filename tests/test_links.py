"""Links say what they ignored (issue 23, item 5): a shared URL's bad values are named, with why, in one
warning per page run; its good values are still applied; a clean link shows no warning."""
from __future__ import annotations

import pytest

from devtools.apptest import page_app
from ui.state import SOURCES
from ui.widgets import LAYER_LABELS, PATTERN_LABELS


def link_warnings(at) -> list[str]:
    return [w.value for w in at.warning if "link carries settings" in w.value]


def open_link(page: str, params: dict[str, str], source: str = "digits:mlp"):
    at = page_app(page, source=source)
    for key, value in params.items():
        at.query_params[key] = value
    at.run()
    assert not at.exception
    return at


def test_bad_values_are_named_with_their_reason_and_good_ones_applied():
    at = open_link("sparsify", {"model_source": "nonsense", "sp_pattern": PATTERN_LABELS["unstructured"],
                                "sp_sparsity": "100", "sp_layers": LAYER_LABELS["mlp"], "sp_method": "wanda"})
    [text] = link_warnings(at)
    assert "`sp_sparsity=100` ignored: sparsity must be a whole number between 0 and 99 %" in text
    assert "`model_source=nonsense` ignored: not a model source" in text and SOURCES["minilm"] in text
    assert "sp_pattern" not in text and "sp_layers" not in text and "sp_method" not in text
    # The good values are applied: unstructured pattern, MLP layers, Wanda; the bad ones fall back.
    assert at.radio(key="sp_pattern").value == "unstructured"
    assert at.selectbox(key="sp_layers").value == "mlp" and at.selectbox(key="sp_method").value == "wanda"
    assert at.slider(key="sp_sparsity").value == 50 and at.selectbox(key="model_source").value == "digits:mlp"
    # Said on the run that opened the link, not again on the next one.
    at.run()
    assert link_warnings(at) == []


def test_each_bad_value_of_the_form_is_named():
    at = open_link("sparsify", {"sp_nm": "banana", "sp_method": "nosuch", "sp_pattern": "zigzag"})
    [text] = link_warnings(at)
    assert "`sp_nm=banana` ignored: N:M is one of 2:4" in text
    assert "`sp_method=nosuch` ignored: not a scoring method (magnitude" in text
    assert "`sp_pattern=zigzag` ignored: the pattern is one of" in text
    assert at.selectbox(key="sp_nm").value == "2:4"


@pytest.mark.parametrize("params", [
    {},
    {"sp_nm": "1:4", "sp_method": "wanda"},
    {"sp_pattern": PATTERN_LABELS["unstructured"], "sp_sparsity": "70", "sp_scope": "global"},
    {"sp_pattern": PATTERN_LABELS["unstructured"], "sp_sparsity": "50"},  # 50 % is the default
    {"sp_nm": "2:4", "sp_pattern": PATTERN_LABELS["nm"]},  # the defaults themselves
    {"model_source": SOURCES["digits:cnn"]},
])
def test_a_clean_link_shows_no_warning(params):
    at = open_link("sparsify", params)
    assert link_warnings(at) == []
    if "sp_sparsity" in params:
        assert at.slider(key="sp_sparsity").value == int(params["sp_sparsity"])


def test_a_changed_setting_after_a_link_is_not_reported():
    at = open_link("sparsify", {"sp_pattern": PATTERN_LABELS["unstructured"], "sp_sparsity": "70"})
    assert link_warnings(at) == []
    at.slider(key="sp_sparsity").set_value(80).run()
    assert link_warnings(at) == [] and at.slider(key="sp_sparsity").value == 80


def test_other_pages_bound_widgets_are_checked_after_the_page():
    from streamlit.testing.v1 import AppTest

    script = """
import streamlit as st
from ui.widgets import note_unapplied_link_values, start_link_notice
start_link_notice()
st.selectbox("View", ["grid", "histogram"], key="mask_view", bind="query-params")
st.number_input("Epochs", 0, 1000, 5, key="tr_epochs", bind="query-params")
note_unapplied_link_values()
"""
    at = AppTest.from_string(script)
    at.query_params["mask_view"] = "pie"
    at.query_params["tr_epochs"] = "12"
    at.run()
    [text] = link_warnings(at)
    assert "`mask_view=pie` ignored: not a value this page offers" in text and "tr_epochs" not in text
    assert at.number_input(key="tr_epochs").value == 12

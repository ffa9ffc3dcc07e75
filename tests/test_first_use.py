"""First use, round three (issue 24): links that reproduce the view, a visible next step, and tables and
figures that show everything they hold."""
from __future__ import annotations

import json

from streamlit.testing.v1 import AppTest

from devtools.apptest import page_app
from sparsekit.sparsify import SparsifyConfig
from ui.widgets import config_link_value

SENDER = SparsifyConfig(pattern="unstructured", method="wanda", layers="mlp", exclude="head", keep_first_dense=True)


def link_warnings(at) -> list[str]:
    return [w.value for w in at.warning if "link carries settings" in w.value]


# Links ------------------------------------------------------------------------------------------------

def test_sparsify_link_keeps_the_regexes_and_the_dense_flags():
    at = page_app("sparsify", "digits:mlp")
    at.query_params.update({"sp_include": "fc", "sp_exclude": "head", "sp_first": "true", "sp_last": "false"})
    at.run()
    assert not at.exception
    assert at.text_input(key="sp_include").value == "fc" and at.text_input(key="sp_exclude").value == "head"
    assert at.checkbox(key="sp_first").value is True and at.checkbox(key="sp_last").value is False
    for key in ("sp_include", "sp_exclude"):  # bound: a change goes into the URL
        assert at.text_input(key=key).proto.query_param_key == key
    for key in ("sp_first", "sp_last"):
        assert at.checkbox(key=key).proto.query_param_key == key
    assert link_warnings(at) == []
    assert json.loads(at.session_state["config_json"])["exclude"] == "head"


def test_masks_link_shows_the_senders_setting_and_layer():
    # The receiver's own session holds another setting (2:4 magnitude on all layers).
    at = page_app("masks", "digits:mlp", config_json=SparsifyConfig().to_json())
    at.query_params.update({"mask_config": config_link_value(SENDER), "mask_layer": "fc2", "zoom_size": "20"})
    at.run()
    assert not at.exception
    assert any(SENDER.label() in c.value for c in at.caption)
    assert at.selectbox(key="mask_layer").value == "fc2" and at.slider(key="zoom_size").value == 20
    assert at.query_params["mask_config"] == config_link_value(SENDER)
    assert link_warnings(at) == []


def test_masks_page_writes_its_setting_into_the_link():
    at = page_app("masks", "digits:mlp", config_json=SENDER.to_json())
    at.run()
    assert SparsifyConfig.from_json(at.query_params["mask_config"]) == SENDER


def test_a_bad_masks_link_setting_is_named():
    at = page_app("masks", "digits:mlp")
    at.query_params["mask_config"] = '{"pattern":"zigzag"}'
    at.run()
    assert not at.exception
    [text] = link_warnings(at)
    assert "mask_config" in text and "not a sparsity setting" in text
    assert any(SparsifyConfig().label() in c.value for c in at.caption)


# Next step --------------------------------------------------------------------------------------------

def _app() -> AppTest:
    at = AppTest.from_file("../app.py", default_timeout=300)
    at.session_state["model_source"] = "digits:mlp"
    at.run()
    assert not at.exception
    return at


def _links(at) -> dict[str, str]:
    return {el.proto.label: el.proto.page for el in at.get("page_link")}


def test_model_tour_links_to_sparsify_and_masks_links_back():
    at = _app()
    assert any("Sparsify" in label and page.endswith("sparsify") for label, page in _links(at).items()), _links(at)
    at.switch_page("views/masks.py")
    at.run()
    assert not at.exception
    assert any("Sparsify" in label and page.endswith("sparsify") for label, page in _links(at).items()), _links(at)


def test_sidebar_header_does_not_repeat_the_page_name():
    at = _app()
    headers = [h.value for h in at.sidebar.get("header")]
    assert headers and "Model" not in headers


def test_studies_start_from_the_sidebar_model():
    at = page_app("study", "digits:cnn")
    at.run()
    assert not at.exception
    assert at.multiselect(key="st_models").value == ["digits:cnn"]

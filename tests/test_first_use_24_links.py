"""Issue #24, Links (audit round): a Sparsify URL reproduces the view after the page was left and opened
again, and with the settings that have no widget in the link; the Masks page's Compare tab and N:M group
inspector are in its link too."""
from __future__ import annotations

import json

from devtools.apptest import page_app
from sparsekit.sparsify import SparsifyConfig
from ui.widgets import config_link_value

# Settings whose widgets are not bound to the URL (seed, conv grouping) beside ones that are.
SENDER = SparsifyConfig(pattern="nm", n=1, m=4, method="random", seed=7, layers="all", exclude="fc3",
                        keep_first_dense=True, conv_grouping="kernel")


def _link_warnings(at) -> list[str]:
    return [w.value for w in at.warning if "link carries settings" in w.value]


def test_sparsify_back_from_another_page_keeps_the_setting_in_its_url():
    # The sender set SENDER, went to Masks and came back: the form's widgets are at their defaults (the
    # session's setting), so Streamlit writes none of them into the URL; the page's own parameter must.
    at = page_app("sparsify", "digits:mlp", config_json=SENDER.to_json())
    at.run()
    assert not at.exception
    assert at.text_input(key="sp_exclude").value == "fc3"  # the view is the sender's
    assert "sp_config" in at.query_params, dict(at.query_params)
    assert SparsifyConfig.from_json(at.query_params["sp_config"]) == SENDER


def test_a_sparsify_link_shows_every_setting_of_the_sender():
    receiver = page_app("sparsify", "digits:mlp")  # a fresh session: 2:4 magnitude, seed 0, channel grouping
    receiver.query_params["sp_config"] = config_link_value(SENDER)
    receiver.run()
    assert not receiver.exception
    assert _link_warnings(receiver) == []
    assert SparsifyConfig.from_json(receiver.session_state["config_json"]) == SENDER
    assert receiver.selectbox(key="sp_nm").value == "1:4" and receiver.selectbox(key="sp_method").value == "random"
    assert receiver.number_input(key="sp_seed").value == 7
    assert receiver.selectbox(key="sp_grouping").value == "kernel"
    assert receiver.text_input(key="sp_exclude").value == "fc3" and receiver.checkbox(key="sp_first").value is True
    # A change the receiver makes afterwards is theirs: the link's value is not applied again.
    receiver.selectbox(key="sp_nm").set_value("2:4")
    receiver.run()
    assert SparsifyConfig.from_json(receiver.session_state["config_json"]).n == 2
    assert SparsifyConfig.from_json(receiver.query_params["sp_config"]).n == 2


def test_the_default_setting_leaves_the_url_clean():
    at = page_app("sparsify", "digits:mlp")
    at.run()
    assert "sp_config" not in at.query_params
    at.selectbox(key="sp_nm").set_value("1:4")
    at.run()
    assert json.loads(at.query_params["sp_config"]) == {"n": 1}
    at.selectbox(key="sp_nm").set_value("2:4")
    at.run()
    assert "sp_config" not in at.query_params


def test_a_bad_sparsify_link_setting_is_named():
    at = page_app("sparsify", "digits:mlp")
    at.query_params["sp_config"] = '{"m": 0}'
    at.run()
    assert not at.exception
    [text] = _link_warnings(at)
    assert "sp_config" in text and "not a sparsity setting" in text
    assert at.selectbox(key="sp_nm").value == "2:4"


def test_masks_compare_and_group_inspector_are_in_the_link():
    shown = SparsifyConfig()  # 2:4 magnitude
    at = page_app("masks", "digits:mlp", config_json=shown.to_json())
    at.query_params.update({"mask_config": config_link_value(shown), "mask_view": "Compare",
                            "mb_nm": "1:4", "mb_method": "magnitude", "grp_row": "3", "grp_start": "2"})
    at.run()
    assert not at.exception
    assert _link_warnings(at) == []
    assert at.selectbox(key="mb_nm").value == "1:4" and at.selectbox(key="mb_method").value == "magnitude"
    assert at.number_input(key="grp_row").value == 3 and at.number_input(key="grp_start").value == 2
    for key in ("mb_nm", "mb_method"):
        assert at.selectbox(key=key).proto.query_param_key == key
    for key in ("grp_row", "grp_start"):
        assert at.number_input(key=key).proto.query_param_key == key
    only = [c for c in at.dataframe[-1].value.columns if str(c).startswith("only")]
    assert any("1:4" in str(c) for c in only), only

"""The Studies page's KV-cache form: the grid it builds is the spec a user would write by hand, it runs, every
cell lands on disk with the metrics of a direct evaluation, and a bad setting gets a message."""
from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from sparsekit import study
from sparsekit.study import StudySpec
from sparsekit.study.kvcells import KVStudy


def _page() -> AppTest:
    at = AppTest.from_file("../app.py", default_timeout=300)
    at.run()
    at.switch_page("views/study.py")
    at.run()
    at.radio(key="st_kind").set_value("kv").run()
    assert not at.exception
    return at


def test_kv_form_builds_runs_and_stores_the_grid(tmp_cache):
    at = _page()
    at.multiselect(key="st_kv_methods").set_value(["mustafar-token", "streaming"])
    at.multiselect(key="st_kv_sparsities").set_value([50])
    at.number_input(key="st_kv_texts").set_value(2)
    at.number_input(key="st_kv_tokens").set_value(48)
    at.number_input(key="st_kv_window").set_value(8)
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("**4 cells**" in c.value for c in at.caption)
    at.button(key="st_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    by_hand = StudySpec(name="KV cache lm:small", kind="kv", models=("lm:small",),
                        methods=("mustafar-token", "streaming"), patterns=("kv:0.5",), seeds=(0, 1),
                        kv=KVStudy(tokens=48, prompt=12, residual_length=8, new_tokens=0))
    records = study.study_records(by_hand)
    assert len(records) == 4 and all(r.status == "done" for r in records)
    again = study.run_study(by_hand, "local", progress=None)  # the same cells: nothing computed again
    assert again.status.computed == 0
    assert sorted((r.method, r.seed, r.metrics["perplexity"]) for r in again.records) == sorted(
        (r.method, r.seed, r.metrics["perplexity"]) for r in records)


@pytest.mark.parametrize("tokens,window", [(16, 15)])
def test_kv_form_bad_window_is_named(tmp_cache, tokens, window):
    at = _page()
    at.number_input(key="st_kv_tokens").set_value(tokens)
    at.number_input(key="st_kv_window").set_value(window)
    at.run()
    assert not at.exception
    assert any("dense window" in e.value for e in at.error), [e.value for e in at.error]

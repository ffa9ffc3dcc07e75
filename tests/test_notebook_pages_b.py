"""'Open as notebook' on the Attention, Training & topology and Recovery pages: each page's download,
executed in a fresh kernel, prints the values the page shows (formatted as the page formats them)."""
from __future__ import annotations

import pytest
import streamlit
from streamlit.testing.v1 import AppTest
from test_page_notebooks import NOTEBOOK_LABEL, metric, run_notebook, same
from ui.format import change_text, metric_text

from devtools.apptest import page_app
from sparsekit import training
from sparsekit.recipes import rounded

TIMEOUT = 300


@pytest.fixture
def notebooks(monkeypatch):
    """widget key -> the notebook bytes each "Open as notebook" button was given (the Training page
    draws one per tab, under the same label)."""
    seen: dict[str, bytes] = {}
    original = streamlit.download_button

    def capture(label, data, *args, **kwargs):
        if label == NOTEBOOK_LABEL:
            seen[kwargs.get("key", "")] = data() if callable(data) else data
        return original(label, data, *args, **kwargs)

    monkeypatch.setattr(streamlit, "download_button", capture)
    return seen


def source_of(nb) -> str:
    return "\n".join(c.source for c in nb.cells)


def plotly_outputs(nb) -> list[dict]:
    return [o["data"]["application/vnd.plotly.v1+json"] for c in nb.cells for o in c.get("outputs", [])
            if "application/vnd.plotly.v1+json" in o.get("data", {})]


# ---------------------------------------------------------------------------------------------------------
# Attention


def test_attention_page_notebook(notebooks):
    at = page_app("attention", "digits:vit", TIMEOUT, att_image=5, att_calib=4)
    at.run()
    at.selectbox(key="att_p_name").set_value("sliding_window").run()
    at.number_input(key="att_p_sliding_window_window").set_value(3).run()
    at.selectbox(key="att_layer").set_value(1).run()
    at.selectbox(key="att_head").set_value(2).run()
    at.radio(key="att_scope").set_value("Chosen layers and heads").run()
    at.multiselect(key="att_heads").set_value([2, 3]).run()
    at.number_input(key="att_budget").set_value(40.0).run()
    at.button(key="att_search").click().run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])

    head, nb = run_notebook(notebooks["att_notebook"])
    text = source_of(nb)
    assert "digits_split().x_test[5:6]" in text and "PatternSpec.of('sliding_window', window=3" in text
    assert "layer, head = 1, 2" in text and "layers=[1], heads=[2, 3]" in text
    assert "SearchConfig(budget=0.4)" in text and "calibration_captures(model, 4)" in text
    assert (head["layer"], head["head"]) == (1, 2)
    assert metric(at, "Density, this head") == f"{head['density_head']:.1%}"
    assert metric(at, "Recall, this head") == f"{head['recall_head']:.1%}"
    assert metric(at, "Output error, this head") == f"{head['error_head']:.3f}"
    assert metric(at, "Recall, mean of all heads") == f"{head['recall_mean']:.1%}"
    q = head["quality"]
    assert metric(at, q["metric"]) == metric_text(q["sparse"])
    assert [m.delta for m in at.metric if m.label == q["metric"]][0] == f"{change_text(q['change'], q['sparse'])} vs dense"
    assert metric(at, "Mean density on the evaluation inputs") == f"{q['mean_density']:.1%}"
    s = head["search"]
    assert metric(at, "Per-head plan: mean density") == f"{s['plan_density']:.1%}"
    assert metric(at, "Per-head plan: mean recall") == f"{s['plan_recall']:.1%}"
    assert [m.delta for m in at.metric if m.label == "Per-head plan: mean recall"][0] == \
        f"{s['recall_vs_uniform']:+.1%} vs uniform"
    # The search's quality metric is the last metric of that name on the page.
    assert [m.value for m in at.metric if m.label == s["metric"]][-1] == metric_text(s["plan_quality"])
    assert [m.delta for m in at.metric if m.label == s["metric"]][-1] == \
        f"{change_text(s['quality_vs_uniform'], s['plan_quality'])} vs uniform"
    compare = at.dataframe[-2].value
    assert compare["pattern"].iloc[2] == s["uniform"]
    assert len(plotly_outputs(nb)) == 6  # recall grid, heatmap, density, error, plan grid, trade-off


def test_attention_notebook_before_the_search_and_for_a_text(notebooks):
    at = page_app("attention", "minilm", TIMEOUT)
    at.query_params["att_source"] = "Your text"
    at.run()
    at.text_area(key="att_text").set_value("Sparse attention keeps a few keys per query, so long inputs cost less.")
    at.run()
    at.selectbox(key="att_head").set_value(7).run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    head, nb = run_notebook(notebooks["att_notebook"])
    text = source_of(nb)
    assert "fit_text_input(model, text)" in text and "keeps a few keys per query" in text
    assert "search_heads" not in text and "search" not in head
    assert metric(at, "Recall, this head") == f"{head['recall_head']:.1%}"
    assert metric(at, "Output error, this head") == f"{head['error_head']:.3f}"
    assert metric(at, head["quality"]["metric"]) == metric_text(head["quality"]["sparse"])
    assert metric(at, "Mean density on the evaluation inputs") == f"{head['quality']['mean_density']:.1%}"


# ---------------------------------------------------------------------------------------------------------
# Recovery


def recovery_app() -> AppTest:
    at = AppTest.from_file("../app.py", default_timeout=TIMEOUT)
    at.run()
    at.selectbox(key="model_source").set_value("digits:mlp").run()
    at.switch_page("views/sparsify.py")
    at.run()
    at.selectbox(key="sp_method").set_value("wanda").run()
    at.switch_page("views/recovery.py")
    at.run()
    assert not at.exception
    return at


def assert_rows_shown(frame, rows):
    """The page's summary table against the notebook's headline rows (columns the headline has)."""
    assert len(frame) == len(rows)
    for (_, shown), want in zip(frame.iterrows(), rows):
        for column, value in want.items():
            cell = shown[column]
            if value is None:
                assert cell is None or cell != cell, column  # None or NaN
            else:
                assert same(rounded(cell.item() if hasattr(cell, "item") else cell), value), column


def test_recovery_page_notebooks(tmp_cache, notebooks):
    at = recovery_app()
    at.multiselect(key="rc_modes").set_value(["ste", "srste"])
    at.number_input(key="rc_steps").set_value(20)
    at.number_input(key="rc_lr").set_value(0.002)
    at.number_input(key="rc_every").set_value(10)
    at.run()
    at.button(key="rc_run").click().run()
    at.selectbox(key="rc_layer_run").set_value(1).run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])

    head, nb = run_notebook(notebooks["rc_notebook"])
    text = source_of(nb)
    assert "SparsifyConfig(method='wanda')" in text
    assert "RecoveryConfig(mode='ste', steps=20, lr=0.002" in text and "RecoveryConfig(mode='srste'" in text
    assert "viz.recovery_sad_heatmap(records[1])" in text and head["layer_run"] == "SR-STE"
    assert [r["mode"] for r in head["runs"]] == ["STE", "SR-STE"]
    assert_rows_shown(at.dataframe[0].value, head["runs"])
    assert len(plotly_outputs(nb)) == 5

    # The Saved runs view: the same runs reopened from the run store.
    at.radio(key="rc_view").set_value("Saved runs").run()
    at.selectbox(key="rc_saved_layer_run").set_value(0).run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    saved, nb = run_notebook(notebooks["rc_saved_notebook"])
    assert "recovery.load_recovery(run_id)" in source_of(nb)
    shown = at.dataframe[1].value  # [0] is the table of every saved run
    assert_rows_shown(shown, saved["runs"])
    assert sorted(r["after"] for r in saved["runs"]) == sorted(r["after"] for r in head["runs"])
    assert all("wanda" in r["starting setting"] for r in saved["runs"])


# ---------------------------------------------------------------------------------------------------------
# Training & topology


@pytest.fixture
def training_page(tmp_cache, monkeypatch):
    # The "hf" source with no model roots draws the sidebar without loading a model (the page trains its own).
    monkeypatch.delenv("SPARSEKIT_MODEL_ROOTS", raising=False)
    at = page_app("training", "hf", TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    return at


def test_training_runs_notebook(training_page, notebooks, tmp_path, monkeypatch):
    at = training_page
    at.selectbox(key="tr_arch").set_value("mlp").run()
    at.text_input(key="tr_patterns").set_value("1:4")
    at.number_input(key="tr_epochs").set_value(2)
    at.number_input(key="tr_batch").set_value(512)
    at.number_input(key="tr_seed").set_value(3)
    at.run()
    at.button(key="tr_go").click().run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    at.radio(key="tr_sad_unit").set_value("number of weights").run()
    layers = at.selectbox(key="tr_sad_layer").options
    at.selectbox(key="tr_sad_layer").set_value(layers[-1]).run()
    at.selectbox(key="tr_focus").set_value(training.list_runs()[1]["run_id"]).run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])

    head, nb = run_notebook(notebooks["tr_notebook"])
    text = source_of(nb)
    for setting in ("arch='mlp'", "n=1", "seed=3", "epochs=2", "batch_size=512", "method='ste'"):
        assert setting in text, setting
    assert f"layer, fraction = {layers[-1]!r}, False" in text
    summary = at.dataframe[1].value
    assert_rows_shown(summary, head["summary"])
    assert [r["name"] for r in head["summary"]] == list(summary["name"])
    captions = " ".join(c.value for c in at.caption)
    focus_label = head["flips"][0]["run"]
    assert head["flips"][0]["run"] == list(summary["name"])[1]
    for f in head["flips"]:
        assert (f"{f['run']}, {f['layer']}: weight {tuple(f['shape'])} shown as {f['grid'][0]}×{f['grid'][1]}"
                in captions)
        assert (f"{f['changed']:,} of {f['weights']:,} weights changed state at least once over {f['intervals']} "
                f"intervals; most flips of one weight: {f['most']}." in captions)
    assert len(head["flips"]) == 2 and focus_label
    assert len(plotly_outputs(nb)) == 7  # curves, 4 SAD series, heatmap, flip maps

    # Where the run store lacks the runs, the notebook trains them again from their seeded configs.
    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(tmp_path / "empty-cache"))
    again, _ = run_notebook(notebooks["tr_notebook"])
    assert again == head


def test_seed_study_notebook(training_page, notebooks):
    at = training_page
    at.selectbox(key="ss_arch").set_value("mlp")
    at.number_input(key="ss_epochs").set_value(2)
    at.number_input(key="ss_seeds").set_value(2)
    at.text_input(key="ss_patterns").set_value("1:4")
    at.text_input(key="ss_sweep").set_value("").run()
    at.button(key="ss_go").click().run()
    at.radio(key="ss_metric").set_value("accuracy").run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])

    head, nb = run_notebook(notebooks["ss_notebook"])
    text = source_of(nb)
    assert "patterns=((1, 4),), seeds=2, lambda_sweep=()" in text and "arch='mlp'" in text
    assert "viz.seed_study_figure(result, 'accuracy')" in text
    assert "0 of 4 runs trained here" in "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    shown = [m.value for m in [*at.info, *at.success]]
    assert head["comparisons"] and all(s in shown for s in head["comparisons"])
    table = next(d.value for d in at.dataframe if "run" in d.value.columns)
    assert_rows_shown(table, head["summary"])
    assert head["complete"] is True
    assert len(plotly_outputs(nb)) == 2  # per-seed values, paired differences (no λ_w sweep)

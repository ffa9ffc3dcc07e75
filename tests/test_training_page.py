"""The Training & topology page through AppTest: runs, live progress, comparisons, bad input, persistence."""
import base64
import json

import numpy as np
import pytest

from sparsekit import training
from sparsekit.models.digits import digits_split
from sparsekit.topology import SadReport, matrix_view
from sparsekit.training import TrainConfig
from ui.testing import page_app

TIMEOUT = 180


@pytest.fixture
def page(tmp_cache, monkeypatch):
    # The "hf" source with no model roots draws the sidebar without loading a model: this page
    # trains its own models, so the tests skip training the sidebar's digits model.
    monkeypatch.delenv("SPARSEKIT_MODEL_ROOTS", raising=False)

    def make():
        at = page_app("training", "hf", TIMEOUT)
        at.run()
        assert not at.exception, at.exception
        return at
    return make


def decode(arr):
    if isinstance(arr, dict):
        shape = tuple(int(x) for x in str(arr.get("shape", "-1")).split(","))
        return np.frombuffer(base64.b64decode(arr["bdata"]), dtype=arr["dtype"]).reshape(shape).astype(float)
    return np.asarray([np.nan if v is None else v for v in arr], dtype=float) if np.ndim(arr) == 1 else \
        np.asarray(arr, dtype=float)


def figures(at):
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def titled(at, text):
    figs = [f for f in figures(at) if text in str(f["layout"].get("title", {}).get("text", ""))]
    assert figs, f"no figure titled {text!r}"
    return figs[0]


def test_page_trains_runs_and_compares(page):
    at = page()
    assert at.title[0].value == "Training & topology"
    assert any("No saved runs yet" in i.value for i in at.info)
    at.number_input(key="tr_epochs").set_value(2)
    at.number_input(key="tr_batch").set_value(256)
    at.run()
    assert not at.error, [e.value for e in at.error]
    at.button(key="tr_go").click().run()
    assert not at.exception, at.exception
    runs = training.list_runs()
    assert [(r["config"]["method"], r["config"]["n"], r["status"]) for r in runs] == [
        ("ste", 2, "complete"), ("ste", 1, "complete"), ("srste", 2, "complete"), ("srste", 1, "complete")]
    recs = [training.load_run(r["run_id"]) for r in runs]
    # The comparison table shows each run's held-out accuracy.
    table = at.dataframe[1].value
    assert list(table["accuracy (%)"]) == pytest.approx([r.final_accuracy for r in recs])
    # SAD per interval on a log axis, equal to an XOR count over the stored masks.
    fig = titled(at, "SAD between consecutive snapshots")
    assert fig["layout"]["yaxis"]["type"] == "log"
    for trace, rec in zip(fig["data"], recs):
        h = rec.history
        total = h.numel()
        ref = [sum(int((h.mask(n, i - 1) ^ h.mask(n, i)).sum()) for n in h.layers) / total for i in range(1, len(h))]
        assert trace["name"] == rec.label
        assert decode(trace["y"]) == pytest.approx(ref)
    cum = titled(at, "cumulative SAD")
    assert decode(cum["data"][0]["y"])[-1] == pytest.approx(sum(
        int((recs[0].history.mask(n, i - 1) ^ recs[0].history.mask(n, i)).sum())
        for n in recs[0].history.layers for i in range(1, len(recs[0].history))) / recs[0].history.numel())
    heat = titled(at, "SAD per layer and interval")
    assert list(heat["data"][0]["y"]) == ["conv2", "head"]
    # Flip counts of the chosen layer: a plain XOR sum over consecutive snapshots.
    flips = titled(at, "flips per weight")
    h = recs[0].history
    layer = at.selectbox(key="tr_flip_layer").value
    ref = sum((h.mask(layer, i - 1) ^ h.mask(layer, i)).int() for i in range(1, len(h)))
    assert np.array_equal(decode(flips["data"][0]["z"]), matrix_view(ref, "channel").numpy().astype(float))
    assert len(at.get("download_button")) == 3
    # Raw counts instead of fractions: the same series times the weights counted.
    at.radio(key="tr_sad_unit").set_value("number of weights").run()
    fig = titled(at, "SAD between consecutive snapshots (weights)")
    assert decode(fig["data"][0]["y"]) == pytest.approx(recs[0].sad().series("interval")[1:])


@pytest.mark.parametrize("key,value,message", [
    ("tr_patterns", "4:4", "1 <= N < M"),
    ("tr_patterns", "2-4", "could not read '2-4' as N:M"),
    ("tr_epochs", 0, "epochs must be between 1 and 200"),
    ("tr_batch", 5000, "batch size must be between 1 and 1437"),
    ("tr_lambda", -0.001, "λ_w (SR-STE decay) must be between 0 and 1"),
    ("tr_lr", 0.0, "learning rate must be > 0"),
])
def test_bad_settings_show_errors(page, key, value, message):
    at = page()
    widget = at.text_input(key=key) if key == "tr_patterns" else at.number_input(key=key)
    widget.set_value(value).run()
    assert not at.exception, at.exception
    assert any(message in e.value for e in at.error), [e.value for e in at.error]
    assert at.button(key="tr_go").disabled
    assert training.list_runs() == []


def test_saved_runs_persist_rename_and_delete(page):
    data = digits_split()
    a = training.run_and_save(TrainConfig(method="ste", epochs=1, batch_size=512), data=data)
    b = training.run_and_save(TrainConfig(method="srste", epochs=1, batch_size=512), data=data)
    at = page()  # a new session: the runs come from the disk cache
    assert list(at.dataframe[0].value["id"]) == [a.run_id, b.run_id]
    assert at.multiselect(key="tr_selected").value == [a.run_id, b.run_id]
    at.selectbox(key="tr_manage").set_value(a.run_id)
    at.text_input(key="tr_newname").set_value("my STE run")
    at.button(key="tr_rename").click().run()
    assert any("Renamed" in s.value for s in at.success)
    assert training.load_run(a.run_id).name == "my STE run"
    assert "my STE run" in list(at.dataframe[0].value["name"])
    at.checkbox(key="tr_confirm").check().run()
    at.selectbox(key="tr_manage").set_value(a.run_id)
    at.button(key="tr_delete").click().run()
    assert not at.exception, at.exception
    assert [r["run_id"] for r in training.list_runs()] == [b.run_id]
    assert list(page().dataframe[0].value["id"]) == [b.run_id]


def test_stopped_run_shows_its_status(page):
    data = digits_split()
    training.run_and_save(TrainConfig(epochs=3, batch_size=512), data=data, callback=lambda p: p.step == 4)
    at = page()
    assert list(at.dataframe[0].value["status"]) == ["stopped"]
    assert list(at.dataframe[1].value["status"]) == ["stopped"]
    assert not at.error


def test_dense_gradual_and_random_runs(page):
    at = page()
    at.multiselect(key="tr_methods").set_value(["dense", "gradual", "random"])
    at.number_input(key="tr_epochs").set_value(2)
    at.number_input(key="tr_batch").set_value(512)
    at.run()
    # 6 steps in all: the default Δt = 10 does not fit the pruning window.
    assert any("shorter than Δt" in e.value for e in at.error), [e.value for e in at.error]
    at.number_input(key="tr_every").set_value(1).run()
    assert not at.error, [e.value for e in at.error]
    at.button(key="tr_go").click().run()
    assert not at.exception, at.exception
    runs = training.list_runs()
    # Random masks follow the patterns (2:4 and 1:4); dense and gradual run once.
    assert [r["config"]["method"] for r in runs] == ["dense", "gradual", "random", "random"]
    kept = list(at.dataframe[1].value["kept"])
    assert kept[0] == 1.0 and kept[2:] == pytest.approx([0.5, 0.25])
    # Gradual prunes every Linear/Conv layer to 75%, conv1 included.
    rec = training.load_run(runs[1]["run_id"])
    ref = sum(int(rec.history.mask(n, -1).sum()) for n in rec.history.layers) / rec.history.numel()
    assert kept[1] == pytest.approx(ref) and ref == pytest.approx(0.25, abs=1e-3)


def test_figure_builders_edge_cases():
    from sparsekit import viz

    def run_with_sad(interval):
        # One layer whose interval SAD is given; the other series are not drawn here.
        n = len(interval)
        zeros = np.zeros(n, dtype=np.int64)
        report = SadReport(layers=["fc"], numel={"fc": 100}, steps=list(range(n)), epochs=[float(i) for i in range(n)],
                           interval={"fc": np.array(interval, dtype=np.int64)}, from_first={"fc": zeros},
                           to_final={"fc": zeros})
        return [training.RunRecord(config=TrainConfig(), name="r")], [report]

    # Zeros cannot sit on a log axis: they become gaps, and a note counts them.
    runs, reports = run_with_sad([0, 5, 0, 2])
    fig = viz.sad_series_figure(runs, reports=reports)
    assert list(fig.data[0].y) == [5.0, None, 2.0] and list(fig.data[0].x) == [1.0, 2.0, 3.0]
    assert "1 zero value(s)" in fig.layout.annotations[0].text
    runs, reports = run_with_sad([0, 3])
    cum = viz.sad_series_figure(runs, kind="cumulative", reports=reports)
    assert cum.layout.yaxis.type == "linear" and list(cum.data[0].y) == [0.0, 3.0]
    with pytest.raises(ValueError, match="kind"):
        viz.sad_series_figure([], kind="sideways")
    # A matrix over the cell budget is averaged over square tiles.
    counts = np.arange(40 * 60, dtype=float).reshape(40, 60)
    big = viz.flip_count_figure(counts, max_cells=600)
    z = np.asarray(big.data[0].z)
    assert z.shape == (20, 30) and z[0, 0] == pytest.approx(counts[:2, :2].mean())
    assert "2×2 tiles" in big.layout.title.text
    small = viz.flip_count_figure(counts[:3, :4])
    assert np.array_equal(np.asarray(small.data[0].z), counts[:3, :4])
    with pytest.raises(ValueError, match="negative"):
        viz.flip_count_figure(-np.ones((2, 2)))
    with pytest.raises(ValueError, match="layers"):
        viz.sad_heatmap_figure(["a"], [0, 1], np.zeros((2, 2)))


def test_seed_study_tab_runs_shows_intervals_and_reopens(page):
    from sparsekit.seedstudy import SeedStudyConfig, run_seed_study

    at = page()
    at.selectbox(key="ss_arch").set_value("mlp")
    at.number_input(key="ss_epochs").set_value(2)
    at.number_input(key="ss_seeds").set_value(3)
    at.text_input(key="ss_patterns").set_value("2:4")
    at.text_input(key="ss_sweep").set_value("0, 1e-3").run()
    assert not at.exception, at.exception
    assert any("9 training runs (0 already on disk" in c.value for c in at.caption)
    at.button(key="ss_go").click().run()
    assert not at.exception, at.exception
    cfg = SeedStudyConfig(train=TrainConfig(arch="mlp", epochs=2), patterns=((2, 4),), seeds=3,
                          lambda_sweep=(0.0, 1e-3))
    result = run_seed_study(cfg)  # from the cache the page filled
    assert result.computed == 0
    shown = [m.value for m in [*at.info, *at.success]]
    for c in result.comparisons():
        if c.metric != "early_sad_pct":
            assert c.sentence in shown
    table = next(d.value for d in at.dataframe if "run" in d.value.columns)
    for row, want in zip(table.itertuples(index=False), result.summary()):
        assert row[table.columns.get_loc("late SAD (% of sparse weights)")] == pytest.approx(
            want.metrics["late_sad_pct"].mean)
        assert row[table.columns.get_loc("final accuracy CI low")] == pytest.approx(want.metrics["accuracy"].low)
    specs = figures(at)
    titles = [s["layout"]["title"]["text"] for s in specs]
    assert any(t.startswith("late SAD over 3 seeds") for t in titles)
    assert any(t.startswith("SR-STE's λ_w at 2:4") for t in titles)
    paired = next(s for s in specs if s["layout"]["title"]["text"].startswith("Paired difference"))
    late = next(c for c in result.comparisons() if c.metric == "late_sad_pct")
    assert decode(paired["data"][0]["y"])[0] == pytest.approx(late.paired.diff.mean)
    # Reopened in a new session: everything is on disk, nothing to press, nothing retrained.
    again = page()
    for key, value in (("ss_arch", "mlp"), ("ss_epochs", 2), ("ss_seeds", 3)):
        (again.selectbox if key == "ss_arch" else again.number_input)(key=key).set_value(value)
    again.text_input(key="ss_patterns").set_value("2:4")
    again.text_input(key="ss_sweep").set_value("0, 1e-3").run()
    assert again.button(key="ss_go").disabled
    assert any(s.value == late.sentence for s in [*again.info, *again.success])


def test_seed_study_bad_settings(page):
    at = page()
    at.text_input(key="ss_patterns").set_value("2-4").run()
    assert not at.exception
    assert any("Invalid study settings" in e.value and "N:M" in e.value for e in at.error)
    at.text_input(key="ss_patterns").set_value("2:4")
    at.number_input(key="ss_lambda").set_value(0.0).run()
    assert any("λ_w must be > 0" in e.value for e in at.error)

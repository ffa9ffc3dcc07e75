"""The Training & topology page through AppTest: runs, live progress, comparisons, bad input, persistence."""
import base64
import json

import numpy as np
import pytest

from sparsekit import training
from sparsekit.models.digits import digits_split
from sparsekit.topology import SadReport, matrix_view
from sparsekit.training import TrainConfig, default_train_config, srste_effect_config
from devtools.apptest import page_app

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
    # One colour per run in every figure of the page, a different one for each run.
    colour_of = {}
    for fig in figures(at):
        for trace in fig["data"]:
            if trace.get("type") == "scatter" and "line" in trace:
                label = trace.get("legendgroup") or trace["name"]
                colour_of.setdefault(label, set()).add(trace["line"]["color"])
    assert set(colour_of) == {rec.label for rec in recs}
    assert all(len(c) == 1 for c in colour_of.values()), colour_of
    assert len({next(iter(c)) for c in colour_of.values()}) == len(recs)
    # Flip counts of the chosen layer: a plain XOR sum over consecutive snapshots, the focus run (STE 2:4)
    # beside the first run of another method (SR-STE 2:4), on one colour scale.
    flips = titled(at, "flips per weight")
    layer = at.selectbox(key="tr_flip_layer").value
    assert at.selectbox(key="tr_flip_other").value == recs[2].run_id
    refs = []
    for trace, rec in zip(flips["data"], (recs[0], recs[2])):
        h = rec.history
        ref = sum((h.mask(layer, i - 1) ^ h.mask(layer, i)).int() for i in range(1, len(h)))
        refs.append(matrix_view(ref, "channel").numpy().astype(float))
        assert np.array_equal(decode(trace["z"]), refs[-1])
    assert len(flips["data"]) == 2
    top = max(float(r.max()) for r in refs)
    assert [(t["zmin"], t["zmax"]) for t in flips["data"]] == [(0, top), (0, top)]
    assert len(at.get("download_button")) == 4  # and the notebook
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


def test_vit_form_offers_the_vit_defaults(page):
    at = page()
    assert (at.selectbox(key="tr_opt").value, at.number_input(key="tr_lr").value) == ("sgd", 0.1)
    at.selectbox(key="tr_arch").set_value("vit").run()
    assert not at.exception, at.exception
    # The ViT stays at chance with SGD at lr 0.1: the form switches to AdamW (see test_training's
    # test_arch_defaults_train_well_above_chance for the runs).
    form = (at.selectbox(key="tr_opt").value, at.number_input(key="tr_lr").value, at.number_input(key="tr_wd").value)
    assert form == ("adamw", 0.003, 0.05)
    vit = default_train_config("vit")
    assert form == (vit.optimizer, vit.lr, vit.weight_decay)
    assert any("SR-STE 2:4 λ=0.0002 · ViT" in c.value for c in at.caption)
    # A learning rate the user typed is kept across a model change; untouched fields follow the model.
    at.number_input(key="tr_lr").set_value(0.01).run()
    at.selectbox(key="tr_arch").set_value("cnn").run()
    assert (at.selectbox(key="tr_opt").value, at.number_input(key="tr_lr").value,
            at.number_input(key="tr_wd").value) == ("sgd", 0.01, 5e-4)
    # The seed-study form follows the model too.
    at.selectbox(key="ss_arch").set_value("vit").run()
    assert (at.selectbox(key="ss_opt").value, at.number_input(key="ss_lr").value) == ("adamw", 0.003)


def test_url_opens_the_form_with_its_settings(tmp_cache, monkeypatch):
    monkeypatch.delenv("SPARSEKIT_MODEL_ROOTS", raising=False)
    at = page_app("training", "hf", TIMEOUT)
    at.query_params.update(tr_arch="vit", tr_epochs="3", tr_methods="STE", tr_patterns="1:4", tr_lambda="0.001")
    at.run()
    assert not at.exception, at.exception
    assert at.selectbox(key="tr_arch").value == "vit"
    assert at.number_input(key="tr_epochs").value == 3
    assert at.multiselect(key="tr_methods").value == ["ste"]
    assert at.text_input(key="tr_patterns").value == "1:4"
    assert at.number_input(key="tr_lambda").value == 0.001
    # Fields the URL leaves out take the ViT's defaults.
    assert (at.selectbox(key="tr_opt").value, at.number_input(key="tr_lr").value) == ("adamw", 0.003)
    assert any(c.value.startswith("1 run(s), 69 optimiser steps each: STE 1:4 · ViT") for c in at.caption)
    # Settings put in by the page itself reach the URL too (a reload keeps them); defaults are dropped.
    at.button(key="tr_preset").click().run()
    assert at.query_params.get("tr_lambda") == "0.002" and at.query_params.get("tr_patterns") == "2:4"
    assert "tr_epochs" not in at.query_params and "tr_arch" not in at.query_params


def test_effect_note_preset_and_study_intervals(page, monkeypatch):
    import ui.training
    from sparsekit.seedstudy import SeedStudyConfig, run_seed_study

    at = page()
    intro = next(m.value for m in at.markdown if "**SAD**" in m.value)
    assert "falls under SR-STE" not in intro  # the old promise, which one run at the defaults does not keep
    note = next(m.value for m in at.markdown if m.value.startswith("**What to expect.**"))
    assert "overlapping SAD curves" in note and "20 epochs and λ_w = 0.002" in note
    assert any(c.value.startswith("No interval shown") for c in at.caption)
    assert not at.success  # no study on disk: no numbers
    at.button(key="tr_preset").click().run()
    assert not at.exception, at.exception
    effect = srste_effect_config()
    assert at.selectbox(key="tr_arch").value == effect.arch
    assert at.multiselect(key="tr_methods").value == ["ste", "srste"]
    assert at.text_input(key="tr_patterns").value == "2:4"
    assert (at.number_input(key="tr_epochs").value, at.number_input(key="tr_lambda").value) == (20, 0.002)
    assert (at.selectbox(key="tr_opt").value, at.number_input(key="tr_lr").value) == ("sgd", 0.1)

    # A small stand-in for the 56-run study, run and on disk: the note shows its intervals.
    tiny = SeedStudyConfig(train=default_train_config("mlp", epochs=2), patterns=((2, 4),), seeds=2,
                           lambda_sweep=(0.0, 2e-3))
    monkeypatch.setattr(ui.training, "effect_study", lambda: tiny)
    at = page()
    assert any(c.value.startswith("No interval shown: that seed study (6 runs)") for c in at.caption)
    result = run_seed_study(tiny)
    at = page()
    sweep = {r.lambda_w: r.metrics["late_sad_pct"] for r in result.lambda_rows()}
    shown = at.success[0].value
    assert "2 seeds" in shown
    assert f"λ_w = 0 (STE): {sweep[0.0].text()} %" in shown and f"λ_w = 0.002: {sweep[2e-3].text()} %" in shown
    late = next(c for c in result.comparisons() if c.metric == "late_sad_pct")
    assert any(c.value == late.sentence for c in at.caption)
    # The other button fills the Seed study tab with that study: everything is on disk already.
    at.button(key="ss_preset").click().run()
    assert (at.selectbox(key="ss_arch").value, at.number_input(key="ss_seeds").value) == ("mlp", 2)
    assert at.text_input(key="ss_sweep").value == "0, 0.002"
    assert any("All 6 training runs of these settings are on disk" in c.value for c in at.caption)


def test_live_chart_full_width_and_chance_warning(page):
    at = page()
    # The ViT with the CNN's SGD recipe, which leaves it at chance.
    at.selectbox(key="tr_arch").set_value("vit")
    at.multiselect(key="tr_methods").set_value(["ste"])
    at.text_input(key="tr_patterns").set_value("2:4")
    at.run()
    at.selectbox(key="tr_opt").set_value("sgd")
    at.number_input(key="tr_lr").set_value(0.1)
    at.number_input(key="tr_epochs").set_value(3)
    at.number_input(key="tr_batch").set_value(512)
    at.run()
    at.button(key="tr_go").click().run()
    assert not at.exception, at.exception
    rec = training.load_run(training.list_runs()[0]["run_id"])
    assert rec.status == "complete"
    box = at.status[0]
    live = box.get("plotly_chart")
    assert live and not box.columns  # the live charts span the whole box, not half of it
    expected = training.chance_warning(rec)
    assert expected and rec.final_accuracy < 20
    assert any(w.value.startswith(expected) for w in box.get("warning"))
    assert any(w.value == expected for w in at.warning)  # again beside the comparison table


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

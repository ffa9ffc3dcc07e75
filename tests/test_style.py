"""Issue #24, "One style" and "Messages": one number style, one colour per method/mode, clear messages."""
from __future__ import annotations

import pytest

import sparsekit
from sparsekit.sparsify import SparsifyConfig, sparsify


def test_owl_2_4_on_digits_cnn_leaves_conv1_dense():
    # Uniform 2:4 leaves conv1 (1 input channel × 3×3) dense by itself; OWL now does the same.
    cnn = sparsekit.load_model("digits:cnn")
    res = sparsify(cnn, SparsifyConfig(pattern="nm", n=2, m=4, allocation="owl", method="magnitude"), progress=False)
    reasons = {r.name: r.skipped_reason for r in res.report}
    assert "not a multiple of M=4" in reasons["conv1"]
    assert "conv1" not in res.masks and len(res.masks) >= 2
    assert "left dense, as M does not fit: conv1" in res.allocation_note


def test_architecture_names_are_cased():
    from sparsekit.training import TrainConfig
    assert TrainConfig(arch="vit", method="ste").label().endswith("· ViT")
    assert TrainConfig(arch="cnn", method="ste").label().endswith("· CNN")
    assert TrainConfig(arch="mlp", method="ste").label().endswith("· MLP")


class _Box:
    def __init__(self):
        self.messages = []

    def warning(self, text, **_):
        self.messages.append(text)


def test_no_m_fits_suggests_keep_first_layer_dense():
    from ui.sparsify import fit_banner
    cnn = sparsekit.load_model("digits:cnn")
    box = _Box()
    config = SparsifyConfig(pattern="nm", n=2, m=4)
    fit_banner(cnn, config, {"layers_pruned": 2, "layers_total": 3}, box)
    assert len(box.messages) == 1 and "No M up to 32 fits every layer" in box.messages[0]
    assert "**keep first layer dense**" in box.messages[0] and "`conv1`" in box.messages[0]


def test_training_warns_when_m_does_not_fit(tmp_cache, monkeypatch):
    from devtools.apptest import page_app
    monkeypatch.delenv("SPARSEKIT_MODEL_ROOTS", raising=False)
    at = page_app("training", "hf", 180)
    at.run()
    at.selectbox(key="tr_arch").set_value("cnn")
    at.text_input(key="tr_patterns").set_value("2:5")
    at.run()
    assert not at.exception, at.exception
    warnings = [w.value for w in at.warning]
    assert any("M = 5 does not fit" in w and "`conv1`" in w and "CNN" in w for w in warnings), warnings
    at.text_input(key="tr_patterns").set_value("2:4")
    at.run()
    assert not any("M = 4 does not fit 3" in w for w in at.warning)


def test_study_name_that_is_not_text_says_so():
    import pytest

    from sparsekit.study import StudySpec
    with pytest.raises(ValueError, match="name must be text") as err:
        spec = '{"name": 5, "models": ["digits:mlp"], "methods": ["magnitude"], "patterns": ["2:4"]}'
        StudySpec.from_json(spec).validate()
    assert "1 to 120 characters" not in str(err.value)


def test_too_long_model_path_has_a_clear_message(tmp_path, monkeypatch):
    import pytest
    monkeypatch.setenv("SPARSEKIT_MODEL_ROOTS", str(tmp_path))
    for target in ["hf:" + "a" * 300, f"hf:{tmp_path}/" + "b" * 300]:
        with pytest.raises(ValueError, match="is too long") as err:
            sparsekit.load_model(target)
        assert "Errno" not in str(err.value)


def test_model_list_leaves_out_a_folder_with_a_broken_config(model_root):
    from sparsekit.models import list_model_dirs
    broken = model_root / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    array = model_root / "array"
    array.mkdir()
    (array / "config.json").write_text("[1, 2]")
    dirs = list_model_dirs()
    assert dirs and broken not in dirs and array not in dirs


_QUIET_LOAD = """
import sparsekit
sparsekit.load_model("minilm")
print("loaded")
"""


def test_minilm_load_prints_no_load_report(tmp_path):
    import os
    import subprocess
    import sys
    env = {**os.environ, "SPARSEKIT_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", _QUIET_LOAD], capture_output=True, text=True, env=env, timeout=600,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr[-2000:]
    both = out.stdout + out.stderr
    assert "loaded" in out.stdout
    assert "UNEXPECTED" not in both and "LOAD REPORT" not in both.upper() and "pooler.dense" not in both, both[-2000:]


def test_serve_prints_the_url_and_no_load_report(tmp_path):
    import os
    import time

    from devtools.served import served_app
    log = tmp_path / "serve.log"
    env = {**os.environ, "SPARSEKIT_CACHE_DIR": str(tmp_path / "cache")}
    with served_app(("scripts/serve.py",), env=env, log_path=log, timeout=300) as url:
        # The preload of MiniLM runs beside the server; transformers printed its report when it ended.
        for _ in range(30):
            time.sleep(1)
            if "UNEXPECTED" in log.read_text():
                break
    text = log.read_text()
    assert f"URL: {url}" in text or url.split(":")[-1] in text, text[-2000:]
    assert "UNEXPECTED" not in text and "pooler.dense" not in text, text[-2000:]


def test_table_cells_headers_and_sizes():
    import pandas as pd

    from ui.format import MISSING, cell_text, header_text, shown_table, size_text
    assert header_text("explained_class") == "explained class"
    assert header_text("median_ms") == "median (ms)" and header_text("early_sad_pct") == "early SAD (%)"
    assert header_text("foo_ms") == "foo (ms)"
    assert cell_text(None) == MISSING == "—" and cell_text(float("nan")) == MISSING
    assert cell_text(5308416) == "5,308,416" and cell_text(36788) == "36,788"
    assert cell_text(96.11111) == "96.11" and cell_text(0.98765) == "0.9877"
    table = shown_table(pd.DataFrame({"explained_class": [3, None], "median_ms": [1.5, None]}))
    assert list(table.columns) == ["explained class", "median (ms)"]
    assert "None" not in table.to_string() and "nan" not in table.to_string()
    assert size_text(36_000) == "35.2 KB" and size_text(5 * 2**20) == "5.0 MB" and size_text(100) == "100 bytes"


def test_model_details_use_thousands_separators():
    from types import SimpleNamespace

    from ui.format import source_details
    rows = dict(source_details(SimpleNamespace(info={"parameters": 5308416, "missing": None})))
    assert rows["parameters"] == "5,308,416" and rows["missing"] == "—"


def test_vit_params_by_type_names_no_model_class():
    from sparsekit.models.digits_nets import build_digits_model
    from sparsekit.report import params_by_type
    counts = params_by_type(build_digits_model("vit"))
    assert "DigitsViT" not in counts and counts["tokens & position embedding"] == 64 + 1088


def test_sparsify_page_one_precision_and_small_file_size(digits_cache, downloads):
    from devtools.apptest import page_app
    at = page_app("sparsify", "digits:cnn", 180, config_json=SparsifyConfig(pattern="nm", n=2, m=4).to_json())
    at.run()
    assert not at.exception, at.exception
    weights = next(d.proto.label for d in at.get("download_button") if d.proto.label.startswith("Pruned weights"))
    assert "0 MB" not in weights and "KB" in weights, weights
    accuracy = next(m for m in at.metric if "accuracy" in m.label)
    assert len(accuracy.value.split(".")[-1]) == 2, accuracy.value  # 96.11, as elsewhere, not 96.1111


def test_attribution_table_has_human_headers(digits_cache):
    import json

    from devtools.apptest import page_app
    at = page_app("attribution", "digits:mlp", 180, config_json=SparsifyConfig(pattern="nm", n=2, m=4).to_json())
    at.run()
    assert not at.exception, at.exception
    labels = {k: v.get("label") for k, v in json.loads(at.dataframe[0].proto.columns).items()}
    assert labels, at.dataframe[0].proto.columns
    assert labels["explained_class"] == "explained class" and labels["sparse_prediction"] == "sparse prediction"
    shown = at.dataframe[0].proto.arrow_data.styler.display_values
    assert b"None" not in shown and b"nan" not in shown


def test_model_page_parameter_counts_have_separators(digits_cache):
    import json

    from devtools.apptest import page_app
    at = page_app("model", "digits:cnn", 180)
    at.run()
    assert not at.exception, at.exception
    layers = next(d for d in at.dataframe if "params" in d.value.columns)
    assert json.loads(layers.proto.columns)["params"]["type_config"]["format"] == "localized"


def _rec(run_id, mode):
    from types import SimpleNamespace
    return SimpleNamespace(run_id=run_id, label=run_id, config=SimpleNamespace(mode=mode))


def test_recovery_colours_follow_the_mode_in_any_order():
    from sparsekit import viz
    from sparsekit.viz.compare import METHOD_COLORS
    new = viz.recovery_colors([_rec("a", "fixed"), _rec("b", "ste"), _rec("c", "srste")])
    saved = viz.recovery_colors([_rec("c", "srste"), _rec("a", "fixed"), _rec("b", "ste")])
    assert new == saved
    assert new["b"] == METHOD_COLORS["ste"] and new["c"] == METHOD_COLORS["srste"]
    # Two runs of one mode still get two colours.
    two = viz.recovery_colors([_rec("x", "ste"), _rec("y", "ste")])
    assert len(set(two.values())) == 2 and two["x"] == METHOD_COLORS["ste"]


def test_all_zero_sad_heatmap_reads_as_zero():
    from types import SimpleNamespace

    import numpy as np

    from sparsekit.viz.recovery import recovery_sad_heatmap
    from sparsekit.viz.training import sad_heatmap_figure
    rec = SimpleNamespace(label="fixed mask", history=SimpleNamespace(layers=["fc1", "fc2"]), intervals=[0, 1, 2],
                          sad_series=lambda name, fraction=True: np.zeros(3), steps=lambda: [0, 10, 20])
    for fig in (recovery_sad_heatmap(rec), sad_heatmap_figure(["fc1"], [0.0, 1.0, 2.0], np.zeros((1, 3)))):
        heat = fig.data[0]
        assert heat.zmin == 0 and heat.zmax == 1
        assert {c[1] for c in heat.colorscale} == {"#f0f0f0"}
        assert "all zero" in heat.colorbar.title.text
    nonzero = sad_heatmap_figure(["fc1"], [0.0, 1.0, 2.0], np.array([[0.0, 0.1, 0.2]]))
    assert nonzero.data[0].zmin == 0 and "all zero" not in nonzero.data[0].colorbar.title.text


def test_study_difference_sentence_has_the_unit_and_label():
    from sparsekit import study
    from sparsekit.study import CellRecord
    from sparsekit.study.aggregate import metric_label

    def rec(method, seed, value):
        return CellRecord(kind="oneshot", model="digits:mlp", method=method, pattern="2:4", seed=seed,
                          status="done", metrics={"accuracy": value}, kept_fraction=0.5,
                          higher_is_better={"accuracy": True})
    records = [rec("magnitude", s, v) for s, v in enumerate((70.0, 71.0, 69.0))]
    records += [rec("wanda", s, v) for s, v in enumerate((93.0, 94.5, 92.0))]
    (diff,) = study.paired_differences(records, "accuracy")
    assert "wanda is higher than magnitude by 23.2 pp" in diff.sentence, diff.sentence
    assert "held-out accuracy (%)" in diff.sentence
    assert metric_label("accuracy") == "held-out accuracy (%)"


def test_studies_metric_box_shows_the_label(tmp_cache):
    from streamlit.testing.v1 import AppTest
    at = AppTest.from_file("../app.py", default_timeout=300)
    at.run()
    at.switch_page("views/study.py")
    at.run()
    at.multiselect(key="st_models").set_value(["digits:mlp"])
    at.multiselect(key="st_methods").set_value(["magnitude"])
    at.multiselect(key="st_patterns").set_value(["2:4"])
    at.number_input(key="st_seeds").set_value(1)
    at.run()
    at.button(key="st_run").click().run()
    assert not at.exception, at.exception
    box = at.selectbox(key="st_metric")
    assert box.value == "accuracy"
    assert "held-out accuracy (%)" in box.options and "accuracy" not in box.options


def test_table_view_keeps_numbers_and_shows_text():
    import pandas as pd

    from ui.format import table_view
    frame = pd.DataFrame({"median_ms": [1.5, None], "p_rows": [5308416, 3], "early_sad_pct": [0.5, 1.0]})
    view = table_view(frame, {"median_ms": "median"})
    assert view["column_config"] == {"median_ms": "median", "p_rows": "rows", "early_sad_pct": "early SAD (%)"}
    html = view["data"].to_html()
    assert "5,308,416" in html and "—" in html and "None" not in html and "nan" not in html
    assert view["data"].data["p_rows"].tolist() == [5308416, 3]  # the values stay numbers


def test_attribution_similarity_delta_is_not_coloured(model_root, tmp_cache):
    from devtools.apptest import page_app
    at = page_app("attribution", "hf", 300)
    at.run()
    at.sidebar.selectbox(key="hf_choice").set_value(str(model_root / "tiny-bert")).run()
    assert not at.exception, at.exception
    metric = next(m for m in at.metric if m.label == "Similarity, sparse")
    # Higher similarity after pruning is not "better": the delta is grey, not green/red.
    assert metric.proto.color == metric.proto.MetricColor.GRAY, metric.proto


def test_recovery_summary_shows_one_precision():
    from types import SimpleNamespace

    import pandas as pd

    from ui.format import table_view
    rows = pd.DataFrame([{"mode": "STE", "before": 96.111111, "after": 97.5, "gap recovered": 0.8, "seconds": None}])
    view = table_view(rows, {"gap recovered": SimpleNamespace()})
    html = view["data"].to_html()
    assert "96.11<" in html and "96.1111" not in html and "—" in html
    assert ">0.800000<" in html  # unstyled: the caller's NumberColumn formats it (percent on the page)


def test_masks_diff_table_has_thousands_separators():
    from devtools.apptest import page_app
    at = page_app("masks", "digits:mlp", 180)
    at.run()
    assert not at.exception, at.exception
    table = next(d for d in at.dataframe if "both kept" in d.value.columns)
    assert int(table.value["both kept"].iloc[0]) >= 1000  # the first layer: 64×256 weights
    shown = table.proto.arrow_data.styler.display_values
    assert f"{int(table.value['both kept'].iloc[0]):,}".encode() in shown


def test_sparsify_page_owl_2_4_on_cnn_runs_and_says_conv1_stays_dense(digits_cache):
    from devtools.apptest import page_app
    cfg = SparsifyConfig(pattern="nm", n=2, m=4, allocation="owl")
    at = page_app("sparsify", "digits:cnn", 180, config_json=cfg.to_json())
    at.run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert any("left dense, as M does not fit: conv1" in c.value for c in at.caption), [c.value for c in at.caption]


# ----------------------------------------------------------------------------- one colour per method (#24)

def _train_run(method, n=2, m=4, seed=0, sad=(0, 30, 10)):
    import numpy as np

    from sparsekit.topology import SadReport
    from sparsekit.training import EpochMetrics, RunRecord, TrainConfig
    epochs = [EpochMetrics(epoch=i + 1, step=10 * (i + 1), train_loss=1.0, train_accuracy=50.0, test_loss=0.9,
                           test_accuracy=60.0 + i, lr=0.1, density=0.5, seconds=1.0) for i in range(2)]
    cfg = TrainConfig(method=method, n=n, m=m, seed=seed)
    run = RunRecord(config=cfg, name=f"{method} {n}:{m} s{seed}", run_id=f"{method}-{n}-{m}-{seed}", epochs=epochs)
    k = len(sad)
    report = SadReport(layers=["fc"], numel={"fc": 1000}, steps=list(range(k)), epochs=[float(i) for i in range(k)],
                       interval={"fc": np.array(sad, dtype=np.int64)},
                       from_first={"fc": np.cumsum(sad).astype(np.int64)}, to_final={"fc": np.zeros(k, dtype=np.int64)})
    return run, report


def _colours_by_label(fig):
    return {t.name: t.line.color for t in fig.data if t.name and " (" not in t.name}


def test_training_colour_is_the_method_in_any_order_or_subset():
    from sparsekit.viz import METHOD_COLORS, sad_series_figure, training_curves_figure
    runs = {m: _train_run(m) for m in ("dense", "ste", "srste", "gradual", "random")}
    first = ["dense", "ste", "srste", "gradual", "random"]
    second = ["random", "srste", "ste"]  # another order, a subset
    seen = {}
    for order in (first, second):
        recs = [runs[m][0] for m in order]
        reports = [runs[m][1] for m in order]
        for fig in (training_curves_figure(recs), sad_series_figure(recs, reports=reports, kind="cumulative")):
            for rec in recs:
                colour = _colours_by_label(fig)[rec.label]
                assert seen.setdefault(rec.config.method, colour) == colour, (rec.label, order)
    # The method's own colour, one per method, all distinct.
    assert seen == {m: METHOD_COLORS[m] for m in first}
    assert len(set(seen.values())) == 5


def test_a_run_keeps_its_shade_in_any_company():
    import colorsys

    from sparsekit.viz import METHOD_COLORS, SHADE_LEVELS, run_colors, shade

    def hue(c):
        return colorsys.rgb_to_hls(*(int(c[i:i + 2], 16) / 255 for i in (1, 3, 5)))[0] * 360
    ste24, ste14, ste48 = (_train_run("ste", n, m)[0] for n, m in ((2, 4), (1, 4), (4, 8)))
    sr0, sr1 = (_train_run("srste", 2, 4, seed=s)[0] for s in (0, 1))
    runs = [ste24, ste14, ste48, sr1, sr0]
    full = run_colors(runs)
    assert full == run_colors(runs[::-1]) and len(set(full.values())) == 5
    # A run alone (as the live chart draws it while it trains), or beside any other runs: the same colour.
    for run in runs:
        assert run_colors([run]) == {run.run_id: full[run.run_id]}
        assert run_colors([sr1, run, ste14])[run.run_id] == full[run.run_id]
    # 2:4 seed 0 is the method's own colour; 4:8 and 1:4 (the next presets) and seed 1 are shades of it.
    assert full[ste24.run_id] == METHOD_COLORS["ste"] and full[sr0.run_id] == METHOD_COLORS["srste"]
    assert full[ste48.run_id] == shade(METHOD_COLORS["ste"], SHADE_LEVELS[1])
    assert full[ste14.run_id] == shade(METHOD_COLORS["ste"], SHADE_LEVELS[2])
    assert full[sr1.run_id] == shade(METHOD_COLORS["srste"], SHADE_LEVELS[1])
    for run in runs:
        assert abs(hue(full[run.run_id]) - hue(METHOD_COLORS[run.config.method])) < 3, run.label
    # Two runs that would share a shade (same method, pattern and seed; another learning rate) still differ.
    from dataclasses import replace
    other = replace(ste24, run_id="ste-2-4-0-lr", config=replace(ste24.config, lr=0.01))
    both = run_colors([other, ste24])
    assert both[ste24.run_id] == METHOD_COLORS["ste"] and both[other.run_id] != both[ste24.run_id]


def test_seed_study_studies_and_recovery_use_the_training_colours():
    from sparsekit import study, viz
    from sparsekit.seedstudy import SeedRun, SeedStudyConfig, SeedStudyResult
    from sparsekit.study import CellRecord
    from sparsekit.training import TrainConfig
    ste, srste = viz.METHOD_COLORS["ste"], viz.METHOD_COLORS["srste"]
    training = run_colors_of([_train_run("ste")[0], _train_run("srste")[0]])
    assert training == {"ste": ste, "srste": srste}

    cfg = SeedStudyConfig(train=TrainConfig(arch="mlp", epochs=2, batch_size=256), patterns=((2, 4),), seeds=2,
                          lambda_sweep=())
    seed_runs = [SeedRun(method=m, n=2, m=4, lambda_w=cfg.lambda_w if m == "srste" else 0.0, seed=s, accuracy=90.0 + s,
                         late_sad_pct=2.0 + s, early_sad_pct=40.0, late_flipped_pct=1.0, sparse_weights=100,
                         seconds=1.0) for m in ("ste", "srste") for s in range(2)]
    fig = viz.seed_study_figure(SeedStudyResult(cfg, seed_runs))
    diamonds = {t.legendgroup: t.marker.color for t in fig.data if t.legendgroup}
    assert diamonds == {"ste": ste, "srste": srste}

    def cell(method, seed, lam=None):
        return CellRecord(kind="training", model="digits:mlp", method=method, pattern="2:4", seed=seed, lambda_w=lam,
                          status="done", metrics={"accuracy": 90.0 + seed}, kept_fraction=0.5,
                          higher_is_better={"accuracy": True})
    records = [cell("ste", s) for s in range(2)] + [cell("srste", s, 2e-4) for s in range(2)]
    for recs in (records, records[::-1]):
        fig = viz.study_interval_figure(study.summarize(recs), "accuracy")
        assert {t.name: t.marker.color for t in fig.data} == {"ste": ste, "srste λ=0.0002": srste}
    # Two λ_w of SR-STE: shades of SR-STE's colour, the smaller λ_w in the colour itself.
    two = records + [cell("srste", s, 1e-3) for s in range(2)]
    colours = viz.variant_colors(study.summarize(two[::-1]))
    assert colours["srste λ=0.0002"] == srste and colours["srste λ=0.001"] not in (srste, ste)

    assert {m: viz.recovery_colors([_rec(m, m)])[m] for m in ("ste", "srste", "fixed")} == {
        "ste": ste, "srste": srste, "fixed": viz.MODE_COLORS["fixed"]}


def run_colors_of(runs):
    from sparsekit.viz import run_colors
    colours = run_colors(runs)
    return {r.config.method: colours[r.run_id] for r in runs}


def test_all_zero_sad_line_sits_on_a_zero_based_axis():
    from sparsekit.viz import sad_series_figure
    fixed, rep = _train_run("random", sad=(0, 0, 0))
    for kind in ("from_first", "to_final", "cumulative"):
        fig = sad_series_figure([fixed], reports=[rep], kind=kind, log_y=False, fraction=True)
        assert fig.layout.yaxis.rangemode == "tozero", kind  # plotly draws [0, 1], not [-1, 1]
    # Interval SAD is on a log axis by default: all zero, there is nothing to put there, so a linear one.
    fig = sad_series_figure([fixed], reports=[rep])
    assert fig.layout.yaxis.type == "linear" and fig.layout.yaxis.rangemode == "tozero"
    assert list(fig.data[0].y) == [0.0, 0.0]
    moving, rep2 = _train_run("ste")
    assert sad_series_figure([moving], reports=[rep2]).layout.yaxis.type == "log"
    # Beside a moving run, the fixed run's zeros are left off the log axis (and the note says so).
    both = sad_series_figure([moving, fixed], reports=[rep2, rep])
    assert both.layout.yaxis.type == "log" and "2 zero value(s)" in both.layout.annotations[0].text


# ----------------------------------------------------------------------------- human table headers (#24)

RAW_NAME = r"^[a-z]+(_[a-z]+)+$"


def _shown_tables(at):
    """Per dataframe on the page: its headers as the reader sees them (the column config's label, else
    the column name), the values, the Styler's cell texts of the columns that show them, and the
    placeholder for missing values."""
    import json

    import pyarrow as pa
    out = []
    for d in at.dataframe:
        config = json.loads(d.proto.columns or "{}")
        names = list(d.proto.column_order) or [str(c) for c in d.value.columns]
        heads = [(config.get(n, {}).get("label") if isinstance(config.get(n), dict) else config.get(n)) or n for n in names]
        texts = []
        if d.proto.arrow_data.HasField("styler"):
            shown = pa.ipc.open_stream(d.proto.arrow_data.styler.display_values).read_pandas()
            # A column with a format of its own (NumberColumn, ProgressColumn) shows that, not the Styler's text.
            formatted = {n for n, c in config.items() if isinstance(c, dict) and (c.get("type_config") or {}).get("format")}
            texts = [str(v) for c in shown.columns if str(c) not in formatted for v in shown[c]]
        out.append((heads, d.value, texts, d.proto.placeholder))
    return out


def _assert_human_tables(at, where):
    import re

    from ui.format import MISSING
    tables = _shown_tables(at)
    assert tables, f"{where}: no table"
    for heads, frame, texts, placeholder in tables:
        assert not [h for h in heads if re.match(RAW_NAME, h)], (where, heads)
        assert not [t for t in texts if t in ("None", "nan", "NaN", "<NA>")], (where, heads)
        # A missing value the Styler does not write (a column with its own format) shows the placeholder.
        if frame.isna().to_numpy().any():
            assert placeholder == MISSING, (where, heads)
        assert not [v for v in frame.to_numpy().ravel() if isinstance(v, str) and v in ("None", "nan")], (where, heads)
    return tables


def test_compare_tables_have_human_headers(tmp_cache):
    from devtools.apptest import page_app
    at = page_app("compare", "digits:mlp", 600)
    at.run()
    at.multiselect(key="cmp_methods").set_value(["magnitude", "wanda"])
    at.multiselect(key="cmp_nm").set_value(["2:4"])
    at.multiselect(key="cmp_sparsity").set_value([50])
    at.run()
    at.button(key="cmp_run").click().run()
    at.button(key="cmp_perm_run").click().run()
    assert not at.exception, at.exception
    tables = _assert_human_tables(at, "compare")
    heads = [h for table in tables for h in table[0]]
    for shown in ("target sparsity", "layers pruned", "pruning (s)", "cheapest (KB)", "held-out accuracy (%)",
                  "kept |w|, N:M", "recovered share"):
        assert shown in heads, heads
    pivot = tables[0][1]  # settings down, methods across, every cell a number
    assert pivot.index.name == "setting" and list(pivot.index) == ["2:4", "unstructured 50%"]
    assert list(pivot.columns) == ["magnitude", "wanda"] and pivot.notna().all().all()


def test_studies_tables_have_human_headers(tmp_cache):
    from devtools.apptest import page_app
    at = page_app("study", "digits:mlp", 600)
    at.run()
    at.multiselect(key="st_models").set_value(["digits:mlp"])
    at.multiselect(key="st_methods").set_value(["magnitude", "random"])
    at.multiselect(key="st_patterns").set_value(["2:4"])
    at.number_input(key="st_seeds").set_value(2)
    at.run()
    at.button(key="st_run").click().run()
    assert not at.exception, at.exception
    tables = _assert_human_tables(at, "studies")
    assert len(tables) == 2  # best method per pattern, every setting
    for heads, *_ in tables:
        assert "held-out accuracy (%)" in heads and "accuracy" not in heads, heads
    assert "best method" in tables[0][0]


@pytest.mark.slow  # trains two digits MLPs (about 25 s)
def test_training_study_table_names_sad_metrics_with_units(tmp_cache):
    from devtools.apptest import page_app
    at = page_app("study", "digits:mlp", 600)
    at.run()
    at.radio(key="st_kind").set_value("training").run()
    at.selectbox(key="st_arch").set_value("mlp")
    at.multiselect(key="st_tmethods").set_value(["ste"])
    at.number_input(key="st_epochs").set_value(2)
    at.number_input(key="st_tseeds").set_value(2)
    at.run()
    at.button(key="st_run").click().run()
    assert not at.exception, at.exception
    (settings,) = _assert_human_tables(at, "training study")
    for shown in ("held-out accuracy (%)", "early SAD (% of sparse weights)", "late SAD (% of sparse weights)",
                  "late flipped (% of sparse weights)"):
        assert shown in settings[0], settings[0]


def test_sparsify_report_table_has_human_headers_and_no_none(digits_cache):
    from devtools.apptest import page_app
    # Unstructured: no layer has an N:M size, so every 'N:M KB' cell is missing.
    cfg = SparsifyConfig(pattern="unstructured", sparsity=0.5)
    at = page_app("sparsify", "digits:cnn", 180, config_json=cfg.to_json())
    at.run()
    assert not at.exception, at.exception
    tables = _assert_human_tables(at, "sparsify")
    report = next(t for t in tables if "kept_fraction" in t[1].columns)
    assert report[1]["N:M KB"].isna().all()
    assert "type" in report[0] and "layer_type" not in report[0]


def test_saved_runs_table_shows_a_missing_value_as_a_dash(monkeypatch):
    """A failed run has no accuracy: the saved-runs table (Training and Recovery) draws it as the dash
    every other table uses, not ``None``."""
    import streamlit as st

    from ui.format import MISSING
    from ui.saved_runs import SavedRuns

    seen = {}
    monkeypatch.setattr(st, "dataframe", lambda data, **kw: seen.update(kw, data=data))
    runs = SavedRuns(prefix="tr", delete_run=lambda run_id: None, manage_key="k", manage_title="t", chosen_key="c")
    runs.table([{"id": "a", "accuracy": None}], {})
    assert seen.get("placeholder") == MISSING and seen["data"] == [{"id": "a", "accuracy": None}]


def test_attention_search_tables_have_human_headers(tmp_cache):
    """The per-head search's comparison and per-head tables (raw ``uniform_density`` before)."""
    from devtools.apptest import page_app

    at = page_app("attention", "digits:vit", 300, att_calib=4)
    at.run()
    at.button(key="att_search").click().run()
    assert not at.exception and not at.error
    tables = _assert_human_tables(at, "attention search")
    assert any("uniform density" in heads for heads, *_ in tables)


def test_stop_and_continue_help_names_what_the_page_keeps():
    """Stop/Continue's help names the page's own unit (the Benchmarks page said "layers" for its cases)."""
    from streamlit.testing.v1 import AppTest

    def page():
        import streamlit as st

        from ui.long_jobs import job_buttons
        job = st.session_state.setdefault("job", {"status": "stopped", "parts": [], "result": None})
        job_buttons(job, st, "b", "Run benchmarks", "cases")

    at = AppTest.from_function(page).run()
    assert at.button(key="b_continue").help == "carry on from the cases already done"
    at.button(key="b_continue").click().run()
    assert at.button(key="b_stop").help == "keep the cases finished so far and show them"


def test_model_page_tables_have_human_headers(digits_cache):
    """The Model page's prunable-layer table (a raw ``weight_shape`` header before)."""
    from devtools.apptest import page_app
    at = page_app("model", "digits:cnn", 180)
    at.run()
    assert not at.exception, at.exception
    _assert_human_tables(at, "model")


def test_resumed_progress_counts_parts_and_starts_the_clock_at_the_first_part_computed():
    """One bar for continued jobs (scan, head search, benchmarks): parts done of all, and no time left
    until a part was computed in this run (parts from disk come back at once)."""
    from streamlit.testing.v1 import AppTest

    def page():
        from ui.long_jobs import ResumedProgress
        scan = ResumedProgress("Scanning", 4, "units")
        scan(0.5, "two from disk")  # the clock starts here: no rate yet
        share = ResumedProgress("Measuring", counts=lambda message: "ceilings" not in message)
        share(0.25, "ceilings")
        share(0.5, "case 2")
        assert share.first == (0.5, share.first[1])  # the warm-up did not start the clock

    at = AppTest.from_function(page).run()
    assert not at.exception, at.exception
    texts = [p.proto.text for p in at.get("progress")]
    assert texts[0] == "Scanning: 2 of 4 units done (time left: after the first unit) · two from disk"
    assert texts[1] == "Measuring: 50% · case 2"

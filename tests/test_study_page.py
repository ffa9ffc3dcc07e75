"""The Studies page: a grid built from widgets runs, its figures hold the records' means and intervals
(recomputed here from the records with a plain formula), a spec file round-trips, and bad specs get
messages, not tracebacks."""
from __future__ import annotations

import json
import math

import pytest
from streamlit.testing.v1 import AppTest

from sparsekit import study
from sparsekit.study import StudySpec

T975 = {2: 4.302652729911275, 3: 3.182446305284263}  # Student-t 0.975 quantiles for df = 2, 3


def _page(tmp_cache) -> AppTest:
    at = AppTest.from_file("../app.py", default_timeout=300)
    at.run()
    at.switch_page("views/study.py")
    at.run()
    assert not at.exception
    return at


def _oneshot(at: AppTest, seeds: int = 3) -> None:
    at.multiselect(key="st_models").set_value(["digits:mlp"])
    at.multiselect(key="st_methods").set_value(["magnitude", "random"])
    at.multiselect(key="st_patterns").set_value(["2:4", "unstructured:0.7"])
    at.number_input(key="st_seeds").set_value(seeds)
    at.run()


def _interval(values: list[float]) -> tuple[float, float, float]:
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = T975[n - 1] * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def test_oneshot_grid_runs_and_figures_hold_the_intervals(tmp_cache):
    at = _page(tmp_cache)
    _oneshot(at)
    assert any("**12 cells**" in c.value for c in at.caption)
    at.button(key="st_run").click().run()
    assert not at.exception and not at.error
    assert any("12 of 12 cells done" in s.value for s in at.success), [s.value for s in at.success]
    spec = StudySpec(name="one-shot study", models=("digits:mlp",), methods=("magnitude", "random"),
                     patterns=("2:4", "unstructured:0.7"), seeds=(0, 1, 2))
    records = study.study_records(spec)
    assert len(records) == 12  # every cell has a record
    assert all(r.status == "done" for r in records)
    figs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    quality = next(f for f in figs if "against sparsity" in f["layout"]["title"]["text"])
    line = next(t for t in quality["data"] if t.get("name") == "random")
    for x, y in zip(line["x"], line["y"]):
        rows = [r for r in records if r.method == "random" and abs(100 * (1 - r.kept_fraction) - x) < 1e-6]
        assert len(rows) == 3
        assert y == pytest.approx(sum(r.metrics["accuracy"] for r in rows) / 3)
    band = next(t for t in quality["data"] if t.get("name") == "random interval")
    for x, hi in zip(band["x"][: len(line["x"])], band["y"][: len(line["x"])]):
        rows = [r.metrics["accuracy"] for r in records if r.method == "random"
                and abs(100 * (1 - r.kept_fraction) - x) < 1e-6]
        assert hi == pytest.approx(_interval(rows)[2])
    # Magnitude does not depend on the seed: one computation, three identical records, zero width.
    mags = [r.metrics["accuracy"] for r in records if r.method == "magnitude" and r.pattern == "2:4"]
    assert len(mags) == 3 and len(set(mags)) == 1
    labels = {b.label for b in at.get("download_button")}
    assert {"Records (.csv)", "Summary (.csv)", "Everything (.json)"} <= labels


def test_rerun_shows_results_without_computing(tmp_cache, monkeypatch):
    at = _page(tmp_cache)
    _oneshot(at, seeds=2)
    at.button(key="st_run").click().run()
    calls = []
    monkeypatch.setattr("sparsekit.study.cells.run_oneshot", lambda *a, **k: calls.append(a) or {})
    at2 = _page(tmp_cache)
    _oneshot(at2, seeds=2)
    assert any("Every cell is on disk" in c.value for c in at2.caption)
    assert not [b for b in at2.button if b.key == "st_run"]
    assert at2.get("plotly_chart") and not calls


def test_training_grid_from_the_page(tmp_cache):
    at = _page(tmp_cache)
    at.radio(key="st_kind").set_value("training").run()
    at.selectbox(key="st_arch").set_value("mlp")
    at.number_input(key="st_epochs").set_value(2)
    at.number_input(key="st_tseeds").set_value(2)
    at.run()
    at.button(key="st_run").click().run()
    assert not at.exception and not at.error
    figs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert any("interval over seeds" in f["layout"]["title"]["text"] for f in figs)
    names = {t["name"] for f in figs for t in f["data"]}
    assert "ste" in names and any(n.startswith("srste") for n in names)


@pytest.mark.parametrize("text, message", [
    ("{not json", "Cannot read this spec"),
    (json.dumps({"name": "x", "kind": "oneshot", "models": ["digits:mlp"], "methods": ["nope"], "patterns": ["2:4"],
                 "seeds": [0]}), "nope"),
    (json.dumps({"name": "x", "kind": "oneshot", "models": ["digits:mlp"], "methods": ["magnitude"], "patterns": [],
                 "seeds": [0]}), "no patterns"),
    (json.dumps({"name": "x", "kind": "oneshot", "models": ["hf:/etc"], "methods": ["magnitude"],
                 "patterns": ["2:4"], "seeds": [0]}), "does not offer"),
    (json.dumps({"name": "x", "kind": "oneshot", "models": ["digits:mlp"], "methods": ["magnitude"],
                 "patterns": ["2:4"], "seeds": list(range(64)), "bogus": 1}), "bogus"),
])
def test_bad_spec_files_get_messages(tmp_cache, monkeypatch, text, message):
    # AppTest cannot drive a file uploader: the page's reader gets the upload the way the widget hands it over.
    from ui import study as study_view

    class Upload:
        size = len(text)

        def getvalue(self):
            return text.encode()

    errors = []
    monkeypatch.setattr(study_view.st, "file_uploader", lambda *a, **k: Upload())
    monkeypatch.setattr(study_view.st, "error", errors.append)
    assert study_view.uploaded_spec() is None
    assert errors and message in errors[0], errors


def test_upload_of_a_good_spec_round_trips(tmp_cache, monkeypatch):
    from ui import study as study_view

    spec = StudySpec(name="round trip", models=("digits:mlp",), methods=("magnitude",), patterns=("2:4",), seeds=(0,))

    class Upload:
        size = 100

        def getvalue(self):
            return spec.to_json().encode()

    monkeypatch.setattr(study_view.st, "file_uploader", lambda *a, **k: Upload())
    assert study_view.uploaded_spec() == spec

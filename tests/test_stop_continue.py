"""Stop and Continue on long jobs keep finished work: the sensitivity scan (library and page), the Studies
page and the Compare sweep. Each test stops mid-way, continues, counts that no finished unit was computed
again, and compares the final result with an uninterrupted run."""
from __future__ import annotations

import math

import pytest

import sparsekit
from devtools.apptest import page_app
from sparsekit import sensitivity, sensitivity_units
from sparsekit.sensitivity import SensitivityConfig, cached_scan, sensitivity_scan

CONFIG = SensitivityConfig(sparsities=(0.5, 0.9), nm=((2, 4),))


def _table(scan) -> tuple:
    return scan.units, scan.quality, scan.drop, scan.proxy, scan.notes, scan.spearman


@pytest.fixture
def saved(monkeypatch) -> list[int]:
    """The unit indices stored (= computed) while the test runs."""
    calls: list[int] = []
    real = sensitivity_units.save_unit

    def counting(scan_key, index, row):
        calls.append(index)
        real(scan_key, index, row)

    monkeypatch.setattr(sensitivity_units, "save_unit", counting)
    return calls


def test_a_stopped_scan_continues_with_only_the_missing_units(tmp_cache, saved):
    loaded = sparsekit.load_model("digits:mlp")
    whole = sensitivity_scan(loaded, CONFIG, progress=False, use_cache=False)
    assert saved == [] and whole.complete and whole.not_reached == ()
    n = len(whole.units)
    assert n >= 3
    part = sensitivity_scan(loaded, CONFIG, progress=False, stop=lambda: len(saved) >= 1)
    assert not part.complete and saved == [0]
    assert part.not_reached == whole.units[1:]
    assert part.drop[0] == whole.drop[0] and all(v is None for row in part.drop[1:] for v in row)
    # Nothing is computed to show a stopped scan; a finished one is not mistaken for it.
    shown = cached_scan(loaded, CONFIG, partial=True)
    assert shown is not None and _table(shown) == _table(part) and saved == [0]
    assert cached_scan(loaded, CONFIG) is None
    done = sensitivity_scan(loaded, CONFIG, progress=False)
    assert saved == list(range(n))  # the first unit was not computed again
    assert done.complete and _table(done) == _table(whole)
    assert cached_scan(loaded, CONFIG) == done


def test_ctrl_c_keeps_the_finished_units(tmp_cache, saved, monkeypatch):
    loaded = sparsekit.load_model("digits:mlp")
    real = sensitivity.sparsify
    calls = []

    def interrupted(*args, **kwargs):  # Ctrl-C in the middle of the second unit
        calls.append(1)
        if len(saved) == 1 and len(calls) > 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sensitivity, "sparsify", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sensitivity_scan(loaded, CONFIG, progress=False)
    assert saved == [0]
    monkeypatch.setattr(sensitivity, "sparsify", real)
    done = sensitivity_scan(loaded, CONFIG, progress=False)
    assert saved == list(range(len(done.units)))
    assert _table(done) == _table(sensitivity_scan(loaded, CONFIG, progress=False, use_cache=False))


def test_sensitivity_page_stop_shows_the_partial_scan_and_continue_finishes_it(tmp_cache, saved, monkeypatch):
    real = sensitivity.sensitivity_scan

    def stopping(loaded, config, **kwargs):  # what a Stop press after the first unit does
        kwargs.setdefault("stop", lambda: len(saved) >= 1)
        return real(loaded, config, **kwargs)

    monkeypatch.setattr(sensitivity, "sensitivity_scan", stopping)
    at = page_app("sensitivity", timeout=300)
    at.run()
    at.multiselect(key="sen_pcts").set_value([50, 90])
    at.multiselect(key="sen_nm").set_value(["2:4"]).run()
    assert not at.exception
    at.button(key="sen_run").click().run()
    assert not at.exception and not at.error
    loaded = sparsekit.load_model("digits:mlp")
    config = SensitivityConfig(sparsities=(0.5, 0.9), nm=((2, 4),))
    whole = real(loaded, config, progress=False, use_cache=False)
    n = len(whole.units)
    warning = " ".join(w.value for w in at.warning)
    assert f"Stopped after 1 of {n} units" in warning
    heat = at.get("plotly_chart")[0].proto.spec
    assert heat and saved == [0]
    assert any(b.label == "Continue" for b in at.button)
    # A reload (a new session) shows the same stopped state, computing nothing.
    again = page_app("sensitivity", timeout=300)
    again.run()
    again.multiselect(key="sen_pcts").set_value([50, 90])
    again.multiselect(key="sen_nm").set_value(["2:4"]).run()
    assert f"Stopped after 1 of {n} units" in " ".join(w.value for w in again.warning) and saved == [0]
    monkeypatch.setattr(sensitivity, "sensitivity_scan", real)
    at.button(key="sen_continue").click().run()
    assert not at.exception and not at.error and not at.warning
    assert saved == list(range(n))  # the first unit was not computed again
    # The finished page shows the uninterrupted scan's numbers (within float print precision).
    shown = next(d.value for d in at.dataframe if "unit" in d.value.columns)
    assert list(shown["unit"]) == list(whole.units)
    for j, setting in enumerate(whole.settings):
        for column, cells in ((f"drop {setting}", whole.drop), (f"proxy {setting}", whole.proxy)):
            for got, want in zip(shown[column], (row[j] for row in cells)):
                assert (want is None and (got is None or got != got)) or math.isclose(got, want, rel_tol=1e-4), column
    assert not any(b.label in ("Continue", "Stop") for b in at.button)


def _study_page():
    at = page_app("study", timeout=300)
    at.run()
    at.multiselect(key="st_models").set_value(["digits:mlp"])
    at.multiselect(key="st_methods").set_value(["magnitude", "random"])
    at.multiselect(key="st_patterns").set_value(["2:4"])
    at.number_input(key="st_seeds").set_value(2)
    at.run()
    assert not at.exception
    return at


def test_study_page_stop_shows_the_stopped_state_and_resume_computes_only_the_rest(tmp_cache, tmp_path,
                                                                                   monkeypatch):
    from sparsekit import study
    from sparsekit.study import StudySpec

    real = study.run_study
    outcomes = []

    def stopping(spec, backend=None, **kwargs):  # a Stop after the first computed cell
        page_progress = kwargs.get("progress")
        computed = [0]

        def progress(status):
            computed[0] = status.computed
            if callable(page_progress):
                page_progress(status)

        kwargs["progress"] = progress
        kwargs.setdefault("stop", lambda: computed[0] >= 1)
        outcomes.append(real(spec, backend, **kwargs))
        return outcomes[-1]

    monkeypatch.setattr(study, "run_study", stopping)
    at = _study_page()
    at.button(key="st_run").click().run()
    assert not at.exception and not at.error
    spec = StudySpec(name="one-shot study", models=("digits:mlp",), methods=("magnitude", "random"),
                     patterns=("2:4",), seeds=(0, 1))
    keys = {c.key for c in spec.cells()}
    assert outcomes[-1].status.computed == 1
    done = study.study_status(spec).done
    assert 1 <= done < 4
    warning = " ".join(w.value for w in at.warning)
    assert f"Stopped after {done} of 4 cells" in warning
    assert [b.label for b in at.button if b.key == "st_run"] == ["Resume study"]
    assert at.get("plotly_chart")  # figures of the finished cells
    # A reload shows the same stopped state.
    again = _study_page()
    assert f"Stopped after {done} of 4 cells" in " ".join(w.value for w in again.warning)
    assert [b.label for b in again.button if b.key == "st_run"] == ["Resume study"]
    monkeypatch.setattr(study, "run_study", lambda *a, **k: outcomes.append(real(*a, **k)) or outcomes[-1])
    at.button(key="st_run").click().run()
    assert not at.exception and not at.error and not at.warning
    assert outcomes[-1].status.computed == len(keys) - 1  # no finished cell was computed again
    assert any("4 of 4 cells done" in s.value for s in at.success)
    resumed = {(r.method, r.seed): r.metrics for r in study.study_records(spec)}
    monkeypatch.setenv("SPARSEKIT_CACHE_DIR", str(tmp_path / "uninterrupted"))
    whole = real(spec, "local", progress=False)
    assert {(r.method, r.seed): r.metrics for r in whole.records} == resumed


def _compare_page():
    at = page_app("compare", timeout=300)
    at.run()
    at.multiselect(key="cmp_methods").set_value(["random", "magnitude"])
    at.multiselect(key="cmp_nm").set_value(["1:4"])
    at.multiselect(key="cmp_sparsity").set_value([50]).run()
    assert not at.exception
    return at


def test_compare_sweep_stop_keeps_finished_settings_and_continue_computes_the_rest(tmp_cache, monkeypatch):
    import streamlit as st

    from sparsekit import compare as cmp

    real = cmp.compare
    computed: list[str] = []

    def counting(loaded, configs, **kwargs):
        rows = real(loaded, configs, **kwargs)
        computed.extend(r.setting for r in rows if not r.cached)
        return rows

    def stopping(loaded, configs, **kwargs):  # the page's stop flag goes up once a setting has finished
        rows = counting(loaded, configs, **kwargs)
        for job in st.session_state["cmp_sweep_jobs"].values():
            job["status"] = "stopped"
        return rows

    monkeypatch.setattr(cmp, "compare", stopping)
    at = _compare_page()
    at.button(key="cmp_run").click().run()
    assert not at.exception and not at.error
    assert len(computed) == 1
    assert "Stopped after 1 of 4 settings" in " ".join(w.value for w in at.warning)
    assert len(at.get("plotly_chart")) >= 2 and at.dataframe[0].value.size == 1  # the finished setting
    # A reload shows the same state, computing nothing.
    again = _compare_page()
    assert "Stopped after 1 of 4 settings" in " ".join(w.value for w in again.warning) and len(computed) == 1
    monkeypatch.setattr(cmp, "compare", counting)
    at.button(key="cmp_continue").click().run()
    assert not at.exception and not at.error and not at.warning
    assert len(computed) == 4 and len(set(computed)) == 4  # the first setting was not computed again
    loaded = sparsekit.load_model("digits:mlp")
    configs = cmp.sweep_configs(["random", "magnitude"], [(1, 4)], [0.5])
    whole = real(loaded, configs, progress=False, use_cache=False)
    shown = cmp.cached_rows(loaded, configs)
    assert shown is not None and [r.quality for r in shown] == [r.quality for r in whole]
    assert not any(b.label in ("Continue", "Stop") for b in at.button if b.key and b.key.startswith("cmp_c"))


def test_sensitivity_page_stop_button_interrupts_and_keeps_the_finished_unit(tmp_cache, saved, monkeypatch):
    from streamlit.runtime.scriptrunner_utils.exceptions import StopException

    real = sensitivity_units.save_unit  # the counting one

    def interrupted(scan_key, index, row):  # a Stop press reruns the page: the run ends at its next call
        real(scan_key, index, row)
        if len(saved) == 1:
            raise StopException()

    at = page_app("sensitivity", timeout=300)
    at.run()
    at.multiselect(key="sen_pcts").set_value([50, 90])
    at.multiselect(key="sen_nm").set_value(["2:4"]).run()
    monkeypatch.setattr(sensitivity_units, "save_unit", interrupted)
    at.button(key="sen_run").click().run()
    assert not at.exception and saved == [0]
    assert at.button(key="sen_stop").proto.label == "Stop"  # drawn while the scan ran
    monkeypatch.setattr(sensitivity_units, "save_unit", real)
    at.button(key="sen_stop").click().run()
    assert not at.exception and not at.error
    n = len(sensitivity.scan_units(sparsekit.load_model("digits:mlp"), CONFIG))
    assert f"Stopped after 1 of {n} units" in " ".join(w.value for w in at.warning) and saved == [0]
    at.button(key="sen_continue").click().run()
    assert not at.exception and not at.warning and saved == list(range(n))

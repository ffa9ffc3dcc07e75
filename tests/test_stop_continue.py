"""Stop and Continue on long jobs keep finished work: the sensitivity scan (library and page), the Studies
page and the Compare sweep. Each test stops mid-way, continues, counts that no finished unit was computed
again, and compares the final result with an uninterrupted run."""
from __future__ import annotations

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
    done = cached_scan(loaded, config)
    assert done is not None and _table(done) == _table(whole)
    assert not any(b.label in ("Continue", "Stop") for b in at.button)

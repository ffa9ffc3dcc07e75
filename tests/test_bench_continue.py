"""A benchmark run stopped half-way keeps every finished case on disk, and the same call continues it: only the
missing cases are measured (counted at the timing function), the finished ones come back exactly as stored, and
the cases and their order equal an uninterrupted run's. Stop through the library's ``stop``, Ctrl-C in-process
and as SIGINT to the CLI, the page's Stop and Continue, a damaged entry, and the page's wrapped chips."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest

from devtools import ROOT
from devtools.apptest import page_app
from sparsekit import serial
from sparsekit.bench import BenchConfig, BenchRun, harness, journal, run_benchmarks, runner, stored_run
from sparsekit.bench.harness import Case, environment
from sparsekit.cache import get_cache

CFG = BenchConfig(suites=("formats", "linear"), device="cpu", formats_shape=(64, 64), formats_cols=8,
                  densities=(0.1, 0.3, 0.5), square_sizes=(64,), batches=(2, 4), repeats=2)
N = 5  # 3 densities + 2 batch sizes of one Linear shape


def _cases(run: BenchRun) -> list[tuple]:
    return [(r.suite, r.case, r.backend, r.status) for r in run.results]


@pytest.fixture
def measured(monkeypatch) -> list[str | None]:
    """Per call of the timing function, the label of the case it timed (None: the device ceilings)."""
    calls: list[str | None] = []
    current: list[str | None] = [None]
    real_plan, real_time = runner.plan, harness.time_ms

    def labelled(case: Case) -> Case:
        def measure():
            current[0] = case.label
            try:
                return case.measure()
            finally:
                current[0] = None

        return Case(case.suite, case.label, measure)

    def timed(*args, **kwargs):
        calls.append(current[0])
        return real_time(*args, **kwargs)

    monkeypatch.setattr(runner, "plan", lambda *a, **k: [labelled(c) for c in real_plan(*a, **k)])
    monkeypatch.setattr(harness, "time_ms", timed)
    return calls


@pytest.fixture
def saved(monkeypatch) -> list[tuple[int, str]]:
    """(index, stored text) of every case written to the store while the test runs."""
    calls: list[tuple[int, str]] = []
    real = journal.save_case

    def counting(key, index, case):
        real(key, index, case)
        calls.append((index, case.to_json()))

    monkeypatch.setattr(journal, "save_case", counting)
    return calls


def _labels() -> list[str]:
    return [c.label for c in runner.plan(CFG, "cpu")]


def _timed_labels(measured) -> list[str]:
    return [label for label in dict.fromkeys(measured) if label is not None]


def _stored_texts() -> set[str]:
    cache = get_cache()
    return {cache.get(k) for k in cache.iterkeys() if str(k).startswith("bench-case:")}


def test_stop_then_continue_measures_only_the_missing_cases(tmp_cache, measured, saved):
    labels = _labels()
    whole = run_benchmarks(CFG, progress=False)
    assert whole.complete and whole.cases_total == N and whole.not_reached == [] and whole.suites == list(CFG.suites)
    assert _timed_labels(measured) == labels and None in measured  # every case, and the ceilings
    assert stored_run(CFG) is None and _stored_texts() == set()  # a finished run forgets its cases
    measured.clear()
    saved.clear()

    part = run_benchmarks(CFG, progress=False, stop=lambda: len(saved) >= 2)
    assert not part.complete and part.cases_done == 2 and part.not_reached == labels[2:]
    assert [i for i, _ in saved] == [0, 1] and _timed_labels(measured) == labels[:2]
    assert part.suites == []  # no suite is whole yet
    on_disk = _stored_texts()
    assert {text for _, text in saved} <= on_disk  # each case was on disk as it finished
    # Showing the stopped run measures nothing, and shows what was stored.
    measured.clear()
    shown = stored_run(CFG)
    assert measured == [] and shown is not None and shown.to_json() == part.to_json()

    done = run_benchmarks(CFG, progress=False)
    assert _timed_labels(measured) == labels[2:]  # no finished case was measured again...
    assert None not in measured  # ...nor the ceilings (kept with the run)
    assert [i for i, _ in saved] == list(range(N))
    assert done.complete and done.not_reached == [] and done.env["resumed_cases"] == 2
    assert _cases(done) == _cases(whole) and done.suites == whole.suites
    assert done.ceilings == part.ceilings and done.env["measured_at"] == part.env["measured_at"]
    # The finished cases come back byte for byte as they were stored.
    stored = [r for _, text in saved[:2] for r in json.loads(text)["results"]]
    assert json.dumps([serial.to_json(r) for r in done.results[:len(stored)]]) == json.dumps(stored)
    assert stored_run(CFG) is None  # finished: the next call measures afresh
    measured.clear()
    run_benchmarks(CFG, progress=False)
    assert _timed_labels(measured) == labels


def test_ctrl_c_mid_case_keeps_the_finished_ones(tmp_cache, measured, saved, monkeypatch):
    labels = _labels()
    timed = harness.time_ms

    def interrupted(*args, **kwargs):  # Ctrl-C while the third case is being timed
        if len(saved) == 2 and len([m for m in measured if m == labels[2]]) == 3:
            raise KeyboardInterrupt
        return timed(*args, **kwargs)

    monkeypatch.setattr(harness, "time_ms", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_benchmarks(CFG, progress=False)
    assert [i for i, _ in saved] == [0, 1]
    kept = stored_run(CFG)
    assert kept is not None and kept.cases_done == 2 and kept.not_reached == labels[2:]
    monkeypatch.setattr(harness, "time_ms", timed)
    measured.clear()
    done = run_benchmarks(CFG, progress=False)
    assert _timed_labels(measured) == labels[2:]  # the interrupted case is measured whole, the others not again
    assert _cases(done) == _cases(run_benchmarks(CFG, progress=False))


def test_a_damaged_entry_is_measured_again_not_a_crash(tmp_cache, measured, saved):
    labels = _labels()
    part = run_benchmarks(CFG, progress=False, stop=lambda: len(saved) >= 3)
    assert part.cases_done == 3
    intact = json.loads(dict(saved)[2])["results"]
    skey = journal.settings_key(runner.journal_settings(CFG, "cpu"))
    key = journal.run_key(skey, journal.device_identity(environment("cpu")))
    cache = get_cache()
    cache[journal.case_key(key, 0, labels[0])] = b"\x00\xffnot json"
    cache[journal.case_key(key, 1, labels[1])] = json.dumps({"label": labels[1], "results": [{"suite": 3}],
                                                             "seconds": 0})
    cache[journal.header_key(skey)] = "{\"env\": []}"
    measured.clear()
    done = run_benchmarks(CFG, progress=False)
    assert _timed_labels(measured) == [labels[0], labels[1], labels[3], labels[4]]  # case 2 was intact
    assert None in measured  # the damaged header: the ceilings measured again
    assert done.complete and _cases(done) == _cases(run_benchmarks(CFG, progress=False))
    third = [r for r in done.results if r.case == part.results[-1].case]
    assert [serial.to_json(r) for r in third] == intact


def test_what_a_stored_case_is_kept_for(tmp_cache, measured, saved, monkeypatch):
    labels = _labels()
    run_benchmarks(CFG, progress=False, stop=lambda: len(saved) >= 2)
    # Another time budget is the same run (the budget only decides which cases are skipped).
    assert stored_run(BenchConfig(**{**CFG.__dict__, "time_budget_s": 600})) is not None
    # Other settings are another run.
    assert stored_run(BenchConfig(**{**CFG.__dict__, "repeats": 3})) is None
    # Another device or other versions: the stored timings do not hold there, and the run starts afresh.
    real = runner.environment
    monkeypatch.setattr(runner, "environment", lambda device: {**real(device), "torch": "0.0-other"})
    measured.clear()
    part = run_benchmarks(CFG, progress=False, stop=lambda: len(measured) > 0 and len(saved) >= 3)
    assert _timed_labels(measured) == labels[:1] and None in measured and part.cases_done == 1
    assert part.env["torch"] == "0.0-other"
    monkeypatch.setattr(runner, "environment", real)
    measured.clear()
    run_benchmarks(CFG, progress=False, resume=False)  # measure every case again
    assert _timed_labels(measured) == labels


def test_showing_a_stopped_run_does_not_load_the_model_suites_model(tmp_cache, saved, monkeypatch):
    cfg = BenchConfig(suites=("linear", "model"), device="cpu", square_sizes=(64,), batches=(2,), repeats=2,
                      model="config:minilm")
    real = runner.config_model
    loads: list[str] = []
    monkeypatch.setattr(runner, "config_model", lambda spec: loads.append(spec) or real(spec))
    part = run_benchmarks(cfg, progress=False, stop=lambda: len(saved) >= 1)
    assert part.cases_done == 1 and part.not_reached == ["whole model, batch 2"] and loads == []
    shown = stored_run(cfg)
    assert shown is not None and shown.cases_done == 1 and loads == []
    done = run_benchmarks(cfg, progress=False)
    assert loads == ["config:minilm"] and done.complete  # loaded for the one case that needs it
    model = [r for r in done.results if r.suite == "model"]
    assert len(model) == 1 and model[0].status == "skipped" and model[0].case.startswith("minilm (config")


def test_cases_the_time_budget_skipped_are_not_kept(tmp_cache, measured, saved, monkeypatch):
    ticks = iter(range(10**6))
    monkeypatch.setattr(harness, "budget_clock", lambda: 0.4 * next(ticks))
    cfg = BenchConfig(**{**CFG.__dict__, "time_budget_s": 1.0})
    run = run_benchmarks(cfg, progress=False)
    skipped = {r.case for r in run.results if r.status == "skipped" and "time budget" in r.message}
    assert run.complete and skipped  # accounted for, but not measured: a later run measures them
    assert all(json.loads(text)["results"][0]["case"] not in skipped for _, text in saved)


def test_a_stopped_run_as_json_and_card(tmp_cache, saved):
    part = run_benchmarks(CFG, progress=False, stop=lambda: len(saved) >= 1)
    back = BenchRun.from_json(part.to_json())
    assert not back.complete and back.cases_total == N and back.not_reached == part.not_reached
    assert back.cases_done == 1 and "stopped after 1 of 5 cases" in part.summary_card().headline["complete"]
    data = json.loads(part.to_json())
    for bad in ({"cases_total": -1}, {"cases_total": "5"}, {"not_reached": "x"}, {"complete": "no"}):
        with pytest.raises(ValueError, match="benchmark file"):
            BenchRun.from_json(json.dumps({**data, **bad}))
    whole = BenchRun.from_json(run_benchmarks(CFG, progress=False).to_json())
    assert whole.complete and whole.not_reached == [] and "complete" not in json.loads(whole.to_json())


# -- Ctrl-C in a terminal: SIGINT to the CLI ---------------------------------------------------------------

CLI = """
import os, sys, time
from sparsekit.bench import journal
from sparsekit.bench.__main__ import main
real = journal.save_case
def save(key, index, case):
    real(key, index, case)
    print("UNIT", index, case.to_json(), flush=True)  # on disk: say so, and give the test time to interrupt
    time.sleep(float(os.environ.get("PAUSE_AFTER_UNIT", "0")))
journal.save_case = save
sys.exit(main(sys.argv[1:]))
"""


def _cli(out, cache, pause: float = 0.0) -> tuple[list[str], dict]:
    args = ["--suites", "formats", "--quick", "--densities", "0.1,0.2,0.5", "--repeats", "2", "--out", str(out)]
    env = {**os.environ, "SPARSEKIT_CACHE_DIR": str(cache), "PAUSE_AFTER_UNIT": str(pause),
           "PYTHONPATH": str(ROOT)}
    return [sys.executable, "-c", textwrap.dedent(CLI), *args], env


@pytest.mark.slow
def test_sigint_to_the_cli_keeps_the_first_case_and_the_rerun_measures_only_the_rest(tmp_path):
    cache = tmp_path / "cache"
    command, env = _cli(tmp_path / "run.json", cache, pause=30.0)
    proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # blocks until the first case is on disk (or the process ends)
        assert first.startswith("UNIT 0 "), (first, proc.stderr.read() if proc.stderr else "")
        proc.send_signal(signal.SIGINT)  # Ctrl-C while it pauses after that case
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(r"interrupted: 1 of 3 cases kept on disk; run the same command again to measure only "
                        r"the rest", last), err[-3000:]
    assert "Traceback" not in err and not (tmp_path / "run.json").exists()
    stored = json.loads(first.split(" ", 2)[2])["results"]

    command, env = _cli(tmp_path / "run.json", cache)
    again = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [line.split()[1] for line in again.stdout.splitlines() if line.startswith("UNIT")] == ["1", "2"]
    resumed = BenchRun.from_json((tmp_path / "run.json").read_text())
    assert resumed.complete and resumed.env["resumed_cases"] == 1
    assert [serial.to_json(r) for r in resumed.results[:len(stored)]] == stored  # as stored, not measured again

    command, env = _cli(tmp_path / "fresh.json", tmp_path / "fresh-cache")
    fresh = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert _cases(resumed) == _cases(BenchRun.from_json((tmp_path / "fresh.json").read_text()))


# -- The page ---------------------------------------------------------------------------------------------

DENSITIES = [0.1, 0.3, 0.5]
PAGE_CFG = BenchConfig(suites=("formats",), device="cpu", formats_shape=(512, 512), densities=tuple(DENSITIES),
                       repeats=3)


def _page():
    at = page_app("benchmarks", "digits:mlp", 300)
    at.run()
    at.multiselect(key="bench_suites").set_value(["formats"])
    at.select_slider(key="bench_size").set_value(512)
    at.multiselect(key="bench_densities").set_value(DENSITIES)
    at.number_input(key="bench_repeats").set_value(3)
    at.run()
    assert not at.exception, at.exception
    return at


def _warnings(at) -> str:
    return " ".join(w.value for w in at.warning)


def _table(at):
    return next(d.value for d in reversed(at.dataframe) if "backend" in d.value.columns)


def _labels_of(at) -> set[str]:
    return {b.label for b in at.button}


def _continue_and_check(at, saved, measured):
    import sparsekit.bench as bench

    first = json.loads(saved[0][1])["results"]
    measured.clear()
    at.button(key="bench_continue").click().run()
    assert not at.exception and not at.error and "Stopped" not in _warnings(at)
    assert [i for i, _ in saved] == [0, 1, 2]  # the first case was not measured again
    assert _timed_labels(measured) == [c.label for c in runner.plan(PAGE_CFG, "cpu")][1:]
    table = _table(at)
    whole = bench.run_benchmarks(PAGE_CFG, progress=False)
    assert list(zip(table["case"], table["backend"])) == [(r.case, r.backend) for r in whole.results]
    assert list(table["median_ms"][:len(first)]) == [r["median_ms"] for r in first]  # the stored timings
    assert "Continue" not in _labels_of(at) and "Stop" not in _labels_of(at) and "Run benchmarks" in _labels_of(at)
    assert at.session_state["bench_last"]  # the finished run went to the history


def test_page_stop_shows_the_finished_cases_and_continue_measures_only_the_rest(tmp_cache, saved, measured,
                                                                                monkeypatch):
    import sparsekit.bench as bench

    real = bench.run_benchmarks

    def stopping(config, **kwargs):  # what a Stop press after the first case does
        kwargs.setdefault("stop", lambda: len(saved) >= 1)
        return real(config, **kwargs)

    monkeypatch.setattr(bench, "run_benchmarks", stopping)
    at = _page()
    at.button(key="bench_run").click().run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    assert "Stopped after 1 of 3 cases" in _warnings(at)
    table = _table(at)
    assert list(table["backend"]) == ["dense", "CSR", "dense (block mask)", "BSR 32×32"]  # the first case only
    assert table["case"].str.endswith("d0.1").all()
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert any(t.get("name") == "CSR" for t in fig["data"])
    assert "Continue" in _labels_of(at) and "Stop" not in _labels_of(at)
    # A reload (a new session) shows the same stopped state and offers Continue, measuring nothing.
    again = _page()
    assert "Stopped after 1 of 3 cases" in _warnings(again) and "Continue" in _labels_of(again)
    assert [i for i, _ in saved] == [0] and len(_table(again)) == 4
    monkeypatch.setattr(bench, "run_benchmarks", real)
    _continue_and_check(at, saved, measured)


def test_page_stop_button_during_a_run(tmp_cache, saved, measured, monkeypatch):
    import streamlit as st

    import sparsekit.bench as bench

    real = bench.run_benchmarks

    def interrupted(config, **kwargs):  # a Stop press reruns the script: the run ends at its next bar update
        progress = kwargs["progress"]

        def bar(fraction, message):
            if saved:
                st.stop()
            progress(fraction, message)

        return real(config, **{**kwargs, "progress": bar})

    monkeypatch.setattr(bench, "run_benchmarks", interrupted)
    at = _page()
    at.button(key="bench_run").click().run()
    assert not at.exception and [i for i, _ in saved] == [0]
    monkeypatch.setattr(bench, "run_benchmarks", real)
    at.button(key="bench_stop").click().run()
    assert not at.exception and not at.error
    assert "Stopped after 1 of 3 cases" in _warnings(at) and len(_table(at)) == 4
    assert [i for i, _ in saved] == [0] and "Continue" in _labels_of(at)
    _continue_and_check(at, saved, measured)


def test_page_chips_wrap_so_no_value_is_cut_off(tmp_cache):
    # Issue #24: in a column, a multiselect keeps its chips on one scrolling row, and the last density ("0.5")
    # was cut off. Every multiselect of the settings wraps its chips instead.
    at = _page()
    for key in ("bench_densities", "bench_seq"):
        at.multiselect(key="bench_suites").set_value(["formats", "attention"]).run()
        ms = at.multiselect(key=key)
        assert ms.proto.wrap, key
    assert [str(v) for v in at.multiselect(key="bench_densities").value] == ["0.1", "0.3", "0.5"]


def test_page_says_an_imported_run_was_stopped(tmp_cache, saved):
    part = run_benchmarks(CFG, progress=False, stop=lambda: len(saved) >= 1)  # as a stopped CLI run's file holds it
    at = _page()
    at.file_uploader(key="bench_import").set_value(("part.json", part.to_json().encode(), "application/json")).run()
    assert not at.exception, at.exception
    assert "This run was stopped after 1 of 5 cases" in _warnings(at)
    assert len(_table(at)) == len(part.results) == 4

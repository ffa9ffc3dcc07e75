"""The Benchmarks page through AppTest: run CPU suites, import CLI output, reject bad files, show
each suite's settings only when it is chosen, suites from the URL."""
import json
import subprocess
import sys

import pytest

from sparsekit.bench import BenchRun
from devtools.apptest import page_app


@pytest.fixture
def page(tmp_cache):
    at = page_app("benchmarks", "digits:mlp", 300)
    at.run()
    assert not at.exception, at.exception
    return at


def test_run_formats_here_shows_results(page):
    at = page
    at.multiselect(key="bench_suites").set_value(["formats"])
    at.select_slider(key="bench_size").set_value(512)
    at.multiselect(key="bench_densities").set_value([0.1, 0.5])
    at.number_input(key="bench_repeats").set_value(3)
    at.button(key="bench_run").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    table = at.dataframe[-1].value
    assert set(table["backend"]) == {"dense", "CSR", "dense (block mask)", "BSR 32×32"}
    assert (table["status"] == "ok").all()
    sp = table[table["backend"] == "CSR"]
    assert ((sp["baseline_ms"] / sp["median_ms"]) - sp["speedup"]).abs().max() < 1e-9
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    names = [t.get("name") for t in fig["data"]]
    assert "ideal 1/density" in names and "CSR" in names


def test_import_cli_output_and_reject_malformed(page, tmp_path):
    out = tmp_path / "cli.json"
    proc = subprocess.run([sys.executable, "-m", "sparsekit.bench", "--suites", "formats", "--quick",
                           "--densities", "0.2", "--repeats", "2", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    at = page
    at.file_uploader(key="bench_import").set_value(("cli.json", out.read_bytes(), "application/json")).run()
    assert not at.exception, at.exception
    assert any("Imported" in s.value for s in at.success)
    n = len(BenchRun.from_json(out.read_text()).results)
    assert any(df.value.shape[0] == n for df in at.dataframe)
    at.file_uploader(key="bench_import").set_value(("bad.json", b"{not json", "application/json")).run()
    assert any("not valid JSON" in e.value for e in at.error)
    assert not at.exception


def test_bad_selection_messages(page):
    at = page
    at.multiselect(key="bench_suites").set_value([])
    at.button(key="bench_run").click().run()
    assert any("at least one suite" in e.value for e in at.error)
    at.multiselect(key="bench_suites").set_value(["formats"]).run()
    at.multiselect(key="bench_densities").set_value([])
    at.button(key="bench_run").click().run()
    assert any("at least one density" in e.value for e in at.error)


def test_time_budget_skips_late_cases(page, monkeypatch):
    from sparsekit.bench import harness

    # A scripted budget clock: 0.4 s passes between two looks at it, so with a 1 s budget the first
    # case always starts inside it and later ones are skipped, however fast this machine is.
    ticks = iter(range(10**6))
    monkeypatch.setattr(harness, "budget_clock", lambda: 0.4 * next(ticks))
    at = page
    at.multiselect(key="bench_suites").set_value(["formats"])
    at.select_slider(key="bench_size").set_value(512)
    at.multiselect(key="bench_densities").set_value([0.01, 0.1, 0.5])
    at.number_input(key="bench_budget").set_value(1)
    at.button(key="bench_run").click().run()
    assert not at.exception, at.exception
    assert any("time budget (1.0 s) was spent" in w.value for w in at.warning)
    table = at.dataframe[-1].value
    assert table["status"].iloc[0] == "ok"  # the first case started inside the budget and ran
    late = table[table["status"] == "skipped"]
    assert len(late) > 0 and late["message"].str.contains("time budget").all()
    first_skip = int(late.index[0])
    assert (table["status"].iloc[first_skip:] == "skipped").all()  # once spent, it stays spent
    assert late["median_ms"].isna().all()


def keys(at):
    return {w.key for kind in ("multiselect", "select_slider", "number_input", "checkbox")
            for w in at.get(kind)}


CSR = {"bench_size", "bench_densities"}
ATTENTION = {"bench_seq", "bench_window"}
GPU = {"bench_batches", "bench_model_shapes"}


def test_settings_follow_the_chosen_suites_on_cpu(page):
    at = page
    assert at.multiselect(key="bench_suites").value == ["formats", "attention"]
    shown = keys(at)
    assert CSR | ATTENTION <= shown and not GPU & shown  # no GPU batch sizes without a GPU...
    assert any("appear here on a machine with one" in c.value for c in at.caption)  # ...but a note saying why
    at.multiselect(key="bench_suites").set_value(["formats"]).run()
    shown = keys(at)
    assert CSR <= shown and not (ATTENTION | GPU) & shown
    at.select_slider(key="bench_size").set_value(1024).run()
    at.multiselect(key="bench_suites").set_value(["attention"]).run()
    shown = keys(at)
    assert ATTENTION <= shown and not (CSR | GPU) & shown
    # A setting hidden and shown again keeps what the user chose.
    at.multiselect(key="bench_suites").set_value(["attention", "formats"]).run()
    assert at.select_slider(key="bench_size").value == 1024


def test_gpu_settings_only_with_the_gpu_suites(tmp_cache, monkeypatch):
    import torch

    from sparsekit.bench import suites

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(suites, "semi_structured_available", lambda device: "")
    at = page_app("benchmarks", "digits:mlp", 300)
    at.run()
    assert not at.exception, at.exception
    assert "Linear: dense vs 2:4" in at.multiselect(key="bench_suites").options
    assert not GPU & keys(at) and not any("machine with one" in c.value for c in at.caption)
    at.multiselect(key="bench_suites").set_value(["linear"]).run()
    shown = keys(at)
    assert GPU <= shown and not (CSR | ATTENTION) & shown


def test_suites_come_from_the_url(tmp_cache):
    at = page_app("benchmarks", "digits:mlp", 300)
    at.query_params["bench_suites"] = "FlexAttention block-sparse vs SDPA"  # the URL holds the shown label
    at.run()
    assert not at.exception
    ms = at.multiselect(key="bench_suites")
    assert ms.value == ["attention"] and ms.proto.query_param_key == "bench_suites"
    assert ATTENTION <= keys(at) and not CSR & keys(at)

"""The benchmark harness: correctness gate, timing, records, CLI, and bad input."""
import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from sparsekit.bench import (
    BenchRun,
    CaseResult,
    attention_suite,
    delete_run,
    formats_suite,
    linear_suite,
    list_runs,
    load_run,
    relative_error,
    run_case,
    save_run,
    time_ms,
    verdicts,
)
from sparsekit.bench.harness import check_fits, environment
from sparsekit.bench.records import results_csv
from sparsekit.bench.runner import BenchConfig, run_benchmarks
from sparsekit.bench.suites import AttentionPattern

CUDA = torch.cuda.is_available()


def test_wrong_kernel_is_failed_not_timed():
    res = linear_suite([(32, 64)], [4], device="cpu", dtype=torch.float32, repeats=3,
                       sparse_fn=lambda x, w: F.linear(x, w) * 1.01)
    dense, custom = res
    assert dense.status == "ok" and dense.median_ms is not None
    assert custom.status == "failed" and custom.median_ms is None and custom.repeats == 0
    assert "not timed" in custom.message and custom.rel_error == pytest.approx(0.01, rel=1e-3)


def test_right_kernel_is_timed_with_speedup():
    res = linear_suite([(32, 64)], [4], device="cpu", dtype=torch.float32, repeats=5,
                       sparse_fn=lambda x, w: (w.to_sparse_csr() @ x.t()).t())
    dense, custom = res
    assert custom.status == "ok" and custom.repeats == 5
    assert custom.speedup == pytest.approx(dense.median_ms / custom.median_ms)
    assert custom.rel_error < 1e-5


def test_time_ms_rotates_inputs_and_counts():
    seen = []
    times = time_ms(lambda x: seen.append(x), [0, 1, 2], device="cpu", warmup=2, repeats=7)
    assert len(times) == 7 and all(t >= 0 for t in times)
    assert seen == [0, 1] + [i % 3 for i in range(7)]
    with pytest.raises(ValueError, match="at least one input"):
        time_ms(lambda x: x, [], device="cpu")


def test_relative_error_formula():
    a = torch.tensor([3.0, 4.0])
    b = torch.tensor([3.0, 4.5])
    assert relative_error(b, a) == pytest.approx(0.5 / 5.0)
    assert relative_error(torch.zeros(2), torch.zeros(2)) == 0.0
    assert relative_error(torch.zeros(3), torch.zeros(2)) == math.inf


def test_run_case_reports_errors_without_crashing():
    def broken(_):
        raise RuntimeError("kernel not implemented for this dtype")

    res = run_case(suite="s", case="c", backend="b", device="cpu", dtype=torch.float32, params={},
                   fn=broken, reference=lambda _: torch.ones(2), inputs=[None])
    assert res.status == "error" and "not implemented" in res.message


def test_formats_suite_small():
    res = formats_suite((64, 96), 16, [0.1, 0.5], device="cpu", block=32, repeats=3)
    backends = [r.backend for r in res]
    assert backends.count("CSR") == 2 and backends.count("BSR 32×32") == 2
    for r in res:
        assert r.status == "ok", r.message
        assert r.rel_error < 1e-5
        if r.backend != "dense" and not r.backend.startswith("dense"):
            assert r.speedup == pytest.approx(r.baseline_ms / r.median_ms)


def test_attention_suite_block_density_and_correctness():
    window = 40

    def sliding(b, h, q, kv):
        return (q >= kv) & (q - kv <= window)

    L, block = 300, 128  # not a multiple of the block size
    res = attention_suite([L], [AttentionPattern("w40", sliding)], device="cpu", heads=2, head_dim=16,
                          block_size=block, repeats=2, compile=False)
    dense, flex = res
    assert dense.status == "ok" and flex.status == "ok", flex.message
    # Block density by brute force: blocks holding at least one kept (q, kv) pair.
    n = math.ceil(L / block)
    nonempty = 0
    for bq in range(n):
        for bk in range(n):
            if any(sliding(0, 0, q, k) for q in range(bq * block, min(L, (bq + 1) * block))
                   for k in range(bk * block, min(L, (bk + 1) * block))):
                nonempty += 1
    assert flex.params["block_density"] == pytest.approx(nonempty / n**2)
    kept = sum(1 for q in range(L) for k in range(L) if sliding(0, 0, q, k))
    assert flex.params["density"] == pytest.approx(kept / L**2)


def test_bad_inputs_get_clear_messages():
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        formats_suite((64, 64), 8, [0.0], device="cpu")
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        formats_suite((64, 64), 8, [1.5], device="cpu")
    with pytest.raises(ValueError, match="between 1 and"):
        linear_suite([(32, 64)], [0], device="cpu", sparse_fn=lambda x, w: x)
    with pytest.raises(ValueError, match="multiple of 4"):
        linear_suite([(32, 66)], [1], device="cpu", sparse_fn=lambda x, w: x)
    with pytest.raises(ValueError, match="GiB free"):
        formats_suite((65536, 65536), 65536, [0.5], device="cpu", block=64)
    with pytest.raises(ValueError, match="GiB free"):
        check_fits(2**62, "cpu", "a huge case")
    with pytest.raises(ValueError, match="suites"):
        run_benchmarks(BenchConfig(suites=("nope",)))
    with pytest.raises(ValueError, match="CUDA was requested") if not CUDA else pytest.raises(ValueError, match="suites"):
        run_benchmarks(BenchConfig(suites=("formats",) if not CUDA else (), device="cuda"))


def _run() -> BenchRun:
    results = formats_suite((64, 64), 8, [0.25], device="cpu", block=32, repeats=2)
    results.append(CaseResult(suite="linear", case="x", backend="2:4", device="cpu", dtype="float16",
                              status="skipped", message="CUDA only", speedup=float("inf")))
    return BenchRun(env=environment("cpu"), results=results, ceilings={"matmul_tflops": 0.1}, suites=["formats"])


def test_json_round_trip_and_cache(tmp_cache):
    run = _run()
    back = BenchRun.from_json(run.to_json())
    assert [r.median_ms for r in back.results] == [r.median_ms for r in run.results]
    assert back.results[-1].speedup is None  # inf is not JSON: stored as null
    key = save_run(run)
    assert key in [k for k, _ in list_runs()]
    stored = load_run(key)
    assert stored.to_json() == back.to_json()
    delete_run(key)
    assert key not in [k for k, _ in list_runs()]
    csv_text = results_csv(back)
    assert csv_text.splitlines()[0].startswith("suite,case,backend")
    assert len(csv_text.strip().splitlines()) == len(back.results) + 1


def test_partial_quartiles_import_and_export():
    # A file whose result carries q1_ms but null q3_ms (e.g. a non-finite q3 written as null) passes the
    # import checks; its IQR is unknown, and the CSV export must not crash on it (it raised TypeError).
    text = json.dumps({"schema": "sparsekit.bench", "schema_version": 1, "env": {}, "results": [
        {"suite": "linear", "case": "c", "backend": "dense", "device": "cpu", "dtype": "float32",
         "median_ms": 1.0, "q1_ms": 0.9, "q3_ms": None}]})
    run = BenchRun.from_json(text)
    assert run.results[0].iqr_ms is None
    assert len(results_csv(run).strip().splitlines()) == 2
    # A dense baseline without a time gives no speedup (it raised TypeError).
    timed = CaseResult(suite="s", case="c", backend="2:4", device="cpu", dtype="float32", median_ms=1.0)
    from sparsekit.bench.harness import attach_baseline
    attach_baseline([timed], CaseResult(suite="s", case="c", backend="dense", device="cpu", dtype="float32"))
    assert timed.speedup is None and timed.baseline_ms is None


@pytest.mark.parametrize("text,words", [
    ("not json", "not valid JSON"),
    ("[1, 2]", "not a sparsekit benchmark file"),
    ('{"schema": "sparsekit.bench", "schema_version": 99}', "unsupported schema_version"),
    ('{"schema": "sparsekit.bench", "schema_version": 1, "env": {}, "results": [{"suite": "a"}]}', "lacks"),
    ('{"schema": "sparsekit.bench", "schema_version": 1, "env": {}, "results": [{"suite": "a", "case": "b", '
     '"backend": "c", "device": "cpu", "dtype": "f", "status": "great"}]}', "unknown status"),
    ('{"schema": "sparsekit.bench", "schema_version": 1, "env": {}, "results": [{"suite": "a", "case": "b", '
     '"backend": "c", "device": "cpu", "dtype": "f", "median_ms": "fast"}]}', "must be a number"),
])
def test_malformed_imports(text, words):
    with pytest.raises(ValueError, match=words):
        BenchRun.from_json(text)
    with pytest.raises(ValueError, match="UTF-8"):
        BenchRun.from_json(b"\xff\xfe\x00")


def _linear(o, i, b, backend, speedup, status="ok"):
    return CaseResult(suite="linear", case=f"{o}x{i} b{b}", backend=backend, device="cuda", dtype="float16",
                      params={"out_features": o, "in_features": i, "batch": b}, status=status,
                      median_ms=1.0, speedup=speedup)


def test_verdicts_from_speedups():
    rs = [_linear(4096, 4096, b, "2:4 cusparselt", s) for b, s in [(1, 0.7), (64, 0.95), (512, 1.1), (4096, 1.3)]]
    rs += [_linear(384, 384, b, "2:4 cusparselt", s) for b, s in [(1, 0.5), (64, 0.8)]]
    rs += [_linear(1024, 1024, b, "2:4 cutlass", s) for b, s in [(1, 1.2), (64, 0.9), (512, 1.1)]]
    rs += [_linear(64, 64, 1, "2:4", None, status="skipped")]
    v = {(r["shape"], r["backend"]): r["verdict"] for r in verdicts(rs)}
    assert v[("4096×4096", "2:4 cusparselt")] == "2:4 faster from batch 512 on this device"
    assert v[("384×384", "2:4 cusparselt")] == "slower at every size measured"
    assert v[("1024×1024", "2:4 cutlass")] == "2:4 faster from batch 512 on this device"
    assert v[("64×64", "2:4")].startswith("not measured")


def test_cli_writes_json_the_page_reads(tmp_path):
    out = tmp_path / "cpu.json"
    proc = subprocess.run([sys.executable, "-m", "sparsekit.bench", "--suites", "formats", "--quick",
                           "--densities", "0.1,0.5", "--repeats", "2", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "== formats ==" in proc.stdout and "CSR" in proc.stdout
    run = BenchRun.from_json(out.read_text())
    assert {r.backend for r in run.results} >= {"dense", "CSR", "BSR 32×32"}
    bad = subprocess.run([sys.executable, "-m", "sparsekit.bench", "--suites", "formats", "--densities", "0"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "density" in bad.stderr


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="2:4 semi-structured kernels need CUDA")
def test_linear_2_4_on_cuda():
    res = linear_suite([(1024, 1024)], [64], device="cuda", dtype=torch.float16, repeats=5)
    sparse = [r for r in res if r.backend.startswith("2:4")]
    assert sparse and all(r.status in ("ok", "skipped") for r in sparse)
    assert any(r.status == "ok" and r.rel_error < 1e-2 for r in sparse)


def test_cpu_run_reports_cuda_suites_as_skipped(tmp_cache):
    if CUDA:
        pytest.skip("CPU-only behaviour")
    run = run_benchmarks(BenchConfig(suites=("linear",), device="cpu", square_sizes=(64,), batches=(2,), repeats=2))
    assert all(r.status == "skipped" for r in run.results if r.backend != "dense")
    assert "CUDA only" in json.dumps([r.message for r in run.results])


def _case(suite, backend, speedup, **params):
    from sparsekit.bench import CaseResult

    return CaseResult(suite=suite, case=f"{backend} {params}", backend=backend, device="cpu", dtype="float32",
                      params=params, speedup=speedup)


def test_speedup_figures():
    from sparsekit import viz

    rows = [_case("formats", "CSR", s, density=d) for d, s in [(0.01, 4.0), (0.1, 0.9), (0.5, 0.3)]]
    rows.append(_case("formats", "CSR", None, density=0.2))  # untimed: left out
    fig = viz.speedup_density_figure(rows)
    csr = next(t for t in fig.data if t.name == "CSR")
    assert list(csr.x) == [0.01, 0.1, 0.5] and list(csr.y) == [4.0, 0.9, 0.3]
    ideal = next(t for t in fig.data if t.name == "ideal 1/density")
    assert all(abs(y - 1 / x) < 1e-9 for x, y in zip(ideal.x, ideal.y))
    fig = viz.speedup_batch_figure([_case("linear", "2:4", s, out_features=8, in_features=8, batch=b)
                                    for b, s in [(64, 1.2), (1, 0.5)]])
    assert list(fig.data[0].x) == [1, 64] and list(fig.data[0].y) == [0.5, 1.2]
    assert fig.data[0].name == "8×8 2:4"
    assert "no timed" in viz.speedup_batch_figure([]).layout.annotations[0].text


# --- The CUDA-only code paths, run on CPU with the 2:4 conversion emulated -----------------------
# The kernels themselves need a GPU; everything around them (backend loop, conversion refusals,
# the whole-model conversion, verdicts, records) is exercised here with a stand-in that returns the
# dense weight (so the output must match the reference exactly) and refuses non-2:4 weights the
# way the real compressor's caller must.

def _emulate_semi_structured(monkeypatch, refuse: str = ""):
    from sparsekit.bench import suites
    from sparsekit.sparsify import is_2_4

    calls = []

    def convert(weight, backend):
        if backend == refuse:
            raise RuntimeError(f"{backend} refuses this shape\nsecond line")
        assert is_2_4(weight), "a non-2:4 weight reached the compressor"
        calls.append((backend, tuple(weight.shape)))
        return weight.clone()

    monkeypatch.setattr(suites, "semi_structured_available", lambda device: "")
    monkeypatch.setattr(suites, "_backends", lambda device: ["cusparselt", "cutlass"])
    monkeypatch.setattr(suites, "_to_semi_structured", convert)
    return calls


def test_linear_suite_backends_emulated(monkeypatch):
    calls = _emulate_semi_structured(monkeypatch)
    res = linear_suite([(64, 128), (32, 64)], [1, 16], device="cpu", dtype=torch.float32, repeats=3)
    assert sorted({b for b, _ in calls}) == ["cusparselt", "cutlass"] and len(calls) == 4  # once per shape
    backends = [r.backend for r in res]
    assert backends == ["dense", "2:4 cusparselt", "2:4 cutlass"] * 4
    for r in res:
        assert r.status == "ok" and r.rel_error == 0.0 and r.params["density"] == 0.5
        if r.backend != "dense":
            assert r.speedup == pytest.approx(r.baseline_ms / r.median_ms)
    rows = verdicts(res)
    assert {(row["shape"], row["backend"]) for row in rows} == {
        ("32×64", "2:4 cusparselt"), ("32×64", "2:4 cutlass"), ("64×128", "2:4 cusparselt"), ("64×128", "2:4 cutlass")}
    assert all(row["batches"] == [1, 16] and row["best_speedup"] > 0 for row in rows)


def test_linear_suite_reports_a_refused_conversion(monkeypatch):
    _emulate_semi_structured(monkeypatch, refuse="cutlass")
    res = linear_suite([(32, 64)], [2, 4], device="cpu", dtype=torch.float32, repeats=2)
    refused = [r for r in res if r.backend == "2:4 cutlass"]
    assert len(refused) == 2 and all(r.status == "skipped" for r in refused)
    assert refused[0].message == "cannot convert: cutlass refuses this shape"
    assert all(r.status == "ok" for r in res if r.backend == "2:4 cusparselt")
    v = {row["backend"]: row["verdict"] for row in verdicts(res)}
    assert v["2:4 cutlass"].startswith("not measured: cannot convert")


def test_model_suite_converts_every_2_4_linear_emulated(monkeypatch, minilm):
    from sparsekit.bench.suites import model_suite

    calls = _emulate_semi_structured(monkeypatch)
    before = {k: v.clone() for k, v in minilm.module.state_dict().items()}
    res = model_suite(minilm, [1, 2], device="cpu", dtype=torch.float32, seq_len=16, repeats=2)
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in minilm.module.modules())
    assert len(calls) == n_linear == 36  # 6 layers × (q, k, v, attention out, FFN in, FFN out)
    assert [r.backend for r in res] == ["dense", "2:4"] * 2
    for r in res:
        assert r.status == "ok", r.message
        assert r.params["converted_linears"] == 36 and r.params["unconverted_linears"] == 0
    assert all(r.rel_error < 1e-6 for r in res)
    after = minilm.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the shared model is untouched


def test_time_budget_skips_late_cases_and_checkpoints(monkeypatch, tmp_cache):
    from sparsekit.bench.harness import budget_spent, time_budget

    assert budget_spent() == ""
    with time_budget(1e-6):
        import time as _t

        _t.sleep(0.01)
        assert "time budget of 1e-06 s was spent" in budget_spent()
        r = run_case(suite="s", case="c", backend="b", device="cpu", dtype=torch.float32, params={},
                     fn=lambda x: x, reference=lambda x: x, inputs=[torch.ones(2)])
        assert r.status == "skipped" and r.median_ms is None and "time budget" in r.message
    assert budget_spent() == ""  # restored on exit
    for bad in (0, -5, "60"):
        with pytest.raises(ValueError, match="time budget"):
            time_budget(bad)
    with pytest.raises(ValueError, match="time budget"):
        run_benchmarks(BenchConfig(suites=("formats",), device="cpu", time_budget_s=-1))

    snapshots = []
    run = run_benchmarks(BenchConfig(suites=("formats", "attention"), device="cpu", formats_shape=(64, 64),
                                     formats_cols=8, densities=(0.5,), seq_lens=(128,), repeats=2,
                                     time_budget_s=1e-6), checkpoint=snapshots.append)
    assert [s.suites for s in snapshots] == [["formats"]]
    assert run.suites == ["formats", "attention"] and run.env["time_budget_s"] == 1e-6
    assert run.results and all(r.status == "skipped" and "time budget" in r.message for r in run.results)
    assert run.env["wall_s"] >= 0
    again = BenchRun.from_json(run.to_json())
    assert [r.message for r in again.results] == [r.message for r in run.results]


def test_cli_time_budget_argument(tmp_path):
    bad = subprocess.run([sys.executable, "-m", "sparsekit.bench", "--suites", "formats", "--time-budget", "-3"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "time budget must be a positive number" in bad.stderr


def test_log_ticks_and_attention_figure():
    from sparsekit import viz

    ticks = viz.log_ticks(0.3, 40)
    assert ticks == sorted(ticks)
    for v in (0.5, 1, 2, 5, 10, 20):  # every 1-2-5 value inside the range is a tick
        assert v in ticks
    assert ticks[0] <= 0.3 and ticks[-1] >= 40
    assert all(f"{t:e}"[0] in "125" for t in ticks)
    with pytest.raises(ValueError):
        viz.log_ticks(0, 1)
    rows = [_case("attention", "flex window", s, pattern="window", seq_len=L, block_density=d)
            for L, s, d in [(2048, 2.5, 0.125), (512, 0.7, 0.44), (1024, 1.3, 0.23)]]
    rows.append(_case("attention", "flex full", 0.3, pattern="full", seq_len=512, block_density=1.0))
    rows.append(_case("attention", "flex full", None, pattern="full", seq_len=1024, block_density=1.0))  # untimed
    fig = viz.attention_speedup_figure(rows)
    measured = next(t for t in fig.data if t.name == "window (measured)")
    assert list(measured.x) == [512, 1024, 2048] and list(measured.y) == [0.7, 1.3, 2.5]
    assert list(measured.text) == ["44% blocks", "23% blocks", "12% blocks"]
    ideal = next(t for t in fig.data if t.name == "window (ideal 1/block density)")
    assert list(ideal.y) == pytest.approx([1 / 0.44, 1 / 0.23, 8.0])
    assert ideal.line.color == measured.line.color
    assert list(next(t for t in fig.data if t.name == "full (measured)").x) == [512]
    assert list(fig.layout.xaxis.tickvals) == [512, 1024, 2048]
    assert "no timed" in viz.attention_speedup_figure([]).layout.annotations[0].text


def test_time_budget_belongs_to_its_thread():
    # Two app sessions run in two threads: one user's short budget must not cut another's run.
    import threading
    import time as _t

    from sparsekit.bench.harness import budget_spent, time_budget

    seen = {}

    def other_session():
        seen["no budget"] = budget_spent()  # this session set none: nothing is spent
        with time_budget(3600):
            seen["own budget"] = budget_spent()

    with time_budget(1e-6):
        _t.sleep(0.01)
        worker = threading.Thread(target=other_session)
        worker.start()
        worker.join()
        assert "time budget" in budget_spent()  # this thread's own budget is still in force
    assert seen == {"no budget": "", "own budget": ""}
    assert budget_spent() == ""

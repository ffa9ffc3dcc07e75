"""The KV-cache decode suite: its kernels against a plain-loop reference, its masks' counts, its records through
JSON and the CLI, its verdicts, a stopped run continued, and bad input. No test asserts a time."""
import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from sparsekit.bench import BenchRun, CaseResult, relative_error
from sparsekit.bench import kv_suite as kv
from sparsekit.bench.harness import attach_baseline
from sparsekit.bench.runner import BenchConfig, journal_settings, run_benchmarks, stored_run
from sparsekit.kvcache import kept_count, token_mask

TINY = dict(kv_lens=(24, 40), kv_sparsities=(0.5, 0.7), kv_shapes=((3, 8),), kv_window=8, repeats=2)


def loop_attention(q, k, v):
    """One query per head, float64, by plain loops: softmax over tokens of q·k/√D, then the weighted sum of v."""
    _, heads, tokens, dim = k.shape
    out = torch.zeros(1, heads, 1, dim, dtype=torch.float64)
    for h in range(heads):
        scores = [sum(float(q[0, h, 0, d]) * float(k[0, h, t, d]) for d in range(dim)) / math.sqrt(dim)
                  for t in range(tokens)]
        top = max(scores)
        weights = [math.exp(s - top) for s in scores]
        total = sum(weights)
        for t in range(tokens):
            out[0, h, 0] += weights[t] / total * v[0, h, t].double()
    return out


def pruned_cache(heads=3, tokens=20, dim=8, window=4, s=0.5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    k, v = (torch.randn(1, heads, tokens, dim, generator=gen) for _ in range(2))
    q = torch.randn(1, heads, 1, dim, generator=gen)
    keep_k, keep_v = torch.ones_like(k, dtype=torch.bool), torch.ones_like(v, dtype=torch.bool)
    keep_k[:, :, :tokens - window] = token_mask(k[:, :, :tokens - window], s)
    keep_v[:, :, :tokens - window] = token_mask(v[:, :, :tokens - window], s)
    return q, k * keep_k, v * keep_v


def block_diagonal_by_loop(x):
    heads, rows, cols = x.shape
    full = torch.zeros(heads * rows, heads * cols, dtype=x.dtype)
    for h in range(heads):
        full[h * rows:(h + 1) * rows, h * cols:(h + 1) * cols] = x[h]
    return full


@pytest.mark.parametrize("s", [0.0, 0.5, 0.7])
def test_kernels_equal_the_plain_loop_reference(s):
    q, kp, vp = pruned_cache(s=s)
    want = loop_attention(q, kp, vp)
    assert relative_error(kv.reference_attention(q, kp, vp), want) < 1e-12
    heads, dim = kp.shape[1], kp.shape[3]
    k_csr = kv.block_diagonal_csr(kp[0])
    vt_csr = kv.block_diagonal_csr(vp[0].transpose(-1, -2).contiguous())
    assert torch.equal(k_csr.to_dense(), block_diagonal_by_loop(kp[0]))
    assert torch.equal(vt_csr.to_dense(), block_diagonal_by_loop(vp[0].transpose(-1, -2)))
    assert k_csr.col_indices().dtype == torch.int32 and k_csr.crow_indices().dtype == torch.int32
    assert relative_error(kv.csr_decode(k_csr, vt_csr, heads, dim)(q), want) < 1e-5
    assert relative_error(F.scaled_dot_product_attention(q, kp, vp), want) < 1e-5


def test_suite_checks_every_kernel_and_counts_what_it_keeps():
    heads, dim, window = 3, 8, 8
    res = kv.kv_suite([24, 40], [0.5, 0.7], [(heads, dim)], device="cpu", window=window, repeats=2)
    by = {(r.case, r.backend, r.params.get("sparsity")): r for r in res}
    for L in (24, 40):
        case = f"H{heads} D{dim} L{L}"
        base = by[(case, "SDPA dense", None)]
        assert base.status == "ok" and base.rel_error < 1e-5
        assert by[(case, "CSR batched (bmm)", None)].status == "skipped"  # no CPU kernel
        for s in (0.5, 0.7):
            kept = kept_count(dim, s)
            for backend in ("masked dense", "CSR"):
                r = by[(case, backend, s)]
                assert r.status == "ok" and r.rel_error < 1e-5, r.message
                assert r.speedup == pytest.approx(base.median_ms / r.median_ms)
                # the window's tokens dense, every other vector exactly kept_count(D, s) entries
                entries = (L - window) * kept + window * dim
                assert r.params["density"] == pytest.approx(entries / (L * dim))
                assert r.params["bytes_dense"] == 2 * heads * L * dim * 4
                assert r.params["bytes_bitmap"] == 2 * (heads * L * math.ceil(dim / 8) + heads * entries * 4)
                assert r.params["bytes_csr"] == 2 * (heads * entries * 8 + heads * (L + 1) * 4)
            csr = by[(case, "CSR", s)]
            # torch's tensors: values + int32 columns per entry, one row pointer array of H·R + 1 per matrix
            assert csr.params["bytes_torch_csr"] == (2 * heads * entries * 8
                                                      + (heads * L + 1) * 4 + (heads * dim + 1) * 4)


def test_a_wrong_kernel_is_failed_not_timed(monkeypatch):
    right = kv.csr_decode

    def off_by_one_percent(*args):
        kernel = right(*args)
        return lambda q: kernel(q) * 1.01

    monkeypatch.setattr(kv, "csr_decode", off_by_one_percent)
    res = kv.kv_suite([16], [0.5], [(2, 8)], device="cpu", window=4, repeats=2)
    csr = next(r for r in res if r.backend == "CSR")
    assert csr.status == "failed" and csr.median_ms is None and csr.speedup is None
    assert csr.rel_error == pytest.approx(0.01, rel=1e-3) and "not timed" in csr.message
    row = next(v for v in kv.kv_verdicts(res) if v["backend"] == "CSR")
    assert row["verdict"].startswith("not measured") and "relative error" in row["verdict"]


def test_a_case_is_the_long_caches_prefix_whatever_ran_before():
    """A case's inputs do not depend on which cases ran in this process (a continued run skips some)."""
    both = kv.kv_cases([24, 40], [0.5], [(2, 8)], device="cpu", window=8, repeats=1)
    alone = kv.kv_cases([24, 40], [0.5], [(2, 8)], device="cpu", window=8, repeats=1)
    first = both[0].measure() + both[1].measure()
    second_alone = alone[1].measure()
    keys = ("density", "bytes_bitmap", "bytes_csr", "bytes_torch_csr")
    assert [{k: r.params.get(k) for k in keys} for r in first[-len(second_alone):]] == \
        [{k: r.params.get(k) for k in keys} for r in second_alone]
    assert [r.rel_error for r in first[-len(second_alone):]] == [r.rel_error for r in second_alone]


def result(backend, q1, med, q3, **params):
    return CaseResult(suite="kv", case="H2 D8 L64", backend=backend, device="cpu", dtype="float32",
                      params={"heads": 2, "head_dim": 8, "tokens": 64, **params}, q1_ms=q1, median_ms=med, q3_ms=q3)


def test_verdicts_from_the_interquartile_ranges():
    mem = {"bytes_dense": 2 * 2**20, "bytes_bitmap": 2**20, "bytes_csr": 3 * 2**19}
    base = result("SDPA dense", 10.0, 11.0, 12.0)
    fast = result("CSR", 4.0, 4.5, 5.0, sparsity=0.5, **mem)
    slow = result("CSR", 20.0, 21.0, 22.0, sparsity=0.7, **mem)
    same = result("masked dense", 9.0, 10.5, 13.0, sparsity=0.5, **mem)
    bad = result("masked dense", None, None, None, sparsity=0.7, **mem)
    bad.status, bad.message = "error", "RuntimeError: boom"
    attach_baseline([fast, slow, same, bad], base)
    rows = kv.kv_verdicts([base, fast, slow, same, bad])
    assert [r["verdict"] for r in rows] == ["faster", "slower", "no clear difference", "not measured: RuntimeError: boom"]
    assert rows[0]["range"] == f"{10 / 5:.2f}–{12 / 4:.2f}" and rows[1]["range"] == f"{10 / 22:.2f}–{12 / 20:.2f}"
    assert rows[0]["speedup"] == pytest.approx(11.0 / 4.5)
    assert (rows[0]["dense MiB"], rows[0]["bitmap MiB"], rows[0]["CSR MiB"]) == (2.0, 1.0, 1.5)
    lines = kv.kv_summary([base, fast, slow, same, bad])
    assert lines == ["CSR: faster than dense SDPA in 1 of 2 timed cases, slower in 1, no clear difference in 0",
                     "masked dense: faster than dense SDPA in 0 of 1 timed cases, slower in 0, no clear difference in 1"]


def test_run_round_trips_through_json(tmp_cache):
    run = run_benchmarks(BenchConfig(suites=("kv",), device="cpu", **TINY), progress=False)
    assert run.suites == ["kv"] and run.complete and run.cases_total == 2
    back = BenchRun.from_json(run.to_json())
    assert [r.as_row() for r in back.results] == [r.as_row() for r in run.results]
    assert kv.kv_verdicts(back.results) == kv.kv_verdicts(run.results)
    assert {r.status for r in run.results} == {"ok", "skipped"}


def test_stopped_run_continues_with_the_finished_case(tmp_cache):
    config = BenchConfig(suites=("kv",), device="cpu", **TINY)
    asked = []
    first = run_benchmarks(config, progress=False, stop=lambda: len(asked) > 1 or asked.append(1) is not None)
    assert not first.complete and first.cases_done == 1
    kept = stored_run(config)
    assert kept is not None and kept.cases_done == 1
    assert [r.as_row() for r in kept.results] == [r.as_row() for r in first.results]
    again = run_benchmarks(config, progress=False)
    assert again.complete and again.env["resumed_cases"] == 1
    assert [r.as_row() for r in again.results[:len(first.results)]] == [r.as_row() for r in first.results]
    assert stored_run(config) is None  # a finished run forgets its cases


def test_runs_without_the_kv_suite_keep_their_journal_key():
    settings = journal_settings(BenchConfig(suites=("formats",), device="cpu"), "cpu")
    assert not any(k.startswith("kv_") for k in settings)
    assert {"kv_lens", "kv_sparsities", "kv_shapes", "kv_window"} <= set(
        journal_settings(BenchConfig(suites=("kv",), device="cpu"), "cpu"))


@pytest.mark.parametrize("change, words", [
    (dict(kv_sparsities=(1.0,)), "sparsity must be in [0, 1)"),
    (dict(kv_sparsities=(-0.1,)), "sparsity must be in [0, 1)"),
    (dict(kv_lens=(4,), kv_window=8), "L=4 is shorter than the dense window of 8"),
    (dict(kv_shapes=((4, 0),)), "head dim D must be a positive whole number"),
    (dict(kv_shapes=((4, -32),)), "head dim D must be a positive whole number"),
    (dict(kv_shapes=((0, 32),)), "heads H must be a whole number"),
    (dict(kv_shapes=((4, 2.5),)), "head dim D must be a positive whole number"),
    (dict(kv_lens=()), "at least one cache length"),
    (dict(kv_window=-1), "dense window must be a whole number"),
])
def test_bad_input_gets_a_clear_message(change, words, tmp_cache):
    config = BenchConfig(suites=("kv",), device="cpu", **{**TINY, **change})
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        run_benchmarks(config, progress=False)
    with pytest.raises(ValueError):
        kv.kv_suite(config.kv_lens, config.kv_sparsities, config.kv_shapes, device="cpu", window=config.kv_window)


def test_cli_runs_the_suite_and_writes_it(tmp_path):
    out = tmp_path / "kv.json"
    proc = subprocess.run([sys.executable, "-m", "sparsekit.bench", "--suites", "kv", "--device", "cpu",
                           "--kv-lens", "24,40", "--kv-shapes", "2x8", "--kv-sparsities", "0.5", "--kv-window", "8",
                           "--repeats", "2", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    run = BenchRun.from_json(out.read_text())
    assert run.suites == ["kv"] and {r.params["tokens"] for r in run.results} == {24, 40}
    assert "== KV decode" in proc.stdout and "CSR: faster than dense SDPA in" in proc.stdout
    assert json.loads(out.read_text())["results"][0]["params"]["head_dim"] == 8
    bad = subprocess.run([sys.executable, "-m", "sparsekit.bench", "--suites", "kv", "--device", "cpu",
                          "--kv-sparsities", "1"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "sparsity must be in [0, 1)" in bad.stderr
    shapes = subprocess.run([sys.executable, "-m", "sparsekit.bench", "--suites", "kv", "--kv-shapes", "12"],
                            capture_output=True, text=True, timeout=300)
    assert shapes.returncode == 2 and "HEADSxHEAD_DIM" in shapes.stderr


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (CUDA)")
def test_kv_suite_on_cuda_checks_every_kernel():
    res = kv.kv_suite([256, 1024], [0.5], [(4, 32)], device="cuda", dtype=torch.float16, window=16, repeats=3)
    assert {r.device for r in res} == {"cuda"}
    for r in res:
        # a kernel torch lacks here is skipped with its reason; none may be wrong or crash
        assert r.status in ("ok", "skipped"), (r.backend, r.status, r.message)
        if r.status == "ok":
            assert r.rel_error < 1e-2
    assert all(r.status == "ok" for r in res if r.backend in ("SDPA dense", "masked dense"))

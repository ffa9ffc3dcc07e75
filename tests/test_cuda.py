"""CUDA-only checks: they skip on machines without an NVIDIA GPU (CI, this project's CPU boxes).

`bash scripts/gpu_check.sh` runs them, then the whole GPU benchmark suite. Each compares the GPU
result with the CPU path or the dense reference, as the CPU tests do.
"""
import json

import pytest
import torch

import sparsekit
from sparsekit.bench import BenchRun
from sparsekit.bench.runner import BenchConfig, run_benchmarks
from sparsekit.bench.suites import attention_suite, linear_suite, model_suite, semi_structured_available

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (CUDA)"),
]


def _need_2_4():
    why = semi_structured_available("cuda")
    if why:
        pytest.skip(why)


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_nm_mask_on_cuda_equals_cpu(n, m, dtype):
    gen = torch.Generator().manual_seed(n * 10 + m)
    w = torch.randint(-4, 5, (512, 1024), generator=gen).to(dtype)  # tie-heavy
    got = sparsekit.nm_mask(w.cuda(), n, m)
    assert got.is_cuda and torch.equal(got.cpu(), sparsekit.nm_mask(w, n, m))


def test_linear_suite_both_backends_on_cuda():
    _need_2_4()
    res = linear_suite([(1024, 1024), (3072, 10240)], [1, 64, 2048], device="cuda", dtype=torch.float16, repeats=5)
    sparse = [r for r in res if r.backend.startswith("2:4")]
    assert sparse and all(r.status in ("ok", "skipped") for r in sparse), [(r.backend, r.message) for r in sparse]
    ok = [r for r in sparse if r.status == "ok"]
    assert ok and all(r.rel_error < 1e-2 and r.speedup > 0 for r in ok)


def test_model_suite_minilm_on_cuda():
    _need_2_4()
    loaded = sparsekit.load_model("minilm")
    res = model_suite(loaded, [1, 16], device="cuda", repeats=3)
    assert [r.backend for r in res] == ["dense", "2:4"] * 2
    assert all(r.status == "ok" for r in res), [(r.backend, r.message) for r in res]
    assert res[1].params["converted_linears"] == 36 and res[1].params["unconverted_linears"] == 0


def test_attention_suite_compiled_on_cuda():
    res = attention_suite([1024], device="cuda", dtype=torch.float16, repeats=3)
    flex = [r for r in res if r.backend.startswith("flex")]
    assert len(flex) == 2 and all(r.status == "ok" for r in flex), [(r.backend, r.message) for r in flex]
    window = next(r for r in flex if "window" in r.backend)
    assert window.params["block_density"] < 0.5 and window.rel_error < 1e-2


def test_export_conversion_on_cuda_matches_dense():
    _need_2_4()
    from sparsekit.export import to_semi_structured
    from sparsekit.sparsify import SparsifyConfig, sparsify

    loaded = sparsekit.load_model("minilm")
    result = sparsify(loaded, SparsifyConfig(pattern="nm", n=2, m=4))
    out = to_semi_structured(result)
    assert out.available and len(out.converted) == 36, out.skipped
    batch = {k: v.cuda() for k, v in loaded.preprocess(["Sparse tensor cores skip half the multiplies."]).items()}
    dense = result.model.half().cuda().eval()
    with torch.no_grad():
        want = dense(**batch).last_hidden_state.float()
        got = out.model(**batch).last_hidden_state.float()
    assert (got - want).norm() / want.norm() < 2e-2


def test_whole_run_on_cuda_round_trips_json():
    cfg = BenchConfig(suites=("linear", "formats", "attention"), device="cuda", square_sizes=(1024,),
                      batches=(64,), formats_shape=(1024, 1024), densities=(0.1,), seq_lens=(512,), repeats=3,
                      time_budget_s=120)
    run = run_benchmarks(cfg)
    assert run.env["device_name"] and run.ceilings["matmul_tflops"] > 1
    again = BenchRun.from_json(run.to_json())
    assert json.loads(again.to_json()) == json.loads(run.to_json())
    assert not [r for r in run.results if r.status in ("failed", "error", "oom")]

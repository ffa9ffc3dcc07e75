"""How much of a SparseGPT run is fixed by its float64 linear algebra, as a ratio to one dense forward.

    python benchmarks/sparsegpt_floor.py [--size gpt2-small] [--repeats 3]

Issue #28 asks for SparseGPT at most 4x one dense forward over its calibration tokens. sparsekit
factors each layer's H = XᵀX in float64 (a float32 factorisation, the authors', flips masks at
near-ties; the tests compare masks bit for bit with the float64 reference). This script times, in one
run and alternating, on the GPT-2-shaped model of ``bench_scale.py`` (random weights, the built-in
calibration sentences):

- one dense forward over the calibration batch (the ratio's denominator, output layer included);
- the float64 work alone, for every prunable layer of the model: ``gram`` (sparsekit's float64 XᵀX
  over the layer's calibration rows, random inputs of the right shape) and the factorisation
  (``_inverse_upper_cholesky``: one Cholesky, one triangular inverse);
- the same two steps in float32, what the authors' code would spend.

No mask or weight is computed: the float64 rows are a lower bound on what a float64 SparseGPT must
spend on top of its capture forwards, lazy updates and column passes. The printed ratios are measured
in this run; the machine's load is printed with them.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

import sparsekit  # noqa: E402
from bench_scale import GPT2_SHAPES, calibration_forward, write_gpt2  # noqa: E402
from sparsekit.layers import prunable_layers, tied_layers  # noqa: E402
from sparsekit.methods.sparsegpt import _inverse_upper_cholesky  # noqa: E402
from sparsekit.methods.stats import gram  # noqa: E402


def layer_inputs(loaded) -> list[tuple[str, int]]:
    """(name, input features) of every layer SparseGPT prunes (the output layer tied to the embeddings is
    left dense); a GPT-2 Conv1D stores its weight as [in, out]."""
    out = []
    layers = prunable_layers(loaded.module)
    tied = tied_layers(loaded.module, layers)
    for name, module in layers:
        if name in tied:
            continue
        w = module.weight
        out.append((name, w.shape[0] if type(module).__name__ == "Conv1D" else w.shape[1]))
    return out


def linear_algebra(inputs: list[int], tokens: int, dtype: torch.dtype, seed: int = 0) -> tuple[float, float]:
    """Seconds of the Gram products and of the factorisations for layers with these input widths."""
    gen = torch.Generator().manual_seed(seed)
    t_gram = t_factor = 0.0
    for n in inputs:
        X = torch.randn(tokens, n, generator=gen)
        start = time.perf_counter()
        H = gram(X) if dtype == torch.float64 else X.T @ X
        t_gram += time.perf_counter() - start
        H = H.to(dtype)
        H.diagonal().add_(0.01 * float(H.diagonal().mean()))
        start = time.perf_counter()
        _inverse_upper_cholesky(H.flip(0, 1))
        t_factor += time.perf_counter() - start
    return t_gram, t_factor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="gpt2-small", choices=sorted(GPT2_SHAPES))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SPARSEKIT_MODEL_ROOTS"] = tmp
        folder = write_gpt2(Path(tmp), args.size)
        loaded = sparsekit.load_model(f"hf:{folder}")
        calibration = loaded.calibration
        mask = calibration.get("attention_mask") if isinstance(calibration, dict) else None
        tokens = int(mask.sum()) if mask is not None else int(calibration["input_ids"].numel())
        positions = int(calibration["input_ids"].numel())
        inputs = [n for _, n in layer_inputs(loaded)]
        calibration_forward(loaded)  # warm
        rows: dict[str, list[float]] = {k: [] for k in ("fwd", "g64", "f64", "g32", "f32")}
        for _ in range(args.repeats):
            rows["fwd"].append(calibration_forward(loaded))
            g, f = linear_algebra(inputs, positions, torch.float64)
            rows["g64"].append(g)
            rows["f64"].append(f)
            g, f = linear_algebra(inputs, positions, torch.float32)
            rows["g32"].append(g)
            rows["f32"].append(f)
    med = {k: statistics.median(v) for k, v in rows.items()}
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{args.size}: {len(inputs)} prunable layers, input widths {sorted(set(inputs))}; calibration "
          f"{tokens:,} tokens in {positions:,} positions; torch threads {torch.get_num_threads()}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}; load average {load}; "
          f"medians of {args.repeats}")
    print()
    print("| step | seconds | ÷ one dense forward |")
    print("|---|---:|---:|")
    fwd = med["fwd"]
    for key, label in [("fwd", "one dense forward over the calibration batch"),
                       ("g64", "XᵀX of every layer, float64 (sparsekit's `gram`)"),
                       ("f64", "factorisation of every H, float64 (sparsekit)"),
                       ("g32", "XᵀX of every layer, float32 (the authors' precision)"),
                       ("f32", "factorisation of every H, float32 (the authors' precision)")]:
        print(f"| {label} | {med[key]:.2f} | {med[key] / fwd:.2f}× |")
    f64, f32 = (med["g64"] + med["f64"]) / fwd, (med["g32"] + med["f32"]) / fwd
    print(f"| float64 linear algebra together | {med['g64'] + med['f64']:.2f} | {f64:.2f}× |")
    print(f"| float32 linear algebra together | {med['g32'] + med['f32']:.2f} | {f32:.2f}× |")
    print()
    print(f"The float64 Gram products and factorisations alone take {f64:.2f}× one dense forward; in float32 "
          f"they would take {f32:.2f}×. The rest of a run (capture forwards, lazy updates, column passes) comes "
          "on top.")


if __name__ == "__main__":
    main()

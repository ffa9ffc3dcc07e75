"""Sparse-training speed: step time of STE and SR-STE against dense, and full-run wall times.

    python benchmarks/bench_training.py [--arch cnn] [--batch 64] [--rounds 7] [--steps 60] [--json out.json]

1. Step time: one optimiser step (forward, backward, SGD update) of the same digits model on the
   same batch, dense vs STE vs SR-STE (the masks recomputed from |W| at every step, as in
   training). Methods alternate step by step; each round's median step times are compared within
   the round, because this machine is shared and noisy. Target: STE and SR-STE <= 1.25x dense.
2. A full 20-epoch digits CNN run (default settings) per method: wall time. Target: about a minute.

The STE vs SR-STE SAD comparison is a seed study with intervals: ``python -m sparsekit.seedstudy``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from sparsekit import training  # noqa: E402
from sparsekit.masks import serial_kernels  # noqa: E402
from sparsekit.models.digits import digits_split  # noqa: E402
from sparsekit.training import TrainConfig  # noqa: E402


def environment() -> dict:
    return {
        "python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(), "machine": platform.machine(), "platform": platform.platform(),
        "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def step_times(arch: str, batch: int, rounds: int, steps: int, data) -> dict:
    """Median step time per method and the per-round ratios to dense."""
    methods = ("dense", "ste", "srste")
    x, y = data.x_train[:batch], data.y_train[:batch]
    setups = {}
    with serial_kernels():
        for method in methods:
            torch.manual_seed(0)
            run = training._Run(TrainConfig(arch=arch, method=method))
            opt = torch.optim.SGD(run.model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
            setups[method] = (run.model, opt)

        def one_step(model, opt):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        for model, opt in setups.values():  # warm-up: kernels, allocator
            for _ in range(10):
                one_step(model, opt)
        per_round = {m: [] for m in methods}
        for _ in range(rounds):
            # Interleaved step by step, so a burst of load from another process hits every method alike.
            times = {m: [] for m in methods}
            for _ in range(steps):
                for method in methods:
                    model, opt = setups[method]
                    t0 = time.perf_counter()
                    one_step(model, opt)
                    times[method].append(time.perf_counter() - t0)
            for method in methods:
                per_round[method].append(statistics.median(times[method]))
    out = {"arch": arch, "batch": batch, "rounds": rounds, "steps_per_round": steps}
    for method in methods:
        out[f"{method}_ms"] = statistics.median(per_round[method]) * 1e3
    for method in ("ste", "srste"):
        ratios = [a / d for a, d in zip(per_round[method], per_round["dense"])]
        out[f"{method}_ratio"] = statistics.median(ratios)
        out[f"{method}_ratio_range"] = (min(ratios), max(ratios))
    return out


def full_runs(data) -> list[dict]:
    rows = []
    for method in ("dense", "ste", "srste"):
        cfg = TrainConfig(arch="cnn", method=method)
        t0 = time.perf_counter()
        rec = training.train(cfg, data=data)
        rows.append({"method": method, "seconds": time.perf_counter() - t0, "steps": rec.steps_done,
                     "accuracy": rec.final_accuracy})
    return rows


def speed(args, data, result: dict) -> None:
    st = step_times(args.arch, args.batch, args.rounds, args.steps, data)
    result["step_times"] = st
    print(f"\nstep time, digits {args.arch.upper()}, batch {args.batch} (median of {args.rounds} rounds of {args.steps} "
          f"interleaved steps)")
    print(f"{'method':<8}{'ms/step':>10}{'x dense':>10}{'range over rounds':>22}")
    print(f"{'dense':<8}{st['dense_ms']:>10.3f}{1.0:>10.2f}")
    for method in ("ste", "srste"):
        lo, hi = st[f"{method}_ratio_range"]
        print(f"{method:<8}{st[f'{method}_ms']:>10.3f}{st[f'{method}_ratio']:>10.2f}{f'{lo:.2f}..{hi:.2f}':>22}")

    runs = full_runs(data)
    result["full_runs"] = runs
    print("\n20-epoch digits CNN runs (default settings, batch 64; includes a held-out evaluation per epoch)")
    for r in runs:
        print(f"{r['method']:<8}{r['seconds']:>8.2f} s  {r['steps']} steps  accuracy {r['accuracy']:.2f}%")



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="cnn", choices=["mlp", "cnn", "vit"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    data = digits_split()
    env = environment()
    print("environment:", json.dumps(env))
    result: dict = {"environment": env}

    speed(args, data, result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()

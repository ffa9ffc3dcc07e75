"""Sparse-training speed and the STE vs SR-STE SAD study, in one run.

    python benchmarks/bench_training.py [--arch cnn] [--batch 64] [--rounds 7] [--steps 60]
                                        [--seeds 1] [--lambdas 2e-4] [--lr 0.1] [--optimizer sgd]
                                        [--skip-speed] [--skip-study] [--json out.json]

1. Step time: one optimiser step (forward, backward, SGD update) of the same digits model on the
   same batch, dense vs STE vs SR-STE (the masks recomputed from |W| at every step, as in
   training). Methods alternate step by step; each round's median step times are compared within
   the round, because this machine is shared and noisy. Target: STE and SR-STE <= 1.25x dense.
2. A full 20-epoch digits CNN run (default settings) per method: wall time. Target: about a minute.
3. The SAD study: STE vs SR-STE at 2:4 and 1:4 on the digits CNN (20 epochs, SGD momentum 0.9,
   lr 0.1 cosine, lambda_w = 2e-4 unless --lambdas says otherwise): SAD between consecutive epoch
   snapshots (% of the sparse weights), final held-out accuracy, and the SAD summed over the
   second half of training. ``--seeds k`` repeats it for seeds 0..k-1 and prints means.
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


def study(data, seeds: int, lambdas: list[float], **overrides) -> list[dict]:
    rows = []
    variants = [("ste", 0.0)] + [("srste", lam) for lam in lambdas]
    for n, m in ((2, 4), (1, 4)):
        for method, lam in variants:
            for seed in range(seeds):
                cfg = TrainConfig(arch="cnn", method=method, n=n, m=m, seed=seed,
                                  lambda_w=lam if method == "srste" else training.DEFAULT_LAMBDA_W, **overrides)
                rec = training.train(cfg, data=data)
                iv = rec.sad().series("interval", fraction=True)
                epochs = len(iv) - 1
                rows.append({"pattern": f"{n}:{m}", "method": method, "lambda_w": lam if method == "srste" else None,
                             "seed": seed, "accuracy": rec.final_accuracy,
                             "sad_per_epoch_pct": [100 * v for v in iv[1:]],
                             "sad_second_half_pct": 100 * float(iv[epochs // 2 + 1:].sum()),
                             "sad_first_half_pct": 100 * float(iv[1:epochs // 2 + 1].sum())})
    return rows


def print_study(rows: list[dict]) -> None:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["pattern"], r["method"], r["lambda_w"]), []).append(r)
    print("\nSAD between consecutive epoch snapshots, % of the sparse weights (conv2 + head), mean over seeds")
    n_epochs = len(rows[0]["sad_per_epoch_pct"])
    print(f"{'run':<24}" + "".join(f"{e:>6d}" for e in range(1, n_epochs + 1)))
    for (pattern, method, lam), rs in groups.items():
        name = f"{pattern} {'SR-STE λ=' + format(lam, 'g') if method == 'srste' else 'STE'}"
        per_epoch = [statistics.mean(r["sad_per_epoch_pct"][i] for r in rs) for i in range(n_epochs)]
        print(f"{name:<24}" + "".join(f"{v:6.2f}" for v in per_epoch))
    print(f"\n{'run':<24}{'seeds':>6}{'accuracy %':>14}{'SAD 1st half %':>16}{'SAD 2nd half %':>16}")
    for (pattern, method, lam), rs in groups.items():
        name = f"{pattern} {'SR-STE λ=' + format(lam, 'g') if method == 'srste' else 'STE'}"
        acc = [r["accuracy"] for r in rs]
        late = [r["sad_second_half_pct"] for r in rs]
        early = [r["sad_first_half_pct"] for r in rs]
        sd = (lambda v: f"±{statistics.stdev(v):.2f}" if len(v) > 1 else "")
        print(f"{name:<24}{len(rs):>6}{statistics.mean(acc):>9.2f}{sd(acc):>5}"
              f"{statistics.mean(early):>16.2f}{statistics.mean(late):>10.2f}{sd(late):>6}")


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
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--lambdas", default="2e-4", help="comma-separated λ_w values for SR-STE")
    parser.add_argument("--lr", type=float, default=TrainConfig.lr, help="study learning rate")
    parser.add_argument("--optimizer", default=TrainConfig.optimizer, choices=["sgd", "adamw"])
    parser.add_argument("--skip-speed", action="store_true", help="only the SAD study")
    parser.add_argument("--skip-study", action="store_true")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    data = digits_split()
    env = environment()
    print("environment:", json.dumps(env))
    result: dict = {"environment": env}

    if not args.skip_speed:
        speed(args, data, result)
    if not args.skip_study:
        lambdas = [float(v) for v in args.lambdas.split(",") if v.strip()]
        t0 = time.perf_counter()
        rows = study(data, args.seeds, lambdas, lr=args.lr, optimizer=args.optimizer)
        result["study"] = rows
        print(f"\nSAD study: digits CNN, 20 epochs, {args.optimizer} lr {args.lr:g}, seeds 0..{args.seeds - 1}")
        print_study(rows)
        print(f"\nstudy: {len(rows)} runs in {time.perf_counter() - t0:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()

"""How much of the pruning gap each recovery mode (fixed mask / STE / SR-STE) wins back on one budget.

For each model: prune 2:4 by magnitude, then run ``sparsekit.recovery.compare_modes`` with the same
number of steps for every mode. The step count comes from the time budget: a short probe of the
slowest mode (SR-STE) measures the CPU seconds per step and per evaluation (this process's CPU time,
which other jobs on a shared machine stretch less than the wall clock), and the steps are chosen so
one mode fits in ``--seconds``, at most the library's 20,000 (or give ``--steps`` directly). Prints
the environment, a table after each model, and all rows at the end.

    .venv/bin/python benchmarks/recovery_table.py --seconds 60            # a quick look
    .venv/bin/python benchmarks/recovery_table.py --seconds 300           # ~5 min of CPU per mode
    .venv/bin/python benchmarks/recovery_table.py --models digits:cnn --steps 500

The headline metric is the model's own (MiniLM: mean cosine to the dense embeddings on the 240
built-in sentences, which the shipped training corpus does not contain; digits: held-out accuracy).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# Read once when the OpenMP runtime loads, so before torch. After numba's OpenMP kernels have run
# (sparsify's masks), their worker thread spin-waits and takes a core from torch: on this shared
# 2-core machine a MiniLM forward+backward of 16 sentences took 2.1-2.3 s instead of 0.28-0.31 s,
# and a recovery step 4.7-5.2 s instead of 0.37-0.55 s (measured, one run each, same load).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import sparsekit  # noqa: E402
from sparsekit.models.digits import digits_split  # noqa: E402
from sparsekit.recovery import (  # noqa: E402
    MAX_STEPS, MODES, compare_modes, default_recovery_config, recover, recovered_model,
)

EVALS = 5
"""Evaluations per run after step 0 (each costs a pass of the quality metric)."""


def probe(result, loaded, cfg, steps: int = 6) -> tuple[float, float]:
    """CPU seconds per training step and per evaluation of the slowest mode (SR-STE recomputes masks).

    CPU time of this process, not wall time: on a shared machine other jobs stretch the wall clock
    of every step far more than the work it does."""
    stamps: list[float] = []
    t0 = time.process_time()
    loaded.quality(result.model)
    per_eval = time.process_time() - t0
    recover(result, loaded, replace(cfg, mode="srste", steps=steps, eval_every=steps),
            progress=lambda p: stamps.append(time.process_time()) if p.event == "step" else None)
    per_step = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    return per_step, per_eval


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def fmt(v, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="minilm,digits:cnn", help="comma-separated model specs")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated recovery modes")
    ap.add_argument("--seconds", type=float, default=300.0, help="CPU seconds per mode and model (this process)")
    ap.add_argument("--steps", type=int, default=0, help="steps per mode (overrides --seconds)")
    ap.add_argument("--lr", type=float, default=0.0, help="learning rate (default: the model kind's)")
    ap.add_argument("--lambda-w", type=float, default=2e-4, help="SR-STE decay λ_w")
    # One thread: on this shared 2-core machine a MiniLM forward+backward of 16 sentences took
    # 0.43 s with one torch thread and 1.2-4.5 s with two (the second thread waits for a core).
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]

    print(f"# recovery_table · {time.strftime('%Y-%m-%d %H:%M')} · torch {torch.__version__} · "
          f"{torch.get_num_threads()} threads · OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')} · "
          f"{os.cpu_count()} CPUs ({cpu_name()}) · "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"# budget: {'%d steps' % args.steps if args.steps else '%g CPU s per mode' % args.seconds}, "
          f"2:4 magnitude, λ_w = {args.lambda_w:g}, {EVALS} evaluations per run\n")
    rows = []
    for spec in [s.strip() for s in args.models.split(",") if s.strip()]:
        loaded = sparsekit.load_model(spec)
        result = sparsekit.sparsify(loaded, sparsekit.SparsifyConfig(pattern="nm", n=2, m=4, method="magnitude"))
        overrides = {"lambda_w": args.lambda_w}
        if args.lr:
            overrides["lr"] = args.lr
        cfg = default_recovery_config(loaded.kind, **overrides)
        if args.steps:
            steps = args.steps
            per_step = per_eval = float("nan")
        else:
            per_step, per_eval = probe(result, loaded, cfg)
            steps = max(EVALS, int((args.seconds - (EVALS + 1) * per_eval) / per_step))
            if steps > MAX_STEPS:
                print(f"{spec}: the budget allows {steps:,} steps; capped at the library's limit of {MAX_STEPS:,}")
                steps = MAX_STEPS
        cfg = replace(cfg, steps=steps, eval_every=max(1, -(-steps // EVALS)))
        print(f"{spec}: {steps} steps per mode (probe: {per_step:.3f} s/step, {per_eval:.2f} s/evaluation), "
              f"lr {cfg.lr:g}, batch {cfg.batch_size}, loss {cfg.resolve_loss(loaded.kind)}", flush=True)
        cpu: dict[str, list[float]] = {}
        if loaded.kind == "image-classifier":
            split = digits_split()

            def heldout_loss(module, split=split) -> float:
                with torch.inference_mode():
                    return float(torch.nn.functional.cross_entropy(module(split.x_test), split.y_test))

        def clock(mode, p, cpu=cpu):
            cpu.setdefault(mode, [time.process_time()]).append(time.process_time())

        comp = compare_modes(result, loaded, cfg, modes=modes, progress=clock)
        for (mode, rec), row in zip(comp.records.items(), comp.rows()):
            row["cpu"] = cpu[mode][-1] - cpu[mode][0]
            second = [k for k in rec.dense_quality if k != rec.metric]
            extra = ""
            if second:
                first, last = rec.intervals[0].quality[second[0]], rec.intervals[-1].quality[second[0]]
                extra = f"{second[0]} {first:.3f}→{last:.3f}"
            elif loaded.kind == "image-classifier":
                # Accuracy moves in steps of one image (1/360); the held-out loss shows finer changes.
                extra = (f"held-out loss {heldout_loss(result.model):.4f}→"
                         f"{heldout_loss(recovered_model(rec, loaded)):.4f} (dense {heldout_loss(loaded.module):.4f})")
            rows.append((spec, row, extra))
            print(f"  {row['mode']:<10} done in {rec.seconds:.0f} s ({row['cpu']:.0f} CPU s): "
                  f"{rec.metric} {rec.before:.4f} → {rec.after:.4f}", flush=True)
        print_table([r for r in rows if r[0] == spec])  # now, in case a later model fails
        print(flush=True)
    print()
    print_table(rows)


def print_table(rows) -> None:
    head = ("model", "mode", "steps", "wall s", "CPU s", "metric", "dense", "before", "after", "gap recovered",
            "SAD vs pruned", "flip rate/step", "oscillating", "other metric")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for spec, r, extra in rows:
        print("| " + " | ".join([
            spec, r["mode"], str(r["steps"]), f"{r['seconds']:.0f}", f"{r['cpu']:.0f}", r["metric"],
            f"{r['dense']:.4f}",
            f"{r['before']:.4f}", f"{r['after']:.4f}", fmt(r["gap recovered"], ".1%"),
            fmt(r["SAD from pruned mask"], ".2%"), f"{r['mean flip rate']:.3%}", f"{r['oscillating']:.2%}", extra,
        ]) + " |")


if __name__ == "__main__":
    main()

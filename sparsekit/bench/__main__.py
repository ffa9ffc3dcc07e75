"""Headless benchmark runs: ``python -m sparsekit.bench [--suites ...] --out results.json``.

Prints a table per suite (median ms, IQR, speedup over dense, achieved TFLOP/s) and writes the
same JSON the Benchmarks page imports. Each finished case is kept on disk as it finishes: after Ctrl-C
(or a crash) the same command measures only the cases still missing.

    python -m sparsekit.bench --gpu-all --out gpu.json      # every suite on CUDA (< 8 min on one GPU)
    python -m sparsekit.bench --suites formats attention --quick --out cpu.json
    python -m sparsekit.bench --suites kv --device cpu --out kv.json   # decode attention over a pruned KV cache
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, TextIO

import torch

from ..layers import prunable_layers
from ..models import load_model
from .kv_suite import kv_summary, kv_verdicts
from .records import BenchRun
from .runner import SUITES, BenchConfig, run_benchmarks, stored_run
from .suites import config_model, verdicts


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _shapes(text: str) -> tuple[tuple[int, int], ...]:
    try:
        out = []
        for item in text.split(","):
            if item.strip():
                o, i = item.lower().split("x")
                out.append((int(o), int(i)))
        return tuple(out)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated OUTxIN shapes (e.g. 4096x11008), got {text!r}") from None


def _kv_shapes(text: str) -> tuple[tuple[int, int], ...]:
    try:
        return _shapes(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated HEADSxHEAD_DIM pairs (e.g. 12x64,4x32), got {text!r}") from None


def build_config(args: argparse.Namespace) -> BenchConfig:
    cfg = BenchConfig()
    kw: dict[str, Any] = {}  # BenchConfig field -> value
    if args.gpu_all:
        kw.update(suites=SUITES, device="cuda")
    if args.suites:
        kw["suites"] = tuple(args.suites)
    if args.quick:
        kw.update(square_sizes=(512, 1024), batches=(1, 16, 256), formats_shape=(1024, 1024), formats_cols=64,
                  densities=(0.05, 0.2, 0.5), seq_lens=(512, 1024), kv_lens=(256, 1024), kv_sparsities=(0.5,),
                  repeats=5)
    for name in ("device", "dtype", "repeats", "window", "time_budget_s", "model"):
        value = getattr(args, name)
        if value is not None:
            kw[name] = value
    if args.sizes:
        kw["square_sizes"] = args.sizes
    if args.batches:
        kw["batches"] = args.batches
    if args.densities:
        kw["densities"] = args.densities
    if args.seq_lens:
        kw["seq_lens"] = args.seq_lens
    if args.layer_shapes:
        kw["layer_shapes"] = args.layer_shapes
    for name in ("kv_lens", "kv_sparsities", "kv_shapes", "kv_window"):
        if getattr(args, name, None) is not None:
            kw[name] = getattr(args, name)
    if args.model_shapes:

        spec = args.model_shapes
        loaded = config_model(spec) if spec.startswith("config:") else load_model(spec)
        weights = [m.weight for _, m in prunable_layers(loaded.module)]
        shapes = sorted({tuple(w.shape) for w in weights if isinstance(w, torch.Tensor) and w.dim() == 2})
        kw["layer_shapes"] = tuple(kw.get("layer_shapes", ())) + tuple(
            (int(o), int(i)) for o, i in shapes if i % 4 == 0)
    return BenchConfig(**{**cfg.__dict__, **kw})


def print_run(run: BenchRun, out: TextIO = sys.stdout) -> None:
    env = run.env
    print(f"device: {env.get('device_name')} ({env.get('device')}), torch {env.get('torch')}, "
          f"CUDA {env.get('cuda')}, {env.get('threads')} threads", file=out)
    c = run.ceilings
    if c:
        print(f"ceilings measured now: {c.get('matmul_tflops', 0):.2f} TFLOP/s "
              f"({c.get('matmul_dtype')} {c.get('matmul_n')}³ matmul), {c.get('copy_gbps', 0):.1f} GB/s (copy)",
              file=out)
    for suite in run.suites:
        rows = [r for r in run.results if r.suite == suite]
        if not rows:
            continue
        print(f"\n== {suite} ==", file=out)
        print(f"{'case':<28}{'backend':<26}{'params':<34}{'median ms':>10}{'IQR':>8}{'speedup':>9}"
              f"{'TFLOP/s':>9}  status", file=out)
        for r in rows:
            p = r.params
            shown = ("sparsity", "density") if suite == "kv" else ("density", "block_density", "batch")
            extra = ", ".join(f"{k}={p[k]:.3g}" if isinstance(p[k], float) else f"{k}={p[k]}"
                              for k in shown if k in p)
            med = f"{r.median_ms:.3f}" if r.median_ms is not None else "-"
            iqr = f"{r.iqr_ms:.3f}" if r.iqr_ms is not None else "-"
            sp = f"{r.speedup:.2f}x" if r.speedup is not None else "-"
            tf = f"{r.achieved_tflops:.2f}" if r.achieved_tflops is not None else "-"
            status = r.status + (f" ({r.message[:60]})" if r.message else "")
            print(f"{r.case[:27]:<28}{r.backend[:25]:<26}{extra[:33]:<34}{med:>10}{iqr:>8}{sp:>9}{tf:>9}  {status}",
                  file=out)
    v = verdicts(run.results)
    if v:
        print("\n== 2:4 verdicts per Linear shape ==", file=out)
        for row in v:
            best = f"{row['best_speedup']:.2f}x" if row["best_speedup"] else "-"
            print(f"{row['shape']:<14}{row['backend']:<18}{row['verdict']}  (best {best})", file=out)
    kv = kv_verdicts(run.results)
    if kv:
        print("\n== KV decode: speedup over dense SDPA (IQR range), memory of K+V per layout ==", file=out)
        print(f"{'shape':<10}{'tokens':>7}{'s':>5}  {'backend':<19}{'speedup':>8}  {'range':<12}{'verdict':<22}"
              f"{'dense MiB':>10}{'bitmap MiB':>11}{'CSR MiB':>9}", file=out)
        for row in kv:
            sp = f"{row['speedup']:.2f}x" if row["speedup"] is not None else "-"
            verdict = row["verdict"] if len(row["verdict"]) <= 21 else row["verdict"][:18] + "..."
            print(f"{row['shape']:<10}{row['tokens']:>7}{row['sparsity']:>5.2f}  {row['backend'][:18]:<19}{sp:>8}  "
                  f"{row['range'] or '-':<12}{verdict:<22}{row['dense MiB'] or 0:>10.2f}{row['bitmap MiB'] or 0:>11.2f}"
                  f"{row['CSR MiB'] or 0:>9.2f}", file=out)
        for line in kv_summary(run.results):
            print(line, file=out)


def interrupted_line(config: BenchConfig | None) -> str:
    """The one line the CLI prints after Ctrl-C: how many cases are kept, and that a rerun continues."""
    kept = stored_run(config) if config is not None else None
    if kept is None:
        return "interrupted before the first case finished; nothing kept (rerunning starts afresh)"
    return (f"interrupted: {kept.cases_done} of {kept.cases_total} cases kept on disk; run the same command "
            "again to measure only the rest")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparsekit.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--suites", nargs="+", choices=SUITES, help="suites to run (default: linear formats attention)")
    parser.add_argument("--gpu-all", action="store_true", help="every suite on CUDA, default sizes")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--dtype", choices=["fp16", "bf16"])
    parser.add_argument("--sizes", type=_ints, help="square Linear sizes, e.g. 1024,4096,8192")
    parser.add_argument("--model-shapes", metavar="SPEC",
                        help="also time this model's Linear shapes (e.g. minilm, or config:minilm without its files)")
    parser.add_argument("--layer-shapes", type=_shapes, metavar="OUTxIN,...",
                        help="extra Linear shapes for the 2:4 suite, e.g. 11008x4096,4096x11008")
    parser.add_argument("--model", metavar="SPEC",
                        help="the model suite's model: minilm (default), another load_model spec, or "
                             "config:bert-base / config:minilm (random weights built from a config)")
    parser.add_argument("--batches", type=_ints)
    parser.add_argument("--densities", type=_floats, help="kept fractions for CSR/BSR, e.g. 0.01,0.1,0.5")
    parser.add_argument("--seq-lens", type=_ints)
    parser.add_argument("--window", type=int)
    parser.add_argument("--kv-lens", type=_ints, metavar="L,...", help="kv suite: cached tokens, e.g. 1024,8192,32768")
    parser.add_argument("--kv-sparsities", type=_floats, metavar="S,...",
                        help="kv suite: fraction of each K/V vector zeroed, in [0, 1), e.g. 0.5,0.7")
    parser.add_argument("--kv-shapes", type=_kv_shapes, metavar="HxD,...",
                        help="kv suite: heads x head dim, e.g. 12x64,4x32")
    parser.add_argument("--kv-window", type=int, metavar="TOKENS", help="kv suite: recent tokens kept dense")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--time-budget", dest="time_budget_s", type=float, metavar="SECONDS",
                        help="cases that would start after this many seconds are reported as skipped")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--name", default="")
    parser.add_argument("--out", help="write the run as JSON here")
    args = parser.parse_args(argv)

    def write(run: BenchRun) -> None:
        if args.out:  # atomic: a reader (or a kill) never sees half a file
            tmp = f"{args.out}.partial"
            with open(tmp, "w") as f:
                f.write(run.to_json())
            os.replace(tmp, args.out)

    config = None
    try:
        config = build_config(args)
        t0 = time.perf_counter()
        run = run_benchmarks(config, name=args.name, checkpoint=write,
                             progress=lambda f, msg: print(f"[{f:4.0%}] {msg}", file=sys.stderr, flush=True))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted_line(config), file=sys.stderr, flush=True)
        return 130
    print_run(run)
    print(f"\nwall time {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if args.out:
        write(run)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

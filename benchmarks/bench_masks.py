"""Time nm_mask against a plain copy and a sort-based reference, in one run.

    python benchmarks/bench_masks.py [--size 4096] [--repeats 15] [--json out.json]

Prints a table of median times (ms) with the interquartile range, and each time as a ratio of the
copy time measured in the same run (this machine is shared and noisy: compare ratios, not
absolute times across runs). Also measures the first-call latency in fresh processes, with the
compiled-kernel cache warm and cold.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import sparsekit  # noqa: E402


def sort_reference(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """How older tools do it: argsort |w| within each group, keep the first n."""
    groups = w.abs().reshape(-1, m)
    idx = torch.argsort(groups, dim=1, descending=True, stable=True)[:, :n]
    return torch.zeros_like(groups, dtype=torch.bool).scatter_(1, idx, True).reshape(w.shape)


def timeit(fn, repeats: int) -> tuple[float, float]:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    q = statistics.quantiles(times, n=4)
    return statistics.median(times) * 1e3, (q[2] - q[0]) * 1e3


FIRST_CALL = """
import time; t0 = time.perf_counter()
import torch, sparsekit
t1 = time.perf_counter()
w = torch.randn(384, 1536)
sparsekit.nm_mask(w, 2, 4); sparsekit.nm_mask(w, 2, 8)
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


def first_call(cold: bool) -> tuple[float, float]:
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as tmp:
        if cold:
            env["NUMBA_CACHE_DIR"] = tmp
        root = os.path.join(os.path.dirname(__file__), "..")
        out = subprocess.run([sys.executable, "-c", FIRST_CALL], env=env, cwd=root, capture_output=True, text=True, check=True)
    imp, call = map(float, out.stdout.split())
    return imp * 1e3, call * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    torch.manual_seed(0)
    w = torch.randn(args.size, args.size)
    out = torch.empty_like(w)
    copy_ms, copy_iqr = timeit(lambda: out.copy_(w), args.repeats)
    rows = [("copy_ (reference)", copy_ms, copy_iqr, 1.0, None)]
    for n, m in [(2, 4), (1, 4), (2, 8)]:
        assert torch.equal(sparsekit.nm_mask(w, n, m), sort_reference(w, n, m))
        ms, iqr = timeit(lambda: sparsekit.nm_mask(w, n, m), args.repeats)
        rows.append((f"nm_mask {n}:{m}", ms, iqr, ms / copy_ms, 4.0 if (n, m) == (2, 4) else 8.0))
        ms, iqr = timeit(lambda: sort_reference(w, n, m), max(3, args.repeats // 3))
        rows.append((f"argsort reference {n}:{m}", ms, iqr, ms / copy_ms, None))

    print(f"nm_mask on a {args.size}x{args.size} float32 CPU tensor; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"{'case':<26}{'median ms':>11}{'IQR ms':>9}{'x copy':>9}{'target':>9}")
    for name, ms, iqr, ratio, target in rows:
        tgt = f"<= {target:.0f}x" if target else ""
        print(f"{name:<26}{ms:>11.2f}{iqr:>9.2f}{ratio:>9.2f}{tgt:>9}")
    warm = first_call(cold=False)
    cold = first_call(cold=True)
    print(f"first call in a fresh process (import sparsekit / first two nm_mask calls, ms): "
          f"kernel cache warm {warm[0]:.0f} / {warm[1]:.0f}; cold (compiling) {cold[0]:.0f} / {cold[1]:.0f}")
    if args.json:
        record = {
            "env": {"torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
                    "machine": platform.machine(), "size": args.size},
            "rows": [dict(case=r[0], median_ms=r[1], iqr_ms=r[2], ratio_to_copy=r[3], target=r[4]) for r in rows],
            "first_call_ms": {"warm": warm, "cold": cold},
        }
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()

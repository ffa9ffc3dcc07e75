"""Time nm_mask against one W.abs(), a plain copy and a sort-based reference, in one run.

    python benchmarks/bench_masks.py [--size 4096] [--repeats 15] [--patterns 2:4,1:4,2:8,4:8] [--json out.json]

Prints a table of median times (ms) with the interquartile range, and each time as a ratio of one
``W.abs()`` and of one ``copy_`` on the same tensor, measured in the same run: the cases are timed
in interleaved rounds so that load from other processes hits them alike (this machine is shared
and noisy: compare ratios, not absolute times across runs). Targets: 2:4 (and the other M=4
patterns) at most 0.75x of W.abs(), M=8 patterns at most 1.0x. Also measures the first-call
latency in fresh processes, with the compiled-kernel cache warm and cold.
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

import numba
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import sparsekit  # noqa: E402


def sort_reference(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """How older tools do it: argsort |w| within each group, keep the first n."""
    groups = w.abs().reshape(-1, m)
    idx = torch.argsort(groups, dim=1, descending=True, stable=True)[:, :n]
    return torch.zeros_like(groups, dtype=torch.bool).scatter_(1, idx, True).reshape(w.shape)


TARGET_X_ABS = {4: 0.75, 8: 1.0}  # nm_mask time / W.abs() time, by M


def timeit(fn, repeats: int) -> tuple[float, float]:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    q = statistics.quantiles(times, n=4)
    return statistics.median(times) * 1e3, (q[2] - q[0]) * 1e3


def timeit_interleaved(cases: dict, repeats: int) -> dict[str, tuple[float, float]]:
    """Median and IQR (ms) per case, timing one call of every case per round."""
    for fn in cases.values():
        fn()
    times = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    out = {}
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=4)
        out[name] = (statistics.median(ts) * 1e3, (q[2] - q[0]) * 1e3)
    return out


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


def parse_patterns(text: str) -> list[tuple[int, int]]:
    return [tuple(int(x) for x in item.split(":")) for item in text.split(",") if item]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--patterns", default="2:4,1:4,2:8,4:8", help="comma-separated N:M list")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    patterns = parse_patterns(args.patterns)

    torch.manual_seed(0)
    w = torch.randn(args.size, args.size)
    out = torch.empty_like(w)
    cases = {"W.abs() (reference)": lambda: w.abs(), "copy_ (reference)": lambda: out.copy_(w)}
    for n, m in patterns:
        assert torch.equal(sparsekit.nm_mask(w, n, m), sort_reference(w, n, m)), f"{n}:{m} differs from argsort"
        cases[f"nm_mask {n}:{m}"] = lambda n=n, m=m: sparsekit.nm_mask(w, n, m)
    timed = timeit_interleaved(cases, args.repeats)
    abs_ms = timed["W.abs() (reference)"][0]
    copy_ms = timed["copy_ (reference)"][0]
    rows = [(name, ms, iqr, ms / abs_ms, ms / copy_ms, None) for name, (ms, iqr) in list(timed.items())[:2]]
    for n, m in patterns:
        ms, iqr = timed[f"nm_mask {n}:{m}"]
        rows.append((f"nm_mask {n}:{m}", ms, iqr, ms / abs_ms, ms / copy_ms, TARGET_X_ABS.get(m)))
    for n, m in patterns:
        ms, iqr = timeit(lambda: sort_reference(w, n, m), max(3, args.repeats // 3))
        rows.append((f"argsort reference {n}:{m}", ms, iqr, ms / abs_ms, ms / copy_ms, None))

    print(f"nm_mask on a {args.size}x{args.size} float32 CPU tensor; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, numba {numba.__version__} ({numba.get_num_threads()} threads), "
          f"{platform.processor() or platform.machine()}, load average {os.getloadavg()[0]:.2f}")
    print(f"{'case':<26}{'median ms':>11}{'IQR ms':>9}{'x abs':>8}{'x copy':>8}{'target':>10}{'':>6}")
    for name, ms, iqr, x_abs, x_copy, target in rows:
        tgt = f"<= {target:.2f}x" if target else ""
        verdict = ("ok" if x_abs <= target else "OVER") if target else ""
        print(f"{name:<26}{ms:>11.2f}{iqr:>9.2f}{x_abs:>8.2f}{x_copy:>8.2f}{tgt:>10}{verdict:>6}")
    warm = first_call(cold=False)
    cold = first_call(cold=True)
    print(f"first call in a fresh process (import sparsekit / first two nm_mask calls, ms): "
          f"kernel cache warm {warm[0]:.0f} / {warm[1]:.0f}; cold (compiling) {cold[0]:.0f} / {cold[1]:.0f}")
    if args.json:
        record = {
            "env": {"torch": torch.__version__, "threads": torch.get_num_threads(), "numba": numba.__version__,
                    "numba_threads": numba.get_num_threads(), "python": platform.python_version(),
                    "machine": platform.machine(), "size": args.size, "load_average": os.getloadavg()[0]},
            "rows": [dict(case=r[0], median_ms=r[1], iqr_ms=r[2], ratio_to_abs=r[3], ratio_to_copy=r[4],
                          target_ratio_to_abs=r[5]) for r in rows],
            "first_call_ms": {"warm": warm, "cold": cold},
        }
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()

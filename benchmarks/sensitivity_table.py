"""Layer sensitivity scans: does the cheap proxy rank layers like the measured quality drop?

    python benchmarks/sensitivity_table.py                         # digits:mlp, digits:cnn, digits:vit, minilm
    python benchmarks/sensitivity_table.py --models digits:vit --methods magnitude

For each model and method, every prunable layer is pruned alone at 2:4, 50 % and 70 % unstructured
(no fine-tuning). Printed per setting: Spearman's rank correlation, across layers, between the proxy
(relative output reconstruction error of that layer on the calibration inputs) and the measured drop
of the model's headline metric; then the seconds of the full scan and of a proxy-only scan, and the
three layers whose 70 % pruning costs most. Scans come from the disk cache when present
(``--no-cache`` recomputes). The digits MLP and CNN have only 3 layers, so their correlations rest on 3
points each (a Spearman of 3 points can only be -1, -0.5, 0, 0.5 or 1).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import torch  # noqa: E402

import sparsekit  # noqa: E402
from sparsekit.sensitivity import SensitivityConfig, sensitivity_scan, spearman  # noqa: E402


def _rho(v) -> str:
    return "–" if v is None else f"{v:+.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["digits:mlp", "digits:cnn", "digits:vit", "minilm"])
    parser.add_argument("--methods", nargs="+", default=["magnitude", "wanda", "sparsegpt"])
    parser.add_argument("--no-cache", action="store_true", help="recompute every scan")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    print("\n| model | method | layers | ρ 2:4 | ρ 50% | ρ 70% | ρ all cells | full scan s | proxy-only s | "
          "most sensitive at 70% (drop) |\n|---|---|---|---|---|---|---|---|---|---|")
    for spec in args.models:
        loaded = sparsekit.load_model(spec)
        for method in args.methods:
            cfg = SensitivityConfig(method=method, sparsities=(0.5, 0.7), nm=((2, 4),))
            t0 = time.perf_counter()
            full = sensitivity_scan(loaded, cfg, use_cache=not args.no_cache)
            t_full = full.seconds if full.seconds else time.perf_counter() - t0
            proxy = sensitivity_scan(loaded, SensitivityConfig(**{**cfg.__dict__, "mode": "proxy"}),
                                     use_cache=not args.no_cache)
            cells = [(p, d) for prow, drow in zip(full.proxy, full.drop) for p, d in zip(prow, drow)]
            pooled = spearman([p for p, _ in cells], [d for _, d in cells])
            col = full.settings.index("70%")
            worst = sorted(((d, u) for u, row in zip(full.units, full.drop) if (d := row[col]) is not None),
                           reverse=True)[:3]
            top = ", ".join(f"{u} ({d:.3g})" for d, u in worst)
            print(f"| {spec} | {method} | {len(full.units)} | " + " | ".join(_rho(r) for r in full.spearman)
                  + f" | {_rho(pooled)} | {t_full:.1f} | {proxy.seconds:.2f} | {top} |", flush=True)
    print("\nmetric: digits = held-out accuracy (%), drop in percentage points; minilm = mean cosine to the dense "
          "embeddings, drop in cosine. ρ all cells pools every (layer, setting) cell, so it also rewards "
          "both measures rising with sparsity.")


if __name__ == "__main__":
    main()

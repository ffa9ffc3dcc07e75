"""Non-uniform sparsity allocation against uniform, at equal overall sparsity.

    python benchmarks/allocation_table.py                          # digits:mlp, digits:cnn, minilm
    python benchmarks/allocation_table.py --models digits:vit --methods magnitude wanda

For each model and method: 50 % and 70 % unstructured and 2:4 (levels 1:4 / 2:4 / 3:4 / dense per
layer under the sensitivity and OWL allocations), each with ``uniform``, ``owl`` (M = 5, lambda =
0.08 unstructured; lambda = 0.25 for N:M, since the levels are 0.25 apart and a smaller lambda
leaves every layer at 2:4) and ``sensitivity`` allocation (from a scan of the same method: every layer
alone at 1:4, 2:4, 3:4, 50 %, 70 % and 90 %; MiniLM scans the attention and MLP layers of each block
together and uses one magnitude scan for all methods, to keep the run to minutes). The pruned share is
counted from the masks over the layers the allocation covers (a layer kept dense at level 4:4 counts as
kept). No fine-tuning. digits:cnn's first conv (1 input channel) cannot take N:M and is left out of
every N:M row. A randomly initialised causal LM (the tests' tiny llama/gpt2) is not included: its
quality numbers would mean nothing.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import replace

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import torch  # noqa: E402

import sparsekit  # noqa: E402
from sparsekit import SparsifyConfig  # noqa: E402
from sparsekit.sensitivity import SensitivityConfig, sensitivity_scan  # noqa: E402

SETTINGS = (("50%", dict(pattern="unstructured", sparsity=0.5)), ("70%", dict(pattern="unstructured", sparsity=0.7)),
            ("2:4", dict(pattern="nm", n=2, m=4)))
ALLOCATIONS = ("uniform", "owl", "sensitivity")


def pruned_share(result) -> float:
    total = sum(r.numel for r in result.report if r.pruned or "allocation" in r.skipped_reason)
    return sum(int((~m).sum()) for m in result.masks.values()) / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["digits:mlp", "digits:cnn", "minilm"])
    parser.add_argument("--methods", nargs="+", default=["magnitude", "wanda", "sparsegpt"])
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    for spec in args.models:
        t0 = time.perf_counter()
        loaded = sparsekit.load_model(spec)
        dense = loaded.quality()
        metric = next(iter(dense))
        big = spec == "minilm"
        print(f"\n## {loaded.name} ({spec}); {loaded.metric_names.get(metric, metric)}, dense = {dense[metric]:.4g}\n")
        print("| method | setting | uniform | OWL | sensitivity | pruned share (uniform / OWL / sens.) |\n"
              "|---|---|---|---|---|---|")
        for method in args.methods:
            scan_cfg = SensitivityConfig(method="magnitude" if big else method, sparsities=(0.5, 0.7, 0.9),
                                         nm=((1, 4), (2, 4), (3, 4)), grouping="block-kind" if big else "layer",
                                         exclude="^conv1$" if spec == "digits:cnn" else "")
            scan = sensitivity_scan(loaded, scan_cfg)
            if spec == "digits:cnn":  # the unstructured rows prune conv1 too: scan it alone for them
                full_scan = sensitivity_scan(loaded, replace(scan_cfg, exclude="", nm=()))
            for label, fields in SETTINGS:
                cells, shares = [], []
                for alloc in ALLOCATIONS:
                    cfg = SparsifyConfig(method=method, allocation=alloc, **fields)
                    if alloc == "owl" and cfg.pattern == "nm":
                        cfg = replace(cfg, owl_lambda=0.25)
                    if spec == "digits:cnn" and cfg.pattern == "nm":
                        cfg = replace(cfg, exclude="^conv1$")
                    use = full_scan if spec == "digits:cnn" and cfg.pattern == "unstructured" else scan
                    res = sparsekit.sparsify(loaded, cfg, sensitivity=use if alloc == "sensitivity" else None)
                    cells.append(f"{loaded.quality(res.model)[metric]:.4g}")
                    shares.append(f"{pruned_share(res):.4f}")
                print(f"| {method} | {label} | " + " | ".join(cells) + f" | {' / '.join(shares)} |", flush=True)
        print(f"\n({time.perf_counter() - t0:.0f} s for {spec}, scans included)")


if __name__ == "__main__":
    main()

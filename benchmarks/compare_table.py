"""Pruning methods compared on MiniLM and a digits model, for the README and the issue notes.

    python benchmarks/compare_table.py                      # minilm and digits:vit
    python benchmarks/compare_table.py --models digits:mlp digits:cnn --no-cache

For each model: magnitude / wanda / sparsegpt / taylor / random at 2:4, 4:8, 1:4 and 50% / 70%
unstructured (per layer, every Linear/Conv layer, no fine-tuning), one table per quality metric,
then magnitude 2:4 after a function-preserving channel permutation with the share of the
kept-magnitude gap it recovers. Rows come from the disk cache when present (``--no-cache`` recomputes).
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
from sparsekit import compare as cmp  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["minilm", "digits:vit"])
    parser.add_argument("--no-cache", action="store_true", help="recompute every row")
    parser.add_argument("--no-permutation", action="store_true", help="skip the channel-permutation row")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"CUDA {'yes' if torch.cuda.is_available() else 'no'}")
    configs = cmp.sweep_configs(cmp.DEFAULT_METHODS, cmp.DEFAULT_NM, cmp.DEFAULT_SPARSITIES)
    for spec in args.models:
        t0 = time.perf_counter()
        loaded = sparsekit.load_model(spec)
        rows = cmp.compare(loaded, configs, use_cache=not args.no_cache)
        seconds = time.perf_counter() - t0
        computed = [r for r in rows if not r.cached]
        dense = cmp.dense_row(loaded)
        print(f"\n## {loaded.name} ({spec})  -  {seconds:.0f} s, {len(computed)} of {len(rows)} settings computed now")
        for metric in loaded.quality():
            print(f"\n{loaded.metric_names.get(metric, metric)}; dense = {dense.quality[metric]:.4g}\n")
            print(cmp.markdown_table(rows, metric, digits=3))
        print("\nseconds to prune (calibrated methods include their calibration pass):\n")
        by = {(r.pattern, r.method): r.prune_seconds for r in rows}
        methods = list(dict.fromkeys(r.method for r in rows))
        print("| setting | " + " | ".join(methods) + " |\n|---|" + "---|" * len(methods))
        for pattern in dict.fromkeys(r.pattern for r in rows):
            print(f"| {pattern} | " + " | ".join(f"{by[(pattern, m)]:.2f}" for m in methods) + " |")
        notes = {f"{r.setting}: {k}": v for r in rows for k, v in r.notes.items()}
        for k, v in notes.items():
            print(f"note: {k}: {v}")
        if not args.no_permutation:
            t0 = time.perf_counter()
            perm = cmp.permuted_nm_row(loaded, 2, 4, use_cache=not args.no_cache)
            plain = next(r for r in rows if r.pattern == "2:4" and r.method == "magnitude")
            metric = next(iter(loaded.quality()))
            print(f"\nchannel permutation, 2:4 magnitude ({len(perm.layers)} layers permuted, "
                  f"{time.perf_counter() - t0:.0f} s): recovered share of the N:M-to-unstructured gap in kept |w| "
                  f"= {perm.recovered_share:.3f}; {metric} {plain.quality[metric]:.4g} -> "
                  f"{perm.quality[metric]:.4g}")
            for layer in perm.layers:
                print(f"  {layer['layer']:<40} producers {layer['producers']:<30} recovered {layer['recovered_share']:.3f}"
                      f"  (row bound {(layer['kept_row_bound'] - layer['kept_before']) / max(layer['kept_unstructured'] - layer['kept_before'], 1e-12):.3f})")


if __name__ == "__main__":
    main()

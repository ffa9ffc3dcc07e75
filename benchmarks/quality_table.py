"""Dense and sparse quality of the built-in models, for the README and the issue notes.

    python benchmarks/quality_table.py

Prints each model's headline metric dense and under 2:4, 1:4, 4:8 and 50%/70% unstructured
magnitude pruning (per layer), plus 2:4 random as the baseline.
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import sparsekit  # noqa: E402
from sparsekit import SparsifyConfig  # noqa: E402

CONFIGS = [
    SparsifyConfig(pattern="nm", n=2, m=4),
    SparsifyConfig(pattern="nm", n=2, m=4, method="random"),
    SparsifyConfig(pattern="nm", n=1, m=4),
    SparsifyConfig(pattern="nm", n=4, m=8),
    SparsifyConfig(pattern="unstructured", sparsity=0.5),
    SparsifyConfig(pattern="unstructured", sparsity=0.7),
]


def main() -> None:
    for spec in ["digits:mlp", "digits:cnn", "digits:vit", "minilm"]:
        t0 = time.perf_counter()
        loaded = sparsekit.load_model(spec)
        dense = loaded.quality()
        print(f"\n{loaded.name}  (load {time.perf_counter() - t0:.1f} s)")
        keys = list(dense)
        print(f"{'setting':<40}" + "".join(f"{k:>16}" for k in keys) + f"{'kept (pruned layers)':>22}")
        print(f"{'dense':<40}" + "".join(f"{dense[k]:>16.4f}" for k in keys))
        for cfg in CONFIGS:
            res = sparsekit.sparsify(loaded, cfg)
            q = loaded.quality(res.model)
            kept = res.summary()["kept_fraction_pruned_layers"]
            print(f"{cfg.label():<40}" + "".join(f"{q[k]:>16.4f}" for k in keys) + f"{kept:>22.3f}")


if __name__ == "__main__":
    main()

"""Sparse Model Soups on the digits models: the soup against its best and its mean ingredient, over seeds.

    python benchmarks/soup_table.py                                  # digits:mlp, 2:4 and 70 %, k = 4, 3 outer seeds
    python benchmarks/soup_table.py --models digits:cnn --outer 5 --steps 200
    python benchmarks/soup_table.py --rounds 2                       # also prune the soup once more and soup again
    python benchmarks/soup_table.py --patterns 90%                   # 90 % unstructured: more gap left to win back

For each model and pattern (2:4 magnitude; 70 % unstructured magnitude, per layer), one pruned model; for
each outer seed o, ``sparsekit.recovery.model_soup`` recovers it k times in fixed-mask mode with seeds
k·o … k·o + k − 1 (seed = order of the training examples), AdamW at lr 1e-3, batch 64, cosine schedule,
labels loss on the digits training split, and averages the k recovered weights uniformly. The metric is
accuracy (%) on the digits test split (360 images: one image is 0.28 points). Each row reports, over
the outer seeds, the mean of soup, best ingredient and mean ingredient with a 95 % Student-t interval
(``sparsekit.stats.mean_interval``), and the paired differences soup − best and soup − mean with their
intervals. The pruned model is the same for every outer seed (magnitude pruning has no seed); only the
ingredients' data order changes. ``--json`` writes the raw numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import sparsekit  # noqa: E402
from sparsekit.recovery import default_recovery_config, model_soup  # noqa: E402
from sparsekit.stats import mean_interval  # noqa: E402

PATTERNS = {
    "2:4": sparsekit.SparsifyConfig(pattern="nm", n=2, m=4, method="magnitude"),
    "70%": sparsekit.SparsifyConfig(pattern="unstructured", sparsity=0.7, method="magnitude"),
    "90%": sparsekit.SparsifyConfig(pattern="unstructured", sparsity=0.9, method="magnitude"),
}


def run(models: list[str], patterns: list[str], k: int, outer: int, steps: int, rounds: int) -> list[dict]:
    out = []
    for spec in models:
        loaded = sparsekit.load_model(spec)
        for pat in patterns:
            result = sparsekit.sparsify(loaded, PATTERNS[pat], progress=False)
            cfg = default_recovery_config(loaded.kind, steps=steps, eval_every=steps)
            for o in range(outer):
                t0 = time.perf_counter()
                soup = model_soup(result, loaded, cfg, ingredients=k, rounds=rounds,
                                  seeds=range(k * o, k * o + k), progress=False)
                for i, row in enumerate(soup.rows(), start=1):
                    out.append({"model": spec, "pattern": pat, "outer": o, "round": i, "pruned": row["pruned"],
                                "dense": soup.dense, "before": row["before"], "soup": row["soup"],
                                "best": row["best"], "mean": row["mean"], "worst": row["worst"],
                                "ingredients": soup.rounds[i - 1].ingredient_scores(soup.metric),
                                "seconds": time.perf_counter() - t0})
                print(f"{spec} {pat} outer {o}: " + "; ".join(
                    f"{r['pruned']}: soup {r['soup']:.2f} best {r['best']:.2f} mean {r['mean']:.2f}"
                    for r in soup.rows()), file=sys.stderr, flush=True)
    return out


def table(rows: list[dict]) -> str:
    lines = ["| model | pruned | n | dense | before | soup | best ingredient | mean ingredient | soup − best | "
             "soup − mean |", "|---|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["pruned"]), []).append(r)
    for (model, pruned), rs in groups.items():
        def iv(values: list[float]) -> str:
            i = mean_interval(values)
            return f"{i.mean:.2f}" if i.n < 2 else f"{i.mean:.2f} [{i.low:.2f}, {i.high:.2f}]"
        soup, best, mean = ([r[k] for r in rs] for k in ("soup", "best", "mean"))
        lines.append(f"| {model} | {pruned} | {len(rs)} | {rs[0]['dense']:.2f} | {rs[0]['before']:.2f} | "
                     f"{iv(soup)} | {iv(best)} | {iv(mean)} | {iv([a - b for a, b in zip(soup, best)])} | "
                     f"{iv([a - b for a, b in zip(soup, mean)])} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["digits:mlp"])
    ap.add_argument("--patterns", nargs="+", default=["2:4", "70%"], choices=list(PATTERNS))
    ap.add_argument("--k", type=int, default=4, help="ingredients per soup")
    ap.add_argument("--outer", type=int, default=3, help="outer seeds (independent soups)")
    ap.add_argument("--steps", type=int, default=100, help="recovery steps per ingredient")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows = run(args.models, args.patterns, args.k, args.outer, args.steps, args.rounds)
    print(table(rows))
    print(f"\n{args.k} ingredients x {args.steps} steps, {args.outer} outer seeds, {args.rounds} round(s); "
          f"torch {torch.__version__}, {args.threads} thread(s), {time.perf_counter() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()

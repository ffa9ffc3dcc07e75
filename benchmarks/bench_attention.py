"""Attention sparsity: how fast capture + metrics are, and what patterns cost MiniLM.

    python benchmarks/bench_attention.py [--tokens 128] [--repeats 5] [--quality]

1. Speed (target: capture + all metrics for all 6×12 MiniLM heads at 128 tokens under 2 s warm):
   capture of one 128-token passage, then density, recall and output error of every head for
   one pattern and for every pattern of the library (default parameters). Median of the repeats,
   after one warm-up run.
2. ``--quality``: MiniLM's end-to-end fidelity (mean cosine / top-5 agreement to dense on the 240
   built-in sentences) with a few patterns in every layer and head, with the density each had on
   those sentences; then the per-head search at a few budgets against the best uniform pattern at
   no more density.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sparsekit  # noqa: E402
from sparsekit.attention import PATTERNS, PatternSpec, calibration_captures, capture_attention, passage_ids  # noqa: E402
from sparsekit.attention.apply import attention_quality  # noqa: E402
from sparsekit.attention.metrics import measure  # noqa: E402
from sparsekit.attention.search import SearchConfig, search_heads  # noqa: E402

QUALITY_PATTERNS = [
    PatternSpec.of("sliding_window", window=2),
    PatternSpec.of("sliding_window", window=4),
    PatternSpec.of("a_shape", sink=1, local=3),
    PatternSpec.of("longformer", window=2, n_global=1),
    PatternSpec.of("bigbird", block=4, global_blocks=1, random_blocks=1),
    PatternSpec.of("vertical_slash", vertical=2, slash=2),
    PatternSpec.of("block_topk", block=4, topk=1),
    PatternSpec.of("vertical_slash", vertical=4, slash=4),
]
BUDGETS = (0.2, 0.3, 0.5)


def environment() -> str:
    return (f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
            f"{platform.machine()}, Python {platform.python_version()}")


def table(header: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def speed(model, tokens: int, repeats: int) -> None:
    ids = passage_ids(model, tokens)
    specs = [PatternSpec.of(name) for name in PATTERNS]
    one = PatternSpec.of("vertical_slash")

    def run_once() -> dict[str, float]:
        t0 = time.perf_counter()
        cap = capture_attention(model, ids)
        t1 = time.perf_counter()
        measure(cap, one)
        t2 = time.perf_counter()
        for spec in specs:
            measure(cap, spec)
        t3 = time.perf_counter()
        return {"capture": t1 - t0, "one": t2 - t1, "all": t3 - t2}

    run_once()  # warm-up: kernel selection, tokenizer, first-call allocations
    runs = [run_once() for _ in range(repeats)]
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(f"\n## Speed: MiniLM, {tokens} tokens, 6 layers × 12 heads (median of {repeats}, warm)\n")
    table(["step", "ms"], [
        ["capture (probs, scores, Q, K, V of all heads)", f"{1000 * med['capture']:.0f}"],
        [f"metrics of one pattern ({one.name}) for all 72 heads", f"{1000 * med['one']:.0f}"],
        [f"metrics of all {len(specs)} library patterns for all 72 heads", f"{1000 * med['all']:.0f}"],
        ["**capture + one pattern**", f"**{1000 * (med['capture'] + med['one']):.0f}**"],
        ["**capture + all patterns** (target < 2000)", f"**{1000 * (med['capture'] + med['all']):.0f}**"],
    ])
    cap = capture_attention(model, ids)
    rows = []
    for spec in specs:
        t0 = time.perf_counter()
        m = measure(cap, spec).mean()
        rows.append([f"`{spec.label}`", f"{m['density']:.3f}", f"{m['recall']:.3f}", f"{m['error']:.3f}",
                     f"{1000 * (time.perf_counter() - t0):.1f}"])
    print(f"\nEvery library pattern at its default parameters on the {tokens}-token passage (means over the 72 heads):\n")
    table(["pattern", "density", "recall", "output error", "ms"], rows)


def quality(model) -> None:
    dense = model.quality()
    print("\n## MiniLM end to end: pattern in every layer and head (240 built-in sentences)\n")
    rows = [["dense", "1.000", f"{dense['cosine']:.3f}", f"{dense['top5_agreement']:.3f}", ""]]
    for spec in QUALITY_PATTERNS:
        t0 = time.perf_counter()
        q = attention_quality(model, spec)
        rows.append([f"`{spec.label}`", f"{q.mean_density:.3f}", f"{q.sparse['cosine']:.3f}",
                     f"{q.sparse['top5_agreement']:.3f}", f"{time.perf_counter() - t0:.1f}"])
    table(["pattern", "density on the sentences", "cosine", "top-5", "s"], rows)

    t0 = time.perf_counter()
    caps = calibration_captures(model, 16)
    print(f"\n## Per-head search vs one uniform pattern (16 calibration sentences, captured in "
          f"{time.perf_counter() - t0:.2f} s)\n")
    rows = []
    for allocation in ("head", "global"):
        for budget in BUDGETS:
            t0 = time.perf_counter()
            res = search_heads(caps, SearchConfig(budget=budget, allocation=allocation), progress=False,
                               use_cache=False)  # time the measuring, not a read of the stored layers
            took = time.perf_counter() - t0
            s = res.summary()
            plan_q = attention_quality(model, res.plan)
            uni_q = attention_quality(model, res.uniform_spec)
            families = ", ".join(f"{k} {v}" for k, v in res.family_counts().items())
            rows.append([f"{budget:.0%} {allocation}", f"{s['plan_density']:.3f} / {plan_q.mean_density:.3f}",
                         f"{s['plan_recall']:.3f}", f"{plan_q.sparse['cosine']:.3f}", f"{plan_q.sparse['top5_agreement']:.3f}",
                         f"`{s['uniform']}`", f"{s['uniform_density']:.3f} / {uni_q.mean_density:.3f}",
                         f"{s['uniform_recall']:.3f}", f"{uni_q.sparse['cosine']:.3f}", f"{uni_q.sparse['top5_agreement']:.3f}",
                         f"{took:.1f}", families])
    table(["budget", "plan density (calib / eval)", "plan recall", "plan cosine", "plan top-5", "uniform pattern",
           "uniform density (calib / eval)", "uniform recall", "uniform cosine", "uniform top-5", "search s",
           "heads per family"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quality", action="store_true", help="also measure end-to-end quality and the search")
    args = parser.parse_args()
    print(f"Environment: {environment()}")
    t0 = time.perf_counter()
    model = sparsekit.load_model("minilm")
    print(f"MiniLM loaded in {time.perf_counter() - t0:.1f} s")
    speed(model, args.tokens, args.repeats)
    if args.quality:
        quality(model)


if __name__ == "__main__":
    main()

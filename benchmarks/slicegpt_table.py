"""SliceGPT on lm:small: held-out perplexity against the slicing fraction, over calibration seeds.

    python benchmarks/slicegpt_table.py                         # fractions 0, 0.1, 0.2, 0.3; 8 seeds (a few minutes)
    python benchmarks/slicegpt_table.py --seeds 3 --fractions 0 0.2

Each seed draws its own calibration set: pieces of lm:small's training text (the project's recovery sentences
and Python's documentation, without the held-out and validation pieces) in a seeded order, packed into
``--rows`` rows of 128 tokens. Per (fraction, seed) the model is sliced (``sparsekit.structured.slice_model``,
head sliced too) and measured on the held-out text (``heldout_perplexity``: the corpus pieces lm:small never
trained on), and with ``loaded.quality`` (perplexity on the built-in evaluation sentences, another domain, and
next-token agreement with the dense model on them). Means with 95 % Student-t intervals over the seeds.
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import torch  # noqa: E402

import sparsekit  # noqa: E402
from sparsekit.models import heldout_perplexity, heldout_rows, lm_small_heldout  # noqa: E402
from sparsekit.models.lm_corpus import corpus_units, normalise  # noqa: E402
from sparsekit.stats import mean_interval  # noqa: E402
from sparsekit.structured.slicegpt import slice_model  # noqa: E402

ROW_TOKENS = 128


def calibration_pool() -> list[str]:
    """lm:small's training text: every corpus piece except the held-out and validation ones."""
    held = {normalise(t) for part in ("heldout", "validation") for t in lm_small_heldout(part=part)}
    return [u for units in corpus_units().values() for u in units if normalise(u) not in held]


def calibration_set(tokenizer, pool: list[str], seed: int, rows: int) -> dict[str, torch.Tensor]:
    order = list(pool)
    random.Random(seed).shuffle(order)
    picked, tokens = [], 0
    for text in order:
        picked.append(text)
        tokens += len(tokenizer(text, verbose=False)["input_ids"])
        if tokens > (rows + 1) * ROW_TOKENS:
            break
    packed = heldout_rows(tokenizer, picked, ROW_TOKENS)
    return {k: v[:rows] for k, v in packed.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--rows", type=int, default=16, help="calibration rows of 128 tokens per seed")
    args = parser.parse_args()

    lm = sparsekit.load_model("lm:small")
    rows = heldout_rows(lm.tokenizer, lm_small_heldout())
    pool = calibration_pool()
    start = time.time()
    dense_held = heldout_perplexity(lm.module, rows)
    dense = lm.quality()
    print(f"lm:small ({lm.n_params:,} parameters); held-out text {int(rows['attention_mask'].sum()):,} tokens; "
          f"calibration pool {len(pool):,} pieces, {args.rows} x {ROW_TOKENS} tokens per seed, {args.seeds} seeds")
    print(f"dense: held-out perplexity {dense_held:.3f}; evaluation-sentence perplexity {dense['perplexity']:.2f}")
    sets = [calibration_set(lm.tokenizer, pool, seed, args.rows) for seed in range(args.seeds)]
    header = ("| fraction | width | parameters (kept) | held-out perplexity, mean [95 % CI] | Δ vs dense | "
              "eval-sentence perplexity | next-token agreement | second moment kept (lowest position) |")
    lines = [header, "|---" * 8 + "|"]
    for fraction in args.fractions:
        held, ppl, agree, kept = [], [], [], []
        result = None
        for cal in sets:
            result = slice_model(lm, fraction, calibration=cal, progress=False)
            held.append(heldout_perplexity(result.module, rows))
            q = lm.quality(result.module)
            ppl.append(q["perplexity"])
            agree.append(q["top1_agreement"])
            kept.append(min(s for _, s in result.variance_kept))
        assert result is not None
        h = mean_interval(held)
        diff = mean_interval([v - dense_held for v in held])
        lines.append(
            f"| {fraction:.1f} | {result.kept_width} | {result.params_after:,} ({result.kept_fraction:.1%}) | "
            f"{h.mean:.3f} [{h.low:.3f}, {h.high:.3f}] | {diff.mean:+.3f} [{diff.low:+.3f}, {diff.high:+.3f}] | "
            f"{mean_interval(ppl).text(4)} | {mean_interval(agree).text(3)} | {mean_interval(kept).text(4)} |")
        print(lines[-1], flush=True)
    print()
    print("\n".join(lines))
    print(f"\n{time.time() - start:.0f} s; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, Python {platform.python_version()}")


if __name__ == "__main__":
    main()

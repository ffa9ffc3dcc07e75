"""SliceGPT on lm:small or the digits ViT: quality against the slicing fraction, over calibration seeds.

    python benchmarks/slicegpt_table.py                         # fractions 0, 0.1, 0.2, 0.3; 8 seeds (a few minutes)
    python benchmarks/slicegpt_table.py --seeds 3 --fractions 0 0.2
    python benchmarks/slicegpt_table.py --model digits:vit      # fractions 0 … 0.9; 8 seeds (about a minute)

The digits ViT: each seed draws its own ``--images`` calibration images (default 256) from the digits training
split in a seeded order; per (fraction, seed) the ViT is sliced and measured on the held-out split (accuracy, and
agreement of its predicted class with the dense model's). Means with 95 % Student-t intervals over the seeds.

lm:small:

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
from sparsekit.models.digits import digits_split  # noqa: E402
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


def vit_table(args: argparse.Namespace) -> list[str]:
    """The digits ViT: held-out accuracy and agreement with the dense predictions per fraction, over seeds."""
    vit = sparsekit.load_model("digits:vit")
    data = digits_split()
    fractions = args.fractions or [0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    with torch.no_grad():
        dense_pred = vit.module(data.x_test).argmax(-1)
    dense_acc = vit.quality()["accuracy"]
    print(f"digits:vit ({vit.n_params:,} parameters); held-out split {len(data.y_test)} images; calibration "
          f"{args.images} of {len(data.y_train)} training images per seed, {args.seeds} seeds; dense accuracy "
          f"{dense_acc:.2f} %")
    sets = [data.x_train[torch.randperm(len(data.y_train), generator=torch.Generator().manual_seed(seed))
                         [:args.images]] for seed in range(args.seeds)]
    lines = ["| fraction | width | parameters (kept) | accuracy %, mean [95 % CI] | Δ vs dense (points) | "
             "agreement with dense | second moment kept (lowest position) |", "|---" * 7 + "|"]
    for fraction in fractions:
        acc, agree, kept = [], [], []
        result = None
        for cal in sets:
            result = slice_model(vit, fraction, calibration=cal, progress=False)
            acc.append(vit.quality(result.module)["accuracy"])
            with torch.no_grad():
                agree.append(float((result.module(data.x_test).argmax(-1) == dense_pred).float().mean()))
            kept.append(min(s for _, s in result.variance_kept))
        assert result is not None
        a, diff = mean_interval(acc), mean_interval([v - dense_acc for v in acc])
        lines.append(
            f"| {fraction:.1f} | {result.kept_width} | {result.params_after:,} ({result.kept_fraction:.1%}) | "
            f"{a.mean:.2f} [{a.low:.2f}, {a.high:.2f}] | {diff.mean:+.2f} [{diff.low:+.2f}, {diff.high:+.2f}] | "
            f"{mean_interval(agree).text(3)} | {mean_interval(kept).text(4)} |")
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["lm:small", "digits:vit"], default="lm:small")
    parser.add_argument("--fractions", type=float, nargs="+", default=None,
                        help="default: 0 0.1 0.2 0.3 (lm:small), 0 0.2 0.4 0.5 0.6 0.7 0.8 0.9 (digits:vit)")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--rows", type=int, default=16, help="lm:small: calibration rows of 128 tokens per seed")
    parser.add_argument("--images", type=int, default=256, help="digits:vit: calibration images per seed")
    args = parser.parse_args()
    start = time.time()
    lines = vit_table(args) if args.model == "digits:vit" else lm_table(args)
    print()
    print("\n".join(lines))
    print(f"\n{time.time() - start:.0f} s; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, Python {platform.python_version()}")


def lm_table(args: argparse.Namespace) -> list[str]:
    """lm:small: held-out perplexity, evaluation-sentence quality and agreement per fraction, over seeds."""
    fractions = args.fractions or [0.0, 0.1, 0.2, 0.3]
    lm = sparsekit.load_model("lm:small")
    rows = heldout_rows(lm.tokenizer, lm_small_heldout())
    pool = calibration_pool()
    dense_held = heldout_perplexity(lm.module, rows)
    dense = lm.quality()
    print(f"lm:small ({lm.n_params:,} parameters); held-out text {int(rows['attention_mask'].sum()):,} tokens; "
          f"calibration pool {len(pool):,} pieces, {args.rows} x {ROW_TOKENS} tokens per seed, {args.seeds} seeds")
    print(f"dense: held-out perplexity {dense_held:.3f}; evaluation-sentence perplexity {dense['perplexity']:.2f}")
    sets = [calibration_set(lm.tokenizer, pool, seed, args.rows) for seed in range(args.seeds)]
    header = ("| fraction | width | parameters (kept) | held-out perplexity, mean [95 % CI] | Δ vs dense | "
              "eval-sentence perplexity | next-token agreement | second moment kept (lowest position) |")
    lines = [header, "|---" * 8 + "|"]
    for fraction in fractions:
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
    return lines


if __name__ == "__main__":
    main()

"""Every family of structure on one equal-cost axis (issue #26 item 4): ``sparsekit.structured.equal_cost``.

    python benchmarks/family_table.py                         # lm:small and digits:vit (a few minutes on 2 cores)
    python benchmarks/family_table.py --models digits:vit --html /tmp/figs

For each model: dense; unstructured magnitude pruning of the Linear/Conv layers at several sparsities; N:M
magnitude masks; SliceGPT slicing fractions (where it applies); Monarch projections at several block counts.
No fine-tuning anywhere. ``kept params`` counts every parameter tensor of the model once (tied ones once) with a
masked weight counted by its kept entries, the same rule for every family; ``kept share`` divides by the dense
count. ``bytes`` is every tensor at 4 bytes per float32 entry, masked weights in their format (unstructured:
kept values + a 1-bit mask; N:M: kept values + ceil(log2 M) index bits per kept value), SliceGPT as its smaller
dense model (shortcut matrices and untied head included), Monarch layers as their two factors. Quality is the
model's own (``loaded.quality``: digits held-out accuracy; lm:small perplexity on the built-in sentences and
next-token agreement with the dense model), plus lm:small's perplexity on its held-out corpus pieces.
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
from sparsekit.models import heldout_perplexity, heldout_rows, lm_small_heldout  # noqa: E402
from sparsekit.structured.equal_cost import family_points  # noqa: E402

SETTINGS = {
    "lm:small": dict(unstructured=(0.5, 0.7, 0.9), nm=((2, 4), (1, 4)), slicegpt=(0.1, 0.2, 0.3, 0.4, 0.5),
                     monarch_blocks=(16, 32, 64)),
    "digits:vit": dict(unstructured=(0.5, 0.7, 0.9), nm=((2, 4), (1, 4)), slicegpt=(0.2,),
                       monarch_blocks=(4, 8, 16)),
}


def fmt(key: str, value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if key == "bytes":
        return f"{int(value) / 1024:,.0f} KiB"  # type: ignore[call-overload]
    if key == "kept params":
        return f"{int(value):,}"  # type: ignore[call-overload]
    if key == "kept share":
        return f"{float(value):.1%}"  # type: ignore[arg-type]
    return f"{float(value):.4g}"  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(SETTINGS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--html", help="also write each model's two figures (kept parameters, bytes) as HTML here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} threads, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    for spec in args.models:
        loaded = sparsekit.load_model(spec)
        measure = loaded.quality
        if spec == "lm:small":
            rows = heldout_rows(loaded.tokenizer, lm_small_heldout())

            def measure(module, loaded=loaded, rows=rows):  # type: ignore[no-untyped-def]
                return {**loaded.quality(module), "heldout ppl": heldout_perplexity(module, rows)}
        t0 = time.time()
        points = family_points(loaded, **SETTINGS.get(spec, {}), quality=measure, progress=False)  # type: ignore[arg-type]
        table = points.table()
        head = list(table[0])
        print(f"\n### {spec} ({time.time() - t0:.0f} s)\n")
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for row in table:
            print("| " + " | ".join(fmt(k, row[k]) for k in head) + " |")
        for family, setting, reason in points.skipped:
            print(f"\nskipped {family} ({setting}): {reason}")
        if args.html:
            from sparsekit.viz import family_cost_figure

            os.makedirs(args.html, exist_ok=True)
            metric = "accuracy" if "accuracy" in table[0] else "heldout ppl"
            for x in ("params", "bytes"):
                fig = family_cost_figure(points, metric, x=x, higher_is_better=metric == "accuracy",
                                         log_y=metric != "accuracy")
                fig.write_html(os.path.join(args.html, f"{spec.replace(':', '_')}_{x}.html"))
    print(f"\n{time.time() - start:.0f} s")


if __name__ == "__main__":
    main()

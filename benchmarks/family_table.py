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
from collections.abc import Callable

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import torch  # noqa: E402
from torch import nn  # noqa: E402

import sparsekit  # noqa: E402
from sparsekit.models import heldout_perplexity, heldout_rows, lm_small_heldout  # noqa: E402
from sparsekit.models.base import LoadedModel  # noqa: E402
from sparsekit.structured.equal_cost import FamilyPoints, family_points  # noqa: E402

SETTINGS = {
    "lm:small": dict(unstructured=(0.5, 0.7, 0.9), nm=((2, 4), (1, 4)), slicegpt=(0.1, 0.2, 0.3, 0.4, 0.5),
                     monarch_blocks=(16, 32, 64)),
    "digits:vit": dict(unstructured=(0.5, 0.7, 0.9), nm=((2, 4), (1, 4)), slicegpt=(0.2, 0.5, 0.7, 0.8),
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


def quality_for(spec: str, loaded: LoadedModel) -> Callable[[nn.Module], dict[str, float]]:
    """The table's quality function: ``loaded.quality``, plus lm:small's perplexity on its held-out pieces."""
    if spec != "lm:small":
        return loaded.quality
    rows = heldout_rows(loaded.tokenizer, lm_small_heldout())

    def measure(module: nn.Module) -> dict[str, float]:
        return {**loaded.quality(module), "heldout ppl": heldout_perplexity(module, rows)}
    return measure


def measure_points(spec: str) -> FamilyPoints:
    """``family_points`` of one model with this table's settings (``SETTINGS``) and quality (``quality_for``)."""
    loaded = sparsekit.load_model(spec)
    return family_points(loaded, **SETTINGS.get(spec, {}), quality=quality_for(spec, loaded),  # type: ignore[arg-type]
                         progress=False)


def figure_metric(points: FamilyPoints) -> tuple[str, bool, bool]:
    """The metric the figures plot: ``(metric, higher_is_better, log_y)`` (accuracy, else held-out perplexity)."""
    metric = "accuracy" if "accuracy" in points.table()[0] else "heldout ppl"
    return metric, metric == "accuracy", metric != "accuracy"


def print_table(spec: str, points: FamilyPoints, seconds: float) -> None:
    """The markdown table of one model's points and the skipped families."""
    table = points.table()
    head = list(table[0])
    print(f"\n### {spec} ({seconds:.0f} s)\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in table:
        print("| " + " | ".join(fmt(k, row[k]) for k in head) + " |")
    for family, setting, reason in points.skipped:
        print(f"\nskipped {family} ({setting}): {reason}")


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
        t0 = time.time()
        points = measure_points(spec)
        print_table(spec, points, time.time() - t0)
        if args.html:
            from sparsekit.viz import family_cost_figure

            os.makedirs(args.html, exist_ok=True)
            metric, higher, log_y = figure_metric(points)
            for x in ("params", "bytes"):
                fig = family_cost_figure(points, metric, x=x, higher_is_better=higher, log_y=log_y)
                fig.write_html(os.path.join(args.html, f"{spec.replace(':', '_')}_{x}.html"))
    print(f"\n{time.time() - start:.0f} s")

if __name__ == "__main__":
    main()

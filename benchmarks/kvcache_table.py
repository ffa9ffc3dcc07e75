"""KV-cache sparsity on the shipped small causal LM (``lm:small``): every method of ``sparsekit.kvcache.kv_sweep``
(Mustafar per-token / per-channel, magnitude and output-aware; StreamingLLM and H2O sized to keep the same
entries) at 30-90 % sparsity, over several held-out texts, printed as README's Markdown table: mean
perplexity with its 95 % interval over texts, the paired perplexity change against the dense model on the
same texts (geometric mean of the per-text ratios with its 95 % interval, from the paired log differences),
next-token agreement with dense (95 % interval) and the cache's bytes per
layout at the end of a text.

    python benchmarks/kvcache_table.py [--texts 8] [--tokens 128] [--prompt 32] [--residual 16] [--json out.json]
    python benchmarks/kvcache_table.py --from-json out.json   # the table again from saved rows
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402

import sparsekit  # noqa: E402
from sparsekit.kvcache import SWEEP_METHODS, kv_sweep  # noqa: E402
from sparsekit.models.lm_small import heldout_rows, lm_small_heldout  # noqa: E402
from sparsekit.stats import mean_interval, paired_difference  # noqa: E402

SPARSITIES = (0.3, 0.5, 0.7, 0.9)


def _ci(values: list[float], digits: int = 3) -> str:
    iv = mean_interval(values)
    return f"{iv.mean:.{digits}g} [{iv.low:.{digits}g}, {iv.high:.{digits}g}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=8, help="held-out rows of lm:small (full rows, in order)")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per text (the first of each row)")
    parser.add_argument("--prompt", type=int, default=32, help="prefill tokens; quality over the later positions")
    parser.add_argument("--residual", type=int, default=16, help="residual_length: newest tokens kept dense")
    parser.add_argument("--json", default="", help="also write the sweep's rows here")
    parser.add_argument("--from-json", default="", help="print the table from rows saved by --json (no run)")
    args = parser.parse_args()
    if args.from_json:
        with open(args.from_json) as fh:
            out = json.load(fh)
        print(f"lm:small, rows from {args.from_json}")
        table(out)
        return
    torch.set_num_threads(1)
    model = sparsekit.load_model("lm:small")
    rows = heldout_rows(model.tokenizer, lm_small_heldout())
    full = rows["input_ids"][rows["attention_mask"].all(dim=1)]
    texts = [r[: args.tokens] for r in full[: args.texts]]
    start = time.perf_counter()
    out = kv_sweep(model, methods=SWEEP_METHODS, sparsities=SPARSITIES, texts=texts, progress=False,
                   prompt=args.prompt, residual=args.residual)
    seconds = time.perf_counter() - start
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    print(f"lm:small, {len(texts)} held-out texts of {args.tokens} tokens, prompt {args.prompt}, residual_length "
          f"{args.residual}; {len(out)} runs in {seconds:.0f} s (CPU, 1 thread)")
    table(out)


def table(out: list[dict]) -> None:
    """Print the Markdown table of ``kv_sweep`` rows."""
    dense = {r["text"]: r["dense_perplexity"] for r in out}
    texts = sorted(dense)
    full = {r["bytes_dense"] for r in out}
    print(f"dense perplexity: {_ci([dense[t] for t in texts])} (mean [95 % CI] over {len(texts)} texts); "
          f"dense cache {', '.join(f'{b:,}' for b in sorted(full))} bytes (fp16)\n")
    print("| method | sparsity | perplexity | perplexity / dense (paired) | next-token agreement | kept entries "
          "| own-layout bytes | bitmap bytes | CSR bytes | kept tokens dense |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    methods = [m for m in SWEEP_METHODS if any(r["method"] == m for r in out)]
    for method in methods:
        for s in sorted({r["sparsity"] for r in out if r["method"] == method}):
            cell = sorted((r for r in out if r["method"] == method and r["sparsity"] == s), key=lambda r: r["text"])
            ppl = [r["perplexity"] for r in cell]
            logs = paired_difference([math.log(p) for p in ppl], [math.log(dense[r["text"]]) for r in cell]).diff
            agree = [r["agreement"] for r in cell]

            def mean(key: str, cell: list = cell) -> float:
                return sum(r[key] for r in cell) / len(cell)

            print(f"| {method} | {s:.0%} | {_ci(ppl)} | {math.exp(logs.mean):.3f} [{math.exp(logs.low):.3f}, "
                  f"{math.exp(logs.high):.3f}] | {_ci(agree)} | {mean('kept_fraction'):.3f} | {mean('bytes'):,.0f} "
                  f"| {mean('bytes_bitmap'):,.0f} | {mean('bytes_csr'):,.0f} | {mean('bytes_kept_dense'):,.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()

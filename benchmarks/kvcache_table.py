"""KV-cache sparsity on the shipped small causal LM (``lm:small``): every method of ``sparsekit.kvcache.kv_sweep``
(Mustafar per-token / per-channel, magnitude and output-aware; StreamingLLM and H2O sized to keep the same
entries) at 30-90 % sparsity, over several held-out texts, printed as README's Markdown table: mean
perplexity with its 95 % interval over texts, the paired perplexity change against the dense model on the
same texts (95 % interval), next-token agreement with dense (95 % interval) and the cache's bytes per
layout at the end of a text.

    python benchmarks/kvcache_table.py [--texts 8] [--tokens 128] [--prompt 32] [--residual 16] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
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


def _ci(values: list[float], digits: int = 3, signed: bool = False) -> str:
    iv = mean_interval(values)
    f = "+." if signed else "."
    return f"{iv.mean:{f}{digits}g} [{iv.low:{f}{digits}g}, {iv.high:{f}{digits}g}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=8, help="held-out rows of lm:small (full rows, in order)")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per text (the first of each row)")
    parser.add_argument("--prompt", type=int, default=32, help="prefill tokens; quality over the later positions")
    parser.add_argument("--residual", type=int, default=16, help="residual_length: newest tokens kept dense")
    parser.add_argument("--json", default="", help="also write the sweep's rows here")
    args = parser.parse_args()
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
    dense = {r["text"]: r["dense_perplexity"] for r in out}
    n = len(texts)
    print(f"lm:small, {n} held-out texts of {args.tokens} tokens, prompt {args.prompt}, residual_length "
          f"{args.residual}; {len(out)} runs in {seconds:.0f} s (CPU, 1 thread)")
    print(f"dense perplexity: {_ci([dense[t] for t in range(n)])} (mean [95 % CI] over texts)\n")
    print("| method | sparsity | perplexity | Δ perplexity vs dense (paired) | next-token agreement | kept entries "
          "| own-layout bytes | bitmap bytes | CSR bytes | kept tokens dense | dense cache bytes |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for method in SWEEP_METHODS:
        for s in SPARSITIES:
            cell = sorted((r for r in out if r["method"] == method and r["sparsity"] == s), key=lambda r: r["text"])
            ppl = [r["perplexity"] for r in cell]
            diff = paired_difference(ppl, [dense[r["text"]] for r in cell]).diff
            agree = [r["agreement"] for r in cell]

            def mean(key: str, cell: list = cell) -> float:
                return sum(r[key] for r in cell) / len(cell)

            print(f"| {method} | {s:.0%} | {_ci(ppl)} | {diff.mean:+.3g} [{diff.low:+.3g}, {diff.high:+.3g}] "
                  f"| {_ci(agree)} | {mean('kept_fraction'):.3f} | {mean('bytes'):,.0f} | {mean('bytes_bitmap'):,.0f} "
                  f"| {mean('bytes_csr'):,.0f} | {mean('bytes_kept_dense'):,.0f} | {mean('bytes_dense'):,.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()

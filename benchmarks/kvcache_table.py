"""KV-cache sparsity on the shipped small causal LM (``lm:small``): Mustafar per-token and per-channel
magnitude against StreamingLLM and H2O at the same kept entries, with perplexity, next-token agreement
with dense, greedy tokens equal to dense, and the cache's bytes in each layout. One run, printed as a
Markdown table (README's KV-cache table).

    python benchmarks/kvcache_table.py [--rows 3] [--residual 16]
"""
from __future__ import annotations

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402

import sparsekit  # noqa: E402
from sparsekit.kvcache import KVConfig, evaluate_kv, kept_count  # noqa: E402
from sparsekit.models.lm_small import heldout_rows, lm_small_heldout  # noqa: E402

PROMPT = 32
"""Teacher forcing starts after this many tokens (perplexity and agreement over the later positions)."""
GENERATION_PROMPT = 192
NEW_TOKENS = 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=3, help="held-out rows of 256 tokens")
    parser.add_argument("--residual", type=int, default=16, help="residual_length: newest tokens kept dense")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = sparsekit.load_model("lm:small")
    rows = heldout_rows(model.tokenizer, lm_small_heldout())["input_ids"][: args.rows]
    head_dim = int(model.module.config.n_embd // model.module.config.n_head)
    tokens_total = rows.shape[1] - 1

    def run(label: str, cfg: KVConfig) -> float:
        nll = dense_nll = agree = same = kept = 0.0
        shown: dict[str, int] = {}
        for ids in rows:
            r = evaluate_kv(model, ids, cfg, prompt=PROMPT, new_tokens=NEW_TOKENS, generation_prompt=GENERATION_PROMPT)
            nll += math.log(r.perplexity)
            dense_nll += math.log(r.dense_perplexity)
            agree += r.agreement
            same += sum(a == b for a, b in zip(r.generated, r.dense_generated))
            kept += r.kept_fraction
            shown = r.bytes  # the cache at the end of the last row
        n = len(rows)
        print(f"| {label} | {math.exp(nll / n):.1f} | {agree / n:.3f} | {int(same)}/{NEW_TOKENS * n} | {kept / n:.3f} "
              f"| {shown['full']:,} | {shown['dense']:,} | {shown['bitmap']:,} | {shown['csr']:,} |", flush=True)
        return math.exp(dense_nll / n)

    print("| setting | perplexity | next-token agreement | greedy tokens equal to dense | kept entries | full bytes "
          "| dense-of-kept bytes | bitmap bytes | CSR bytes |")
    print("|---|---|---|---|---|---|---|---|---|")
    dense = run("no pruning (s=0)", KVConfig(k_sparsity=0.0, v_sparsity=0.0, residual_length=args.residual))
    for s in (0.3, 0.5, 0.7):
        for axis in ("token", "channel"):
            run(f"mustafar {axis} s={s}", KVConfig(k_sparsity=s, v_sparsity=s, axis=axis, residual_length=args.residual))
        # The eviction baselines keep as many entries as Mustafar does at the end of the row.
        tokens = round(args.residual + (tokens_total - args.residual) * kept_count(head_dim, s) / head_dim)
        run(f"streaming sinks=4 window={tokens - 4}", KVConfig(method="streaming", sinks=4, window=tokens - 4))
        run(f"h2o heavy={tokens - tokens // 2} recent={tokens // 2}",
            KVConfig(method="h2o", heavy=tokens - tokens // 2, recent=tokens // 2))
    print(f"dense full-forward perplexity {dense:.1f}")


if __name__ == "__main__":
    main()

"""Attribution drift after one-shot pruning: dense-vs-sparse Integrated Gradients agreement.

    python benchmarks/attribution_table.py                    # digits:mlp, digits:vit and minilm
    python benchmarks/attribution_table.py --models digits:cnn --pattern 4:8

Digits: IG maps of the dense model's predicted class on 20 held-out images (64 steps), mean
Pearson r between dense and sparse maps, mean top-10-pixel overlap, share with the same
prediction. MiniLM: LayerIntegratedGradients over token embeddings for 8 built-in sentence pairs
(16 steps), mean token-level r, top-token agreement, mean |similarity change|.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import torch  # noqa: E402

import sparsekit  # noqa: E402
from sparsekit import attribution as attr  # noqa: E402
from sparsekit.sparsify import SparsifyConfig, sparsify  # noqa: E402

METHODS = ("magnitude", "wanda", "sparsegpt", "taylor", "random")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["digits:mlp", "digits:vit", "minilm"])
    parser.add_argument("--pattern", default="2:4", help="N:M (keep N of M), e.g. 2:4")
    args = parser.parse_args()
    n, m = map(int, args.pattern.split(":"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; pattern {n}:{m}, every Linear/Conv layer")
    for spec in args.models:
        loaded = sparsekit.load_model(spec)
        print(f"\n## {loaded.name}\n")
        if loaded.kind == "image-classifier":
            images, labels = attr.digits_examples(20)
            print("| method | accuracy % | mean r | min r | top-10 overlap | same prediction | seconds |")
            print("|---|---|---|---|---|---|---|")
            for method in METHODS:
                t0 = time.perf_counter()
                res = sparsify(loaded, SparsifyConfig(pattern="nm", n=n, m=m, method=method))
                maps = attr.image_attribution(loaded.module, res.model, images, labels)
                s = maps.summary()
                print(f"| {method} | {loaded.quality(res.model)['accuracy']:.1f} | {s['mean_correlation']:.3f} | "
                      f"{s['min_correlation']:.3f} | {s['mean_top_overlap']:.2f} | {s['same_prediction']:.2f} | "
                      f"{time.perf_counter() - t0:.1f} |")
        elif loaded.kind == "encoder":
            print("| method | cosine | mean token r | min token r | top-token agreement | mean abs sim change | seconds |")
            print("|---|---|---|---|---|---|---|")
            for method in METHODS:
                t0 = time.perf_counter()
                res = sparsify(loaded, SparsifyConfig(pattern="nm", n=n, m=m, method=method))
                _, s = attr.text_agreement(loaded.module, res.model, loaded.tokenizer, n_steps=16)
                print(f"| {method} | {loaded.quality(res.model)['cosine']:.3f} | {s['mean_correlation']:.3f} | "
                      f"{s['min_correlation']:.3f} | {s['top_token_agreement']:.2f} | "
                      f"{s['mean_abs_similarity_change']:.3f} | {time.perf_counter() - t0:.0f} |")
        else:
            print(f"(skipped: attribution covers digits classifiers and encoders, not {loaded.kind})")


if __name__ == "__main__":
    main()

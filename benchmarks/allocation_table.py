"""Non-uniform sparsity allocation against uniform, at equal overall sparsity.

    python benchmarks/allocation_table.py                          # digits:mlp, digits:cnn, minilm, causal-lm
    python benchmarks/allocation_table.py --models digits:vit --methods magnitude wanda
    python benchmarks/allocation_table.py --models causal-lm --lm-eval builtin  # the causal LM on the built-in sentences
    python benchmarks/allocation_table.py --causal-lm DIR          # your own HF causal LM folder as causal-lm

For each model and method: 50 % and 70 % unstructured and 2:4 (levels 1:4 / 2:4 / 3:4 / dense per
layer under the sensitivity and OWL allocations), each with ``uniform``, ``owl`` (M = 5, lambda =
0.08 unstructured; lambda = 0.25 for N:M, since the levels are 0.25 apart and a smaller lambda
leaves every layer at 2:4) and ``sensitivity`` allocation (from a scan of the same method: every layer
alone at 1:4, 2:4, 3:4, 50 %, 70 % and 90 %; the transformers (MiniLM, the causal LM) scan the
attention and MLP layers of each block together; MiniLM uses one magnitude scan for all methods, to keep
the run to minutes). The scan records the drop of the model's headline metric on the same data the
table reports, so the sensitivity column is in-sample. The pruned share is counted from the masks over
the layers the allocation covers (a layer kept dense at level 4:4 counts as kept). No fine-tuning.
digits:cnn's first conv (1 input channel) cannot take N:M and is left out of every N:M row.

``causal-lm`` is a small GPT-2 trained here by ``benchmarks/train_causal_lm.py`` (4 blocks x 256 wide,
MiniLM's WordPiece vocabulary, 300 steps on the shipped recovery corpus and Python's own documentation;
5-7 minutes on one shared core), trained into ``$SPARSEKIT_CACHE_DIR/causal-lm/`` the first time and reused
after; ``--causal-lm DIR`` uses an existing Hugging Face causal LM folder instead. No pretrained LM can be
downloaded here and a random-weight one's quality would mean nothing. Its metric is perplexity on the
built-in evaluation sentences (lower is better; none of them is in its training text), with next-token
agreement with the dense model as a second table. It is small and trained for minutes: OWL was proposed
for large LLMs with outlier features, which it may not have. The built-in sentences are everyday English
and about a sixth of their tokens never occur in its training text; those tokens dominate the perplexity,
and pruning (which flattens the predictions) *lowers* it, so that perplexity does not measure quality
for this model. So by default (``--lm-eval heldout``) it is scored on the rows held out from its training
corpus (``validation.json`` next to the model): the scan on every other row, the table on the rest, so
the sensitivity column is not in-sample there; ``--lm-eval builtin`` gives the built-in-sentence table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import torch  # noqa: E402

import sparsekit  # noqa: E402
from sparsekit import SparsifyConfig  # noqa: E402
from sparsekit.cache import cache_dir  # noqa: E402
from sparsekit.models.loader import ROOTS_ENV  # noqa: E402
from sparsekit.sensitivity import SensitivityConfig, sensitivity_scan  # noqa: E402

SETTINGS = (("50%", dict(pattern="unstructured", sparsity=0.5)), ("70%", dict(pattern="unstructured", sparsity=0.7)),
            ("2:4", dict(pattern="nm", n=2, m=4)))
ALLOCATIONS = ("uniform", "owl", "sensitivity")
CAUSAL_LM = "causal-lm"
LM_SHAPE = dict(layers=4, width=256, heads=4)
"""The trained causal LM's shape (train_causal_lm's defaults for batch, rate and corpus)."""


def pruned_share(result) -> float:
    total = sum(r.numel for r in result.report if r.pruned or "allocation" in r.skipped_reason)
    return sum(int((~m).sum()) for m in result.masks.values()) / total


def fmt(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"


def trained_lm(steps: int, seed: int) -> Path:
    """The small causal LM in the cache folder, trained now if it is not there yet."""
    path = cache_dir() / CAUSAL_LM / f"pydoc-gpt2-{LM_SHAPE['layers']}x{LM_SHAPE['width']}-{steps}steps-seed{seed}"
    if (path / "training.json").is_file():
        print(f"using the causal LM trained earlier in {path}")
        return path
    sys.path.insert(0, os.path.dirname(__file__))
    from train_causal_lm import train  # noqa: PLC0415

    print(f"training the small causal LM ({steps} steps, a few minutes on one core) into {path}", flush=True)
    train(path, steps=steps, seed=seed, **LM_SHAPE, log=lambda s: print("  " + s, file=sys.stderr, flush=True))
    return path


def lm_spec(path: Path) -> str:
    """``hf:<name>`` with the folder's parent added to the model roots."""
    path = path.resolve()
    roots = [r for r in os.environ.get(ROOTS_ENV, "").split(os.pathsep) if r]
    os.environ[ROOTS_ENV] = os.pathsep.join(roots + [str(path.parent)])
    return f"hf:{path.name}"


def describe_lm(path: Path) -> str:
    record_file = path / "training.json"
    if not record_file.is_file():
        return f"{path.name} (no training.json)"
    r = json.loads(record_file.read_text())
    m, t, loss = r["model"], r["training"], r["loss"]
    return (f"GPT-2 {m['layers']} blocks x {m['width']} ({m['parameters'] / 1e6:.1f} M parameters, "
            f"{m['parameters_outside_embedding'] / 1e6:.1f} M outside the tied embedding), trained here: {t['steps']} steps, "
            f"{t['tokens_seen']:,} tokens, {t['seconds'] / 60:.1f} min; validation perplexity {loss['val_perplexity']:.1f} "
            f"(unigram {loss['unigram_val_perplexity']:.1f})")


def versus_uniform(rows: list[tuple[str, str, list[float]]], higher: bool) -> str:
    """How often OWL and sensitivity beat uniform, judged in the metric's own direction."""
    parts = []
    for col, name in ((1, "OWL"), (2, "sensitivity")):
        better = even = worse = 0
        for _, _, vals in rows:
            a, b = fmt(vals[0]), fmt(vals[col])
            if a == b:
                even += 1
            elif (vals[col] > vals[0]) == higher:
                better += 1
            else:
                worse += 1
        parts.append(f"{name} better than uniform in {better}, even in {even}, worse in {worse} of {len(rows)} rows")
    return "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["digits:mlp", "digits:cnn", "minilm", CAUSAL_LM],
                        help=f"model specs; '{CAUSAL_LM}' = the small trained GPT-2 (or --causal-lm)")
    parser.add_argument("--methods", nargs="+", default=["magnitude", "wanda", "sparsegpt"])
    parser.add_argument("--causal-lm", default=None, metavar="DIR",
                        help=f"a Hugging Face causal LM folder to use for '{CAUSAL_LM}' (added to --models)")
    parser.add_argument("--lm-steps", type=int, default=300, help="training steps of the small causal LM")
    parser.add_argument("--lm-seed", type=int, default=0)
    parser.add_argument("--lm-eval", choices=("builtin", "heldout"), default="heldout",
                        help="the causal LM's evaluation text: the built-in sentences (sparsekit's metric) or its "
                             "held-out training-corpus rows, half for the scan and the other half for the table")
    args = parser.parse_args()
    if args.causal_lm and CAUSAL_LM not in args.models:
        args.models.append(CAUSAL_LM)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    for spec in args.models:
        t0 = time.perf_counter()
        about, heldout = "", None
        if spec == CAUSAL_LM:
            path = Path(args.causal_lm) if args.causal_lm else trained_lm(args.lm_steps, args.lm_seed)
            about = describe_lm(path) + "; "
            spec = lm_spec(path)
            if args.lm_eval == "heldout":
                sys.path.insert(0, os.path.dirname(__file__))
                from train_causal_lm import validation_rows  # noqa: PLC0415

                held = validation_rows(path)
                heldout = (held[0::2], held[1::2])  # (scan, table): the allocation is judged on text its scan never saw
        loaded = sparsekit.load_model(spec)
        if heldout is not None:
            loaded.quality_fn.set_eval_ids(heldout[1])
        dense = loaded.quality()
        metric = next(iter(dense))
        higher = bool(loaded.higher_is_better.get(metric, True))
        name = loaded.metric_names.get(metric, metric)
        if heldout is not None:
            name = (f"perplexity on {len(heldout[1])} held-out rows of its training corpus ({sum(map(len, heldout[1])):,} "
                    f"tokens; the scan used {len(heldout[0])} other held-out rows; lower is better)")
        if "is better" not in name:
            name += f" ({'higher' if higher else 'lower'} is better)"
        transformer = loaded.kind in ("encoder", "causal-lm")
        one_scan = spec == "minilm"  # its magnitude scan takes about 4 minutes; one serves all three methods
        print(f"\n## {loaded.name} ({spec}); {about}{name}, dense = {fmt(dense[metric])}\n")
        print("| method | setting | uniform | OWL | sensitivity | pruned share (uniform / OWL / sens.) |\n"
              "|---|---|---|---|---|---|")
        rows: list[tuple[str, str, list[float]]] = []
        others: list[tuple[str, str, list[dict[str, float]]]] = []
        for method in args.methods:
            # metric left empty = the headline metric the table reports (an explicit name would change the cache key)
            scan_cfg = SensitivityConfig(method="magnitude" if one_scan else method, sparsities=(0.5, 0.7, 0.9),
                                         nm=((1, 4), (2, 4), (3, 4)), grouping="block-kind" if transformer else "layer",
                                         exclude="^conv1$" if spec == "digits:cnn" else "")
            if heldout is not None:
                # The scan cache is keyed by model and config, not by evaluation text: scan afresh.
                loaded.quality_fn.set_eval_ids(heldout[0])
                scan = sensitivity_scan(loaded, scan_cfg, use_cache=False)
                loaded.quality_fn.set_eval_ids(heldout[1])
            else:
                scan = sensitivity_scan(loaded, scan_cfg)
            if spec == "digits:cnn":  # the unstructured rows prune conv1 too: scan it alone for them
                full_scan = sensitivity_scan(loaded, replace(scan_cfg, exclude="", nm=()))
            for label, fields in SETTINGS:
                quality, shares = [], []
                for alloc in ALLOCATIONS:
                    cfg = SparsifyConfig(method=method, allocation=alloc, **fields)
                    if alloc == "owl" and cfg.pattern == "nm":
                        cfg = replace(cfg, owl_lambda=0.25)
                    if spec == "digits:cnn" and cfg.pattern == "nm":
                        cfg = replace(cfg, exclude="^conv1$")
                    use = full_scan if spec == "digits:cnn" and cfg.pattern == "unstructured" else scan
                    res = sparsekit.sparsify(loaded, cfg, sensitivity=use if alloc == "sensitivity" else None)
                    quality.append(loaded.quality(res.model))
                    shares.append(f"{pruned_share(res):.4f}")
                rows.append((method, label, [q[metric] for q in quality]))
                others.append((method, label, quality))
                print(f"| {method} | {label} | " + " | ".join(fmt(q[metric]) for q in quality)
                      + f" | {' / '.join(shares)} |", flush=True)
        print(f"\n{versus_uniform(rows, higher)} ({'higher' if higher else 'lower'} {metric} is better)")
        for extra in [k for k in dense if k != metric]:
            extra_higher = bool(loaded.higher_is_better.get(extra, True))
            print(f"\n{loaded.metric_names.get(extra, extra)}, dense = {fmt(dense[extra])}\n\n"
                  "| method | setting | uniform | OWL | sensitivity |\n|---|---|---|---|---|")
            for method, label, quality in others:
                print(f"| {method} | {label} | " + " | ".join(fmt(q[extra]) for q in quality) + " |")
            print(f"\n{versus_uniform([(m, s, [q[extra] for q in qs]) for m, s, qs in others], extra_higher)}")
        print(f"\n({time.perf_counter() - t0:.0f} s for {spec}, scans included)")


if __name__ == "__main__":
    main()

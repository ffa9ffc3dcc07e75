"""Monarch projection next to unstructured magnitude pruning and 2:4 at comparable kept parameters.

    python benchmarks/structured_table.py                      # digits:vit and lm:small (a few minutes on 2 cores)
    python benchmarks/structured_table.py --models digits:vit --blocks 2 4 8

For each model and block count b: ``sparsekit.structured.monarchize`` with b blocks (every Linear layer
whose sizes are multiples of b and for which b blocks keep fewer parameters than the dense weight; GPT-2's
Conv1D counts as Linear; lm:small's output layer is tied to its embeddings and stays dense), then
``sparsekit.sparsify`` unstructured magnitude (per-layer scope) on exactly the layers Monarch changed, at the
sparsity that keeps the same share of their weights (rounded per layer, so the counts agree to a few
weights), and 2:4 magnitude on the same layers (always 50 % kept; shown where Monarch keeps 25-75 %). No fine-tuning anywhere.

Columns: ``kept`` is the share of the changed layers' weight entries that is stored (Monarch: the two
factors, ``b·(in + out)`` per layer; masks: the nonzeros); ``kept all`` the same over every Linear/Conv
weight; ``bytes`` the changed layers' storage in each family's format (float32 values; Monarch: the
factors; unstructured: values + a 1-bit mask per weight; 2:4: kept values + 2-bit indices, the
``sparsekit.report`` formats); ``w err`` the pooled relative Frobenius error ``sqrt(Σ‖W − W'‖² / Σ‖W‖²)``
of the changed weights, and ``noise err`` the same for Gaussian matrices of the changed layers' shapes
(Monarch rows: how far from Monarch a weight without any structure is); then the model's own quality (``loaded.quality``: digits held-out accuracy;
lm:small perplexity on the built-in sentences and next-token agreement with the dense model) and, for
lm:small, perplexity on its held-out corpus pieces (text of its training kind).
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import time
from dataclasses import replace

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import torch  # noqa: E402

import sparsekit  # noqa: E402
from sparsekit.layers import grouped_view, layer_weight, prunable_layers  # noqa: E402
from sparsekit.models import heldout_perplexity, heldout_rows, lm_small_heldout  # noqa: E402
from sparsekit.structured import MonarchConfig, monarch_project, monarchize  # noqa: E402
from sparsekit.structured.monarch import monarch_dense  # noqa: E402

BLOCKS = {"digits:vit": (2, 4, 8, 16), "lm:small": (4, 8, 16, 32, 64)}


def weight_error(source, changed: dict[str, torch.Tensor]) -> float:
    """Pooled relative Frobenius error over the changed layers (name -> the new [out, in] matrix)."""
    modules = dict(source.named_modules())
    num = den = 0.0
    for name, new in changed.items():
        w = grouped_view(modules[name]).matrix(layer_weight(modules[name]).detach()).double()
        num += float((w - new.double()).square().sum())
        den += float(w.square().sum())
    return (num / den) ** 0.5


def noise_error(shapes: list[tuple[int, int]], b: int) -> float:
    """The same pooled error for Gaussian matrices of the same shapes (seed 0): how far from Monarch
    a weight with no structure at all is."""
    gen = torch.Generator().manual_seed(0)
    num = den = 0.0
    for out, inp in shapes:
        g = torch.randn(out, inp, generator=gen, dtype=torch.float64)
        num += float((g - monarch_dense(*monarch_project(g, b))).square().sum())
        den += float(g.square().sum())
    return (num / den) ** 0.5


def measure(loaded, module, rows) -> dict[str, float]:
    q = loaded.quality(module)
    if rows is not None:
        q["heldout ppl"] = heldout_perplexity(module, rows)
    return q


def masked_row(loaded, names: list[str], config: sparsekit.SparsifyConfig, rows, total_linear: int) -> dict:
    include = "^(" + "|".join(re.escape(n) for n in names) + ")$"
    result = sparsekit.sparsify(loaded, replace(config, include=include), progress=False)
    s = result.summary()
    source = dict(loaded.module.named_modules())
    changed = {n: grouped_view(source[n]).matrix(layer_weight(source[n]).detach() * result.masks[n]) for n in names}
    kept = sum(int(result.masks[n].count_nonzero()) for n in names)
    before = sum(result.masks[n].numel() for n in names)
    nm = s["pruned_nm_bytes"]
    return {"kept": kept / before, "kept all": (total_linear - before + kept) / total_linear,
            "bytes": nm if config.pattern == "nm" else s["pruned_bitmask_bytes"],
            "w err": weight_error(loaded.module, changed), **measure(loaded, result.model, rows)}


def model_table(spec: str, blocks: tuple[int, ...]) -> list[dict]:
    loaded = sparsekit.load_model(spec)
    rows = None
    if spec == "lm:small":
        rows = heldout_rows(loaded.tokenizer, lm_small_heldout())
    layers = prunable_layers(loaded.module)
    total_linear = sum(layer_weight(m).numel() for _, m in layers)
    table = [{"setting": "dense", "layers": "", "kept": 1.0, "kept all": 1.0, "bytes": None, "w err": 0.0,
              **measure(loaded, loaded.module, rows)}]
    for b in blocks:
        try:
            result = monarchize(loaded, MonarchConfig(blocks=b), progress=False)
        except ValueError as err:
            print(f"{spec}: {b} blocks: {err}", file=sys.stderr)
            continue
        s = result.summary()
        done = [r for r in result.layers if r.projected]
        names = [r.name for r in done]
        modules = dict(result.model.named_modules())
        changed = {n: modules[n].to_dense().detach() for n in names}
        label = f"{len(done)}/{len(result.layers)}"
        table.append({"setting": f"Monarch b={b}", "layers": label, "kept": s["kept_fraction_projected"],
                      "kept all": s["kept_fraction_all_layers"], "bytes": s["projected_bytes_after"],
                      "w err": weight_error(loaded.module, changed),
                      "noise err": noise_error([r.shape for r in done], b), **measure(loaded, result.model, rows)})
        sparsity = 1.0 - float(s["kept_fraction_projected"])
        unstructured = sparsekit.SparsifyConfig(pattern="unstructured", sparsity=round(sparsity, 6))
        table.append({"setting": "  unstructured magnitude", "layers": label,
                      **masked_row(loaded, names, unstructured, rows, total_linear)})
        if 0.25 <= s["kept_fraction_projected"] <= 0.75:
            table.append({"setting": "  2:4 magnitude", "layers": label,
                          **masked_row(loaded, names, sparsekit.SparsifyConfig(pattern="nm", n=2, m=4), rows,
                                       total_linear)})
    return table


def fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return f"{value / 1024:,.0f} KiB"
    return f"{value:.4g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(BLOCKS))
    parser.add_argument("--blocks", nargs="+", type=int, help="block counts (default: per model)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} threads, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    for spec in args.models:
        table = model_table(spec, tuple(args.blocks) if args.blocks else BLOCKS.get(spec, (2, 4, 8)))
        metrics = [k for k in table[0] if k not in ("setting", "layers", "kept", "kept all", "bytes", "w err")]
        head = ["setting", "layers", "kept", "kept all", "bytes", "w err", "noise err", *metrics]
        print(f"\n### {spec}\n")
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for row in table:
            print("| " + " | ".join(fmt(row.get(k)) for k in head) + " |")
    print(f"\n{time.time() - start:.0f} s")


if __name__ == "__main__":
    main()

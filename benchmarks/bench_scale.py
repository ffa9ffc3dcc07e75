"""How the cost of each step grows with model size: digits → MiniLM → GPT-2 small-size → GPT-2 medium-size.

    python benchmarks/bench_scale.py [--sizes digits,minilm,gpt2-small,gpt2-medium] [--methods magnitude,wanda,sparsegpt]

The GPT-2-shaped models have random weights (a `transformers` GPT2Config saved as a Hugging Face
directory in a temporary model root), so no download is needed; their quality numbers mean nothing,
their costs are real. Per size the script measures, each once, in one process:
load (`sparsekit.load_model`, after the imports and mask kernels are warm), dense quality (the first `quality()`, which builds the reference), a
2:4 sparsify per method (for Wanda and SparseGPT also the app's estimate made before it starts, from
the previous quality pass's speed), the quality of that sparse model, and an attention capture of 128 tokens
for the text models; and the process's peak resident memory after each size (ru_maxrss, which only
grows, so it is the running peak).

Ratios (issue #28): each calibrated sparsify is divided by one dense forward over its calibration
tokens (``model(**calibration)`` with the output layer, measured just before it), and each quality
pass by one dense forward over the quality pass's own batches (the same forward without the
metric); ``--repeats N`` alternates forward and step N times and reports the medians, so the ratios
hold on a shared machine where the seconds do not. The header gives the tokens counted, torch's
threads, ``OMP_WAIT_POLICY`` (sparsekit sets PASSIVE on import) and the load average. It prints one table, then the slope of each step's seconds
against parameters (a least-squares fit of log time on log parameters over the sizes measured) and
the largest GPT-2 shape the memory budget (`SPARSEKIT_MEMORY_BUDGET_MB`, default 2048 MB of
parameter bytes) allows. A size whose parameters exceed the budget is reported as skipped.
"""
from __future__ import annotations

import argparse
import math
import statistics
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import sparsekit  # noqa: E402
from sparsekit.attention.capture import capture_attention, passage_ids  # noqa: E402
from sparsekit.methods import CALIBRATED_METHODS  # noqa: E402
from sparsekit.methods.cost import estimate_seconds  # noqa: E402
from sparsekit.models.base import memory_budget_mb  # noqa: E402

GPT2_SHAPES = {  # name -> (layers, width, heads): the published GPT-2 sizes
    "gpt2-small": (12, 768, 12),
    "gpt2-medium": (24, 1024, 16),
    "gpt2-large": (36, 1280, 20),
}


def gpt2_params(layers: int, width: int, vocab: int = 50257, positions: int = 1024) -> int:
    """Parameters of a GPT-2 with tied embeddings: embeddings + per block (attention 4w²+4w, MLP 8w²+5w,
    two LayerNorms 4w) + final LayerNorm."""
    return vocab * width + positions * width + layers * (12 * width * width + 13 * width) + 2 * width


def write_gpt2(root: Path, name: str) -> Path:
    """A random-weight GPT-2 of the named shape as a Hugging Face directory, with MiniLM's tokenizer
    files (its 30,522 ids fall inside GPT-2's vocabulary; the text is only there to be tokenized)."""
    import shutil  # noqa: PLC0415

    from transformers import GPT2Config, GPT2LMHeadModel  # noqa: PLC0415 (only this script needs them)

    from sparsekit.models.text import minilm_dir  # noqa: PLC0415

    layers, width, heads = GPT2_SHAPES[name]
    torch.manual_seed(0)
    out = root / name
    GPT2LMHeadModel(GPT2Config(n_layer=layers, n_embd=width, n_head=heads)).save_pretrained(out)
    for f in minilm_dir().iterdir():
        if f.name.startswith(("tokenizer", "vocab", "special_tokens")):
            shutil.copy(f, out / f.name)
    return out


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def calibration_forward(loaded) -> float:
    """Seconds of one dense forward over the calibration batch (output layer included)."""
    from sparsekit.methods.calibration import run_model  # noqa: PLC0415

    with torch.inference_mode():
        return timed(lambda: run_model(loaded.module, loaded.calibration))[1]


def quality_forward(loaded) -> float | None:
    """Seconds of one dense forward over the quality pass's own batches, without the metric (None
    for a model whose metric has no token batches)."""
    batches = getattr(loaded.quality_fn, "batches", None)
    if not batches:
        return None
    batches = [b[1] if isinstance(b, tuple) else b for b in batches]
    extra = {"use_cache": False} if loaded.kind == "causal-lm" else {}

    def run():
        with torch.inference_mode():
            for batch in batches:
                loaded.module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **extra)
    return timed(run)[1]


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(spec: str, label: str, methods: list[str], repeats: int = 1) -> dict:
    row: dict = {"size": label}
    loaded, row["load"] = timed(lambda: sparsekit.load_model(spec))
    row["params"] = loaded.n_params
    _, row["dense quality"] = timed(loaded.quality)
    tokens = loaded.info.get("n_eval_tokens")
    calib = loaded.calibration
    if isinstance(calib, dict):
        mask = calib.get("attention_mask")
        row["calibration tokens"] = int(mask.sum()) if mask is not None else int(calib["input_ids"].numel())
        row["calibration positions"] = int(calib["input_ids"].numel())
    row["eval tokens"] = tokens
    last_quality = None
    for method in methods:
        config = sparsekit.SparsifyConfig(pattern="nm", n=2, m=4, method=method)
        if tokens and last_quality and config.method in CALIBRATED_METHODS:
            # What the app shows before the first run: an estimate from the last quality pass's speed.
            row[f"estimate {method}"] = estimate_seconds(loaded.module, config, loaded.calibration,
                                                         last_quality / tokens)
        seconds, ratios, q_seconds, q_ratios = [], [], [], []
        for _ in range(repeats):  # forward, step, forward, step, ...: each ratio from neighbours in time
            forward = calibration_forward(loaded)
            result, step = timed(lambda: sparsekit.sparsify(loaded, config, progress=False))
            seconds.append(step)
            ratios.append(step / forward)
            sparse = result.model
            q_forward = quality_forward(loaded)
            _, q_step = timed(lambda: loaded.quality(sparse))
            q_seconds.append(q_step)
            if q_forward:
                q_ratios.append(q_step / q_forward)
            result = sparse = None  # free the copy before the next one
        row[f"sparsify {method}"] = statistics.median(seconds)
        row[f"sparsify {method} / fwd"] = statistics.median(ratios)
        row[f"quality {method}"] = statistics.median(q_seconds)
        if q_ratios:
            row[f"quality {method} / fwd"] = statistics.median(q_ratios)
        last_quality = row[f"quality {method}"]
    if loaded.tokenizer is not None:
        ids = passage_ids(loaded, 128)
        _, row["attention 128 tok"] = timed(lambda: capture_attention(loaded, ids))
    row["peak RSS MB"] = peak_mb()
    return row


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log y on log x (time ∝ params^slope)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    den = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / den if den else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="digits,minilm,gpt2-small,gpt2-medium")
    parser.add_argument("--methods", default="magnitude,wanda,sparsegpt")
    parser.add_argument("--repeats", type=int, default=1, help="alternated forward/step pairs per step (medians shown)")
    args = parser.parse_args()
    methods = args.methods.split(",")
    budget = memory_budget_mb()
    # Pay the one-off costs first, so the smallest size's load is not mostly imports and compilation.
    import transformers.models.bert.modeling_bert  # noqa: F401, PLC0415
    import transformers.models.gpt2.modeling_gpt2  # noqa: F401, PLC0415

    sparsekit.masks.warmup()
    rows = []
    with tempfile.TemporaryDirectory(prefix="sparsekit-scale-") as tmp:
        os.environ["SPARSEKIT_MODEL_ROOTS"] = tmp
        for size in args.sizes.split(","):
            if size == "digits":
                spec = "digits:vit"
            elif size == "minilm":
                spec = "minilm"
            elif size in GPT2_SHAPES:
                layers, width, _ = GPT2_SHAPES[size]
                need = gpt2_params(layers, width) * 4 / 2**20
                if need > budget:
                    print(f"{size}: {need:,.0f} MB of fp32 parameters is over the budget of {budget:,.0f} MB: skipped",
                          file=sys.stderr)
                    continue
                spec = f"hf:{write_gpt2(Path(tmp), size)}"
            else:
                parser.error(f"unknown size {size!r}")
            print(f"measuring {size}…", file=sys.stderr, flush=True)
            rows.append(measure(spec, size, methods, args.repeats))
    keys = [k for k in rows[0] if k not in ("size", "params")]
    for r in rows[1:]:
        keys += [k for k in r if k not in keys and k not in ("size", "params")]
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, load average {load} (at the end), "
          f"{time.strftime('%Y-%m-%d %H:%M')}; seconds unless noted (medians of {args.repeats}); 2:4 for every method; "
          "'/ fwd': the step over one dense forward (sparsify: over its calibration tokens, output layer included; "
          "quality: over its evaluation batches), measured next to it")
    print("| size | params (M) | " + " | ".join(keys) + " |")
    print("|---|---:|" + "---:|" * len(keys))
    for r in rows:
        cells = [("–" if r.get(k) is None else f"{r[k]:,.0f}") if k == "peak RSS MB" or "tokens" in k or "positions" in k
                 else (f"{r[k]:.2f}×" if k.endswith("/ fwd") and r.get(k) is not None
                       else (f"{r[k]:.2f}" if r.get(k) is not None else "–")) for k in keys]
        print(f"| {r['size']} | {r['params'] / 1e6:,.1f} | " + " | ".join(cells) + " |")
    params = [r["params"] for r in rows]
    print("\nslope of log seconds on log parameters (1 = linear in size):")
    for k in keys:
        if k == "peak RSS MB" or k.startswith("estimate") or k.endswith("/ fwd") or "tokens" in k or "positions" in k:
            continue
        s = slope(params, [r.get(k) for r in rows])
        print(f"  {k}: {'–' if s is None else f'{s:.2f}'}")
    fits = [name for name, (layers, width, _) in GPT2_SHAPES.items() if gpt2_params(layers, width) * 4 / 2**20 <= budget]
    print(f"\nlargest GPT-2 shape within the memory budget ({budget:,.0f} MB of parameters): {fits[-1] if fits else 'none'}")


if __name__ == "__main__":
    main()

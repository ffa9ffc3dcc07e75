"""Wanda and SparseGPT in the papers' block order vs layer order, on MiniLM, the digits ViT and a causal LM.

    python benchmarks/calibration_order.py                       # all three (trains the small causal LM, ~1-2 min)
    python benchmarks/calibration_order.py --causal-lm DIR       # your own Hugging Face causal LM directory
    python benchmarks/calibration_order.py --models digits:vit   # just one model

``calibration_order="block"`` collects the inputs of every layer of a transformer block from one
forward of that block (earlier blocks pruned, this one dense), as the Wanda and SparseGPT reference
code does; ``"layer"`` prunes each layer on inputs through every already-pruned layer before it,
inside its block too. Every Linear layer is pruned (no fine-tuning).

No pretrained causal LM can be downloaded here, so unless ``--causal-lm`` is given the script
trains one: a 4-block GPT-2 (d=128, MiniLM's WordPiece vocabulary) for a fixed number of steps on
the sentences of the Python documentation shipped with CPython (``pydoc_data.topics``, ~465k
characters), one ``[CLS] sentence [SEP]`` per sequence like the evaluation sentences (seeded, so the
run is reproducible on one machine). The evaluation sentences are another domain, so its
perplexity on them is high; the next-token agreement with the dense model is the fidelity measure. Its quality metric is the loader's: perplexity on the
built-in evaluation sentences and next-token agreement with the dense model.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import torch  # noqa: E402

import sparsekit  # noqa: E402
from sparsekit import SparsifyConfig, sparsify  # noqa: E402

SETTINGS = [("nm", 2, 4, 0.5), ("unstructured", 2, 4, 0.5)]


def train_small_causal_lm(path: Path, steps: int, seed: int = 0) -> Path:
    """A 4-block GPT-2 trained on CPython's bundled documentation, saved with MiniLM's tokenizer."""
    import pydoc_data.topics
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from sparsekit.models.text import minilm_dir

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir()))
    text = "\n".join(pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics))
    # One sentence per sequence, framed [CLS] ... [SEP] like the evaluation sentences.
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n\s*\n", text) if len(s.split()) >= 4]
    seq = 48
    ids = tokenizer(sentences, truncation=True, max_length=seq)["input_ids"]
    pad_id = tokenizer.pad_token_id
    batch_ids = torch.full((len(ids), seq), pad_id)
    for i, row in enumerate(ids):
        batch_ids[i, : len(row)] = torch.tensor(row)
    mask = batch_ids != pad_id
    labels = batch_ids.masked_fill(~mask, -100)
    config = GPT2Config(vocab_size=tokenizer.vocab_size, n_embd=128, n_layer=4, n_head=4, n_positions=128)
    model = GPT2LMHeadModel(config)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    batch = 32
    t0 = time.perf_counter()
    model.train()
    for step in range(steps):
        pick = torch.randint(0, len(ids), (batch,), generator=gen)
        loss = model(input_ids=batch_ids[pick], attention_mask=mask[pick].long(), labels=labels[pick]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"  causal LM step {step + 1}/{steps}: loss {loss.item():.3f} ({time.perf_counter() - t0:.0f} s)",
                  file=sys.stderr)
    model.eval()
    model.save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (minilm_dir() / name).exists():
            shutil.copy(minilm_dir() / name, path / name)
    print(f"  {len(ids):,} sentences ({int(mask.sum()):,} tokens), {steps} steps of {batch} sentences, "
          f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return path


def label(pattern, n, m, sparsity) -> str:
    return f"{n}:{m}" if pattern == "nm" else f"{sparsity:.0%} unstructured"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["minilm", "digits:vit", "causal-lm"],
                        help="model specs; 'causal-lm' = the small trained one or --causal-lm")
    parser.add_argument("--causal-lm", default=None, help="a Hugging Face causal LM directory to use instead")
    parser.add_argument("--lm-steps", type=int, default=600, help="training steps of the small causal LM")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    tmp = None
    rows = []
    for spec in args.models:
        if spec == "causal-lm":
            if args.causal_lm:
                lm_dir = Path(args.causal_lm).resolve()
            else:
                tmp = Path(tempfile.mkdtemp(prefix="sparsekit-lm-"))
                lm_dir = train_small_causal_lm(tmp / "pydoc-gpt2", args.lm_steps)
            os.environ["SPARSEKIT_MODEL_ROOTS"] = str(lm_dir.parent)
            spec = f"hf:{lm_dir.name}"
        loaded = sparsekit.load_model(spec)
        dense = loaded.quality()
        metrics = list(dense)
        print(f"\n{loaded.name}: dense {', '.join(f'{k} {v:.4g}' for k, v in dense.items())}")
        for pattern, n, m, sparsity in SETTINGS:
            for method in ("wanda", "sparsegpt"):
                out = {}
                for order in ("block", "layer"):
                    t0 = time.perf_counter()
                    res = sparsify(loaded, SparsifyConfig(pattern=pattern, n=n, m=m, sparsity=sparsity, method=method,
                                                          calibration_order=order))
                    seconds = time.perf_counter() - t0
                    out[order] = (loaded.quality(res.model), seconds, res.calibration_order)
                rows.append((loaded.name, label(pattern, n, m, sparsity), method, metrics, dense, out))
                b, lay = out["block"], out["layer"]
                print(f"  {label(pattern, n, m, sparsity):>18} {method:>9}: block "
                      + ", ".join(f"{k} {b[0][k]:.4g}" for k in metrics) + f" ({b[1]:.1f} s, used {b[2]}) | layer "
                      + ", ".join(f"{k} {lay[0][k]:.4g}" for k in metrics) + f" ({lay[1]:.1f} s)")
    print("\n| model | setting | method | metric | dense | block (papers') | layer |\n|---|---|---|---|---|---|---|")
    for name, setting, method, metrics, dense, out in rows:
        for k in metrics:
            print(f"| {name} | {setting} | {method} | {k} | {dense[k]:.4g} | {out['block'][0][k]:.4g} | "
                  f"{out['layer'][0][k]:.4g} |")
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

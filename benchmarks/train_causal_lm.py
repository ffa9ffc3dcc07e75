"""Train a small GPT-2-architecture causal LM here, on text every install has, for the causal-LM rows
of the benchmarks: a bigger one than the shipped ``lm:small`` (4 x 128, ``scripts/train_lm_small.py``),
with MiniLM's WordPiece vocabulary.

    python benchmarks/train_causal_lm.py --out DIR [--minutes 4] [--steps N] [--seed 0]
                                         [--layers 4 --width 256 --heads 4] [--extra-text FILE ...]

Corpus (``sparsekit.models.lm_corpus``, shared with the shipped ``lm:small``): ``sparsekit/data/recovery_corpus.txt`` (810 everyday sentences shipped with sparsekit) and the
English documentation in Python's standard library (``pydoc_data.topics.topics``, about 465k
characters; its exact text depends on the Python version). Each sentence or paragraph is tokenised
with MiniLM's uncased WordPiece tokenizer (30,522 ids) as ``[CLS] text [SEP]`` - the form in which
sparsekit scores the built-in evaluation sentences - the pieces are laid end to end and cut into
128-token rows, and about 5 % of the rows (every 20th, from a seeded shuffle) are held out for a
validation perplexity. Before any training the built-in sentences (evaluation and calibration,
``sparsekit.models.sentences``) are looked for in the training text; the run stops with an error
if one is there, since the model is evaluated on them.

Training: AdamW, linear warmup then cosine decay to 10 % of the peak rate, seeded initialisation and
data order. ``--steps`` alone gives the same run on the same machine and Python; ``--minutes`` is a
wall-clock budget and the schedule follows elapsed time, so the step count (and the model) depends on
the machine's speed (with both, whichever ends first). Output: ``save_pretrained`` (safetensors), the
tokenizer files, ``training.json`` and the held-out rows (``validation.json``); the folder loads with ``sparsekit.load_model("hf:<name>")``
when its parent is in ``$SPARSEKIT_MODEL_ROOTS`` (kind ``causal-lm``).

It is a small model trained for minutes on a corpus of about 1.5 x 10^5 tokens: it learns far more
than word frequencies (4 x 256, 300 steps: validation perplexity 64 against 317 for the unigram
model) but is no LLM (OWL was proposed for LLMs with outlier features; it may have none). The
built-in sentences are everyday English, and about a sixth of their tokens never occur in this
corpus; the model gives those almost no probability, so its perplexity on them is in the thousands
and is dominated by them. The held-out rows (``validation.json``) are the text it is competent on.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import torch  # noqa: E402

# The corpus and the leakage check are the library's (lm:small trains on the same text).
from sparsekit.models.lm_corpus import (  # noqa: E402,F401
    MIN_UNIT_WORDS,
    SHINGLE_WORDS,
    check_no_leakage,
    corpus_units,
    pydoc_digest,
    pydoc_units,
)

SEQ_LEN = 128
"""Tokens per training row; also the model's ``n_positions`` (sparsekit's calibration packs rows of
128 tokens and the evaluation sentences are shorter)."""
VAL_EVERY = 20
"""Every 20th row of the shuffled rows is held out (5 %)."""
VALIDATION_FILE = "validation.json"
"""The held-out rows, saved next to the model for evaluations on text like the training text."""
_TOKENIZER_PREFIXES = ("tokenizer", "vocab", "special_tokens")


def _tokenizer():
    from transformers import AutoTokenizer

    from sparsekit.models.text import minilm_dir

    return AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True, trust_remote_code=False)


def pack_rows(units: dict[str, list[str]], tokenizer, seq_len: int = SEQ_LEN) -> tuple[torch.Tensor, dict[str, int]]:
    """Every unit as ``[CLS] ... [SEP]``, end to end, cut into full rows of ``seq_len`` (the tail is dropped).

    Returns:
        (``LongTensor[rows, seq_len]``, source -> tokens).
    """
    flat: list[int] = []
    counts = {}
    for source, texts in units.items():
        ids = tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        counts[source] = sum(len(x) for x in ids)
        for x in ids:
            flat.extend(x)
    n = len(flat) // seq_len
    if n < 2 * VAL_EVERY:
        raise ValueError(f"the corpus gives only {n} rows of {seq_len} tokens; too little to train and validate on")
    return torch.tensor(flat[: n * seq_len], dtype=torch.long).view(n, seq_len), counts


def split_rows(rows: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(training rows, held-out rows): every ``VAL_EVERY``-th row of a seeded shuffle is held out."""
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))
    held = order[::VAL_EVERY]
    kept = torch.cat([order[i::VAL_EVERY] for i in range(1, VAL_EVERY)]).sort().values
    return rows[kept], rows[held]


def lr_factor(progress: float, warmup: float) -> float:
    """Linear warmup over the first ``warmup`` of the run, then cosine decay to 0.1."""
    if progress < warmup:
        return max(progress / warmup, 1e-3)
    t = min((progress - warmup) / max(1 - warmup, 1e-9), 1.0)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))


def _val_loss(model, rows: torch.Tensor, batch: int) -> float:
    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(rows), batch):
            x = rows[i:i + batch]
            total += model(input_ids=x, labels=x).loss.item() * x.shape[0] * (x.shape[1] - 1)
            count += x.shape[0] * (x.shape[1] - 1)
    model.train()
    return total / count


def unigram_perplexity(train: torch.Tensor, val: torch.Tensor, vocab: int) -> float:
    """Perplexity of the validation tokens (each but a row's first) under the training rows'
    add-one-smoothed token frequencies: what a model that learned only word frequencies scores."""
    counts = torch.bincount(train.flatten(), minlength=vocab).double() + 1
    logp = (counts / counts.sum()).log()
    return math.exp(-logp[val[:, 1:].flatten()].mean().item())


def train(
    out_dir: str | os.PathLike,
    *,
    minutes: float | None = None,
    steps: int | None = None,
    seed: int = 0,
    layers: int = 4,
    width: int = 256,
    heads: int = 4,
    batch_size: int = 8,
    lr: float = 2e-3,
    warmup: float = 0.05,
    evals: int = 10,
    extra_texts: Sequence[str] = (),
    log=print,
) -> dict:
    """Train the small causal LM and save it as a Hugging Face directory.

    Args:
        out_dir: where to save (created; existing files of the same names are overwritten).
        minutes: wall-clock budget of the training loop (the schedule follows elapsed time).
        steps: number of optimizer steps (the schedule follows steps). At least one of the two.
        seed: initialisation, split and data-order seed.
        layers, width, heads: the GPT-2 shape (``width`` a multiple of ``heads``).
        batch_size: rows of ``SEQ_LEN`` tokens per step.
        lr: peak AdamW learning rate.
        warmup: share of the run spent warming up.
        evals: validation passes during the run (plus one at the end).
        extra_texts: more training text; checked for leakage like the rest.
        log: where progress lines go.

    Returns:
        The record also written to ``training.json``.

    Raises:
        ValueError: no budget given, a bad shape, too little text, or a built-in sentence in the text.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    from sparsekit.models.text import minilm_dir

    if minutes is None and steps is None:
        raise ValueError("give a wall-clock budget (minutes) or a number of steps")
    if (minutes is not None and minutes <= 0) or (steps is not None and steps < 1):
        raise ValueError(f"minutes must be positive and steps at least 1, got minutes={minutes}, steps={steps}")
    if width % heads:
        raise ValueError(f"width {width} is not a multiple of heads {heads}")
    units = corpus_units(extra_texts)
    check_no_leakage(u for us in units.values() for u in us)
    tokenizer = _tokenizer()
    rows, token_counts = pack_rows(units, tokenizer)
    train_rows, val_rows = split_rows(rows, seed)
    vocab = tokenizer.vocab_size
    unigram = unigram_perplexity(train_rows, val_rows, vocab)
    log(f"corpus: {', '.join(f'{k} {len(v):,} pieces / {token_counts[k]:,} tokens' for k, v in units.items())}; "
        f"{len(train_rows):,} training + {len(val_rows):,} validation rows of {SEQ_LEN}; "
        f"unigram validation perplexity {unigram:.1f}")

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab, n_positions=SEQ_LEN, n_embd=width, n_layer=layers, n_head=heads,
                        bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    model = GPT2LMHeadModel(config)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95))
    log(f"GPT-2 {layers} layers x {width} wide, {heads} heads: {n_params:,} parameters "
        f"({n_params - vocab * width:,} outside the tied embedding); "
        f"budget {f'{minutes:g} min' if minutes else ''}{' / ' if minutes and steps else ''}{f'{steps} steps' if steps else ''}")

    model.train()
    data_gen = torch.Generator().manual_seed(seed + 1)
    perm, pos = torch.randperm(len(train_rows), generator=data_gen), 0
    losses: list[float] = []
    history: list[dict] = []
    next_eval, step, progress = 1.0 / evals, 0, 0.0
    t0 = time.perf_counter()
    while progress < 1.0:
        for group in opt.param_groups:
            group["lr"] = lr * lr_factor(progress, warmup)
        if pos + batch_size > len(perm):
            perm, pos = torch.randperm(len(train_rows), generator=data_gen), 0
        x = train_rows[perm[pos:pos + batch_size]]
        pos += batch_size
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        step += 1
        elapsed = time.perf_counter() - t0
        progress = max(step / steps if steps else 0.0, elapsed / (60 * minutes) if minutes else 0.0)
        if progress >= next_eval and progress < 1.0:
            next_eval += 1.0 / evals
            v = _val_loss(model, val_rows, 2 * batch_size)
            history.append({"step": step, "seconds": round(elapsed, 1), "train_loss": sum(losses[-20:]) / len(losses[-20:]),
                            "val_loss": v})
            log(f"  step {step:5d} ({elapsed:5.0f} s): train loss {history[-1]['train_loss']:.3f}, "
                f"val loss {v:.3f} (perplexity {math.exp(v):.1f})")
    seconds = time.perf_counter() - t0
    val = _val_loss(model, val_rows, 2 * batch_size)
    model.eval()
    tail = losses[-max(1, min(20, len(losses) // 5)):]
    log(f"done: {step} steps, {step * batch_size * SEQ_LEN:,} tokens in {seconds:.0f} s; train loss "
        f"{losses[0]:.3f} -> {sum(tail) / len(tail):.3f}; val perplexity {math.exp(val):.1f} (unigram {unigram:.1f})")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    for f in minilm_dir().iterdir():
        if f.is_file() and f.name.startswith(_TOKENIZER_PREFIXES):
            shutil.copy(f, out / f.name)
    record = {
        "model": {"architecture": "GPT2LMHeadModel", "layers": layers, "width": width, "heads": heads,
                  "n_positions": SEQ_LEN, "vocab_size": vocab, "parameters": n_params,
                  "parameters_outside_embedding": n_params - vocab * width},
        "training": {"seed": seed, "steps": step, "batch_rows": batch_size, "seq_len": SEQ_LEN,
                     "tokens_seen": step * batch_size * SEQ_LEN, "seconds": round(seconds, 1),
                     "budget_minutes": minutes, "budget_steps": steps, "peak_lr": lr, "warmup": warmup,
                     "threads": torch.get_num_threads()},
        "loss": {"train_first": losses[0], "train_last": sum(tail) / len(tail), "val": val,
                 "val_perplexity": math.exp(val), "unigram_val_perplexity": unigram},
        "corpus": {"pieces": {k: len(v) for k, v in units.items()}, "tokens": token_counts,
                   "characters": {k: sum(len(u) for u in v) for k, v in units.items()},
                   "train_rows": len(train_rows), "val_rows": len(val_rows),
                   "pydoc_sha256": pydoc_digest()},
        "history": history,
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine()},
    }
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    (out / VALIDATION_FILE).write_text(json.dumps({"seq_len": SEQ_LEN, "rows": val_rows.tolist()}) + "\n",
                                       encoding="utf-8")
    return record


def validation_rows(model_dir: str | os.PathLike) -> list[list[int]]:
    """The held-out rows a run saved next to its model (token ids, ``SEQ_LEN`` each): text of the
    training corpus's kind that the model never trained on.

    Raises:
        ValueError: the folder has no ``validation.json`` (not made by this script).
    """
    path = Path(model_dir) / VALIDATION_FILE
    if not path.is_file():
        raise ValueError(f"{model_dir} has no {VALIDATION_FILE}; held-out rows exist only for models trained by "
                         "benchmarks/train_causal_lm.py")
    return json.loads(path.read_text(encoding="utf-8"))["rows"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output directory (a Hugging Face model folder)")
    parser.add_argument("--minutes", type=float, default=None, help="wall-clock budget (default 4 unless --steps)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (reproducible)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8, help=f"rows of {SEQ_LEN} tokens per step")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--extra-text", action="append", default=[], metavar="FILE", help="more training text (UTF-8)")
    args = parser.parse_args()
    minutes = args.minutes if args.minutes is not None or args.steps is not None else 4.0
    extra = [Path(f).read_text(encoding="utf-8") for f in args.extra_text]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, Python {platform.python_version()}, "
          f"{platform.processor() or platform.machine()}, load average {os.getloadavg()[0]:.1f}", flush=True)
    train(args.out, minutes=minutes, steps=args.steps, seed=args.seed, layers=args.layers, width=args.width,
          heads=args.heads, batch_size=args.batch, lr=args.lr, extra_texts=extra,
          log=lambda s: print(s, flush=True))
    print(f"saved to {args.out}")


if __name__ == "__main__":
    main()

"""Retrain the shipped causal LM ``lm:small`` and write sparsekit/models/bundled/lm_small/.

    python scripts/train_lm_small.py                    # the shipped run (fixed steps, seeded)
    python scripts/train_lm_small.py --out DIR --steps 50 --layers 1 --width 32 --heads 2   # a quick try
    python scripts/train_lm_small.py --heldout-only     # rewrite heldout.json only (same seeded split, no training)

Corpus (``sparsekit.models.lm_corpus``): the 810 everyday sentences of ``sparsekit/data/recovery_corpus.txt``
and the English documentation topics of Python's standard library (``pydoc_data.topics``, PSF licence),
duplicates dropped. Of a seeded shuffle of the pieces every 20th is held out for evaluation (saved in
``heldout.json``: the recovery sentences as text, the documentation pieces as references - topic, index, SHA-256 -
that ``lm_small_heldout`` rebuilds from the installed topics) and the 10th after it for validation (the loss curve); a held-out or validation piece
sharing a run of 10 words with the training pieces goes back to training, so the training text is exactly the
corpus without the pieces in ``heldout.json``. Before anything is trained the
built-in evaluation and calibration sentences (``sparsekit.models.sentences``) are looked for in the
training text, and the run stops if one is there.

Tokenizer: a byte-level BPE (``tokenizers``, 4,096 ids, ``<|endoftext|>`` the only special token, put
before every piece) trained on the training pieces only. Model: ``transformers.GPT2LMHeadModel`` (tied
embeddings, 256 positions), AdamW, linear warmup then cosine decay to 10 %, seeded initialisation and
data order, ``--threads`` CPU threads. The same arguments give the same weights on the same machine,
torch and Python (the documentation topics differ between Python versions; ``training.json`` records
their SHA-256). Saved as float16 safetensors; the perplexities in ``training.json`` are measured on
those float16 weights loaded as float32, as ``load_model("lm:small")`` does.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import torch  # noqa: E402

from sparsekit.models import lm_corpus  # noqa: E402
from sparsekit.models.lm_small import HELDOUT_FILE, LM_SMALL_DIR, RECORD_FILE, SEQ_LEN  # noqa: E402

EOT = "<|endoftext|>"
HELD_EVERY = 20
"""Every 20th piece of the shuffled corpus is held out, and every 20th from the 10th on is validation."""


def split_units(units: dict[str, list[str]], seed: int) -> tuple[list[str], list[str], list[str]]:
    """(training, held-out, validation) pieces, each in corpus order, duplicates dropped.

    Every 20th piece of a seeded shuffle is held out and the 10th after it is validation; one sharing a run of
    ``SHINGLE_WORDS`` words with the training pieces goes back to training (until none does), so the training
    text is exactly the corpus without the held-out and validation pieces.
    """
    seen, pieces = set(), []
    for texts in units.values():
        for t in texts:
            if lm_corpus.normalise(t) not in seen:
                seen.add(lm_corpus.normalise(t))
                pieces.append(t)
    order = torch.randperm(len(pieces), generator=torch.Generator().manual_seed(seed)).tolist()
    role = [0] * len(pieces)
    for rank, i in enumerate(order):
        role[i] = 1 if rank % HELD_EVERY == 0 else 2 if rank % HELD_EVERY == HELD_EVERY // 2 else 0
    while True:
        train = [p for i, p in enumerate(pieces) if role[i] == 0]
        kept = [i for i in range(len(pieces)) if role[i]]
        found = set(lm_corpus.leaked([pieces[i] for i in kept], train))
        if not found:
            break
        for i in kept:
            if pieces[i] in found:
                role[i] = 0
    held = [p for i, p in enumerate(pieces) if role[i] == 1]
    val = [p for i, p in enumerate(pieces) if role[i] == 2]
    return train, held, val


def write_heldout(out: Path, held: list[str], val: list[str]) -> None:
    """``heldout.json``: the held-out and validation pieces as ``lm_corpus.piece_refs`` (no documentation text),
    one per line; checked to rebuild to exactly ``held`` and ``val`` before the file is replaced."""
    refs = {"heldout": lm_corpus.piece_refs(held), "validation": lm_corpus.piece_refs(val)}
    for name, texts in (("heldout", held), ("validation", val)):
        again, failed = lm_corpus.rebuild_pieces(refs[name])
        if failed or again != texts:
            raise RuntimeError(f"the {name} references do not rebuild to the same texts; {HELDOUT_FILE} not written")
    about = ("corpus pieces held out of training (every 20th of a seeded shuffle, none sharing a run of "
             f"{lm_corpus.SHINGLE_WORDS} words with the training text); validation: the pieces the loss curve was "
             "measured on, not trained on either. Sentences of sparsekit/data/recovery_corpus.txt (source "
             "'recovery') are stored as text; pieces of Python's documentation topics (source 'pydoc') only as "
             "references: topic name in pydoc_data.topics, index among that topic's pieces as "
             "sparsekit.models.lm_corpus.pydoc_topic_units cuts them, and the piece's SHA-256; "
             "sparsekit.models.lm_small_heldout rebuilds them")
    lines = [f'"about": {json.dumps(about)}', f'"pydoc_sha256": {json.dumps(lm_corpus.pydoc_digest())}']
    for name in ("heldout", "validation"):
        lines.append(f'"{name}": [\n' + ",\n".join(json.dumps(r, ensure_ascii=False) for r in refs[name]) + "\n]")
    (out / HELDOUT_FILE).write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")


def heldout_only(out: Path, seed: int) -> None:
    """Rewrite ``heldout.json`` of a trained folder from the same seeded split, without training; refuses when
    the split's training text is not the one ``training.json`` records (another corpus or Python)."""
    record = json.loads((out / RECORD_FILE).read_text(encoding="utf-8"))
    train_texts, held, val = split_units(lm_corpus.corpus_units(), seed)
    digest = hashlib.sha256("\n".join(train_texts).encode()).hexdigest()
    if seed != record["training"]["seed"] or digest != record["corpus"]["train_text_sha256"]:
        raise SystemExit(f"seed {seed} on this corpus and Python gives training text {digest[:12]}..., but "
                         f"{out / RECORD_FILE} records seed {record['training']['seed']} and "
                         f"{record['corpus']['train_text_sha256'][:12]}...: not the split this model was trained on")
    write_heldout(out, held, val)
    print(f"wrote {out / HELDOUT_FILE}: {len(held)} held-out and {len(val)} validation pieces")


def train_tokenizer(texts: list[str], vocab: int, out: Path):
    """A byte-level BPE on ``texts``, saved in ``out`` (tokenizer.json + tokenizer_config.json)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainer=trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=[EOT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single=f"{EOT} $A", special_tokens=[(EOT, 0)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, pad_token=EOT,
                                   unk_token=EOT, model_max_length=SEQ_LEN)
    fast.save_pretrained(str(out))
    return AutoTokenizer.from_pretrained(str(out), local_files_only=True)


def pack_rows(tokenizer, texts: list[str]) -> torch.Tensor:
    """Every piece as ``<|endoftext|> piece``, end to end, cut into full rows of ``SEQ_LEN`` (tail dropped)."""
    flat = [t for ids in tokenizer(texts, truncation=False, verbose=False)["input_ids"] for t in ids]
    n = len(flat) // SEQ_LEN
    if n < 8:
        raise ValueError(f"the corpus gives only {n} rows of {SEQ_LEN} tokens; too little to train on")
    return torch.tensor(flat[: n * SEQ_LEN], dtype=torch.long).view(n, SEQ_LEN)


def lr_factor(progress: float, warmup: float) -> float:
    """Linear warmup over the first ``warmup`` of the run, then cosine decay to 0.1."""
    if progress < warmup:
        return max(progress / warmup, 1e-3)
    t = min((progress - warmup) / max(1 - warmup, 1e-9), 1.0)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))


def train(out_dir: Path, *, steps: int, seed: int, layers: int, width: int, heads: int, vocab: int, batch: int,
          lr: float, warmup: float, threads: int, evals: int = 8, log=print) -> dict:
    """Train and write the model folder; returns the record also written to ``training.json``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from sparsekit.models.lm_small import heldout_perplexity, heldout_rows, load_lm_small, lm_small_heldout

    if steps < 1 or width % heads:
        raise ValueError(f"steps must be at least 1 and width a multiple of heads (got {steps}, {width}, {heads})")
    torch.set_num_threads(threads)
    units = lm_corpus.corpus_units()
    train_texts, held, val = split_units(units, seed)
    lm_corpus.check_no_leakage(train_texts)
    work = Path(tempfile.mkdtemp(prefix="lm_small_"))
    tokenizer = train_tokenizer(train_texts, vocab, work)
    rows = pack_rows(tokenizer, train_texts)
    val_rows = heldout_rows(tokenizer, val)
    counts = torch.bincount(rows.flatten(), minlength=len(tokenizer)).double() + 1
    held_ids = heldout_rows(tokenizer, held)
    targets = held_ids["input_ids"][:, 1:][held_ids["attention_mask"][:, 1:].bool()]
    unigram = math.exp(-(counts / counts.sum()).log()[targets].mean().item())
    log(f"corpus: {len(train_texts):,} training pieces ({rows.numel():,} tokens, {len(rows)} rows of {SEQ_LEN}), "
        f"{len(held):,} held out, {len(val):,} validation; unigram held-out perplexity {unigram:.1f}")

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=SEQ_LEN, n_embd=width, n_layer=layers, n_head=heads,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    model = GPT2LMHeadModel(config)
    n_params = sum(p.numel() for p in model.parameters())
    groups = [{"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))
    log(f"GPT-2 {layers} x {width}, {heads} heads, {len(tokenizer)} ids: {n_params:,} parameters; {steps} steps of "
        f"{batch} rows, {threads} threads")
    data_gen = torch.Generator().manual_seed(seed + 1)
    perm, pos, losses, history = torch.randperm(len(rows), generator=data_gen), 0, [], []
    t0 = time.perf_counter()
    model.train()
    for step in range(1, steps + 1):
        for group in opt.param_groups:
            group["lr"] = lr * lr_factor((step - 1) / steps, warmup)
        if pos + batch > len(perm):
            perm, pos = torch.randperm(len(rows), generator=data_gen), 0
        x = rows[perm[pos:pos + batch]]
        pos += batch
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % max(1, steps // evals) == 0 or step == steps:
            model.eval()
            v = heldout_perplexity(model, val_rows)
            model.train()
            history.append({"step": step, "seconds": round(time.perf_counter() - t0, 1),
                            "train_loss": sum(losses[-20:]) / len(losses[-20:]), "val_perplexity": v})
            log(f"  step {step:5d} ({history[-1]['seconds']:6.0f} s): train loss {history[-1]['train_loss']:.3f}, "
                f"validation perplexity {v:.1f}")
    seconds = time.perf_counter() - t0
    model.eval()

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for f in out.iterdir():
        if f.is_file():
            f.unlink()
    model.half().save_pretrained(str(out))
    for f in work.iterdir():
        shutil.copy(f, out / f.name)
    shutil.rmtree(work)
    write_heldout(out, held, val)
    loaded = load_lm_small(out)  # the float16 weights as load_model reads them
    held_ppl = heldout_perplexity(loaded.module, heldout_rows(loaded.tokenizer, lm_small_heldout(out)))
    eval_ppl = loaded.quality()["perplexity"]
    log(f"done: {steps} steps in {seconds:.0f} s; held-out perplexity {held_ppl:.1f} (unigram {unigram:.1f}), "
        f"on the {loaded.info['n_eval_sentences']} built-in evaluation sentences {eval_ppl:.1f}")
    record = {
        "model": {"architecture": "GPT2LMHeadModel", "layers": layers, "width": width, "heads": heads,
                  "n_positions": SEQ_LEN, "vocab_size": len(tokenizer), "parameters": n_params,
                  "stored_dtype": "float16"},
        "training": {"seed": seed, "steps": steps, "batch_rows": batch, "seq_len": SEQ_LEN,
                     "tokens_seen": steps * batch * SEQ_LEN, "seconds": round(seconds, 1), "peak_lr": lr,
                     "warmup": warmup, "threads": threads},
        "loss": {"train_first": losses[0], "train_last": sum(losses[-20:]) / len(losses[-20:]),
                 "heldout_perplexity": held_ppl, "unigram_heldout_perplexity": unigram,
                 "eval_sentence_perplexity": eval_ppl},
        "corpus": {"sources": {k: len(v) for k, v in units.items()}, "train_pieces": len(train_texts),
                   "train_tokens": rows.numel(),
                   "train_text_sha256": hashlib.sha256("\n".join(train_texts).encode()).hexdigest(),
                   "heldout_texts": len(held), "validation_texts": len(val),
                   "pydoc_sha256": lm_corpus.pydoc_digest()},
        "history": history,
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "machine": platform.machine()},
    }
    (out / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(LM_SMALL_DIR), help="output folder (default: the shipped one)")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=8, help=f"rows of {SEQ_LEN} tokens per step")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--heldout-only", action="store_true",
                        help=f"only rewrite {HELDOUT_FILE} of the trained --out folder from the --seed split")
    args = parser.parse_args()
    if args.heldout_only:
        heldout_only(Path(args.out), args.seed)
        return
    print(f"torch {torch.__version__}, Python {platform.python_version()}, {platform.processor() or platform.machine()}, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    train(Path(args.out), steps=args.steps, seed=args.seed, layers=args.layers, width=args.width, heads=args.heads,
          vocab=args.vocab, batch=args.batch, lr=args.lr, warmup=args.warmup, threads=args.threads,
          log=lambda s: print(s, flush=True))
    print(f"saved to {args.out}")


if __name__ == "__main__":
    main()

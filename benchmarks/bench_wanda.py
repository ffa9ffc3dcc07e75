"""Wanda on a GPT-2 small-size model: sparsekit against a reference written here from the paper's
algorithm, side by side in one run.

    python benchmarks/bench_wanda.py [--size gpt2-small] [--threads 1,2]

The reference follows the structure of the authors' `prune_wanda` (Sun et al. 2023, Algorithm and
Section 3): capture the hidden states entering the first block; then for every block, run each
calibration sequence through it one at a time with hooks on its linear layers that keep a running
mean of every input feature's squared norm over tokens (float32), score |W_ij| * sqrt(mean_j),
prune the (M - N) lowest of every group of M along the input dimension of each output row, and run
the sequences through the pruned block again to get the next block's inputs. sparsekit's Wanda does
the same in one batched forward (``calibration.sequential_prune``), accumulates the norms in float64,
and stops after the last block.

Both get the same calibration rows (the model's packed calibration batch, full 128-token rows only,
so neither needs an attention mask). The table gives each one's seconds, the ratio, and how many mask
entries differ and the first layer where they do (float32 running mean against float64 sums, and
batched against one-sequence matmuls, can swap a near-tie; every later block then sees slightly
different inputs). Random weights: the masks and times are real, the quality is not the point.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

import sparsekit  # noqa: E402
from bench_scale import write_gpt2  # noqa: E402


class _Stop(Exception):
    pass


def reference_wanda(model, input_ids: torch.Tensor, n: int, m: int) -> dict[str, torch.Tensor]:
    """Masks (True = kept, each weight's own layout) of the reference Wanda on a GPT-2 model, which
    it prunes in place."""
    blocks = model.transformer.h
    inps, rest, kwargs = [], [], {}

    def catch(module, args, kw):
        # Everything but the hidden states (the causal mask may come positionally) is the same
        # for every sequence of one length, so the first call's is kept.
        inps.append(args[0].detach())
        if not rest:
            rest.extend(args[1:])
            kwargs.update(kw)
        raise _Stop

    handle = blocks[0].register_forward_pre_hook(catch, with_kwargs=True)
    with torch.no_grad():
        for j in range(input_ids.shape[0]):
            try:
                model(input_ids=input_ids[j:j + 1], use_cache=False)
            except _Stop:
                pass
    handle.remove()
    masks = {}
    for b, block in enumerate(blocks):
        subset = {name: mod for name, mod in block.named_modules() if isinstance(mod, type(block.attn.c_attn))}
        scaler = {name: torch.zeros(mod.weight.shape[0]) for name, mod in subset.items()}  # Conv1D: [in, out]
        counts = {name: 0 for name in subset}

        def add_batch(name):
            def hook(module, args, out):
                x = args[0].detach().reshape(-1, args[0].shape[-1]).float().t()  # [in, tokens]
                tmp = x.shape[1]
                scaler[name] *= counts[name] / (counts[name] + tmp)
                counts[name] += tmp
                scaler[name] += torch.norm(x, p=2, dim=1) ** 2 / counts[name]
            return hook

        handles = [mod.register_forward_hook(add_batch(name)) for name, mod in subset.items()]
        with torch.no_grad():
            for x in inps:
                block(x, *rest, **kwargs)
        for h in handles:
            h.remove()
        for name, mod in subset.items():
            W = mod.weight.data.t()  # [out, in]
            metric = W.abs() * torch.sqrt(scaler[name].reshape(1, -1))
            prune = torch.zeros_like(W, dtype=torch.bool)
            for ii in range(0, W.shape[1], m):
                tmp = metric[:, ii:ii + m].float()
                prune.scatter_(1, ii + torch.topk(tmp, m - n, dim=1, largest=False)[1], True)
            W[prune] = 0
            masks[f"transformer.h.{b}.{name}"] = (~prune).t().contiguous()
        outs = []
        with torch.no_grad():
            for x in inps:
                out = block(x, *rest, **kwargs)
                outs.append(out[0] if isinstance(out, tuple) else out)
        inps = outs
    return masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="gpt2-small")
    parser.add_argument("--threads", default="1,2")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sparsekit-wanda-") as tmp:
        os.environ["SPARSEKIT_MODEL_ROOTS"] = tmp
        loaded = sparsekit.load_model(f"hf:{write_gpt2(Path(tmp), args.size)}")
        calib = loaded.calibration
        full = calib["attention_mask"].all(dim=1)
        calib = {k: v[full] for k, v in calib.items()}
        config = sparsekit.SparsifyConfig(method="wanda", include=r"^transformer\.h\.")
        print(f"# {args.size}, {calib['input_ids'].shape[0]} calibration rows x {calib['input_ids'].shape[1]} tokens, "
              f"torch {torch.__version__}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')}; 2:4, one run each")
        print("| threads | sparsekit (s) | reference (s) | sparsekit / reference | mask entries that differ | "
              "first layer that differs (entries) |")
        print("|---:|---:|---:|---:|---:|---|")
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            start = time.perf_counter()
            ours = sparsekit.sparsify(loaded, config, calibration=calib).masks
            t_ours = time.perf_counter() - start
            model = copy.deepcopy(loaded.module)
            start = time.perf_counter()
            ref = reference_wanda(model, calib["input_ids"], 2, 4)
            t_ref = time.perf_counter() - start
            per_layer = {k: int((ours[k] != ref[k]).sum()) for k in ref}
            diff = sum(per_layer.values())
            total = sum(v.numel() for v in ref.values())
            first = next((f"{k} ({d:,})" for k, d in per_layer.items() if d), "none")
            print(f"| {threads} | {t_ours:.2f} | {t_ref:.2f} | {t_ours / t_ref:.2f}× | {diff:,} of {total:,} | {first} |")


if __name__ == "__main__":
    main()

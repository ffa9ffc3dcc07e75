"""What keeping finished layers costs a calibrated sparsify, and what it saves after an interruption.

    python benchmarks/bench_resume.py [--size gpt2-small] [--methods wanda,sparsegpt] [--repeats 3]

On a random-weight GPT-2 of the named shape (as ``bench_scale.py`` builds it; the costs are real, the
quality means nothing), per method, in one process:

- ``off`` / ``on``: a 2:4 sparsify with ``resume=False`` and with the default ``resume=True`` (which writes
  every finished layer to the disk cache once the run has gone on ``CHECKPOINT_AFTER_S``), alternated
  ``--repeats`` times; medians, their ratio, and the bytes one run writes;
- ``interrupted at half``: a run stopped (KeyboardInterrupt from its progress callback) when half its
  layers are done, then the same call again: the seconds of the second call against a whole run's, and
  the layers it took from the first.

The disk cache is a temporary folder. The header gives torch's threads and the load average.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="gpt2-small")
    parser.add_argument("--methods", default="wanda,sparsegpt")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-resume-"))
    os.environ["SPARSEKIT_CACHE_DIR"] = str(tmp / "cache")
    os.environ["SPARSEKIT_MODEL_ROOTS"] = str(tmp / "models")

    import torch  # noqa: PLC0415

    import sparsekit  # noqa: PLC0415
    from sparsekit import pruned_layers  # noqa: PLC0415
    from bench_scale import write_gpt2  # noqa: PLC0415

    write_gpt2(tmp / "models", args.size)
    loaded = sparsekit.load_model(f"hf:{args.size}")
    written = [0]

    def count_bytes():
        cache = pruned_layers.get_cache()
        real = cache.set

        def counting(key, value, *a, **kw):
            if str(key).startswith("sparsify-layer:"):
                written[0] += len(value)
            return real(key, value, *a, **kw)
        cache.set = counting
    count_bytes()
    print(f"# {args.size}: {loaded.n_params / 1e6:.0f} M parameters; torch threads {torch.get_num_threads()}; "
          f"load average {os.getloadavg()[0]:.2f}; CHECKPOINT_AFTER_S {pruned_layers.CHECKPOINT_AFTER_S}")
    print("| method | off s | on s | on / off | MB written | interrupted at half: 2nd call s | 2nd / whole | "
          "layers taken |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for method in args.methods.split(","):
        config = sparsekit.SparsifyConfig(pattern="nm", n=2, m=4, method=method)
        off, on = [], []
        for _ in range(args.repeats):
            for keep, out in ((False, off), (True, on)):
                written[0] = 0
                start = time.perf_counter()
                result = sparsekit.sparsify(loaded, config, progress=False, resume=keep)
                out.append(time.perf_counter() - start)
                layers = len(result.masks)
                result = None
        per_run = written[0]
        seen = [0]

        def stop_at_half(fraction, message, method=method, half=layers // 2):
            if message.startswith(f"{method}: "):
                if seen[0] == half:
                    raise KeyboardInterrupt
                seen[0] += 1
        try:
            sparsekit.sparsify(loaded, config, progress=stop_at_half)
        except KeyboardInterrupt:
            pass
        start = time.perf_counter()
        second = sparsekit.sparsify(loaded, config, progress=False)
        again = time.perf_counter() - start
        whole = statistics.median(on)
        print(f"| {method} | {statistics.median(off):.2f} | {whole:.2f} | {whole / statistics.median(off):.3f} | "
              f"{per_run / 1e6:.0f} | {again:.2f} | {again / whole:.2f} | {len(second.resumed_layers)} of {layers} |")


if __name__ == "__main__":
    main()

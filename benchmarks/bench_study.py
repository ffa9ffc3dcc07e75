"""The same small study on each backend: cells per minute and the overhead each cell pays.

    .venv/bin/python benchmarks/bench_study.py [--seeds 3] [--cpus 2]

Backends: ``local`` in this process, ``local`` with 2 worker processes, and ``ray`` on a one-node cluster
on localhost that this script starts (``ray start --head --block``) and stops by its pid. Ray runs twice on
fresh caches: ``cold`` (worker processes start, import torch and load the model) and ``warm`` (the same
workers again). Every run starts from an empty cache, so every distinct cell is computed.

Overhead per cell = (slots × wall time − Σ the cells' own compute seconds) / cells, with slots the cells
that can run at once (1 in process, else the workers/CPUs): the slot time not spent computing a cell
(process start, imports, model loads, scheduling, transfer, writing results).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from sparsekit import study  # noqa: E402
from sparsekit.study.raycluster import LocalRayCluster  # noqa: E402


def grid(seeds: int) -> study.StudySpec:
    return study.StudySpec(name="bench", models=("digits:cnn",), methods=("magnitude", "wanda", "sparsegpt", "random"),
                           patterns=("2:4", "unstructured:0.5"), seeds=tuple(range(seeds)))


def measure(label: str, spec: study.StudySpec, slots: int, **kw) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-study-") as cache:
        os.environ["SPARSEKIT_CACHE_DIR"] = cache  # empty: every distinct cell is computed
        start = time.perf_counter()
        result = study.run_study(spec, **kw)
        wall = time.perf_counter() - start
    computed = {r.key: r for r in result.records}  # cells sharing a key were computed once
    compute = sum(r.seconds or 0.0 for r in computed.values())
    n = len(computed)
    assert result.status.state == "finished" and not result.failed, result.status.line()
    return {"label": label, "slots": slots, "cells": n, "wall": wall, "compute": compute,
            "per_min": 60 * n / wall, "overhead": (slots * wall - compute) / n, "records": result.records}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the Ray node and local worker processes")
    args = parser.parse_args()
    spec = grid(args.seeds)
    rows = [measure("local, in process", spec, 1, backend="local"),
            measure(f"local, {args.cpus} processes", spec, args.cpus, backend="local", workers=args.cpus)]
    from sparsekit.study import ray_backend

    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        cluster = LocalRayCluster(tmp, num_cpus=args.cpus).start()
        try:
            t0 = time.perf_counter()
            study.cluster_resources(cluster.address)
            connect_s = time.perf_counter() - t0
            rows.append(measure(f"ray, {args.cpus} CPUs, cold", spec, args.cpus, backend="ray",
                                ray_address=cluster.address))
            rows.append(measure(f"ray, {args.cpus} CPUs, warm", spec, args.cpus, backend="ray",
                                ray_address=cluster.address))
        finally:
            ray_backend.disconnect()
            cluster.stop()
    same = all([study.comparable(r) for r in row["records"]] == [study.comparable(r) for r in rows[0]["records"]]
               for row in rows)
    print(f"python {platform.python_version()}, torch {torch.__version__}, ray {__import__('ray').__version__}, "
          f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), one run each, shared machine")
    print(f"grid: {spec.cell_count()} cells ({spec.models[0]}, {', '.join(spec.methods)} × {', '.join(spec.patterns)} × "
          f"{len(spec.seeds)} seeds), {rows[0]['cells']} distinct; Ray connect {connect_s:.1f} s (not in the table)")
    print()
    print("| backend | slots | cells | wall s | Σ cell compute s | cells / min | overhead / cell s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['label']} | {r['slots']} | {r['cells']} | {r['wall']:.1f} | {r['compute']:.1f} | "
              f"{r['per_min']:.0f} | {r['overhead']:.2f} |")
    print()
    print(f"records identical across backends (timing fields excluded): {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

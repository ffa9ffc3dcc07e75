"""Run the suites as one measured run (shared by the CLI and the Benchmarks page)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from ..models import LoadedModel, load_model
from ..progress import ProgressArg, ProgressFn, reporter
from .harness import CaseResult, environment, parse_dtype, time_budget
from .harness import ceilings as measure_ceilings
from .records import BenchRun
from .suites import (
    attention_suite,
    check_densities,
    config_model,
    default_attention_patterns,
    formats_suite,
    linear_suite,
    model_suite,
    semi_structured_available,
)

SUITES = ("linear", "formats", "attention", "model")
CUDA_ONLY = {"linear": "2:4 semi-structured kernels", "model": "2:4-accelerated whole-model forward"}


@dataclass(frozen=True)
class BenchConfig:
    """What to measure. Sizes are bounded; anything that does not fit in memory is refused."""

    suites: tuple[str, ...] = ("linear", "formats", "attention")
    """Which suites: linear (2:4 vs dense, CUDA), formats (CSR/BSR vs dense), attention
    (FlexAttention vs SDPA), model (whole MiniLM 2:4 vs dense, CUDA)."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu`` or ``cuda``."""
    dtype: str = "fp16"
    """Half precision for the 2:4 suites (fp16 or bf16); CSR/BSR and CPU attention run in fp32."""
    square_sizes: tuple[int, ...] = (1024, 4096, 8192)
    """Square Linear shapes n×n for the linear suite."""
    layer_shapes: tuple[tuple[int, int], ...] = ()
    """Extra (out, in) shapes, e.g. the loaded model's own Linear layers."""
    batches: tuple[int, ...] = (1, 8, 64, 512, 2048, 8192)
    """Batch sizes (rows of the input) for the linear and model suites."""
    formats_shape: tuple[int, int] = (4096, 4096)
    formats_cols: int = 256
    densities: tuple[float, ...] = (0.01, 0.05, 0.1, 0.2, 0.3, 0.5)
    """Kept fractions for CSR/BSR."""
    seq_lens: tuple[int, ...] = (512, 1024, 2048, 4096)
    window: int = 64
    """Causal sliding-window width of the attention suite's sparse pattern."""
    repeats: int = 10
    model: str = "minilm"
    """The model suite's model when none is passed in: a ``load_model`` spec, or ``config:bert-base`` /
    ``config:minilm`` (built from its config with random weights, no files needed)."""
    time_budget_s: float | None = None
    """Wall-clock budget for the timed cases; cases that would start later are reported as
    skipped ("time budget spent") so a long run ends on time with everything accounted for."""


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("CUDA was requested but torch sees no CUDA device here")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    return device


def validate(config: BenchConfig) -> None:
    unknown = set(config.suites) - set(SUITES)
    if unknown or not config.suites:
        raise ValueError(f"suites must be a non-empty selection of {SUITES}, got {list(config.suites)}")
    parse_dtype(config.dtype)
    check_densities(config.densities)
    if not 1 <= config.repeats <= 1000:
        raise ValueError(f"repeats must be between 1 and 1000, got {config.repeats}")
    for b in config.batches:
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise ValueError(f"batch sizes must be positive whole numbers, got {b!r}")
    time_budget(config.time_budget_s)  # validates


def run_benchmarks(
    config: BenchConfig,
    *,
    loaded: LoadedModel | None = None,
    progress: ProgressArg = True,
    name: str = "",
    checkpoint: Callable[[BenchRun], None] | None = None,
) -> BenchRun:
    """Measure the chosen suites in one run, with the environment and the device ceilings.

    Suites that need CUDA are reported as skipped (with the reason) on a CPU-only machine.
    ``checkpoint`` receives the run so far after each suite (the CLI writes it to disk, so a run
    stopped from outside still leaves what it measured). ``progress``: True (default) draws a bar
    (``sparsekit.progress``), False/None is silent, ``progress(fraction, message)`` is called as it goes.
    """
    validate(config)
    device = resolve_device(config.device)
    with reporter(progress, "benchmarks") as report:
        return _run_benchmarks(config, device, loaded, report, name, checkpoint)


def _run_benchmarks(config: BenchConfig, device: str, loaded: LoadedModel | None, progress: ProgressFn | None,
                    name: str, checkpoint: Callable[[BenchRun], None] | None) -> BenchRun:
    half = parse_dtype(config.dtype)
    results: list[CaseResult] = []
    n = len(config.suites)

    def sub(i: int) -> ProgressFn | None:
        if progress is None:
            return None
        return lambda f, msg: progress((i + f) / n, msg)

    t0 = time.perf_counter()
    if progress is not None:
        progress(0.0, "measuring the device's matmul and copy ceilings")
    ceil = measure_ceilings(device, half, quick=device == "cpu")
    env = environment(device)
    env["semi_structured"] = semi_structured_available(device) or "available"
    if config.time_budget_s is not None:
        env["time_budget_s"] = config.time_budget_s

    def snapshot(done: list[str]) -> BenchRun:
        env["wall_s"] = round(time.perf_counter() - t0, 1)
        return BenchRun(env=dict(env), results=list(results), ceilings=ceil, suites=done, name=name)

    with time_budget(config.time_budget_s):
        for i, suite in enumerate(config.suites):
            if suite == "linear":
                shapes = [(s, s) for s in config.square_sizes] + list(config.layer_shapes)
                results += linear_suite(shapes, config.batches, device=device, dtype=half, repeats=config.repeats,
                                        progress=sub(i))
            elif suite == "formats":
                results += formats_suite(config.formats_shape, config.formats_cols, config.densities, device=device,
                                         dtype=torch.float32, repeats=config.repeats, progress=sub(i))
            elif suite == "attention":
                dtype = half if device.startswith("cuda") else torch.float32
                results += attention_suite(config.seq_lens, default_attention_patterns(config.window), device=device,
                                           dtype=dtype, repeats=config.repeats, progress=sub(i))
            elif suite == "model":
                if loaded is None:
                    loaded = config_model(config.model) if config.model.startswith("config:") else load_model(
                        config.model)
                results += model_suite(loaded, [b for b in config.batches if b <= 1024], device=device, dtype=half,
                                       repeats=config.repeats, progress=sub(i))
            if checkpoint is not None and i < len(config.suites) - 1:
                checkpoint(snapshot(list(config.suites[: i + 1])))
    if progress is not None:
        progress(1.0, "done")
    return snapshot(list(config.suites))

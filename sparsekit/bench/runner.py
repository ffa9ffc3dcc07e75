"""Run the suites as one measured run (shared by the CLI and the Benchmarks page)."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch

from ..cache import model_fingerprint
from ..models import LoadedModel, load_model
from ..progress import ProgressArg, ProgressFn, reporter
from . import journal
from .harness import Case, budget_spent, environment, parse_dtype, time_budget
from .harness import ceilings as measure_ceilings
from .kv_suite import DEFAULT_LENS, DEFAULT_SHAPES, DEFAULT_SPARSITIES, DEFAULT_WINDOW, check_kv_settings, kv_cases
from .records import BenchRun
from .suites import (
    attention_cases,
    check_densities,
    config_model,
    default_attention_patterns,
    formats_cases,
    linear_cases,
    model_cases,
    semi_structured_available,
)

SUITES = ("linear", "formats", "attention", "model", "kv")
CUDA_ONLY = {"linear": "2:4 semi-structured kernels", "model": "2:4-accelerated whole-model forward"}


@dataclass(frozen=True)
class BenchConfig:
    """What to measure. Sizes are bounded; anything that does not fit in memory is refused."""

    suites: tuple[str, ...] = ("linear", "formats", "attention")
    """Which suites: linear (2:4 vs dense, CUDA), formats (CSR/BSR vs dense), attention
    (FlexAttention vs SDPA), model (whole MiniLM 2:4 vs dense, CUDA), kv (one decode step over a pruned KV
    cache: masked dense and CSR vs dense SDPA; ``kv_suite``)."""
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
    kv_lens: tuple[int, ...] = DEFAULT_LENS
    """Cached tokens of the kv suite."""
    kv_sparsities: tuple[float, ...] = DEFAULT_SPARSITIES
    """Fraction of each K and V vector the kv suite zeroes (``sparsekit.kvcache.token_mask``), in [0, 1)."""
    kv_shapes: tuple[tuple[int, int], ...] = DEFAULT_SHAPES
    """(heads, head dim) of the kv suite's query and cache."""
    kv_window: int = DEFAULT_WINDOW
    """Most recent tokens the kv suite keeps dense."""
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
    if "kv" in config.suites:
        check_kv_settings(config.kv_lens, config.kv_sparsities, config.kv_shapes, config.kv_window)
    time_budget(config.time_budget_s)  # validates


def journal_settings(config: BenchConfig, device: str, loaded: LoadedModel | None = None) -> dict[str, Any]:
    """What decides a run's cases and their timings: the config without its name and time budget (a budget
    only decides which cases are skipped), the resolved device, and the model suite's model."""
    settings = {k: v for k, v in asdict(config).items() if k != "time_budget_s"}
    settings["device"] = device
    if "model" in config.suites:
        settings["model"] = ([loaded.spec, model_fingerprint(loaded.module)] if loaded is not None
                             else config.model)
    else:
        settings.pop("model")
    if "kv" not in config.suites:  # so a run without it keeps the key it had before the kv suite existed
        for name in ("kv_lens", "kv_sparsities", "kv_shapes", "kv_window"):
            settings.pop(name)
    return settings


def plan(config: BenchConfig, device: str, loaded: LoadedModel | None = None) -> list[Case]:
    """Every case of the run, in the order it measures them (validated; nothing is measured or loaded)."""
    half = parse_dtype(config.dtype)
    cases: list[Case] = []
    for suite in config.suites:
        if suite == "linear":
            shapes = [(s, s) for s in config.square_sizes] + list(config.layer_shapes)
            cases += linear_cases(shapes, config.batches, device=device, dtype=half, repeats=config.repeats)
        elif suite == "formats":
            cases += formats_cases(config.formats_shape, config.formats_cols, config.densities, device=device,
                                   dtype=torch.float32, repeats=config.repeats)
        elif suite == "attention":
            dtype = half if device.startswith("cuda") else torch.float32
            cases += attention_cases(config.seq_lens, default_attention_patterns(config.window), device=device,
                                     dtype=dtype, repeats=config.repeats)
        elif suite == "model":
            def load(spec: str = config.model) -> LoadedModel:
                return config_model(spec) if spec.startswith("config:") else load_model(spec)

            cases += model_cases(loaded if loaded is not None else load, [b for b in config.batches if b <= 1024],
                                 device=device, dtype=half, repeats=config.repeats)
        elif suite == "kv":
            dtype = half if device.startswith("cuda") else torch.float32
            cases += kv_cases(config.kv_lens, config.kv_sparsities, config.kv_shapes, device=device, dtype=dtype,
                              window=config.kv_window, repeats=config.repeats)
    return cases


def run_benchmarks(
    config: BenchConfig,
    *,
    loaded: LoadedModel | None = None,
    progress: ProgressArg = True,
    name: str = "",
    checkpoint: Callable[[BenchRun], None] | None = None,
    stop: Callable[[], bool] | None = None,
    resume: bool = True,
) -> BenchRun:
    """Measure the chosen suites in one run, with the environment and the device ceilings.

    Suites that need CUDA are reported as skipped (with the reason) on a CPU-only machine.

    Each finished case (one shape: its dense baseline and every sparse kernel at it) is kept on disk
    (``SPARSEKIT_CACHE_DIR``) as it finishes, so a run stopped by ``stop``, Ctrl-C, a Stop press or an
    error is continued by the same call: it reads the finished cases back as they were stored, measures
    only the missing ones, and returns the whole run. A run that finishes forgets its stored cases, so
    the next call measures afresh.

    Args:
        config: what to measure; validated first.
        loaded: the model suite's model (default: ``config.model``, loaded when a model case is measured).
        progress: True (default) draws a bar (``sparsekit.progress``), False/None is silent, a callable
            ``progress(fraction, message)`` is called before each case (the fraction counts cases).
        name: the run's name in the history.
        checkpoint: receives the run so far after each suite but the last (the CLI writes it to disk).
        stop: asked before each case to measure; when it returns True the run ends there and the record
            says ``complete=False`` (``not_reached`` names the cases left; the same call continues it).
        resume: False forgets what a stopped run of these settings kept and measures every case again.

    Returns:
        A ``BenchRun``: the finished cases' results in the order of an uninterrupted run.
    """
    validate(config)
    device = resolve_device(config.device)
    with reporter(progress, "benchmarks") as report:
        return _run_benchmarks(config, device, loaded, report, name, checkpoint, stop, resume, measure=True)


def stored_run(config: BenchConfig, *, loaded: LoadedModel | None = None, name: str = "") -> BenchRun | None:
    """What a stopped run of these settings kept on disk, measuring nothing.

    Returns:
        The partial ``BenchRun`` (``complete=False``, the cases not measured yet in ``not_reached``), or
        None when nothing is kept (never started here, or it finished).
    """
    validate(config)
    device = resolve_device(config.device)
    if journal.load_header(journal.settings_key(journal_settings(config, device, loaded))) is None:
        return None
    return _run_benchmarks(config, device, loaded, None, name, None, None, True, measure=False)


def _run_benchmarks(config: BenchConfig, device: str, loaded: LoadedModel | None, progress: ProgressFn | None,
                    name: str, checkpoint: Callable[[BenchRun], None] | None, stop: Callable[[], bool] | None,
                    resume: bool, *, measure: bool) -> BenchRun:
    """The run (``measure``), or what the store holds of it (not ``measure``: nothing measured or forgotten,
    and the device not asked anything: the cases shown are those of the device identity the header names)."""
    cases = plan(config, device, loaded)
    labels = [c.label for c in cases]
    skey = journal.settings_key(journal_settings(config, device, loaded))
    if not measure:
        header = journal.load_header(skey)
        if header is None:
            return _record(config, cases, {}, journal.Header({"device": device}, {}, {}), name, complete=False)
        identity = header.identity
    else:
        env = environment(device)
        identity = journal.device_identity(env)
        if not resume:
            journal.clear(skey, journal.run_key(skey, identity), labels)
        header = journal.load_header(skey)
        if header is None or header.identity != identity:  # none, or another device's or versions': start afresh
            if stop is not None and stop():
                return _record(config, cases, {}, journal.Header(env, {}, identity), name, complete=False)
            if progress is not None:
                progress(0.0, "measuring the device's matmul and copy ceilings")
            t0 = time.perf_counter()
            ceil = measure_ceilings(device, parse_dtype(config.dtype), quick=device == "cpu")
            env["semi_structured"] = semi_structured_available(device) or "available"
            header = journal.Header(env=env, ceilings=ceil, identity=identity, seconds=time.perf_counter() - t0)
            journal.save_header(skey, header)
    key = journal.run_key(skey, identity)
    done = journal.load_cases(key, labels)
    reused = len(done) if measure else 0
    ends = {i for i in range(len(cases) - 1) if cases[i].suite != cases[i + 1].suite}  # a suite's last case
    complete = True
    with time_budget(config.time_budget_s):
        for i, case in enumerate(cases):
            if i not in done:
                if not measure or (stop is not None and stop()):
                    complete = False
                    break
                if progress is not None:
                    progress(len(done) / len(cases), f"{case.label} ({len(done) + 1}/{len(cases)})")
                t0 = time.perf_counter()
                results = case.measure()
                finished = journal.StoredCase(case.label, tuple(results), time.perf_counter() - t0)
                spent = budget_spent()
                if not (spent and any(r.status == "skipped" and r.message == spent for r in results)):
                    journal.save_case(key, i, finished)  # a case the time budget cut short is not finished
                done[i] = finished
            if checkpoint is not None and i in ends:
                checkpoint(_record(config, cases, {j: c for j, c in done.items() if j <= i}, header, name,
                                   complete=False, reused=reused))
    if progress is not None and complete:
        progress(1.0, "done")
    run = _record(config, cases, done, header, name, complete=complete, reused=reused)
    if complete and measure:
        journal.clear(skey, key, labels)
    return run


def _record(config: BenchConfig, cases: list[Case], done: dict[int, journal.StoredCase], header: journal.Header,
            name: str, *, complete: bool, reused: int = 0) -> BenchRun:
    """The run so far: the finished cases' results in plan order."""
    env = dict(header.env)
    if config.time_budget_s is not None:
        env["time_budget_s"] = config.time_budget_s
    env["wall_s"] = round(header.seconds + sum(c.seconds for c in done.values()), 1)
    if reused:
        env["resumed_cases"] = reused
    suites = [s for s in config.suites if all(i in done for i, c in enumerate(cases) if c.suite == s)]
    return BenchRun(env=env, results=[r for i in range(len(cases)) if i in done for r in done[i].results],
                    ceilings=dict(header.ceilings), suites=suites, name=name, created=header.created,
                    complete=complete, cases_total=len(cases),
                    not_reached=[c.label for i, c in enumerate(cases) if i not in done])

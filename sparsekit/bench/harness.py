"""The timing harness: correctness gate, warm-up, repeated timing with rotated inputs, environment.

Every case is first checked against its dense reference; a case whose output is wrong is reported
as failed and never timed, so a fast wrong kernel cannot produce a speedup.
"""
from __future__ import annotations

import math
import os
import platform
import statistics
import threading
import time
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Literal, Sequence

import torch

SCHEMA_VERSION = 1

# Relative error allowed against the dense reference, by dtype of the computation.
TOLERANCE = {
    torch.float32: 1e-4,
    torch.float64: 1e-9,
    torch.float16: 1e-2,
    torch.bfloat16: 1e-2,
}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def parse_dtype(name: str) -> torch.dtype:
    """``"fp16"``/``"float16"``, ``"bf16"``, ``"fp32"`` -> torch dtype; ValueError otherwise."""
    table = {"fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
             "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
             "fp32": torch.float32, "float32": torch.float32, "float": torch.float32}
    try:
        return table[str(name).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use fp32, fp16 or bf16") from None


def environment(device: str) -> dict[str, Any]:
    """What the numbers were measured on: device, versions, threads."""
    env: dict[str, Any] = {
        "device": device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),  # sparsekit sets PASSIVE on import
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.device(device))
        env.update({
            "device_name": props.name,
            "compute_capability": f"{props.major}.{props.minor}",
            "device_memory_gb": round(props.total_memory / 2**30, 1),
            "cusparselt": bool(getattr(torch.backends, "cusparselt", None)
                               and torch.backends.cusparselt.is_available()),
        })
    else:
        env["device_name"] = env["cpu"]
    return env


def free_memory_bytes(device: str) -> int:
    """Free memory of the device (CUDA: driver's free count; CPU: MemAvailable)."""
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30


def check_fits(n_bytes: int, device: str, what: str, fraction: float = 0.5) -> None:
    """Raise ``ValueError`` when a case would need more than ``fraction`` of the free memory."""
    free = free_memory_bytes(device)
    if n_bytes > fraction * free:
        raise ValueError(
            f"{what} needs about {n_bytes / 2**30:.2f} GiB, more than {fraction:.0%} of the "
            f"{free / 2**30:.1f} GiB free on {device}; choose smaller sizes"
        )


def check_positive_ints(values: Iterable[int], what: str, hi: int) -> list[int]:
    """Validate the sizes a suite was asked for, so a bad input fails before anything is allocated.

    Args:
        values: the sizes (whole numbers).
        what: their plural name for the message, e.g. ``"batch sizes"``.
        hi: the largest size allowed.

    Returns:
        The sizes, as a list.

    Raises:
        ValueError: a non-integer, a size outside ``1..hi``, or no sizes at all.
    """
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{what} must be whole numbers, got {v!r}")
        if not 1 <= v <= hi:
            raise ValueError(f"{what} must be between 1 and {hi:,}, got {v}")
        out.append(v)
    if not out:
        raise ValueError(f"give at least one {what[:-1] if what.endswith('s') else what}")
    return out


# Per thread: each Streamlit session runs its script in its own thread, so one user's budget must
# not cut another's run short.
_BUDGET = threading.local()


def budget_clock() -> float:
    """Seconds on the clock the time budget is measured with (``time.perf_counter``); tests replace it
    with a scripted clock so that which cases run does not depend on the machine's speed."""
    return time.perf_counter()


class time_budget:
    """Context manager: cases that would start after ``seconds`` are reported as skipped, not run.

    A long run (the whole GPU suite) then ends near its budget with every case accounted for,
    instead of being killed with nothing written. ``None`` means no budget. The budget belongs to
    the calling thread.
    """

    def __init__(self, seconds: float | None):
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                                    or not seconds > 0):
            raise ValueError(f"time budget must be a positive number of seconds, got {seconds!r}")
        self.seconds = seconds

    def __enter__(self) -> time_budget:
        self._saved = getattr(_BUDGET, "value", None)
        if self.seconds is not None:
            _BUDGET.value = (budget_clock() + self.seconds, float(self.seconds))
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        _BUDGET.value = self._saved
        return False


def budget_spent() -> str:
    """'' while the calling thread's time budget lasts, else the message for cases not run."""
    current = getattr(_BUDGET, "value", None)
    if current is not None and budget_clock() > current[0]:
        return f"not run: the run's time budget of {current[1]:g} s was spent"
    return ""


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_ms(
    fn: Callable[[Any], Any],
    inputs: Sequence[Any],
    *,
    device: str,
    warmup: int = 3,
    repeats: int = 20,
    max_seconds: float = 10.0,
) -> list[float]:
    """Time ``fn(inputs[i % len(inputs)])`` ``repeats`` times after ``warmup`` calls.

    Inputs rotate so repeats do not just re-read a cached operand. CUDA uses device events around
    each call (synchronised); CPU uses ``perf_counter``. Stops early once ``max_seconds`` is spent
    (at least 3 timed calls).

    On CUDA a per-call event pair measures eager time: when a call is launch-bound (tiny shapes,
    or the Python dispatch of a tensor subclass such as the 2:4 weights) the GPU waits for the
    launch inside the timed region. That is what an eager PyTorch model sees at that shape, and
    is one reason 2:4 can lose to dense at small batch.

    Returns:
        The per-call times in milliseconds.
    """
    if not inputs:
        raise ValueError("time_ms needs at least one input set")
    for i in range(warmup):
        fn(inputs[i % len(inputs)])
    _sync(device)
    times: list[float] = []
    budget_end = time.perf_counter() + max_seconds
    cuda = device.startswith("cuda")
    for i in range(repeats):
        x = inputs[i % len(inputs)]
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(x)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn(x)
            times.append((time.perf_counter() - t0) * 1e3)
        if len(times) >= 3 and time.perf_counter() > budget_end:
            break
    return times


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64 (0 when both are zero)."""
    out64, ref64 = out.detach().double(), ref.detach().double()
    if out64.shape != ref64.shape:
        return math.inf
    denom = torch.linalg.vector_norm(ref64).item()
    num = torch.linalg.vector_norm(out64 - ref64).item()
    if denom == 0:
        return 0.0 if num == 0 else math.inf
    return num / denom


@dataclass
class CaseResult:
    """One timed (or refused) case. Times in ms; speedup = baseline / this (> 1 is faster)."""

    suite: str
    case: str
    backend: str
    device: str
    dtype: str
    params: dict[str, Any] = field(default_factory=dict)
    status: str = "ok"
    """ok | failed (wrong result, not timed) | skipped (not available here) | oom | error."""
    message: str = ""
    rel_error: float | None = None
    median_ms: float | None = None
    q1_ms: float | None = None
    q3_ms: float | None = None
    repeats: int = 0
    baseline_ms: float | None = None
    speedup: float | None = None
    flops: float | None = None
    bytes_moved: float | None = None
    achieved_tflops: float | None = None
    achieved_gbps: float | None = None

    @property
    def iqr_ms(self) -> float | None:
        return None if self.q1_ms is None or self.q3_ms is None else self.q3_ms - self.q1_ms

    def as_row(self) -> dict[str, Any]:
        row = asdict(self)
        params = row.pop("params")
        row.update({f"p_{k}": v for k, v in params.items()})
        row["iqr_ms"] = self.iqr_ms
        return row


def summarise(times: list[float]) -> tuple[float, float, float]:
    """(median, q1, q3) of a list of times."""
    if len(times) == 1:
        return times[0], times[0], times[0]
    q = statistics.quantiles(times, n=4, method="inclusive")
    return statistics.median(times), q[0], q[2]


def run_case(
    *,
    suite: str,
    case: str,
    backend: str,
    device: str,
    dtype: torch.dtype,
    params: dict[str, Any],
    fn: Callable[[Any], torch.Tensor],
    reference: Callable[[Any], torch.Tensor],
    inputs: Sequence[Any],
    flops: float | None = None,
    bytes_moved: float | None = None,
    warmup: int = 3,
    repeats: int = 20,
    tolerance: float | None = None,
) -> CaseResult:
    """Check ``fn`` against ``reference`` on the first input, then time it.

    Returns:
        A ``CaseResult``: ``failed`` (with the error) when the relative error exceeds the dtype's
        tolerance, ``oom`` when the device ran out of memory, ``error`` for other exceptions.
    """
    res = CaseResult(suite=suite, case=case, backend=backend, device=device, dtype=dtype_name(dtype),
                     params=dict(params), flops=flops, bytes_moved=bytes_moved)
    tol = tolerance if tolerance is not None else TOLERANCE.get(dtype, 1e-2)
    spent = budget_spent()
    if spent:
        res.status, res.message = "skipped", spent
        return res
    try:
        with torch.inference_mode():
            got = fn(inputs[0])
            want = reference(inputs[0])
            _sync(device)
            res.rel_error = relative_error(got, want)
            if not res.rel_error <= tol:
                res.status = "failed"
                res.message = f"relative error {res.rel_error:.3g} > tolerance {tol:g} for {res.dtype}; not timed"
                return res
            times = time_ms(fn, inputs, device=device, warmup=warmup, repeats=repeats)
    except torch.OutOfMemoryError as err:
        res.status, res.message = "oom", f"out of memory: {str(err).splitlines()[0][:200]}"
        _free_cuda(device)
        return res
    except (RuntimeError, NotImplementedError, ValueError, TypeError) as err:
        if "out of memory" in str(err).lower():
            res.status = "oom"
        else:
            res.status = "error"
        res.message = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
        _free_cuda(device)
        return res
    res.median_ms, res.q1_ms, res.q3_ms = summarise(times)
    res.repeats = len(times)
    if flops and res.median_ms:
        res.achieved_tflops = flops / (res.median_ms * 1e-3) / 1e12
    if bytes_moved and res.median_ms:
        res.achieved_gbps = bytes_moved / (res.median_ms * 1e-3) / 1e9
    return res


def _free_cuda(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


@dataclass(frozen=True)
class Case:
    """One case of a suite: one shape (or density, length, batch), its dense baseline and every sparse
    kernel at it, measured together by ``measure()`` (speedups need the baseline of the same case).

    The runner keeps each finished case on disk; a stopped run measures only the cases it lacks.
    """

    suite: str
    label: str
    """Names the case within its suite's plan (``linear 1024×1024, batch 8``); also the progress message."""
    measure: Callable[[], list[CaseResult]]


def case_seed(*parts: object) -> int:
    """A seed from a case's own parameters, so a case draws the same inputs whether or not the
    cases before it ran in this process (a continued run skips them)."""
    return zlib.crc32(repr(parts).encode()) & 0x7FFFFFFF


def run_cases(cases: Sequence[Case], progress: Callable[[float, str], None] | None = None) -> list[CaseResult]:
    """Measure ``cases`` in order (no store): what the suite functions return."""
    out: list[CaseResult] = []
    for i, case in enumerate(cases):
        if progress is not None:
            progress(i / len(cases), case.label)
        out.extend(case.measure())
    return out


def skipped(suite: str, case: str, backend: str, device: str, dtype: torch.dtype, params: dict, why: str) -> CaseResult:
    return CaseResult(suite=suite, case=case, backend=backend, device=device, dtype=dtype_name(dtype),
                      params=dict(params), status="skipped", message=why)


def attach_baseline(results: list[CaseResult], baseline: CaseResult) -> None:
    """Set ``baseline_ms`` and ``speedup`` of each result from a dense baseline of the same case."""
    for r in results:
        if r.status == "ok" and baseline.status == "ok" and r.median_ms and baseline.median_ms is not None:
            r.baseline_ms = baseline.median_ms
            r.speedup = baseline.median_ms / r.median_ms


def ceilings(device: str, dtype: torch.dtype = torch.float32, quick: bool = False) -> dict[str, float | str]:
    """The device's own ceilings measured now: a large dense matmul (TFLOP/s) and a large copy (GB/s)."""
    n = 1024 if (quick or not device.startswith("cuda")) else 8192
    mm_dtype = dtype if device.startswith("cuda") else torch.float32
    a = torch.randn(n, n, device=device, dtype=mm_dtype)
    b = torch.randn(n, n, device=device, dtype=mm_dtype)
    t = time_ms(lambda _: a @ b, [None], device=device, warmup=2, repeats=5 if quick else 10)
    mm_ms = statistics.median(t)
    numel = (16 if quick else 64) * 2**20 // 4 if not device.startswith("cuda") else 256 * 2**20
    src = torch.empty(numel, device=device, dtype=torch.float32).normal_()
    dst = torch.empty_like(src)
    t = time_ms(lambda _: dst.copy_(src), [None], device=device, warmup=2, repeats=5 if quick else 10)
    copy_ms = statistics.median(t)
    return {
        "matmul_n": n,
        "matmul_dtype": dtype_name(mm_dtype),
        "matmul_tflops": 2 * n**3 / (mm_ms * 1e-3) / 1e12,
        "copy_gbps": 2 * src.numel() * 4 / (copy_ms * 1e-3) / 1e9,
    }

"""Kernel benchmarks: does the sparsity run faster, at these shapes, on this hardware?

``python -m sparsekit.bench --help`` runs the suites headless and writes JSON that the Benchmarks
page imports.
"""
from .harness import CaseResult, ceilings, environment, relative_error, run_case, time_ms
from .records import BenchRun, delete_run, list_runs, load_run, results_csv, save_run
from .runner import SUITES, BenchConfig, run_benchmarks, stored_run
from .suites import attention_suite, formats_suite, linear_suite, model_suite, verdicts

__all__ = [
    "BenchConfig", "BenchRun", "CaseResult", "SUITES", "attention_suite", "ceilings", "delete_run", "environment",
    "formats_suite", "linear_suite", "list_runs", "load_run", "model_suite", "relative_error", "results_csv",
    "run_benchmarks", "run_case", "save_run", "stored_run", "time_ms", "verdicts",
]

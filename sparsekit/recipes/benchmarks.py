"""The Benchmarks page's recipe: the run the page shows, read back from the run store, with its figures,
its table and its verdicts.

Timings cannot be reproduced exactly (another process, another moment, another machine), so the notebook
does not compare fresh timings with the page's: it loads **the same saved run** through
``sparsekit.bench.load_run`` (the key the page shows it under) and recomputes what the page says of it
from the record with ``benchmarks_headline``, the function the page uses. Where that run is not in this
machine's cache, the notebook measures again with the page's ``BenchConfig`` when the page knows it (a
run made on the page), and says so; an imported or older run has to be loaded from its JSON file.
"""
from __future__ import annotations

from typing import Any, Sequence

from ..bench import BenchConfig, BenchRun, CaseResult, verdicts
from .base import Recipe, code, config_literal, literal, md

FAILED_STATUSES = ("failed", "error", "oom")
"""Statuses the page reports as cases without a valid timing."""


def ceiling_texts(ceilings: dict[str, Any]) -> dict[str, str]:
    """The page's two ceiling metrics as it writes them (empty when the run measured none)."""
    if not ceilings:
        return {}
    return {"matmul": f"{ceilings.get('matmul_tflops', 0):.2f} TFLOP/s",
            "copy": f"{ceilings.get('copy_gbps', 0):.1f} GB/s"}


def faster_cases(results: Sequence[CaseResult]) -> dict[str, list[str]]:
    """``"<suite> <backend>" -> cases`` where the backend beat its dense baseline (speedup > 1)."""
    out: dict[str, list[str]] = {}
    for r in results:
        if r.status == "ok" and r.speedup is not None and r.speedup > 1.0:
            out.setdefault(f"{r.suite} {r.backend}", []).append(r.case)
    return out


def benchmarks_headline(run: BenchRun) -> dict[str, Any]:
    """What the Benchmarks page says of a run.

    Args:
        run: a ``BenchRun`` (as stored, imported or just measured).

    Returns:
        ``device``; ``ceilings`` (the two metric texts); ``cases``: per case its suite, case, backend,
        status and speedup (the "All cases" table); ``faster``: where a sparse kernel beat dense;
        ``failed`` and ``over_budget`` (the page's error and warning counts); ``verdicts``: the 2:4
        verdict per Linear shape (empty without the linear suite); ``complete``: False for a stopped run
        (an imported file a stopped CLI run wrote), whose cases are the finished ones.
    """
    return {
        "complete": run.complete,
        "device": str(run.env.get("device_name", run.env.get("device"))),
        "ceilings": ceiling_texts(run.ceilings),
        "cases": [{"suite": r.suite, "case": r.case, "backend": r.backend, "status": r.status,
                   "speedup": None if r.speedup is None else float(r.speedup)} for r in run.results],
        "faster": faster_cases(run.results),
        "failed": sum(1 for r in run.results if r.status in FAILED_STATUSES),
        "over_budget": sum(1 for r in run.results if r.status == "skipped" and "time budget" in r.message),
        "verdicts": [{k: v for k, v in row.items() if k != "batches"} for row in verdicts(run.results)],
    }


def benchmarks_recipe(run: BenchRun, key: str, config: BenchConfig | None = None, *, spec: str = "") -> Recipe:
    """The Benchmarks page: one run, as stored under ``key``.

    Args:
        run: the run the page shows.
        key: its key in the run store (``save_run``'s answer).
        config: the settings it was measured with, when the page made it (None for imported runs).
        spec: the model whose Linear shapes or forward the run measured ("" when none).
    """
    from ..viz import bench_figures

    suites = list(bench_figures(run.results))
    if config is not None:
        loaded = ", loaded=sparsekit.load_model(" + literal(spec) + ")" if spec and "model" in config.suites else ""
        again = ("    # Not in this machine's cache: measure again with the page's settings (other timings).\n"
                 f"    run = run_benchmarks({config_literal(config)}{loaded})")
    else:
        again = ("    raise FileNotFoundError('this run is not in the cache here: load its JSON (the page\\'s '\n"
                 "                            '\"Results (.json)\" download) with BenchRun.from_json')")
    cells = [
        md("## The run\nTimings do not repeat exactly, so this notebook reads the run the page showed from the "
           "run store (the disk cache, `SPARSEKIT_CACHE_DIR`) and recomputes the page's verdicts from it. "
           + ("Where the run is not stored here, it measures again with the page's settings (`run_benchmarks`; "
              "each finished case is kept on disk as it finishes, so after an interrupt running the cell again "
              "measures only the cases still missing)."
              if config is not None else "The run was imported or stored earlier: where it is not stored here, "
                                         "load the page's JSON download with `BenchRun.from_json`.")),
        code("from sparsekit.bench import BenchConfig, BenchRun, load_run, run_benchmarks, verdicts\n\n"
             f"run = load_run({literal(key)})\nif run is None:\n{again}\nrun.title(), run.env.get('device_name'), "
             "run.ceilings"),
        md("## Figures"),
        code("figures = viz.bench_figures(run.results)\nlist(figures)"),
        *(code(f"figures[{literal(s)}]") for s in suites),
        md("## All cases"),
        code("import pandas as pd\n\ncolumns = ['suite', 'case', 'backend', 'status', 'median_ms', 'speedup', "
             "'baseline_ms', 'rel_error', 'message']\npd.DataFrame([r.as_row() for r in run.results])[columns]"),
    ]
    if "linear" in suites:
        cells += [md("## 2:4 verdict per Linear shape"), code("pd.DataFrame(verdicts(run.results))")]
    cells += [md("## Headline values (what the page says of this run)"),
              code("from sparsekit.recipes.benchmarks import benchmarks_headline\n\n"
                   "headline = benchmarks_headline(run)\nheadline")]
    shown = (f"It showed the benchmark run **{run.title()}** ({', '.join(run.suites) or 'no suite'}; "
             f"{len(run.results)} cases), stored under `{key}`.")
    return Recipe("Benchmarks", shown, spec, tuple(cells))


__all__ = ["FAILED_STATUSES", "benchmarks_headline", "benchmarks_recipe", "ceiling_texts", "faster_cases"]

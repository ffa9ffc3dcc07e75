"""Studies: grids of sparsity experiments, run locally (default) or on a Ray cluster, resumable from the cache.

- ``spec``: ``StudySpec`` (kind, models, methods, patterns, seeds, ...), its cells and their content keys;
- ``cells``: ``run_cell(cell) -> CellRecord``, the same pure function on every backend;
- ``records``: ``CellRecord``, a cell's result (done or failed), and how stored text reads back;
- ``store``: records and live progress in the disk cache;
- ``backends`` (``local``) and ``ray_backend`` (``ray``, the only module that imports ray), both
  reporting ``events.Event``s;
- ``memory``: refuses up front a grid whose cells would not fit a worker;
- ``aggregate``: intervals over seeds, paired differences, Pareto fronts, CSV/JSON;
- ``runner``: ``run_study``, ``study_status``, ``study_records``, ``export``;
- ``soupcells`` / ``soupstudy``: model soups as studies (ingredients are cells; ``soup_study``, ``soup_results``).

Command line: ``python -m sparsekit.study --help``.
"""
from typing import Any

from .aggregate import (
    Group,
    MethodDifference,
    analysis,
    best_per_pattern,
    paired_differences,
    pareto_front,
    records_csv,
    summarize,
    summary_csv,
    summary_markdown,
)
from .backends import LocalBackend, make_backend
from .cells import comparable, run_cell, safe_run
from .events import Event
from .memory import ONESHOT_FACTOR, TRAINING_FACTOR, cell_memory_mb, check_memory, model_param_bytes
from .records import CellRecord
from .runner import StudyResult, execute, export, run_study, study_records, study_status
from .soupcells import SoupStudy, ingredient_seeds
from .soupstudy import SoupGroup, SoupOutcome, SoupStudyResult, soup_results, soup_study
from .spec import (
    CELL_VERSION,
    KINDS,
    MAX_CELLS,
    Cell,
    StudySpec,
    canonical_pattern,
    oneshot_cell,
    parse_pattern,
    training_cell,
)
from .store import StudyStatus


def cluster_resources(address: str | None = None) -> dict[str, Any]:
    """CPUs, memory and nodes of a Ray cluster (see ``ray_backend.cluster_resources``); imports ray."""
    from .ray_backend import cluster_resources as resources

    return resources(address)


__all__ = [
    "CELL_VERSION", "KINDS", "MAX_CELLS", "ONESHOT_FACTOR", "TRAINING_FACTOR", "Cell", "CellRecord", "Event", "Group",
    "LocalBackend", "MethodDifference", "StudyResult", "StudySpec", "StudyStatus", "analysis", "best_per_pattern",
    "canonical_pattern", "cell_memory_mb", "check_memory", "cluster_resources", "comparable", "execute", "export",
    "make_backend", "model_param_bytes", "oneshot_cell", "paired_differences", "pareto_front", "parse_pattern",
    "records_csv", "run_cell", "run_study", "safe_run", "study_records", "study_status", "summarize", "summary_csv",
    "summary_markdown", "training_cell", "SoupGroup", "SoupOutcome", "SoupStudy", "SoupStudyResult", "ingredient_seeds",
    "soup_results", "soup_study",
]

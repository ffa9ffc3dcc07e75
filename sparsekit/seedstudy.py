"""The seed study now lives in ``sparsekit.training.seedstudy``; this name stays for imports and for
``python -m sparsekit.seedstudy``."""
import sys

from .training.seedresults import (
    LOWER_IS_BETTER,
    METRICS,
    STUDY_VERSION,
    Comparison,
    SeedRun,
    SeedStudyResult,
    SummaryRow,
    run_metrics,
)
from .training.seedstudy import (
    DEFAULT_LAMBDA_SWEEP,
    MAX_LAMBDAS,
    MAX_PATTERNS,
    MAX_RUNS,
    MAX_SEEDS,
    SeedStudyConfig,
    StudyProgress,
    cached_runs,
    main,
    parse_floats,
    parse_patterns,
    run_seed_study,
)

__all__ = [
    "DEFAULT_LAMBDA_SWEEP", "LOWER_IS_BETTER", "MAX_LAMBDAS", "MAX_PATTERNS", "MAX_RUNS", "MAX_SEEDS", "METRICS",
    "STUDY_VERSION", "Comparison", "SeedRun", "SeedStudyConfig", "SeedStudyResult", "StudyProgress", "SummaryRow",
    "cached_runs", "main", "parse_floats", "parse_patterns", "run_metrics", "run_seed_study",
]

if __name__ == "__main__":
    sys.exit(main())

"""SR-STE vs STE as a seed study: the same configs over K seeds, paired by seed, with intervals.

The SR-STE paper's claim (its topology settles sooner: lower SAD late in training, at similar or
better accuracy) is about distributions, and on a model this small one seed can go either way
(float sums differ between CPUs). A study trains, for every N:M pattern and every seed, an STE run
and an SR-STE run that share the initial weights and the batch order, then reports per method the
mean and a 95 % Student-t interval of

- **late SAD**: interval SAD summed over the second half of training (epoch snapshots), as % of
  the sparse weights;
- **final accuracy** on the held-out digits (%);
- **late flips**: % of the sparse weights whose keep bit changed at least once in the second half;

and the paired difference SR-STE − STE with its interval and in how many seeds SR-STE was lower.
A λ_w sweep (SR-STE at several decays, λ_w = 0 being STE itself) shows how the effect depends on
it. Every run's numbers are kept in the disk cache, so a study that is stopped resumes where it
was, and a repeated study recomputes nothing.

Command line: ``python -m sparsekit.seedstudy --help``.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from ..models.digits import DigitsData, digits_split
from ..progress import reporter
from .config import TrainConfig, default_train_config
from .seedconfig import (
    DEFAULT_LAMBDA_SWEEP,
    MAX_LAMBDAS,
    MAX_PATTERNS,
    MAX_RUNS,
    MAX_SEEDS,
    SeedStudyConfig,
    parse_floats,
    parse_patterns,
)
from .seedresults import SeedRun, SeedStudyResult

# The bounds and parsers are re-exported: ``sparsekit.seedstudy`` imports them from here.
__all__ = [
    "DEFAULT_LAMBDA_SWEEP", "MAX_LAMBDAS", "MAX_PATTERNS", "MAX_RUNS", "MAX_SEEDS", "SeedStudyConfig",
    "StudyProgress", "cached_runs", "main", "parse_floats", "parse_patterns", "run_seed_study",
]


@dataclass(frozen=True)
class StudyProgress:
    """What the progress callback sees after every run."""

    done: int
    """Runs finished (computed or from the cache)."""
    total: int
    computed: int
    """Runs trained so far in this call."""
    message: str
    eta_s: float | None
    """Seconds left, estimated from the runs trained so far (None before the first)."""


class _StudyCell(Protocol):
    """What ``run_seed_study`` reads of a ``sparsekit.study.Cell`` (the study package imports this one,
    so its classes are not named here)."""

    def train_config(self) -> TrainConfig: ...


class _StudyRecord(Protocol):
    """What ``run_seed_study`` reads of a ``sparsekit.study.CellRecord``."""

    @property
    def seconds(self) -> float | None: ...

    def seed_run(self) -> SeedRun: ...


def _cells(config: SeedStudyConfig) -> list:
    from ..study import training_cell  # the study engine imports the training package

    return [training_cell(cfg) for cfg in config.run_configs()]


def cached_runs(config: SeedStudyConfig) -> tuple[int, float]:
    """How much of a study the disk cache already holds.

    Returns:
        ``(runs found, mean training seconds of those runs)`` (0.0 seconds when none is found).
    """
    from ..study.store import is_done, lookup

    keys = [c.key for c in _cells(config)]
    stored = lookup(keys)
    found = [stored[k] for k in keys if is_done(stored.get(k))]
    seconds = sum(float(r.seconds or 0.0) for r in found)
    return len(found), seconds / len(found) if found else 0.0


def run_seed_study(
    config: SeedStudyConfig,
    *,
    progress: Callable[[StudyProgress], "bool | None"] | bool | None = True,
    data: DigitsData | None = None,
    use_cache: bool = True,
) -> SeedStudyResult:
    """Train every run of a study (or take it from the disk cache) and collect the numbers.

    The runs are training cells of ``sparsekit.study``, run in this process; a run finished by any
    study (this one, or a ``training`` StudySpec with the same settings) is not trained again.

    Args:
        config: the study (validated here).
        progress: True (default): a bar of the runs done (``sparsekit.progress``); False/None: silent; a
            callable: ``progress(StudyProgress)`` after every run, return True to stop (the result then has
            ``complete=False``).
        data: the digits split (default ``digits_split()``).
        use_cache: read and write finished runs in the disk cache.

    Returns:
        A ``SeedStudyResult``.

    Raises:
        Whatever a run raises (a seed study stops at a failed run).
    """
    from ..study import LocalBackend, execute

    config.validate()
    data = data if data is not None else digits_split()
    cells = _cells(config)
    result = SeedStudyResult(config)
    runs: list[SeedRun | None] = [None] * len(cells)
    done = 0
    trained_s = 0.0
    to_train = len({c.key for c in cells})
    if use_cache:
        to_train -= cached_runs(config)[0]

    def on_record(i: int, cell: _StudyCell, record: _StudyRecord, cached: bool) -> bool:
        nonlocal done, trained_s
        runs[i] = record.seed_run()
        done += 1
        if not cached:
            result.computed += 1
            trained_s += float(record.seconds or 0.0)
        if not callable(progress) and bar is None:
            return False
        eta = trained_s / result.computed * (to_train - result.computed) if result.computed else None
        cfg = cell.train_config()
        label = "STE" if cfg.method == "ste" else f"SR-STE λ={cfg.lambda_w:g}"
        message = f"{label} {cfg.n}:{cfg.m} seed {cfg.seed}"
        if callable(progress):
            return bool(progress(StudyProgress(done, len(cells), result.computed, message, eta)))
        if bar is not None:
            bar(done / len(cells), f"{done}/{len(cells)} runs, {message}")
        return False

    backend = LocalBackend(data=data, raise_errors=True)
    with reporter(None if callable(progress) else progress, "seed study") as bar:
        run = execute(cells, backend, read_cache=use_cache, write_cache=use_cache, on_record=on_record)
    result.runs = [r for r in runs if r is not None]
    # A stop among cached runs ends the study before any is computed: ``run.stopped`` does not see it.
    result.complete = not run.stopped and len(result.runs) == len(cells)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparsekit.seedstudy",
                                     description="SR-STE vs STE over seeds on the digits models, with intervals.")
    parser.add_argument("--arch", default="cnn", help="mlp, cnn or vit (default cnn)")
    parser.add_argument("--patterns", default="2:4,1:4", help="N:M patterns, N kept (default 2:4,1:4)")
    parser.add_argument("--seeds", type=int, default=8, help="K seeds, paired (default 8)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default: TrainConfig's)")
    parser.add_argument("--optimizer", default=None, help="sgd or adamw (default: TrainConfig's)")
    parser.add_argument("--lambda-w", type=float, default=None, help="SR-STE λ_w of the main comparison (default 2e-4)")
    parser.add_argument("--lambdas", default=",".join(f"{v:g}" for v in DEFAULT_LAMBDA_SWEEP),
                        help="λ_w sweep at the first pattern, comma-separated ('' for none)")
    parser.add_argument("--json", dest="json_out", default=None, help="write the study's JSON here")
    parser.add_argument("--csv", dest="csv_out", default=None, help="write every run's numbers here")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the disk cache")
    args = parser.parse_args(argv)
    try:
        overrides = {"epochs": args.epochs}
        for name in ("lr", "optimizer", "lambda_w"):
            if getattr(args, name) is not None:
                overrides[name] = getattr(args, name)
        config = SeedStudyConfig(train=default_train_config(args.arch, **overrides),
                                 patterns=tuple(parse_patterns(args.patterns)), seeds=args.seeds,
                                 first_seed=args.first_seed, lambda_sweep=tuple(parse_floats(args.lambdas)))
        config.validate()
    except ValueError as err:
        parser.error(str(err))
    total = len(config.run_configs())
    print(f"{total} training runs ({args.arch}, {args.epochs} epochs); cached runs are not retrained", file=sys.stderr)
    t0 = time.perf_counter()

    def report(p: StudyProgress) -> None:
        eta = f", about {p.eta_s:.0f} s left" if p.eta_s is not None else ""
        print(f"[{p.done}/{p.total}] {p.message}{eta}", file=sys.stderr)

    result = run_seed_study(config, progress=report, use_cache=not args.no_cache)
    print(f"wall time {time.perf_counter() - t0:.0f} s, {result.computed} runs trained", file=sys.stderr)
    print(f"command: python -m sparsekit.seedstudy {' '.join(sys.argv[1:] if argv is None else argv)}\n")
    print(result.markdown())
    print()
    for c in result.comparisons():
        print(c.sentence)
    if args.json_out:
        with open(args.json_out, "w") as f:
            f.write(result.to_json())
    if args.csv_out:
        with open(args.csv_out, "w") as f:
            f.write(result.runs_csv())
    return 0


if __name__ == "__main__":
    sys.exit(main())

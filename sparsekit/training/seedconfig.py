"""What a seed study runs: ``SeedStudyConfig`` (patterns, seeds, the λ_w sweep) and its bounds.

It sits below both the study's results (``seedresults``, which records the config it came from) and
the driver (``seedstudy``, which runs it through ``sparsekit.study``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from .. import serial
from ..stats import DEFAULT_CONFIDENCE
from .config import DEFAULT_LAMBDA_W, TrainConfig

MAX_SEEDS = 64
MAX_PATTERNS = 6
MAX_LAMBDAS = 8
MAX_RUNS = 600
DEFAULT_LAMBDA_SWEEP = (0.0, 2e-5, 2e-4, 6e-4, 2e-3)


def parse_patterns(text: str) -> list[tuple[int, int]]:
    """``"2:4, 1:4"`` -> ``[(2, 4), (1, 4)]`` (duplicates dropped; bounds are checked by the configs).

    Raises:
        ValueError: a part that is not two whole numbers separated by a colon, or no pattern at all.
    """
    out: list[tuple[int, int]] = []
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        left, sep, right = part.partition(":")
        if not sep or not left.strip().isdigit() or not right.strip().isdigit():
            raise ValueError(f"could not read {part!r} as N:M (two whole numbers, e.g. 2:4)")
        pair = (int(left), int(right))
        if pair not in out:
            out.append(pair)
    if not out:
        raise ValueError("give at least one N:M pattern, e.g. 2:4")
    return out


def parse_floats(text: str) -> list[float]:
    """``"0, 2e-4, 6e-4"`` -> ``[0.0, 0.0002, 0.0006]`` (duplicates dropped, order kept)."""
    out: list[float] = []
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"could not read {part!r} as a number") from None
        if not math.isfinite(value):
            raise ValueError(f"{part!r} is not a finite number")
        if value not in out:
            out.append(value)
    return out


@dataclass(frozen=True)
class SeedStudyConfig(serial.JsonConfig):
    """A seed study. Serialises to JSON (``to_json``/``from_json``), its ``TrainConfig`` as an object."""

    train: TrainConfig = field(default_factory=TrainConfig)
    """Base ``TrainConfig`` (model, epochs, optimiser, learning rate, conv grouping, SR-STE's λ_w for the
    main comparison); method, N:M, seed and snapshots are set per run. Also accepted when constructing:
    None (``TrainConfig()``) or the config's JSON dict."""
    patterns: tuple[tuple[int, int], ...] = ((2, 4), (1, 4))
    """N:M patterns compared (N = kept)."""
    seeds: int = 8
    """K, the number of seeds (paired runs per pattern), 2..64."""
    first_seed: int = 0
    """Seeds ``first_seed .. first_seed + K − 1``."""
    lambda_sweep: tuple[float, ...] = DEFAULT_LAMBDA_SWEEP
    """SR-STE λ_w values run at the first pattern for the λ_w plot (0 = STE; empty = no sweep)."""
    confidence: float = DEFAULT_CONFIDENCE
    """Coverage of the intervals."""

    def __post_init__(self) -> None:
        # None or a JSON dict may still be passed in (older callers, hand-written specs).
        base: TrainConfig | Mapping[str, Any] | None = self.train
        if base is None:
            base = TrainConfig()
        elif isinstance(base, Mapping):
            base = TrainConfig.from_json(base)
        object.__setattr__(self, "train", replace(base, snapshot_unit="epoch", snapshot_every=1))
        object.__setattr__(self, "patterns", tuple(tuple(int(v) for v in p) for p in self.patterns))
        object.__setattr__(self, "lambda_sweep", tuple(float(v) for v in self.lambda_sweep))

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.first_seed, self.first_seed + self.seeds))

    @property
    def lambda_w(self) -> float:
        """SR-STE's decay in the main comparison."""
        return self.train.lambda_w

    def run_configs(self) -> list[TrainConfig]:
        """Every run of the study (no duplicates), main comparison first, in seed-major order so that a
        study stopped early already has complete pairs."""
        out: list[TrainConfig] = []
        seen: set[str] = set()

        def add(cfg: TrainConfig) -> None:
            key = cfg.to_json()
            if key not in seen:
                seen.add(key)
                out.append(cfg)

        for seed in self.seed_list:
            for n, m in self.patterns:
                add(self._cell("ste", n, m, seed, 0.0))
                add(self._cell("srste", n, m, seed, self.lambda_w))
        n, m = self.patterns[0]
        for seed in self.seed_list:
            for lam in self.lambda_sweep:
                add(self._cell("ste" if lam == 0 else "srste", n, m, seed, lam))
        return out

    def _cell(self, method: str, n: int, m: int, seed: int, lam: float) -> TrainConfig:
        # STE ignores λ_w; a fixed value keeps one cache entry per STE run.
        return replace(self.train, method=method, n=n, m=m, seed=seed,
                       lambda_w=lam if method == "srste" else DEFAULT_LAMBDA_W)

    def validate(self) -> None:
        """Raise ``ValueError`` with a clear message for any setting out of bounds."""
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or not 2 <= self.seeds <= MAX_SEEDS:
            raise ValueError(f"a seed study needs between 2 and {MAX_SEEDS} seeds (intervals need at least two), "
                             f"got {self.seeds!r}")
        if isinstance(self.first_seed, bool) or not isinstance(self.first_seed, int) or self.first_seed < 0:
            raise ValueError(f"first seed must be a whole number >= 0, got {self.first_seed!r}")
        if not self.patterns or len(self.patterns) > MAX_PATTERNS:
            raise ValueError(f"give between 1 and {MAX_PATTERNS} N:M patterns, got {len(self.patterns)}")
        if len(self.lambda_sweep) > MAX_LAMBDAS:
            raise ValueError(f"the λ_w sweep takes at most {MAX_LAMBDAS} values, got {len(self.lambda_sweep)}")
        if any(v < 0 for v in self.lambda_sweep):
            raise ValueError("λ_w values must be >= 0")
        if not self.lambda_w > 0:
            raise ValueError("SR-STE's λ_w must be > 0 for the comparison (λ_w = 0 is STE itself)")
        if not 0.5 <= self.confidence < 1.0:
            raise ValueError(f"confidence must be in [0.5, 1), got {self.confidence!r}")
        runs = self.run_configs()
        if len(runs) > MAX_RUNS:
            raise ValueError(f"this study has {len(runs)} runs, over the limit of {MAX_RUNS}; use fewer seeds, "
                             "patterns or λ_w values")
        for cfg in runs:
            cfg.validate()


__all__ = ["DEFAULT_LAMBDA_SWEEP", "MAX_LAMBDAS", "MAX_PATTERNS", "MAX_RUNS", "MAX_SEEDS", "SeedStudyConfig",
           "parse_floats", "parse_patterns"]

"""A grid of training runs: every method × N:M pattern with shared settings, checked as a whole."""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from .config import TrainConfig
from .seedstudy import parse_patterns

MAX_GRID_RUNS = 8
"""Most runs one grid may hold (the Training page trains them in one click)."""
PATTERN_METHODS = ("ste", "srste", "random")
"""Methods that run once per N:M pattern; dense and gradual run once (dense records the masks the
first pattern would pick)."""
_DEFAULT_BASE = TrainConfig()
"""``run_grid``'s default shared settings (a frozen config, made once)."""


def run_grid(
    methods: Sequence[str],
    patterns: str | Sequence[tuple[int, int]],
    base: TrainConfig = _DEFAULT_BASE,
    *,
    max_runs: int = MAX_GRID_RUNS,
) -> tuple[list[TrainConfig], list[str]]:
    """The configs of methods × N:M patterns sharing ``base``'s other settings, and what is wrong with them.

    Args:
        methods: training methods (``METHODS``), in run order.
        patterns: ``(n, m)`` pairs (N = kept), or text such as ``"2:4, 1:4"``.
        base: the shared settings; its ``method``, ``n`` and ``m`` are replaced per run. Its
            ``lambda_w`` counts only when SR-STE is among the methods (otherwise the default is used).
        max_runs: most configs the grid may hold.

    Returns:
        ``(configs, errors)``: one config per ``ste``/``srste``/``random`` method and pattern, one
        per ``dense``/``gradual`` method (first pattern); and the distinct validation messages in
        order (unreadable patterns, no method, each config's ``validate``, too many runs). The
        configs are returned even when there are errors; an unreadable pattern text falls back
        to ``base``'s N:M.
    """
    errors: list[str] = []
    if isinstance(patterns, str):
        try:
            patterns = parse_patterns(patterns)
        except ValueError as err:
            errors.append(str(err))
            patterns = [(base.n, base.m)]
    patterns = list(patterns)
    if not methods:
        errors.append("choose at least one method")
    # λ_w means nothing to a grid without SR-STE, so an unused value must not block the other runs.
    if "srste" not in methods:
        base = replace(base, lambda_w=TrainConfig().lambda_w)
    configs = [replace(base, method=method, n=n, m=m)
               for method in methods
               for n, m in (patterns if method in PATTERN_METHODS else patterns[:1])]
    for cfg in configs:
        try:
            cfg.validate()
        except ValueError as err:
            if str(err) not in errors:
                errors.append(str(err))
    if len(configs) > max_runs:
        errors.append(f"{len(configs)} runs at once is too many; at most {max_runs} per click")
    return configs, errors

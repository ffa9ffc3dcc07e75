"""Means with confidence intervals over seeds, and paired differences between two methods.

Every claim the app makes about one method beating another is a statement over seeds: the mean,
a Student-t confidence interval of the mean (small samples, unknown variance), and for paired runs
(same seed, same data order, same initial weights) the interval of the per-seed difference and in
how many seeds one side was lower. An interval that contains zero is reported as "no difference
shown", never as a win.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

DEFAULT_CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A sample mean with its two-sided Student-t confidence interval."""

    mean: float
    """Sample mean (NaN for no values)."""
    low: float
    """Lower end of the interval (NaN with fewer than two values)."""
    high: float
    """Upper end of the interval (NaN with fewer than two values)."""
    sd: float
    """Sample standard deviation (n − 1 in the denominator; NaN with fewer than two values)."""
    n: int
    """Number of values."""
    confidence: float = DEFAULT_CONFIDENCE
    """Coverage of the interval, e.g. 0.95."""

    @property
    def half_width(self) -> float:
        """``high − mean`` (NaN without an interval)."""
        return self.high - self.mean

    @property
    def includes_zero(self) -> bool:
        """Whether 0 lies in ``[low, high]`` (True when there is no interval: nothing is shown)."""
        return not (self.low > 0 or self.high < 0)

    def as_dict(self) -> dict:
        return asdict(self)

    def text(self, digits: int = 3) -> str:
        """``mean [low, high]``, e.g. ``1.55 [1.21, 1.89]``."""
        if math.isnan(self.low):
            return f"{self.mean:.{digits}g} (n={self.n}, no interval)"
        return f"{self.mean:.{digits}g} [{self.low:.{digits}g}, {self.high:.{digits}g}]"


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (scipy)."""
    from scipy.stats import t

    return float(t.ppf(p, df))


def mean_interval(values: Sequence[float], confidence: float = DEFAULT_CONFIDENCE) -> Interval:
    """Mean of ``values`` with a two-sided Student-t interval: ``mean ± t_{(1+c)/2, n−1} · sd / √n``.

    Args:
        values: the per-seed numbers (NaN values are an error: a diverged run must be reported, not
            averaged away).
        confidence: coverage, strictly between 0 and 1.

    Returns:
        An ``Interval``; with one value the ends are NaN.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence!r}")
    xs = [float(v) for v in values]
    if any(math.isnan(v) for v in xs):
        raise ValueError("values contain NaN (a failed or diverged run?); drop it explicitly or fix the run")
    n = len(xs)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, math.nan, 0, confidence)
    mean = sum(xs) / n
    if n < 2:
        return Interval(mean, math.nan, math.nan, math.nan, n, confidence)
    sd = math.sqrt(sum((v - mean) ** 2 for v in xs) / (n - 1))
    half = t_quantile(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, sd, n, confidence)


@dataclass(frozen=True)
class PairedDifference:
    """``a − b`` over paired values (same seed), with its interval and the sign count."""

    diff: Interval
    """Mean of the per-pair differences ``a_i − b_i`` and its t interval."""
    a_lower: int
    """Pairs where ``a_i < b_i``."""
    ties: int
    """Pairs where ``a_i == b_i``."""

    @property
    def n(self) -> int:
        return self.diff.n


def paired_difference(a: Sequence[float], b: Sequence[float],
                      confidence: float = DEFAULT_CONFIDENCE) -> PairedDifference:
    """Paired comparison of ``a`` and ``b`` (``a[i]`` and ``b[i]`` share a seed).

    Args:
        a: one method's values, in seed order.
        b: the other's, same order and length.
        confidence: coverage of the interval.

    Returns:
        A ``PairedDifference``.
    """
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    d = [float(x) - float(y) for x, y in zip(a, b)]
    return PairedDifference(mean_interval(d, confidence), sum(x < 0 for x in d), sum(x == 0 for x in d))


def describe_difference(pd: PairedDifference, what: str, a: str, b: str, unit: str = "", digits: int = 3) -> str:
    """One plain sentence on a paired difference, saying so when the interval includes zero.

    Args:
        pd: the comparison of ``a − b``.
        what: the quantity, e.g. ``late SAD``.
        a: name of the first method, e.g. ``SR-STE``.
        b: name of the second, e.g. ``STE``.
        unit: appended to numbers, e.g. ``" pp"``.
        digits: significant digits.
    """
    d = pd.diff
    pct = f"{d.confidence:.0%}"
    ties = f" ({pd.ties} tie{'s' if pd.ties > 1 else ''})" if pd.ties else ""
    count = f"{a} was lower in {pd.a_lower} of {pd.n} seeds{ties}"
    if d.n < 2:
        return f"{what}: {a} − {b} = {d.mean:+.{digits}g}{unit} from a single seed; no interval, no conclusion."
    span = f"{pct} CI [{d.low:+.{digits}g}, {d.high:+.{digits}g}]{unit}"
    if d.includes_zero:
        return (f"{what}: {a} − {b} = {d.mean:+.{digits}g}{unit}, {span}. The interval includes zero: no "
                f"difference shown at {d.n} seeds; {count}.")
    side = "lower" if d.mean < 0 else "higher"
    return f"{what}: {a} is {side} than {b} by {abs(d.mean):.{digits}g}{unit} ({span}); {count}."

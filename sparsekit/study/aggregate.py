"""What a study's records say: intervals over seeds, paired method differences, Pareto fronts, exports.

A *group* is all the cells that differ only in their seed (same kind, model, method, pattern, λ_w). Its
numbers are the mean and a Student-t interval over the seeds (``sparsekit.stats``). Methods are compared
paired by seed at the same model and pattern. A Pareto front keeps the groups that no other group beats
on both quality (in the metric's own direction) and cost (kept fraction of the weights, or memory bytes
in the best format; lower is cheaper).
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from ..stats import (
    DEFAULT_CONFIDENCE,
    Interval,
    PairedDifference,
    describe_difference,
    mean_interval,
    paired_difference,
)
from .records import CellRecord

COSTS = ("kept_fraction", "memory_bytes")
"""Cost axes of a Pareto front (lower is cheaper)."""
RECORD_COLUMNS = ("kind", "model", "method", "pattern", "seed", "lambda_w", "status", "error", "kept_fraction",
                  "memory_bytes", "dense_bytes", "seed_matters", "seed_effect", "seconds", "key")


def variant(method: str, lambda_w: float | None) -> str:
    """A method's name with its λ_w when it has one (``srste λ=0.0002``)."""
    return method if lambda_w is None else f"{method} λ={lambda_w:g}"


@dataclass(frozen=True)
class Group:
    """The cells of one setting over their seeds."""

    kind: str
    model: str
    method: str
    pattern: str
    lambda_w: float | None
    seeds: tuple[int, ...]
    """Seeds with a finished record."""
    metrics: dict[str, Interval]
    """metric -> mean and interval over the seeds (NaN values, from a diverged cell, are left out)."""
    higher_is_better: dict[str, bool]
    kept_fraction: float
    """Mean kept share of the prunable weights."""
    memory_bytes: float | None
    """Mean weight memory in the best format per layer (None for training cells)."""
    seed_matters: bool
    """False when no seed changes the result (magnitude): the interval then has zero width by construction."""

    @property
    def variant(self) -> str:
        return variant(self.method, self.lambda_w)

    @property
    def label(self) -> str:
        return f"{self.model} {self.pattern} {self.variant}"

    def cost(self, axis: str) -> float | None:
        """``kept_fraction`` or ``memory_bytes``."""
        return self.kept_fraction if axis == "kept_fraction" else self.memory_bytes

    def as_dict(self) -> dict[str, Any]:
        """JSON-able fields, intervals as dicts."""
        return {"kind": self.kind, "model": self.model, "method": self.method, "pattern": self.pattern,
                "lambda_w": self.lambda_w, "seeds": list(self.seeds), "n_seeds": len(self.seeds),
                "kept_fraction": self.kept_fraction, "memory_bytes": self.memory_bytes,
                "seed_matters": self.seed_matters, "higher_is_better": dict(self.higher_is_better),
                "metrics": {k: v.as_dict() for k, v in self.metrics.items()}}


GroupKey = tuple[str, str, str, str, float | None]
"""``(kind, model, method, pattern, lambda_w)``: what the cells of a group share."""


def _group_key(r: CellRecord) -> GroupKey:
    return r.kind, r.model, r.method, r.pattern, r.lambda_w


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


METRIC_LABELS = {
    "accuracy": "held-out accuracy (%)", "cosine": "mean cosine to dense embeddings",
    "top5_agreement": "top-5 neighbour agreement (fraction)", "perplexity": "perplexity",
    "top1_agreement": "next-token agreement with dense (fraction)",
    "early_sad_pct": "early SAD (% of sparse weights)", "late_sad_pct": "late SAD (% of sparse weights)",
    "late_flipped_pct": "late flipped (% of sparse weights)",
}
"""How a study names its metrics (with units) in boxes, axes and sentences."""
METRIC_UNITS = {"accuracy": " pp", "early_sad_pct": " pp", "late_sad_pct": " pp", "late_flipped_pct": " pp"}
"""The unit of a difference of each metric (pp: percentage points, for metrics in %)."""


def metric_label(metric: str) -> str:
    """A metric's label with its unit (``METRIC_LABELS``), else the key with spaces."""
    return METRIC_LABELS.get(metric, metric.replace("_", " "))


def metric_names(records: Iterable[CellRecord]) -> list[str]:
    """Metrics the finished records carry, in order of first appearance."""
    out: dict[str, None] = {}
    for r in records:
        if r.done:
            out.update(dict.fromkeys(r.metrics))
    return list(out)


def summarize(records: Sequence[CellRecord], metrics: Sequence[str] | None = None,
              confidence: float = DEFAULT_CONFIDENCE) -> list[Group]:
    """Mean and interval over seeds for every group of finished records.

    Args:
        records: study records (failed ones are skipped).
        metrics: metrics to summarise (default: all the records carry).
        confidence: coverage of the intervals.

    Returns:
        One ``Group`` per setting, in order of first appearance.
    """
    done = [r for r in records if r.done]
    metrics = list(metrics) if metrics else metric_names(done)
    groups: dict[GroupKey, list[CellRecord]] = {}
    for r in done:
        groups.setdefault(_group_key(r), []).append(r)
    out = []
    for (kind, model, method, pattern, lam), rs in groups.items():
        higher: dict[str, bool] = {}
        for r in rs:
            higher.update(r.higher_is_better)
        intervals = {}
        for m in metrics:
            values = [v for v in (r.metrics.get(m) for r in rs) if v is not None and _finite(v)]
            intervals[m] = mean_interval(values, confidence)
        memory = [r.memory_bytes for r in rs if r.memory_bytes is not None]
        out.append(Group(
            kind=kind, model=model, method=method, pattern=pattern, lambda_w=lam,
            seeds=tuple(sorted(r.seed for r in rs)), metrics=intervals,
            higher_is_better={m: bool(higher.get(m, True)) for m in metrics},
            kept_fraction=sum(_kept_fraction(r) for r in rs) / len(rs),
            memory_bytes=sum(memory) / len(memory) if len(memory) == len(rs) else None,
            seed_matters=any(bool(r.seed_matters) for r in rs),
        ))
    return out


def _kept_fraction(record: CellRecord) -> float:
    # Every finished cell has one (run_oneshot, run_training); a stored record without it is unreadable.
    if record.kept_fraction is None:
        raise TypeError(f"the finished record of {record.model} {record.pattern} {record.method} seed "
                        f"{record.seed} has no kept_fraction")
    return float(record.kept_fraction)


@dataclass(frozen=True)
class MethodDifference:
    """``a − b`` for one metric at one model and pattern, paired by seed."""

    model: str
    pattern: str
    a: str
    """Method (with λ_w) of the first term."""
    b: str
    metric: str
    seeds: tuple[int, ...]
    """Seeds where both have a finished record."""
    paired: PairedDifference
    sentence: str
    """One plain sentence, saying so when the interval includes zero."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-able fields, the difference's interval flattened in."""
        return {"model": self.model, "pattern": self.pattern, "a": self.a, "b": self.b, "metric": self.metric,
                "seeds": list(self.seeds), "a_lower": self.paired.a_lower, "ties": self.paired.ties,
                **self.paired.diff.as_dict(), "sentence": self.sentence}


def paired_differences(records: Sequence[CellRecord], metric: str,
                       confidence: float = DEFAULT_CONFIDENCE) -> list[MethodDifference]:
    """Every pair of methods at each model and pattern: later − earlier (in the records' order), paired by seed.

    Args:
        records: study records (failed ones and non-finite values are skipped).
        metric: a metric the records carry.
        confidence: coverage of the intervals.

    Returns:
        One ``MethodDifference`` per pair of methods that share at least one seed.
    """
    table: dict[tuple[str, str, str], dict[str, dict[int, float]]] = {}
    for r in records:
        value = r.metrics.get(metric) if r.done else None
        if value is not None and _finite(value):
            cell = table.setdefault((r.kind, r.model, r.pattern), {})
            cell.setdefault(variant(r.method, r.lambda_w), {})[int(r.seed)] = float(value)
    out = []
    for (_, model, pattern), by_variant in table.items():
        names = list(by_variant)
        for i, b in enumerate(names):
            for a in names[i + 1:]:
                seeds = tuple(sorted(set(by_variant[a]) & set(by_variant[b])))
                if not seeds:
                    continue
                pd = paired_difference([by_variant[a][s] for s in seeds], [by_variant[b][s] for s in seeds], confidence)
                sentence = describe_difference(pd, f"{model} {pattern} {metric_label(metric)}", a, b,
                                               METRIC_UNITS.get(metric, ""))
                out.append(MethodDifference(model, pattern, a, b, metric, seeds, pd, sentence))
    return out


def pareto_front(groups: Sequence[Group], metric: str, cost: str = "kept_fraction") -> list[Group]:
    """The groups no other group beats on both quality and cost.

    Args:
        groups: summaries (usually of one model: quality metrics of different models do not compare).
        metric: quality metric; its direction comes from the groups' ``higher_is_better``.
        cost: ``kept_fraction`` or ``memory_bytes`` (lower is cheaper).

    Returns:
        The non-dominated groups, cheapest first (groups without the metric or the cost are left out).
    """
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {COSTS}, got {cost!r}")
    points: list[tuple[Group, float, float]] = []  # (group, cost, mean)
    for g in groups:
        c = g.cost(cost)
        if metric in g.metrics and _finite(g.metrics[metric].mean) and c is not None:
            points.append((g, c, g.metrics[metric].mean))
    sign = 1.0 if (points and points[0][0].higher_is_better.get(metric, True)) else -1.0

    def beats(p: tuple[Group, float, float], q: tuple[Group, float, float]) -> bool:  # p dominates q
        better_q, better_c = sign * p[2] >= sign * q[2], p[1] <= q[1]
        return better_q and better_c and (sign * p[2] > sign * q[2] or p[1] < q[1])

    front = [q for q in points if not any(beats(p, q) for p in points if p is not q)]
    return [g for g, _, _ in sorted(front, key=lambda t: (t[1], -sign * t[2]))]


def best_per_pattern(groups: Sequence[Group], metric: str) -> dict[tuple[str, str], Group]:
    """The best method at each model and pattern.

    Args:
        groups: summaries.
        metric: quality metric (its direction from the groups).

    Returns:
        ``(model, pattern) -> group`` with the best mean (the first on a tie).
    """
    out: dict[tuple[str, str], Group] = {}
    for g in groups:
        if metric not in g.metrics or not _finite(g.metrics[metric].mean):
            continue
        sign = 1.0 if g.higher_is_better.get(metric, True) else -1.0
        best = out.get((g.model, g.pattern))
        if best is None or sign * g.metrics[metric].mean > sign * best.metrics[metric].mean:
            out[(g.model, g.pattern)] = g
    return out


def records_csv(records: Sequence[CellRecord]) -> str:
    """One row per cell: axis values, status, costs, and a column per metric."""
    metrics = metric_names(records)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow([*RECORD_COLUMNS, *metrics])
    for r in records:
        writer.writerow([_text(getattr(r, c)) for c in RECORD_COLUMNS] + [_text(r.metrics.get(m)) for m in metrics])
    return buf.getvalue()


def summary_csv(groups: Sequence[Group]) -> str:
    """One row per group: axis values, seeds, costs, and mean/low/high/sd per metric."""
    metrics = list(dict.fromkeys(m for g in groups for m in g.metrics))
    buf = io.StringIO()
    writer = csv.writer(buf)
    head = ["kind", "model", "method", "pattern", "lambda_w", "n_seeds", "kept_fraction", "memory_bytes",
            "seed_matters"]
    writer.writerow(head + [f"{m}_{part}" for m in metrics for part in ("mean", "low", "high", "sd")])
    for g in groups:
        row = [g.kind, g.model, g.method, g.pattern, _text(g.lambda_w), len(g.seeds), g.kept_fraction,
               _text(g.memory_bytes), g.seed_matters]
        for m in metrics:
            iv = g.metrics.get(m)
            row += [_text(getattr(iv, part)) if iv else "" for part in ("mean", "low", "high", "sd")]
        writer.writerow(row)
    return buf.getvalue()


def _text(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


def analysis(records: Sequence[CellRecord], metrics: Sequence[str] | None = None,
             confidence: float = DEFAULT_CONFIDENCE) -> dict[str, Any]:
    """Everything computed from the records, as JSON-able data.

    Returns:
        ``{"summary": [group dicts], "paired": [differences], "pareto": {model: {metric: {cost: [labels]}}},
        "best": {model: {pattern: {metric: label}}}}``.
    """
    groups = summarize(records, metrics, confidence)
    names = list(metrics) if metrics else metric_names(records)
    pareto: dict[str, Any] = {}
    best: dict[str, Any] = {}
    for model in dict.fromkeys(g.model for g in groups):
        mine = [g for g in groups if g.model == model]
        pareto[model] = {m: {c: [g.label for g in pareto_front(mine, m, c)] for c in COSTS} for m in names}
        for m in names:
            for (_, pattern), g in best_per_pattern(mine, m).items():
                best.setdefault(model, {}).setdefault(pattern, {})[m] = g.variant
    return {"summary": [g.as_dict() for g in groups],
            "paired": [d.as_dict() for m in names for d in paired_differences(records, m, confidence)],
            "pareto": pareto, "best": best}


def summary_markdown(groups: Sequence[Group], metrics: Sequence[str] | None = None) -> str:
    """A Markdown table: one row per group, mean [interval] per metric."""
    metrics = list(metrics) if metrics else list(dict.fromkeys(m for g in groups for m in g.metrics))
    lines = ["| model | pattern | method | seeds | kept | " + " | ".join(metrics) + " |",
             "|---|---|---|---|---|" + "---|" * len(metrics)]
    for g in groups:
        note = "" if g.seed_matters else " (seed-free)"
        cells = [g.metrics[m].text() if m in g.metrics else "" for m in metrics]
        lines.append(f"| {g.model} | {g.pattern} | {g.variant}{note} | {len(g.seeds)} | {g.kept_fraction:.3f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)

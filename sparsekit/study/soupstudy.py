"""A soup study's aggregate: the soups its ingredient cells make, against the best and the mean ingredient.

``soup_study(spec)`` runs a ``StudySpec`` of ``kind="soup"`` (``study.soupcells``) through ``run_study``
(cached cells are reused, so a stopped study continues with the missing ingredients only, locally or on Ray)
and returns ``soup_results(spec)``: for every model × method × pattern and every outer seed whose k
ingredients are all done, the soup (``recovery.uniform_soup`` of the ingredients' weights, loaded into a copy
of the pruned model and scored with the model's metric, as ``recovery.model_soup`` does), its best and mean
ingredient, the pruned model before recovery and the dense model; then per setting the mean over outer seeds
with Student-t intervals and the paired differences soup − best and soup − mean (``sparsekit.stats``).
"""
from __future__ import annotations

import copy
import csv
import io
import math
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

from ..display import Card, Shown, fmt
from ..models.base import LoadedModel
from ..stats import Interval, PairedDifference, mean_interval, paired_difference
from .aggregate import METRIC_UNITS, metric_label
from .cells import worker_model
from .records import CellRecord
from .runner import StopFn, StudyProgressFn, relabel, run_study, study_status
from .soupcells import SoupStudy, ingredient_run, pruned_model
from .spec import StudySpec
from .store import StudyStatus, lookup

__all__ = ["LEVELS", "SoupGroup", "SoupOutcome", "SoupStudyResult", "soup_results", "soup_study"]

LEVELS = ("dense", "before", "mean", "best", "soup")
"""The levels a soup setting reports, in the figure's order."""
DIGITS = 10
"""Decimals each paired difference (and their mean) is rounded to: a soup that scores its mean ingredient exactly
differs by 0, not by the float noise of averaging k scores (7e-15)."""
LEVEL_LABELS = {"dense": "dense", "before": "pruned, before recovery", "mean": "mean ingredient",
                "best": "best ingredient", "soup": "soup"}


@dataclass(frozen=True)
class SoupOutcome:
    """One soup: ``k`` ingredients of one pruned model (one outer seed)."""

    model: str
    method: str
    pattern: str
    outer: int
    seeds: tuple[int, ...]
    """The ingredients' recovery seeds."""
    metric: str
    higher_is_better: bool
    soup: float
    ingredients: tuple[float, ...]
    before: float
    dense: float
    soup_quality: dict[str, float] = field(default_factory=dict)

    @property
    def best(self) -> float:
        return max(self.ingredients) if self.higher_is_better else min(self.ingredients)

    @property
    def mean(self) -> float:
        return sum(self.ingredients) / len(self.ingredients)

    def level(self, name: str) -> float:
        """``dense``, ``before``, ``mean``, ``best`` or ``soup``."""
        return float(getattr(self, name))


@dataclass(frozen=True)
class SoupGroup:
    """One setting (model, method, pattern) over its outer seeds."""

    model: str
    method: str
    pattern: str
    metric: str
    higher_is_better: bool
    outers: tuple[int, ...]
    levels: dict[str, Interval]
    """``LEVELS`` -> mean over outer seeds with its interval."""
    soup_minus_best: PairedDifference
    soup_minus_mean: PairedDifference

    @property
    def label(self) -> str:
        return f"{self.pattern} {self.method}"


@dataclass(repr=False)
class SoupStudyResult(Shown):
    """A soup study's soups (``outcomes``), their summary per setting (``groups``) and where the study stands."""

    spec: StudySpec
    outcomes: list[SoupOutcome]
    groups: list[SoupGroup]
    status: StudyStatus
    ingredients_done: int
    ingredients_total: int

    FIGURE = "soup_figure"

    @property
    def complete(self) -> bool:
        return self.ingredients_done == self.ingredients_total

    def rows(self) -> list[dict[str, Any]]:
        """The table: one row per setting, each level as ``mean [low, high]`` in the metric's unit."""
        out = []
        for g in self.groups:
            unit = METRIC_UNITS.get(g.metric, "").strip()
            row: dict[str, Any] = {"model": g.model, "pruned": g.label, "outer seeds": len(g.outers)}
            for level in LEVELS:
                row[f"{LEVEL_LABELS[level]}: {metric_label(g.metric)}"] = g.levels[level].text(4)
            for name, pd in (("soup − best", g.soup_minus_best), ("soup − mean", g.soup_minus_mean)):
                row[f"{name} ({unit or 'difference'})"] = pd.diff.text(3)
            out.append(row)
        return out

    def csv(self) -> str:
        """One row per setting: mean, low and high of every level and of both differences."""
        buf = io.StringIO()
        writer = csv.writer(buf)
        parts = [*LEVELS, "soup_minus_best", "soup_minus_mean"]
        writer.writerow(["model", "method", "pattern", "metric", "outer_seeds", "ingredients"]
                        + [f"{p}_{s}" for p in parts for s in ("mean", "low", "high")])
        k = (self.spec.soup or SoupStudy()).ingredients
        for g in self.groups:
            ivs = [*(g.levels[lv] for lv in LEVELS), g.soup_minus_best.diff, g.soup_minus_mean.diff]
            writer.writerow([g.model, g.method, g.pattern, g.metric, len(g.outers), k]
                            + [_text(getattr(iv, s)) for iv in ivs for s in ("mean", "low", "high")])
        return buf.getvalue()

    def summary_card(self) -> Card:
        """Ingredients done, and per setting the soup against its best and mean ingredient."""
        head = {"ingredients": f"{self.ingredients_done} of {self.ingredients_total} done",
                "soups": str(len(self.outcomes)), "state": self.status.state}
        if self.groups:
            g = self.groups[0]
            head[f"soup {g.metric}"] = fmt(g.levels["soup"].mean)
            head[f"mean ingredient {g.metric}"] = fmt(g.levels["mean"].mean)
            head[f"best ingredient {g.metric}"] = fmt(g.levels["best"].mean)
        note = "mean [t-interval] over outer seeds; differences paired by outer seed"
        return Card(f"SoupStudyResult {self.spec.name}", head, self.rows(), note)


def _num(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _text(value: float) -> Any:
    return "" if isinstance(value, float) and math.isnan(value) else value


def _soup_outcome(spec: StudySpec, cells: Sequence[Any], records: Sequence[CellRecord], outer: int,
                  loaded: LoadedModel) -> SoupOutcome:
    from ..recovery import uniform_soup

    runs = [ingredient_run(r.detail or {}) for r in records]
    state, _ = uniform_soup(runs)
    result = pruned_model(loaded, cells[0].sparsify_config())
    model = copy.deepcopy(result.model)
    model.load_state_dict(state, strict=True)
    model.eval()
    quality = loaded.quality(model)
    detail = records[0].detail or {}
    metric = str(detail.get("metric") or next(iter(quality)))
    higher = bool(records[0].higher_is_better.get(metric, True))
    return SoupOutcome(cells[0].model, cells[0].method, cells[0].pattern, outer, tuple(r.seed for r in records),
                       metric, higher, float(quality[metric]), tuple(_num(r.metrics.get(metric)) for r in records),
                       float(detail["pruned_quality"][metric]), float(detail["dense_quality"][metric]),
                       {k: float(v) for k, v in quality.items()})


def soup_results(spec: StudySpec, *, loaded: LoadedModel | None = None,
                 status: StudyStatus | None = None) -> SoupStudyResult:
    """What the cache holds for a soup study, souped: every outer seed whose ingredients are all done.

    Args:
        spec: a soup study (validated here).
        loaded: the model (one-model studies; default loaded once per process by spec).
        status: the run's status (default ``study_status(spec)``).

    Returns:
        The ``SoupStudyResult`` (no ingredient is computed here; a soup is averaged and scored).
    """
    spec.validate()
    if spec.kind != "soup":
        raise ValueError(f"soup_results reads a soup study (kind soup), got kind {spec.kind!r}")
    k = (spec.soup or SoupStudy()).ingredients
    cells = spec.cells()
    stored = lookup(c.key for c in cells)
    by_soup: dict[tuple[str, str, str, int], list[tuple[Any, CellRecord | None]]] = {}
    for c in cells:
        rec = stored.get(c.key)
        by_soup.setdefault((c.model, c.method, c.pattern, c.seed // k), []).append(
            (c, relabel(rec, c, c.key) if rec is not None and rec.done else None))
    outcomes = []
    done = 0
    for (model, _, _, outer), items in by_soup.items():
        ready = [r for _, r in items if r is not None]
        done += len(ready)
        if len(ready) == len(items):
            mine = loaded if loaded is not None and loaded.spec == model else worker_model(model)
            outcomes.append(_soup_outcome(spec, [c for c, _ in items], ready, outer, mine))
    return SoupStudyResult(spec, outcomes, summarize_soups(outcomes, spec.confidence),
                           status if status is not None else study_status(spec), done, len(cells))


def summarize_soups(outcomes: Sequence[SoupOutcome], confidence: float) -> list[SoupGroup]:
    """Per setting: each level's mean over outer seeds with its interval, and soup − best, soup − mean paired
    by outer seed."""
    groups: dict[tuple[str, str, str], list[SoupOutcome]] = {}
    for o in outcomes:
        groups.setdefault((o.model, o.method, o.pattern), []).append(o)
    out = []
    for (model, method, pattern), items in groups.items():
        levels = {lv: mean_interval([o.level(lv) for o in items], confidence) for lv in LEVELS}
        out.append(SoupGroup(model, method, pattern, items[0].metric, items[0].higher_is_better,
                             tuple(o.outer for o in items), levels,
                             rounded_difference([o.soup for o in items], [o.best for o in items], confidence),
                             rounded_difference([o.soup for o in items], [o.mean for o in items], confidence)))
    return out


def rounded_difference(a: Sequence[float], b: Sequence[float], confidence: float) -> PairedDifference:
    """``a − b`` paired, each difference rounded to ``DIGITS`` decimals and so their mean: equal scores differ by
    exactly 0, and a mean of differences that cancel is 0, not float noise (5e-11 when the scores were rounded
    first)."""
    diffs = [round(x - y, DIGITS) for x, y in zip(a, b)]
    pd = paired_difference(diffs, [0.0] * len(diffs), confidence)
    return replace(pd, diff=replace(pd.diff, mean=round(pd.diff.mean, DIGITS)))


def soup_study(spec: StudySpec, backend: Any = None, *, ray_address: str | None = None, workers: int | None = None,
               progress: StudyProgressFn | bool | None = True, stop: StopFn | None = None,
               loaded: LoadedModel | None = None) -> SoupStudyResult:
    """Run a soup study (``run_study``: finished ingredients come from the cache) and soup what is done.

    Args:
        spec: a ``StudySpec`` of ``kind="soup"``.
        backend, ray_address, workers, progress, stop: as ``run_study``.
        loaded: the model already loaded here (used for the soups; cells load their own on other backends).

    Returns:
        The ``SoupStudyResult`` (a stopped run souped the outer seeds whose ingredients are all done).
    """
    spec.validate()
    if spec.kind != "soup":
        raise ValueError(f"soup_study runs a soup study (kind soup), got kind {spec.kind!r}")
    result = run_study(spec, backend, ray_address=ray_address, workers=workers, progress=progress, stop=stop)
    return soup_results(spec, loaded=loaded, status=result.status)

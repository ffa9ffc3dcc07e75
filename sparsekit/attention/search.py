"""Per-head pattern search: for each head, the pattern and parameter that keep the most attention
within a density budget (the idea behind MInference's offline search and Sparse-vDiT's per-head
strategy).

Every candidate (a family's parameter grid) is measured on the calibration captures: mean density
and mean recall per layer and head (each input weighs the same). Then

- ``allocation="head"``: every head gets the candidate with the highest recall whose density is
  at most the budget;
- ``allocation="global"``: the mean density over all heads is at most the budget, and heads trade
  density: starting from each head's sparsest candidate, the upgrade with the best recall gained
  per density spent is taken while it fits (greedy on each head's upper convex hull).

Either way the plan is never above the budget on the calibration inputs; a budget too small for
the sparsest candidates is refused with the density they need. The uniform baseline is the single
candidate with the best mean recall whose mean density is at most the plan's.

The measuring is done layer by layer, and each finished layer is kept in the disk cache
(``search_units``): a search stopped half-way (``stop``, Ctrl-C, Streamlit's Stop, an exception)
continues with the same call, measuring only the layers not yet stored, and ends with the numbers an
uninterrupted search gives. The candidate grids are in ``search_space``.
"""
from __future__ import annotations

import csv
import heapq
import io
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import torch
from torch import Tensor

from .. import serial
from ..progress import ProgressArg, ProgressFn, reporter
from . import search_units as units
from .capture import AttentionCapture
from .search_space import DEFAULT_FAMILIES, SEARCH_FAMILIES, candidate_specs
from .specs import AttentionPlan, PatternSpec

if TYPE_CHECKING:
    from .apply import AttentionQuality

ALLOCATIONS = ("head", "global")


BLOCK_SECONDS = 5.0
"""Layers are measured in blocks (the first alone, then doubling while a block takes less than this):
larger blocks spend less on per-call overhead, a stop waits for the block under way. The numbers do not
depend on the blocks (``search_units.block_size``)."""


@dataclass(frozen=True)
class SearchConfig:
    """What the per-head search may choose from and how much it may keep."""

    budget: float = 0.3
    """Largest density (share of the pairs the dense model attends over), 0 < budget <= 1."""
    allocation: str = "head"
    """``"head"``: every head within the budget; ``"global"``: the mean over heads within it."""
    families: tuple[str, ...] = DEFAULT_FAMILIES
    """Pattern families searched (keys of ``SEARCH_FAMILIES``)."""

    def to_json(self) -> str:
        """Canonical JSON (cache keys, downloads; ``sparsekit.serial.dumps``)."""
        return serial.dumps(self)

    @staticmethod
    def from_json(text: str) -> "SearchConfig":
        """Inverse of ``to_json``, under ``sparsekit.serial``'s rule."""
        return serial.from_json(SearchConfig, text)

    def validate(self) -> None:
        """Raise ``ValueError`` with a clear message for a budget outside (0, 1], an unknown
        allocation, or no / unknown families."""
        if not isinstance(self.budget, (int, float)) or not 0 < self.budget <= 1:
            raise ValueError("the density budget must be above 0 and at most 1 (a share of the attention pairs); "
                             f"got {self.budget!r}")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation must be one of {', '.join(ALLOCATIONS)}, got {self.allocation!r}")
        if not self.families:
            raise ValueError("choose at least one pattern family to search")
        unknown = [f for f in self.families if f not in SEARCH_FAMILIES]
        if unknown:
            raise ValueError(f"unknown pattern families {unknown}; choose from {', '.join(SEARCH_FAMILIES)}")


def evaluate_candidates(captures: Sequence[AttentionCapture], specs: Sequence[PatternSpec]) -> tuple[Tensor, Tensor]:
    """Mean density and recall of every candidate at every head over the captures.

    Args:
        captures: calibration captures of one model.
        specs: the candidates.

    Returns:
        ``(density, recall)``, each float64 ``[candidates, layers, heads]``.
    """
    if not captures:
        raise ValueError("the search needs at least one calibration capture")
    n_layers = captures[0].n_layers
    return units.measure_layers(units.stack_by_length(captures), specs, range(n_layers), n_layers, len(captures))


@dataclass
class SearchResult:
    """The per-head plan, its numbers on the calibration inputs, and the uniform baseline.

    A search that was stopped gives a partial result (``complete=False``): the layers it measured have
    their numbers and, per head, the candidate with the highest recall within the budget on its own;
    the layers not reached (``not_reached``) are NaN with choice ``-1`` (no pattern, ``None`` in the
    plan and the rows); it has no uniform baseline and no summary. The same call continues it.
    """

    config: SearchConfig
    candidates: list[PatternSpec]
    density: Tensor
    """float64 ``[candidates, layers, heads]``: mean density on the calibration inputs (NaN: not measured)."""
    recall: Tensor
    """float64 ``[candidates, layers, heads]``: mean recall on the calibration inputs (NaN: not measured)."""
    choice: Tensor
    """long ``[layers, heads]``: the chosen candidate of each head (-1: none yet)."""
    uniform: int
    """Index of the uniform baseline candidate (-1 in a partial result)."""
    n_inputs: int = 0
    complete: bool = True
    """False when the search was stopped before every layer was measured."""
    not_reached: tuple[int, ...] = ()
    """Layers a stopped search did not measure (empty when complete)."""
    plan: AttentionPlan = field(init=False)

    def __post_init__(self) -> None:
        self.plan = AttentionPlan(tuple(tuple(self.candidates[int(c)] if c >= 0 else None for c in row)
                                        for row in self.choice))

    def _pick(self, values: Tensor) -> Tensor:
        picked = values.gather(0, self.choice.clamp(min=0).unsqueeze(0)).squeeze(0)
        return torch.where(self.choice >= 0, picked, torch.full_like(picked, float("nan")))

    def _require_complete(self) -> None:
        if not self.complete:
            raise ValueError(f"the search was stopped after {self.layers_done} of {self.choice.shape[0]} layers; "
                             "run the same call again to finish it")

    @property
    def layers_done(self) -> int:
        """Layers measured."""
        return self.choice.shape[0] - len(self.not_reached)

    @property
    def plan_density(self) -> Tensor:
        """float64 ``[layers, heads]`` (NaN where no candidate is chosen)."""
        return self._pick(self.density)

    @property
    def plan_recall(self) -> Tensor:
        """float64 ``[layers, heads]`` (NaN where no candidate is chosen)."""
        return self._pick(self.recall)

    @property
    def uniform_spec(self) -> PatternSpec:
        """The uniform baseline pattern (a complete search only)."""
        self._require_complete()
        return self.candidates[self.uniform]

    def summary(self) -> dict[str, float | str]:
        """Mean density and recall of the plan and of the uniform baseline (calibration inputs; a
        complete search only)."""
        self._require_complete()
        return {
            "budget": float(self.config.budget),
            "plan_density": float(self.plan_density.mean()),
            "plan_recall": float(self.plan_recall.mean()),
            "uniform": self.uniform_spec.label,
            "uniform_density": float(self.density[self.uniform].mean()),
            "uniform_recall": float(self.recall[self.uniform].mean()),
        }

    def family_counts(self) -> dict[str, int]:
        """How many heads chose each family."""
        out: dict[str, int] = {}
        for row in self.plan.heads:
            for spec in row:
                if spec is not None:  # a complete search has a pattern at every head
                    out[spec.name] = out.get(spec.name, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def rows(self) -> list[dict[str, float | int | str | None]]:
        """One dict per head: its choice, density and recall, and the uniform baseline's recall (None
        where a stopped search has no number yet)."""
        dens, rec = self.plan_density, self.plan_recall
        u = self.uniform if self.complete else -1

        def num(t: Tensor) -> float | None:
            return None if bool(t.isnan()) else float(t)

        return [
            {"layer": layer, "head": head,
             "pattern": spec.label if (spec := self.plan.heads[layer][head]) is not None else None,
             "density": num(dens[layer, head]), "recall": num(rec[layer, head]),
             "uniform_pattern": self.candidates[u].label if u >= 0 else None,
             "uniform_density": num(self.density[u, layer, head]) if u >= 0 else None,
             "uniform_recall": num(self.recall[u, layer, head]) if u >= 0 else None}
            for layer in range(dens.shape[0]) for head in range(dens.shape[1])
        ]

    def to_csv(self) -> str:
        """``rows()`` as CSV text."""
        rows = self.rows()
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()


def _too_small(budget: float, floor: float, what: str, spec: PatternSpec) -> ValueError:
    return ValueError(
        f"the density budget {budget:.3g} is below what the sparsest candidate needs {what} "
        f"({spec.label}: {floor:.3g} on the calibration inputs); raise the budget"
    )


def _best_fitting(dens: Tensor, rec: Tensor, budget: float) -> Tensor:
    """Per head, the highest recall whose density is within the budget (-1 where none is, or the head
    was not measured); ties go to the lower density, then to the earlier candidate."""
    fits = dens <= budget  # NaN (not measured) never fits
    score = torch.where(fits, rec, torch.full_like(rec, -1.0))
    best = score.max(0, keepdim=True).values
    tied = fits & (score == best)
    cheapest = torch.where(tied, dens, torch.full_like(dens, float("inf")))
    return torch.where(fits.any(0), cheapest.argmin(0), torch.full_like(cheapest.argmin(0), -1))


def _per_head(dens: Tensor, rec: Tensor, budget: float, specs: Sequence[PatternSpec]) -> Tensor:
    fits = dens <= budget
    if not bool(fits.any(0).all()):
        floor, idx = dens.min(0)
        worst = floor.argmax()
        layer, head = divmod(int(worst), dens.shape[2])
        raise _too_small(budget, float(floor.flatten()[worst]), f"at layer {layer}, head {head}",
                         specs[int(idx.flatten()[worst])])
    return _best_fitting(dens, rec, budget)


def _hull(points: list[tuple[float, float, int]]) -> list[tuple[float, float, int]]:
    """Upper-left convex hull of (density, recall, index) points: the efficient upgrades."""
    points = sorted(points, key=lambda p: (p[0], -p[1], p[2]))
    frontier: list[tuple[float, float, int]] = []
    for p in points:
        if not frontier or p[1] > frontier[-1][1]:
            frontier.append(p)
    hull: list[tuple[float, float, int]] = []
    for p in frontier:
        # Drop the last point while it lies on or below the segment from its predecessor to p.
        while len(hull) >= 2:
            (d0, r0, _), (d1, r1, _) = hull[-2], hull[-1]
            if (r1 - r0) * (p[0] - d0) <= (p[1] - r0) * (d1 - d0):
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def _global(dens: Tensor, rec: Tensor, budget: float, specs: Sequence[PatternSpec]) -> Tensor:
    n_c, n_layers, n_heads = dens.shape
    n = n_layers * n_heads
    hulls = []
    for flat in range(n):
        layer, head = divmod(flat, n_heads)
        hulls.append(_hull([(float(dens[c, layer, head]), float(rec[c, layer, head]), c) for c in range(n_c)]))
    level = [0] * n
    total = sum(h[0][0] for h in hulls)
    # A hair under the exact limit, so float rounding of the final mean can never exceed the budget.
    limit = budget * n - 1e-9
    if total > limit:
        cheapest = min(range(n_c), key=lambda c: float(dens[c].mean()))
        raise _too_small(budget, total / n, "on average over the heads", specs[cheapest])
    heap: list[tuple[float, int]] = []

    def push(flat: int) -> None:
        h, i = hulls[flat], level[flat]
        if i + 1 < len(h):
            gain, cost = h[i + 1][1] - h[i][1], h[i + 1][0] - h[i][0]
            heapq.heappush(heap, (-(gain / cost) if cost > 0 else -float("inf"), flat))

    for flat in range(n):
        push(flat)
    while heap:
        _, flat = heapq.heappop(heap)
        h, i = hulls[flat], level[flat]
        cost = h[i + 1][0] - h[i][0]
        if total + cost <= limit:
            total += cost
            level[flat] = i + 1
            push(flat)
        # A step that does not fit ends this head: its later steps cost more still.
    choice = torch.tensor([hulls[f][level[f]][2] for f in range(n)], dtype=torch.long)
    return choice.view(n_layers, n_heads)


def _uniform(dens: Tensor, rec: Tensor, ceiling: float) -> int:
    mean_d, mean_r = dens.mean((1, 2)), rec.mean((1, 2))
    fits = mean_d <= ceiling
    if not bool(fits.any()):
        return int(mean_d.argmin())
    score = torch.where(fits, mean_r, torch.full_like(mean_r, -1.0))
    best = score.max()
    tied = fits & (score == best)
    return int(torch.where(tied, mean_d, torch.full_like(mean_d, float("inf"))).argmin())


def _checked(captures: Sequence[AttentionCapture], config: SearchConfig) -> list[PatternSpec]:
    config.validate()
    if not captures:
        raise ValueError("the search needs at least one calibration capture")
    shapes = {(c.n_layers, c.n_heads) for c in captures}
    if len(shapes) != 1:
        raise ValueError("the calibration captures come from models of different shapes")
    specs = candidate_specs(config.families, max(c.seq_len for c in captures))
    if not specs:
        raise ValueError("the chosen families have no candidate for inputs this short")
    return specs


def search_heads(captures: Sequence[AttentionCapture], config: SearchConfig = SearchConfig(), *,
                 progress: ProgressArg = True, stop: Callable[[], bool] | None = None,
                 use_cache: bool = True) -> SearchResult:
    """Choose a pattern and parameter per head with the highest recall within the density budget.

    Args:
        captures: calibration captures (``calibration_captures(loaded)``).
        config: budget, allocation and families.
        progress: True (default): a ``tqdm.auto`` bar when the search takes over 2 s; False: silent; or a
            ``progress(fraction, message)`` callback, called before each block of layers it measures.
        stop: optional callable, asked before each block of layers to measure; when it returns True the
            search ends there and gives a partial result (``complete=False``).
        use_cache: read and write the disk cache: each layer's numbers are stored as they are measured
            (``search_units``), so a search that was stopped (``stop``, Ctrl-C, a killed process) is
            continued by the same call, measuring only the layers not yet stored; a search with another
            budget or allocation over the same captures and families measures nothing again.

    Returns:
        The plan with its calibration numbers and the uniform baseline at no more density.

    Raises:
        ValueError: a bad config (e.g. a zero budget), no captures, or a budget below the
            sparsest candidate.
    """
    with reporter(progress, "per-head search") as report:
        return _search(captures, config, report, stop, use_cache)


def _search(captures: Sequence[AttentionCapture], config: SearchConfig, progress: ProgressFn | None,
            stop: Callable[[], bool] | None, use_cache: bool) -> SearchResult:
    specs = _checked(captures, config)
    n_layers, n_heads = captures[0].n_layers, captures[0].n_heads
    key = units.search_key(captures, specs) if use_cache else ""
    done = units.load_units(key, n_layers, len(specs), n_heads) if use_cache else {}
    groups: list[tuple[AttentionCapture, int]] | None = None
    last: tuple[int, float] | None = None  # (layers, seconds) of the last block measured in this call
    complete = True
    while len(done) < n_layers:
        if stop is not None and stop():
            complete = False
            break
        todo = [layer for layer in range(n_layers) if layer not in done]
        block = todo[:units.block_size(last, BLOCK_SECONDS, len(todo))]
        if progress is not None:
            progress(len(done) / n_layers, f"layer {block[0]} ({len(done) + 1}/{n_layers})")
        if groups is None:
            groups = units.stack_by_length(captures)
        start = time.perf_counter()
        dens, rec = units.measure_layers(groups, specs, block, n_layers, len(captures))
        last = (len(block), time.perf_counter() - start)
        for i, layer in enumerate(block):
            done[layer] = units.LayerUnit(dens[:, i].clone(), rec[:, i].clone(), last[1] / len(block))
            if use_cache:
                units.save_unit(key, layer, done[layer])
    nan = torch.full((len(specs), n_heads), float("nan"), dtype=torch.float64)
    dens = torch.stack([done[layer].density if layer in done else nan for layer in range(n_layers)], 1)
    rec = torch.stack([done[layer].recall if layer in done else nan for layer in range(n_layers)], 1)
    if not complete:
        return SearchResult(config=config, candidates=specs, density=dens, recall=rec,
                            choice=_best_fitting(dens, rec, float(config.budget)), uniform=-1, n_inputs=len(captures),
                            complete=False, not_reached=tuple(layer for layer in range(n_layers) if layer not in done))
    if progress is not None:
        progress(1.0, "done")
    budget = float(config.budget)
    choice = _per_head(dens, rec, budget, specs) if config.allocation == "head" else _global(dens, rec, budget, specs)
    picked = dens.gather(0, choice.unsqueeze(0)).squeeze(0)
    uniform = _uniform(dens, rec, float(picked.mean()))
    return SearchResult(config=config, candidates=specs, density=dens, recall=rec, choice=choice,
                        uniform=uniform, n_inputs=len(captures))


def cached_search(captures: Sequence[AttentionCapture], config: SearchConfig = SearchConfig(), *,
                  partial: bool = False) -> SearchResult | None:
    """The search the disk cache holds for these captures and config, or None (nothing is measured).

    Args:
        captures: the calibration captures.
        config: budget, allocation and families.
        partial: also give a stopped search (``complete=False``) when at least one layer is stored.

    Returns:
        The ``SearchResult`` or None.

    Raises:
        ValueError: as ``search_heads`` (a bad config, or a budget below the sparsest candidate).
    """
    specs = _checked(captures, config)
    n_layers, n_heads = captures[0].n_layers, captures[0].n_heads
    stored = units.load_units(units.search_key(captures, specs), n_layers, len(specs), n_heads)
    if not stored or (len(stored) < n_layers and not partial):
        return None
    return search_heads(captures, config, progress=False, stop=lambda: True)


def plan_comparison_rows(result: SearchResult, plan_quality: AttentionQuality, uniform_quality: AttentionQuality,
                         metric_names: Mapping[str, str] | None = None) -> list[dict[str, float | str]]:
    """Dense, the per-head plan and the uniform baseline side by side, one dict per setting.

    Args:
        result: a per-head search.
        plan_quality: ``attention_quality`` of the model with ``result.plan``.
        uniform_quality: ``attention_quality`` with ``result.uniform_spec``.
        metric_names: metric key -> display name for the quality columns (default: the keys).

    Returns:
        Three dicts (``dense``, ``per-head plan``, ``uniform``) with ``setting``, ``pattern``,
        ``calibration density``/``recall`` (mean over heads on the calibration inputs),
        ``evaluation density`` (mean over heads on the model's evaluation inputs) and one column
        per quality metric.
    """
    names = metric_names or {}
    summary = result.summary()

    def quality(values: Mapping[str, float]) -> dict[str, float]:
        return {names.get(k, k): v for k, v in values.items()}

    return [
        {"setting": "dense", "pattern": "full attention", "calibration density": 1.0, "calibration recall": 1.0,
         "evaluation density": 1.0, **quality(plan_quality.dense)},
        {"setting": "per-head plan", "pattern": f"{len(result.family_counts())} families",
         "calibration density": summary["plan_density"], "calibration recall": summary["plan_recall"],
         "evaluation density": plan_quality.mean_density, **quality(plan_quality.sparse)},
        {"setting": "uniform", "pattern": summary["uniform"], "calibration density": summary["uniform_density"],
         "calibration recall": summary["uniform_recall"], "evaluation density": uniform_quality.mean_density,
         **quality(uniform_quality.sparse)},
    ]

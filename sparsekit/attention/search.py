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
"""
from __future__ import annotations

import csv
import heapq
import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import torch
from torch import Tensor

from .. import serial
from .capture import AttentionCapture
from .metrics import density, recall, spec_masks
from .specs import AttentionPlan, PatternSpec

if TYPE_CHECKING:
    from .apply import AttentionQuality

ALLOCATIONS = ("head", "global")


def _window_grid(n: int) -> list[PatternSpec]:
    return [PatternSpec.of("sliding_window", window=w) for w in (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)
            if w < n]


def _a_shape_grid(n: int) -> list[PatternSpec]:
    return [PatternSpec.of("a_shape", sink=s, local=w)
            for s in (1, 2, 4) for w in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64) if s < n and w < n]


def _vertical_slash_grid(n: int) -> list[PatternSpec]:
    sizes = (0, 1, 2, 4, 8, 16, 32)
    return [PatternSpec.of("vertical_slash", vertical=v, slash=s) for v in sizes for s in sizes if v < n and s < n]


def _block_topk_grid(n: int) -> list[PatternSpec]:
    return [PatternSpec.of("block_topk", block=b, topk=k) for b in (2, 4, 8, 16) for k in (0, 1, 2, 3, 4, 6, 8)
            if b < n and k < -(-n // b)]


def _dilated_grid(n: int) -> list[PatternSpec]:
    return [PatternSpec.of("dilated_window", window=w, dilation=d) for d in (2, 3) for w in (4, 8, 16, 32, 64)
            if w < n]


def _bigbird_grid(n: int) -> list[PatternSpec]:
    return [PatternSpec.of("bigbird", block=b, global_blocks=1, random_blocks=r) for b in (2, 4, 8) for r in (0, 1, 2)
            if b < n]


def _longformer_grid(n: int) -> list[PatternSpec]:
    return [PatternSpec.of("longformer", window=w, n_global=g) for g in (1, 2) for w in (1, 2, 4, 8, 16, 32) if w < n]


SEARCH_FAMILIES: dict[str, Callable[[int], list[PatternSpec]]] = {
    "sliding_window": _window_grid,
    "a_shape": _a_shape_grid,
    "vertical_slash": _vertical_slash_grid,
    "block_topk": _block_topk_grid,
    "dilated_window": _dilated_grid,
    "bigbird": _bigbird_grid,
    "longformer": _longformer_grid,
}
"""Family -> parameter grid for inputs of at most ``n`` tokens (sizes that would cover the whole
sequence are left out)."""
DEFAULT_FAMILIES = ("sliding_window", "a_shape", "vertical_slash", "block_topk")


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


def candidate_specs(families: Sequence[str], max_len: int) -> list[PatternSpec]:
    """The candidates of the chosen families for inputs of at most ``max_len`` tokens.

    Args:
        families: keys of ``SEARCH_FAMILIES``.
        max_len: longest calibration input.

    Returns:
        The specs, without duplicates, in family order.
    """
    out: list[PatternSpec] = []
    for fam in families:
        for spec in SEARCH_FAMILIES[fam](max_len):
            if spec not in out:
                out.append(spec)
    return out


def _stack_by_length(captures: Sequence[AttentionCapture]) -> list[tuple[AttentionCapture, int]]:
    """Captures of equal length merged into one (inputs stacked along the layer axis), so each
    candidate is built once per length instead of once per input."""
    by_len: dict[int, list[AttentionCapture]] = {}
    for cap in captures:
        by_len.setdefault(cap.seq_len, []).append(cap)
    merged = []
    for group in by_len.values():
        first = group[0]
        scores, probs, query, key, value = (torch.cat([getattr(c, name) for c in group])
                                            for name in ("scores", "probs", "query", "key", "value"))
        merged.append((AttentionCapture(scores, probs, query, key, value, first.tokens, first.causal,
                                        first.layer_names, first.model), len(group)))
    return merged


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
    n_layers, n_heads = captures[0].n_layers, captures[0].n_heads
    dens = torch.zeros(len(specs), n_layers, n_heads, dtype=torch.float64)
    rec = torch.zeros_like(dens)
    for merged, count in _stack_by_length(captures):
        allowed = merged.allowed
        for c, spec in enumerate(specs):
            mask = spec_masks(merged, spec, strict=False)
            dens[c] += density(mask, allowed).view(count, n_layers, n_heads).sum(0)
            rec[c] += recall(merged.probs, mask).double().view(count, n_layers, n_heads).sum(0)
    return dens / len(captures), rec / len(captures)


@dataclass
class SearchResult:
    """The per-head plan, its numbers on the calibration inputs, and the uniform baseline."""

    config: SearchConfig
    candidates: list[PatternSpec]
    density: Tensor
    """float64 ``[candidates, layers, heads]``: mean density on the calibration inputs."""
    recall: Tensor
    """float64 ``[candidates, layers, heads]``: mean recall on the calibration inputs."""
    choice: Tensor
    """long ``[layers, heads]``: the chosen candidate of each head."""
    uniform: int
    """Index of the uniform baseline candidate."""
    n_inputs: int = 0
    plan: AttentionPlan = field(init=False)

    def __post_init__(self) -> None:
        self.plan = AttentionPlan(tuple(tuple(self.candidates[int(c)] for c in row) for row in self.choice))

    def _pick(self, values: Tensor) -> Tensor:
        return values.gather(0, self.choice.unsqueeze(0)).squeeze(0)

    @property
    def plan_density(self) -> Tensor:
        """float64 ``[layers, heads]``."""
        return self._pick(self.density)

    @property
    def plan_recall(self) -> Tensor:
        """float64 ``[layers, heads]``."""
        return self._pick(self.recall)

    @property
    def uniform_spec(self) -> PatternSpec:
        """The uniform baseline pattern."""
        return self.candidates[self.uniform]

    def summary(self) -> dict[str, float | str]:
        """Mean density and recall of the plan and of the uniform baseline (calibration inputs)."""
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
                if spec is not None:  # a search plan has a pattern at every head
                    out[spec.name] = out.get(spec.name, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def rows(self) -> list[dict[str, float | int | str]]:
        """One dict per head: its choice, density and recall, and the uniform baseline's recall."""
        dens, rec = self.plan_density, self.plan_recall
        labels = self.plan.labels()
        return [
            {"layer": layer, "head": head, "pattern": labels[layer][head],
             "density": float(dens[layer, head]), "recall": float(rec[layer, head]),
             "uniform_pattern": self.uniform_spec.label,
             "uniform_density": float(self.density[self.uniform, layer, head]),
             "uniform_recall": float(self.recall[self.uniform, layer, head])}
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


def _per_head(dens: Tensor, rec: Tensor, budget: float, specs: Sequence[PatternSpec]) -> Tensor:
    fits = dens <= budget
    if not bool(fits.any(0).all()):
        floor, idx = dens.min(0)
        worst = floor.argmax()
        layer, head = divmod(int(worst), dens.shape[2])
        raise _too_small(budget, float(floor.flatten()[worst]), f"at layer {layer}, head {head}",
                         specs[int(idx.flatten()[worst])])
    # Highest recall that fits; ties go to the lower density, then to the earlier candidate.
    score = torch.where(fits, rec, torch.full_like(rec, -1.0))
    best = score.max(0, keepdim=True).values
    tied = fits & (score == best)
    cheapest = torch.where(tied, dens, torch.full_like(dens, float("inf")))
    return cheapest.argmin(0)


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


def search_heads(captures: Sequence[AttentionCapture], config: SearchConfig = SearchConfig()) -> SearchResult:
    """Choose a pattern and parameter per head with the highest recall within the density budget.

    Args:
        captures: calibration captures (``calibration_captures(loaded)``).
        config: budget, allocation and families.

    Returns:
        The plan with its calibration numbers and the uniform baseline at no more density.

    Raises:
        ValueError: a bad config (e.g. a zero budget), no captures, or a budget below the
            sparsest candidate.
    """
    config.validate()
    if not captures:
        raise ValueError("the search needs at least one calibration capture")
    shapes = {(c.n_layers, c.n_heads) for c in captures}
    if len(shapes) != 1:
        raise ValueError("the calibration captures come from models of different shapes")
    specs = candidate_specs(config.families, max(c.seq_len for c in captures))
    if not specs:
        raise ValueError("the chosen families have no candidate for inputs this short")
    dens, rec = evaluate_candidates(captures, specs)
    budget = float(config.budget)
    choice = _per_head(dens, rec, budget, specs) if config.allocation == "head" else _global(dens, rec, budget, specs)
    picked = dens.gather(0, choice.unsqueeze(0)).squeeze(0)
    uniform = _uniform(dens, rec, float(picked.mean()))
    return SearchResult(config=config, candidates=specs, density=dens, recall=rec, choice=choice,
                        uniform=uniform, n_inputs=len(captures))


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

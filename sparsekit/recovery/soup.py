"""Sparse Model Soups (Zimmer et al. 2023, arXiv 2306.16788): recover one pruned model k times with the
mask fixed, each run with its own seed (and thus its own order of the training examples), and average
the k recovered weights uniformly. Every ingredient has the pruned model's mask, so the average keeps
it: pruned weights are zero in every ingredient and stay zero in the soup. Optionally, ``rounds`` > 1
prunes the soup further (the same method and pattern one step sparser) and soups again, as the paper's
iterative prune-retrain-average cycle does.

``model_soup`` runs it; ``uniform_soup`` is the averaging alone (it refuses ingredients whose masks
differ); ``SoupResult`` holds the soup, its mask, every ingredient's quality and the soup's, next to the
best and the mean ingredient, per round.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import torch
from torch import nn

from ..config import SparsifyConfig
from ..display import Card, Shown, fmt
from ..methods import get_method
from ..models.base import LoadedModel
from ..progress import ProgressArg, reporter
from ..sparsify import SparsifyResult, sparsify
from .config import RecoveryConfig
from .loop import check_inputs, recover
from .objectives import make_objective
from .records import RecoveryProgress, RecoveryRecord

__all__ = ["DEFAULT_PRUNE_MORE", "SoupResult", "SoupRound", "model_soup", "next_config", "uniform_soup"]

DEFAULT_PRUNE_MORE = 0.1
"""Unstructured: how much sparser each further round prunes (s → s + 0.1)."""
MAX_INGREDIENTS = 64
MAX_ROUNDS = 10


def next_config(config: SparsifyConfig, prune_more: float = DEFAULT_PRUNE_MORE) -> SparsifyConfig:
    """The pruning of the next soup round: the same method and pattern, one step sparser.

    Unstructured: sparsity ``s → s + prune_more`` (at most 0.99). N:M: ``N:M → (N−1):M`` (one more
    weight pruned in every group of M); ``prune_more`` does not apply.

    Args:
        config: this round's pruning.
        prune_more: the unstructured sparsity step, 0 < step.

    Returns:
        The next round's ``SparsifyConfig``.

    Raises:
        ValueError: nothing more to prune (1:M, or past 0.99), a dense pattern, a non-uniform allocation
            (its per-layer targets are not one step), or a bad step.
    """
    if config.allocation != "uniform":
        raise ValueError(f"a further soup round re-prunes with a uniform allocation only; this result uses "
                         f"allocation={config.allocation!r} (use rounds=1)")
    if config.pattern == "nm":
        if config.n <= 1:
            raise ValueError(f"{config.n}:{config.m} keeps one weight per group: there is no sparser N:M "
                             f"level to prune to (use rounds=1)")
        return replace(config, n=config.n - 1)
    if config.pattern == "unstructured":
        if isinstance(prune_more, bool) or not isinstance(prune_more, (int, float)) or not 0.0 < prune_more < 1.0:
            raise ValueError(f"prune_more must be a sparsity step in (0, 1), got {prune_more!r}")
        target = round(float(config.sparsity) + float(prune_more), 6)
        if target > 0.99:
            raise ValueError(f"sparsity {config.sparsity:g} + {prune_more:g} = {target:g} is over 0.99; "
                             f"use fewer rounds or a smaller prune_more")
        return replace(config, sparsity=target)
    raise ValueError(f"pattern {config.pattern!r} prunes nothing: a soup needs a pruned model")


def uniform_soup(records: Sequence[RecoveryRecord]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The uniform average of recovered weights that share one mask.

    Args:
        records: at least two complete recovery runs of the same architecture, each with weights.

    Returns:
        ``(state dict, masks)``: floating-point entries averaged (summed in float64, then cast back),
        other entries (integer buffers) taken from the first run after checking they are equal; the
        masks are the runs' common final masks (True = kept).

    Raises:
        ValueError: fewer than two runs, a run without weights, different state-dict entries or shapes,
            or masks that differ (their average would not be sparse in any one of them).
    """
    if len(records) < 2:
        raise ValueError(f"a soup needs at least 2 ingredients, got {len(records)}")
    for i, rec in enumerate(records):
        if not rec.weights:
            raise ValueError(f"ingredient {i} ({rec.label}) has no weights (status {rec.status}): it cannot go "
                             "into a soup")
    masks = _final_masks(records[0])
    for i, rec in enumerate(records[1:], start=1):
        other = _final_masks(rec)
        if set(other) != set(masks):
            raise ValueError(f"ingredient {i} pruned other layers than ingredient 0 "
                             f"({sorted(set(other) ^ set(masks))}): a soup averages runs of one mask")
        for name, mask in masks.items():
            if other[name].shape != mask.shape or not torch.equal(other[name], mask):
                diff = int((other[name] != mask).sum()) if other[name].shape == mask.shape else mask.numel()
                raise ValueError(f"ingredient {i} has a different mask from ingredient 0 in layer {name!r} "
                                 f"({diff:,} of {mask.numel():,} entries differ): a soup averages runs of one mask "
                                 "(recover one pruned result in mode 'fixed')")
    keys = list(records[0].weights)
    state: dict[str, torch.Tensor] = {}
    for key in keys:
        first = records[0].weights[key]
        for i, rec in enumerate(records[1:], start=1):
            value = rec.weights.get(key)
            if value is None or value.shape != first.shape:
                raise ValueError(f"ingredient {i} has no entry {key!r} of shape {tuple(first.shape)}: "
                                 "a soup averages runs of one architecture")
        if first.is_floating_point():
            acc = first.detach().to(torch.float64).clone()
            for rec in records[1:]:
                acc += rec.weights[key].detach().to(torch.float64)
            state[key] = (acc / len(records)).to(first.dtype)
        else:
            for i, rec in enumerate(records[1:], start=1):
                if not torch.equal(rec.weights[key], first):
                    raise ValueError(f"ingredient {i} differs from ingredient 0 in the non-float entry {key!r}")
            state[key] = first.detach().clone()
    return state, masks


def _final_masks(record: RecoveryRecord) -> dict[str, torch.Tensor]:
    history = record.history
    if not len(history):
        return {}
    return {k: v.to(torch.bool) for k, v in history.masks(len(history) - 1).items()}


@dataclass
class SoupRound:
    """One round: the pruning, its k ingredients, and their soup.

    Attributes:
        sparsify_config: how this round's model was pruned.
        seeds: each ingredient's recovery seed.
        ingredients: each ingredient's recovery run (weights included).
        soup_quality: the soup's metrics (``loaded.quality``).
        pruned_quality: the pruned model's metrics before recovery.
    """

    sparsify_config: SparsifyConfig
    seeds: list[int]
    ingredients: list[RecoveryRecord]
    soup_quality: dict[str, float]
    pruned_quality: dict[str, float]

    def ingredient_scores(self, metric: str) -> list[float]:
        """Each ingredient's ``metric`` at the end of its run."""
        return [float(rec.intervals[-1].quality.get(metric, float("nan"))) for rec in self.ingredients]


@dataclass(repr=False)
class SoupResult(Shown):
    """A Sparse Model Soup of a pruned model.

    Attributes:
        model: the last round's soup (a fresh module; eval mode).
        masks: its mask per pruned layer (True = kept); pruned weights are exactly zero.
        rounds: every round, in order.
        config: the recovery settings every ingredient shared (the seed aside).
        metric: the headline metric; ``higher_is_better`` its direction.
        dense_quality: the dense model's metrics.
        model_name: the dense model's display name.
    """

    model: nn.Module
    masks: dict[str, torch.Tensor]
    rounds: list[SoupRound]
    config: RecoveryConfig
    metric: str
    higher_is_better: bool = True
    dense_quality: dict[str, float] = field(default_factory=dict)
    model_name: str = ""

    @property
    def last(self) -> SoupRound:
        """The last round."""
        return self.rounds[-1]

    @property
    def ingredients(self) -> list[float]:
        """The last round's ingredients' headline metric."""
        return self.last.ingredient_scores(self.metric)

    @property
    def soup(self) -> float:
        """The last round's soup's headline metric."""
        return float(self.last.soup_quality.get(self.metric, float("nan")))

    @property
    def best(self) -> float:
        """The best ingredient of the last round (by the metric's direction)."""
        return max(self.ingredients) if self.higher_is_better else min(self.ingredients)

    @property
    def mean(self) -> float:
        """The mean ingredient of the last round."""
        values = self.ingredients
        return sum(values) / len(values)

    @property
    def dense(self) -> float:
        """The dense model's headline metric."""
        return float(self.dense_quality.get(self.metric, float("nan")))

    def rows(self) -> list[dict[str, Any]]:
        """One row per round: pruning, before recovery, soup, best, mean and worst ingredient."""
        out = []
        for i, rnd in enumerate(self.rounds, start=1):
            scores = rnd.ingredient_scores(self.metric)
            best = max(scores) if self.higher_is_better else min(scores)
            worst = min(scores) if self.higher_is_better else max(scores)
            out.append({"round": i, "pruned": rnd.sparsify_config.label(), "ingredients": len(scores),
                        "before": float(rnd.pruned_quality.get(self.metric, float("nan"))),
                        "soup": float(rnd.soup_quality.get(self.metric, float("nan"))),
                        "best": best, "mean": sum(scores) / len(scores), "worst": worst})
        return out

    def summary_card(self) -> Card:
        """The soup against its best and mean ingredient (last round), dense for reference, one row per round."""
        metric = self.metric or "metric"
        head = {"pruned": self.last.sparsify_config.label(), "recovery": self.config.label(),
                "ingredients": f"{len(self.last.ingredients)} (seeds {', '.join(map(str, self.last.seeds))})",
                "rounds": str(len(self.rounds)),
                f"soup {metric}": fmt(self.soup), f"best ingredient {metric}": fmt(self.best),
                f"mean ingredient {metric}": fmt(self.mean), f"dense {metric}": fmt(self.dense)}
        return Card(f"SoupResult {self.model_name} {self.last.sparsify_config.label()}".replace("  ", " "),
                    head, self.rows(), "soup: the uniform average of the ingredients' weights (one shared mask)")


def _check(ingredients: int, rounds: int, seeds: Sequence[int] | None) -> list[int]:
    for name, value in (("ingredients", ingredients), ("rounds", rounds)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if not 2 <= ingredients <= MAX_INGREDIENTS:
        raise ValueError(f"a soup needs between 2 and {MAX_INGREDIENTS} ingredients, got {ingredients}")
    if not 1 <= rounds <= MAX_ROUNDS:
        raise ValueError(f"rounds must be between 1 and {MAX_ROUNDS}, got {rounds}")
    if seeds is None:
        return []
    seeds = list(seeds)
    if len(seeds) != ingredients or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be {ingredients} distinct integers (one per ingredient), got {seeds}")
    return seeds


def model_soup(
    result: SparsifyResult,
    loaded: LoadedModel,
    config: RecoveryConfig,
    *,
    ingredients: int = 4,
    rounds: int = 1,
    prune_more: float = DEFAULT_PRUNE_MORE,
    seeds: Sequence[int] | None = None,
    progress: ProgressArg = True,
) -> SoupResult:
    """A Sparse Model Soup: ``ingredients`` fixed-mask recoveries of ``result`` averaged into one model.

    The ingredients differ only in ``RecoveryConfig.seed``, which seeds the order of the training
    examples (and torch's random state during the run). Neither ``loaded`` nor ``result`` is changed.

    Args:
        result: a pruned model (any method and pattern) of ``loaded``.
        loaded: the dense model.
        config: the recovery settings; the mode is set to ``fixed`` (a moving mask would give every
            ingredient its own mask) and the seed to each ingredient's.
        ingredients: k, the runs averaged (2..64).
        rounds: 1 (one soup) or more: each further round prunes the soup one step sparser
            (``next_config``) and soups again.
        prune_more: the unstructured sparsity step between rounds (N:M goes N:M → (N−1):M).
        seeds: the ingredients' seeds (default ``config.seed``, ``config.seed + 1``, ...).
        progress: True (a bar), False/None, or ``progress(fraction, message)``.

    Returns:
        The ``SoupResult``.

    Raises:
        ValueError: k < 2, rounds < 1, bad seeds, a result ``recover`` refuses, a further round that
            cannot prune more, or a method whose sparser mask does not keep the soup's pruned weights pruned.
    """
    chosen = _check(ingredients, rounds, seeds)
    seed_list = chosen or [config.seed + i for i in range(ingredients)]
    config = replace(config, mode="fixed")
    check_inputs(result, loaded, config)
    configs = [result.config]
    for _ in range(rounds - 1):
        configs.append(next_config(configs[-1], prune_more))
    method = get_method(result.config.method)
    if rounds > 1 and method.uses_seed and not method.needs_calibration:
        raise ValueError(f"method {result.config.method!r} draws its mask at random: a sparser mask would not keep "
                         "the soup's pruned weights pruned (use rounds=1)")
    for i in seed_list:
        replace(config, seed=i).validate()
    objective = make_objective(loaded, config.resolve_loss(loaded.kind), None)
    dense_quality = loaded.quality()
    metric = next(iter(dense_quality))
    higher = loaded.higher_is_better.get(metric, True)
    total = rounds * ingredients
    done_rounds: list[SoupRound] = []
    with reporter(progress, "soup") as bar:
        current = result
        soup_model: nn.Module | None = None
        masks: dict[str, torch.Tensor] = {}
        for r in range(rounds):
            if r:
                current = _prune_soup(current, soup_model, masks, configs[r], loaded)
            records = []
            for j, seed in enumerate(seed_list):
                done = r * ingredients + j

                def report(p: RecoveryProgress, done: int = done, seed: int = seed, r: int = r) -> None:
                    if bar is not None and p.total_steps:
                        bar((done + p.step / p.total_steps) / total,
                            f"round {r + 1}/{rounds}, ingredient seed {seed}: step {p.step}/{p.total_steps}")

                rec = recover(current, loaded, replace(config, seed=seed), progress=report, objective=objective,
                              name=f"soup round {r + 1} ingredient seed {seed}")
                if rec.status != "complete":
                    raise ValueError(f"ingredient seed {seed} of round {r + 1} did not complete ({rec.status}: "
                                     f"{rec.message})")
                records.append(rec)
            state, masks = uniform_soup(records)
            soup_model = copy.deepcopy(current.model)
            soup_model.load_state_dict(state, strict=True)
            soup_model.eval()
            done_rounds.append(SoupRound(current.config, list(seed_list), records, loaded.quality(soup_model),
                                         dict(records[0].intervals[0].quality)))
            if bar is not None:
                bar((r + 1) * ingredients / total, f"round {r + 1}/{rounds}: soup {metric} "
                                                   f"{done_rounds[-1].soup_quality.get(metric, float('nan')):.4g}")
    assert soup_model is not None
    return SoupResult(soup_model, masks, done_rounds, config, metric, higher, dense_quality, loaded.name)


def _prune_soup(previous: SparsifyResult, soup: nn.Module | None, masks: dict[str, torch.Tensor],
                config: SparsifyConfig, loaded: LoadedModel) -> SparsifyResult:
    """Prune the soup with ``config``; the new masks must lie inside the soup's (pruned weights stay pruned)."""
    assert soup is not None
    calibration = getattr(loaded, "calibration", None) if get_method(config.method).needs_calibration else None
    pruned = sparsify(soup, config, progress=False, calibration=calibration, resume=False)
    for name, mask in pruned.masks.items():
        old = masks.get(name)
        if old is not None and bool((mask & ~old).any()):
            raise ValueError(f"re-pruning the soup with {config.label()} kept {int((mask & ~old).sum()):,} weight(s) "
                             f"of layer {name!r} that the previous round had pruned; this method cannot prune a "
                             "soup further (use rounds=1)")
    return replace(pruned, views=pruned.views or previous.views)

"""Per-layer sparsities under one overall budget: OWL and sensitivity-guided allocation.

How the budget is counted: over the layers ``sparsify`` prunes (the selected Linear/Conv layers
that take the pattern), weighted by weight count, since layers differ in size.

- Unstructured at sparsity S: exactly ``round(S * total)`` weights are pruned in all. Per-layer
  targets are fitted to integer counts that add up to that number; every method then prunes its
  layer's count exactly (Wanda's per-row comparison gives some rows one more pruned entry).
  SparseGPT chooses its mask per block of 128 columns, so a layer's count moves in steps of its
  block count; where no combination adds up exactly, the nearest total with at least the requested
  number pruned is used and the difference is reported.
- N:M at N:M: each layer gets a level n:M of the same M (n = M is dense), so the result still runs
  on N:M kernels. The kept total never exceeds ``N/M * total``; the levels may not allow it exactly,
  and the remainder (requested kept minus kept) is reported.

OWL's unit (``SparsifyConfig.owl_unit``): ``block`` (default, the authors' code) scores each
transformer block once over all its layers and gives them one target; layers outside every block stay
at the overall target; ``layer`` scores each layer alone (also the fallback for models without blocks).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol, Sequence

import torch
from torch import nn

from .budget import LAYER_MAX_SPARSITY, Grid, choose_levels, fit_counts, interpolate, spread_continuous
from .config import SparsifyConfig
from .display import Card, Shown, percent
from .layers import layer_weight
from .methods import REGISTRY, Calibration, Method, MethodOutput, PruneSettings, get_method
from .methods.calibration import (
    InputStats,
    LayerInputs,
    capture_input_stats,
    check_calibration,
    sequential_prune,
    transformer_blocks,
)
from .methods.types import LayerJournal
from .progress import ProgressFn


class DropCurves(Protocol):
    """What sensitivity-guided allocation reads from a scan (``sensitivity.SensitivityScan``)."""

    def allocation_curves(self, names: Sequence[str], config: SparsifyConfig, fingerprint: str | None = None
                          ) -> tuple[list[list[str]], list[list[tuple[float, float]]]]: ...

    def describe(self) -> str: ...


@dataclass(frozen=True, repr=False)
class Allocation(Shown):
    """Per-layer targets chosen under one overall budget."""

    kind: str
    """``owl`` or ``sensitivity``."""
    pattern: str
    """``unstructured`` or ``nm``."""
    sparsity: dict[str, float]
    """layer -> its pruned fraction (``pruned / numel``; N:M: ``1 - n/M``)."""
    pruned: dict[str, int]
    """layer -> weights pruned."""
    numel: dict[str, int]
    """layer -> weight count."""
    requested_pruned: int
    """Unstructured: ``round(S * total)``; N:M: ``total - N/M * total``."""
    levels: dict[str, int] = field(default_factory=dict)
    """N:M only: layer -> n kept of every M (n = M: the layer stays dense)."""
    scores: dict[str, float] = field(default_factory=dict)
    """OWL: layer -> outlier ratio D_l; sensitivity: layer -> predicted drop of its unit's choice."""
    note: str = ""
    method_sparsity: dict[str, float] = field(default_factory=dict)
    """Unstructured: layer -> the sparsity handed to its method so that it prunes exactly ``pruned``
    (SparseGPT rounds per block of columns, so this can differ slightly from ``sparsity``)."""
    blocks: dict[str, str] = field(default_factory=dict)
    """OWL with ``owl_unit="block"``: layer -> the transformer block it was scored with (layers
    outside every block are absent: they stay at the target)."""

    FIGURE = "allocation_figure"

    def summary_card(self) -> Card:
        """The spread of the layer targets, the count achieved, and one row per layer."""
        total = sum(self.numel.values())
        pruned = sum(self.pruned.values())
        head = {"layers": str(len(self.sparsity)),
                "overall sparsity": f"{percent(pruned / total if total else 0.0, 2)} ({pruned:,} of {total:,})",
                "requested": f"{self.requested_pruned:,} pruned"}
        rows = [{"layer": n, **({"block": self.blocks[n]} if self.blocks else {}),
                 "weights": self.numel[n], "sparsity": percent(s, 2),
                 **({"N kept of M": self.levels[n]} if n in self.levels else {}),
                 **({"score": self.scores[n]} if n in self.scores else {})} for n, s in self.sparsity.items()]
        return Card(f"Allocation ({self.kind}, {self.pattern})", head, rows, self.note)

    def layer_config(self, config: SparsifyConfig, name: str) -> SparsifyConfig:
        """``config`` with this layer's own sparsity (unstructured) or N (N:M)."""
        if self.pattern == "nm":
            return replace(config, n=self.levels[name])
        return replace(config, sparsity=self.method_sparsity.get(name, self.sparsity[name]))


def _owl_metrics(model: nn.Module, names: Sequence[str], calibration: Calibration) -> dict[str, torch.Tensor]:
    """Each layer's Wanda metric ``|W_ij| * ||X_j||_2`` (float64; input norms from one dense forward).
    A layer the forward never reaches gets ``|W|`` alone."""
    stats = capture_input_stats(model, names, calibration, "norms")
    modules = dict(model.named_modules())
    out = {}
    for name in names:
        view = LayerInputs(name, modules[name], False)
        metric = view.matrix(layer_weight(modules[name]).detach()).double().abs()
        total = stats[name].total
        if total is not None:
            metric = metric * total.sqrt().unsqueeze(0)
        out[name] = metric
    return out


def _outlier_share(metric: torch.Tensor, m: float) -> float:
    return float((metric > m * metric.mean()).double().mean())


def owl_outlier_ratios(model: nn.Module, names: Sequence[str], calibration: Calibration, m: float) -> dict[str, float]:
    """OWL's layer outlier ratio: the share of a layer's entries with ``|W_ij| * ||X_j||_2 > m * mean``
    (the mean of that layer's ``|W| * ||X||``; input norms from one dense forward).

    Args:
        model: the dense module (hooked for one forward: pass a copy).
        names: the layers.
        calibration: calibration inputs.
        m: the outlier threshold multiple (the paper's M, 5 to 7 for LLMs).

    Returns:
        layer -> D_l in [0, 1]. A layer the forward never reaches is scored on ``|W|`` alone.
    """
    return {name: _outlier_share(metric, m) for name, metric in _owl_metrics(model, names, calibration).items()}


def owl_block_groups(model: nn.Module, names: Sequence[str]) -> tuple[dict[str, list[str]], list[str]]:
    """The layers of ``names`` grouped by transformer block (``transformer_blocks``), in model order.

    Returns:
        ``(block -> its layers among names, layers outside every block)``; no groups when the
        model has no transformer blocks.
    """
    groups: dict[str, list[str]] = {}
    outside = []
    prefixes = [b + "." for b, _ in transformer_blocks(model)]
    for name in names:
        block = next((p[:-1] for p in prefixes if name.startswith(p)), None)
        if block is None:
            outside.append(name)
        else:
            groups.setdefault(block, []).append(name)
    return groups, outside


def owl_block_ratios(model: nn.Module, groups: dict[str, list[str]], calibration: Calibration,
                     m: float) -> dict[str, float]:
    """OWL's outlier ratio per transformer block, as the authors' code computes it (luuyin/OWL
    ``lib/prune_all.py``): the metrics ``|W| * ||X||`` of all the block's layers flattened into one
    vector, D = the share of its entries above ``m`` times that vector's mean.

    Args:
        model: the dense module (hooked for one forward: pass a copy).
        groups: block -> its layers (``owl_block_groups``).
        calibration: calibration inputs.
        m: the outlier threshold multiple.

    Returns:
        block -> D in [0, 1].
    """
    metrics = _owl_metrics(model, [n for layers in groups.values() for n in layers], calibration)
    return {block: _outlier_share(torch.cat([metrics[n].reshape(-1) for n in layers]), m)
            for block, layers in groups.items()}


def owl_sparsities(ratios: dict[str, float], numel: dict[str, int], sparsity: float, lam: float,
                   max_sparsity: float = LAYER_MAX_SPARSITY) -> dict[str, float]:
    """OWL's layer sparsities: ``1 - (D_l - min D) / (max D - min D) * 2 lam``, shifted so that the
    weight-count weighted mean is ``sparsity`` (the paper's code shifts the plain mean over blocks of
    equal size, which is the same thing there), each clipped to ``[0, max_sparsity]``.

    Args:
        ratios: layer -> outlier ratio D_l.
        numel: layer -> weight count.
        sparsity: the overall target S.
        lam: OWL's lambda: the layer sparsities span ``2 lam``.
        max_sparsity: per-layer upper bound.

    Returns:
        layer -> sparsity (real-valued; ``fit_counts`` turns them into counts).
    """
    names = list(ratios)
    lo, hi = min(ratios.values()), max(ratios.values())
    spread = {n: (ratios[n] - lo) / (hi - lo) * 2 * lam if hi > lo else 0.0 for n in names}
    total = sum(numel[n] for n in names)

    def at(c: float) -> dict[str, float]:
        return {n: min(max(c - spread[n], 0.0), max_sparsity) for n in names}

    def mean(s: dict[str, float]) -> float:
        return sum(s[n] * numel[n] for n in names) / total

    c = sparsity + sum(spread[n] * numel[n] for n in names) / total
    out = at(c)
    if abs(mean(out) - sparsity) > 1e-12:  # clipping moved the mean: find the shift again
        a, b = -1.0, 2.0 + 2 * lam
        for _ in range(200):
            mid = (a + b) / 2
            a, b = (mid, b) if mean(at(mid)) < sparsity else (a, mid)
        out = at(b)
    return out


def _grid(method: Method, module: nn.Module) -> Grid:
    numel = layer_weight(module).numel()
    if method.count_pieces is not None:
        rows, cols = LayerInputs("", module, False).view.matrix_shape
        return Grid(numel, method.count_pieces(rows, cols))
    return Grid(numel)


def _owl_calibration(calibration: Calibration | None) -> None:
    if calibration is None:
        raise ValueError("allocation='owl' needs calibration inputs (OWL weighs |W| by each input feature's norm): "
                         "pass calibration=... or a LoadedModel, whose .calibration holds them")
    check_calibration(calibration, "owl allocation")


def _owl_targets(model: nn.Module, names: list[str], numel: dict[str, int], config: SparsifyConfig,
                 calibration: Calibration, target: float
                 ) -> tuple[list[list[str]], dict[str, float], dict[str, float], dict[str, str], str]:
    """OWL's units, real-valued layer sparsities, scores, layer -> block and the note's head.

    ``owl_unit="block"``: one D per transformer block from all its layers' metrics together, one
    sparsity per block (the weight-count weighted shift keeps the blocks' mean at ``target``; over
    blocks of equal size that is the authors' plain mean). Layers outside every block stay at
    ``target``: the authors' code prunes only the blocks' Linear layers and leaves them out of OWL.
    A model without transformer blocks falls back to one unit per layer, and the note says so.
    """
    lam, m = float(config.owl_lambda), float(config.owl_m)
    head = f"OWL (M={config.owl_m:g}, λ={config.owl_lambda:g}"
    groups, outside = owl_block_groups(model, names) if config.owl_unit == "block" else ({}, names)
    if not groups:
        ratios = owl_outlier_ratios(model, names, calibration, m)
        why = ("; the model has no transformer blocks, so each layer is scored alone"
               if config.owl_unit == "block" else "")
        return ([[n] for n in names], owl_sparsities(ratios, numel, target, lam), ratios, {},
                f"{head}, unit: layer{why})")
    ratios = owl_block_ratios(model, groups, calibration, m)
    per_block = owl_sparsities(ratios, {b: sum(numel[n] for n in ls) for b, ls in groups.items()}, target, lam)
    ideal = {n: per_block.get(block, target) for block, ls in groups.items() for n in ls}
    ideal.update({n: target for n in outside})
    blocks = {n: block for block, ls in groups.items() for n in ls}
    scores = {n: ratios[blocks[n]] for n in blocks}
    units = list(groups.values()) + [[n] for n in outside]
    rest = (f"; {len(outside)} layer{'s' if len(outside) != 1 else ''} outside every block ("
            f"{', '.join(outside[:4])}{', ...' if len(outside) > 4 else ''}) at the target, as the authors' code "
            "prunes only the blocks' layers" if outside else "")
    return (units, {n: ideal[n] for n in names}, scores, blocks,
            f"{head}, unit: transformer block, D over each block's layers together, one sparsity per block "
            f"over {len(groups)} blocks{rest})")


def allocate(model: nn.Module, layers: Sequence[tuple[str, nn.Module]], config: SparsifyConfig,
             calibration: Calibration | None = None, scan: DropCurves | None = None,
             fingerprint: str | None = None) -> Allocation:
    """Per-layer targets for ``config`` (``allocation`` = ``owl`` or ``sensitivity``).

    Args:
        model: the dense module; OWL hooks it for one calibration forward, so pass a copy.
        layers: ``(name, module)`` of the layers to prune (each takes the pattern).
        config: a ``SparsifyConfig``.
        calibration: calibration inputs (OWL).
        scan: a ``sensitivity.SensitivityScan`` of this model (``sensitivity``).
        fingerprint: the model's ``cache.model_fingerprint``, checked against the scan's.

    Returns:
        The ``Allocation``.
    """
    names = [n for n, _ in layers]
    numel = {n: layer_weight(m).numel() for n, m in layers}
    total = sum(numel.values())
    blocks: dict[str, str] = {}
    if config.allocation == "owl":
        _owl_calibration(calibration)
        assert calibration is not None
        target_s = float(config.sparsity) if config.pattern == "unstructured" else 1 - config.n / config.m
        units, ideal, scores, blocks, head = _owl_targets(model, names, numel, config, calibration, target_s)
    elif config.allocation == "sensitivity":
        if scan is None or not callable(getattr(scan, "allocation_curves", None)):
            raise ValueError("sensitivity must be a SensitivityScan (sensitivity_scan(...)), got "
                             f"{type(scan).__name__}")
        units, curves = scan.allocation_curves(names, config, fingerprint)
        head = f"sensitivity scan ({scan.describe()})"
    else:
        raise ValueError(f"allocate needs allocation 'owl' or 'sensitivity', got {config.allocation!r}")
    unit_numel = [sum(numel[n] for n in u) for u in units]

    if config.pattern == "nm":
        m = config.m
        requested = total - total * config.n // m
        if config.allocation == "owl":
            levels = list(range(1, m + 1))
            options = [[(sum(numel[x] * (m - n) // m for x in u),
                         sum(numel[x] * (n / m - (1 - ideal[x])) ** 2 for x in u)) for n in reversed(levels)]
                       for u in units]
            level_of = [list(reversed(levels))] * len(units)
        else:
            level_of = [[int(n) for n, _ in c] for c in curves]
            options = [[(size * (m - int(n)) // m, drop) for n, drop in c] for c, size in zip(curves, unit_numel)]
        try:
            choice = choose_levels(options, requested)
        except ValueError:
            raise ValueError(f"the levels available ({sorted(set(sum(level_of, [])))} of M={m}) cannot prune "
                             f"{requested} of {total} weights; scan lower N:M levels") from None
        level = {n: level_of[i][choice[i]] for i, u in enumerate(units) for n in u}
        pruned = {n: numel[n] * (m - level[n]) // m for n in names}
        if config.allocation == "sensitivity":
            scores = {n: float(options[i][choice[i]][1]) for i, u in enumerate(units) for n in u}
        kept, want = total - sum(pruned.values()), total - requested
        note = (f"{head}: levels {min(level.values())}:{m} to {max(level.values())}:{m} over {len(names)} layers; "
                f"kept {kept}/{total} = {kept / total:.4%} of their weights (requested {config.n}:{m} = "
                f"{want / total:.4%}" + (", exact)" if kept == want else
                                        f"; {want - kept} weights fewer kept: the levels allow no closer total)"))
        return Allocation(config.allocation, "nm", {n: 1 - level[n] / m for n in names}, pruned, numel, requested,
                          level, scores, note, blocks=blocks)

    sparsity = float(config.sparsity)
    requested = int(round(sparsity * total))
    method = get_method(config.method)
    grids = {n: _grid(method, mod) for n, mod in layers}
    if requested > sum(g.cap for g in grids.values()):
        raise ValueError(f"budget out of range: pruning {sparsity:.2%} of {total} weights needs more than the "
                         f"{LAYER_MAX_SPARSITY:.0%} per-layer limit allows; lower the sparsity")
    if config.allocation == "sensitivity":
        amounts = spread_continuous([[(0.0, 0.0)] + [(s * size, d) for s, d in c]
                                     for c, size in zip(curves, unit_numel)],
                                    requested)
        share = {n: amounts[i] / unit_numel[i] for i, u in enumerate(units) for n in u}
        ideal = share
        scores = {n: interpolate([(0.0, 0.0)] + curves[i], share[n]) for i, u in enumerate(units) for n in u}
    counts = fit_counts({n: ideal[n] * numel[n] for n in names}, grids, requested)
    got = sum(counts.values())
    per = {n: counts[n] / numel[n] for n in names}
    note = (f"{head}: per-layer sparsity {min(per.values()):.1%} to {max(per.values()):.1%} over {len(names)} layers; "
            f"pruned {got}/{total} = {got / total:.4%} of their weights (requested {sparsity:.2%} = {requested}"
            + (", exact)" if got == requested else f"; {got - requested} more pruned: SparseGPT's per-block counts "
                                                    "allow no exact total)"))
    return Allocation(config.allocation, "unstructured", per, counts, numel, requested, {}, scores, note,
                      {n: grids[n].sparsity(counts[n]) for n in names}, blocks)


def run_allocated(method: Method, model: nn.Module, names: Sequence[str], config: SparsifyConfig,
                  calibration: Calibration | None, progress: ProgressFn | None, allocation: Allocation,
                  journal: LayerJournal | None = None) -> MethodOutput:
    """A model-level method on the copy with each layer at its own target.

    Args:
        method: the registered method (``run`` is not None).
        model: the working copy (Wanda/SparseGPT prune it in place).
        names: layers to prune.
        config: the ``SparsifyConfig``.
        calibration: calibration inputs.
        progress: optional callback.
        allocation: the per-layer targets.
        journal: where the calibrated run keeps its finished layers (``sequential_prune``).

    Returns:
        The method's ``MethodOutput``.
    """
    inner, count_mask = method.keep_layer, method.count_mask
    if inner is not None:
        check_calibration(calibration, method.name)
        assert calibration is not None

        def keep(layer: LayerInputs, weight: torch.Tensor, cfg: PruneSettings, stats: InputStats,
                 notes: dict[str, str]) -> tuple[torch.Tensor, torch.Tensor | None]:
            if count_mask is not None and config.pattern == "unstructured":
                return count_mask(layer, weight, stats, allocation.pruned[layer.name]), None
            return inner(layer, weight, allocation.layer_config(config, layer.name), stats, notes)

        return sequential_prune(model, names, config, calibration, progress, keep, method.stats, journal)
    assert method.run is not None
    out = method.run(model, names, config, calibration, progress)
    if out.masks:
        per_layer = [m.name for m in REGISTRY.values() if m.keep_layer is not None]
        raise ValueError(f"method {method.name!r} chooses its masks itself with one setting for all layers; "
                         f"allocation={config.allocation!r} supports methods that score weights and "
                         f"{', '.join(per_layer)}")
    return out

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
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import torch
from torch import nn

from .budget import LAYER_MAX_SPARSITY, _Grid, _interp, choose_levels, fit_counts, spread_continuous
from .methods import sparsegpt as _sparsegpt
from .methods import wanda as _wanda
from .methods.base import Method, MethodOutput, ProgressFn
from .methods.calibration import InputStats, LayerInputs, check_calibration, run_model, sequential_prune, token_mask

ALLOCATIONS = ("uniform", "owl", "sensitivity")
"""``uniform`` (every layer at the target), ``owl`` (outlier-weighed, Yin et al. 2023) or
``sensitivity`` (from a ``sparsekit.sensitivity`` scan)."""
MAX_OWL_M = 100.0
MAX_OWL_LAMBDA = 0.5
"""No layer is pruned beyond this under an allocation (the per-config bound of unstructured)."""


@dataclass(frozen=True)
class Allocation:
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

    def layer_config(self, config: Any, name: str) -> Any:
        """``config`` with this layer's own sparsity (unstructured) or N (N:M)."""
        if self.pattern == "nm":
            return replace(config, n=self.levels[name])
        return replace(config, sparsity=self.method_sparsity.get(name, self.sparsity[name]))


def capture_input_stats(model: nn.Module, names: Sequence[str], calibration: Any,
                        kind: str = "hessian") -> dict[str, InputStats]:
    """Statistics of each named layer's inputs over one forward of the calibration batch.

    Forward pre-hooks are registered on ``model`` for that forward (and removed): pass a copy, never
    the shared model.

    Args:
        model: the module (dense, for OWL and the sensitivity proxy).
        names: prunable layers.
        calibration: a float tensor batch or a dict of token tensors (padding tokens are left out).
        kind: ``hessian`` (``X^T X``) or ``norms`` (squared L2 norm of each input feature); conv
            columns in ``in*kh*kw`` order.

    Returns:
        layer -> ``InputStats`` (``total`` is None for a layer the forward never called).
    """
    modules = dict(model.named_modules())
    views = {modules[n]: LayerInputs(n, modules[n], False) for n in names}
    stats = {n: InputStats(kind) for n in names}
    tokens = token_mask(calibration)

    def hook(module, args):
        if not args or not isinstance(args[0], torch.Tensor):
            return
        view, x = views[module], args[0]
        stats[view.name].add(view.columns(x, tokens), x.shape[0] if x.dim() >= 2 else 1)

    handles = [m.register_forward_pre_hook(hook) for m in views]
    try:
        with torch.no_grad():
            run_model(model, calibration)
    finally:
        for h in handles:
            h.remove()
    return stats


def owl_outlier_ratios(model: nn.Module, names: Sequence[str], calibration: Any, m: float) -> dict[str, float]:
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
    stats = capture_input_stats(model, names, calibration, "norms")
    modules = dict(model.named_modules())
    out = {}
    for name in names:
        view = LayerInputs(name, modules[name], False)
        metric = view.matrix(modules[name].weight.detach()).double().abs()
        if stats[name].total is not None:
            metric = metric * stats[name].total.sqrt().unsqueeze(0)
        out[name] = float((metric > m * metric.mean()).double().mean())
    return out


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


def _grid(method: str, pattern: str, module: nn.Module) -> _Grid:
    numel = module.weight.numel()
    if method == "sparsegpt" and pattern == "unstructured":
        rows, cols = LayerInputs("", module, False).view.matrix_shape
        block = _sparsegpt.SPARSEGPT_BLOCK
        return _Grid(numel, [rows * (min(i + block, cols) - i) for i in range(0, cols, block)])
    return _Grid(numel)


def _owl_calibration(calibration: Any) -> None:
    if calibration is None:
        raise ValueError("allocation='owl' needs calibration inputs (OWL weighs |W| by each input feature's norm): "
                         "pass calibration=... or a LoadedModel, whose .calibration holds them")
    check_calibration(calibration, "owl allocation")


def allocate(model: nn.Module, layers: Sequence[tuple[str, nn.Module]], config: Any, calibration: Any = None,
             scan: Any = None, fingerprint: str | None = None) -> Allocation:
    """Per-layer targets for ``config`` (``allocation`` = ``owl`` or ``sensitivity``).

    Args:
        model: the dense module; OWL hooks it for one calibration forward, so pass a copy.
        layers: ``(name, module)`` of the layers to prune (each takes the pattern).
        config: a ``SparsifyConfig``.
        calibration: calibration inputs (OWL).
        scan: a ``sensitivity.SensitivityScan`` of this model (``sensitivity``).
        fingerprint: the model's ``compare.model_fingerprint``, checked against the scan's.

    Returns:
        The ``Allocation``.
    """
    names = [n for n, _ in layers]
    numel = {n: m.weight.numel() for n, m in layers}
    total = sum(numel.values())
    if config.allocation == "owl":
        _owl_calibration(calibration)
        ratios = owl_outlier_ratios(model, names, calibration, float(config.owl_m))
        target_s = float(config.sparsity) if config.pattern == "unstructured" else 1 - config.n / config.m
        ideal = owl_sparsities(ratios, numel, target_s, float(config.owl_lambda))
        head = f"OWL (M={config.owl_m:g}, λ={config.owl_lambda:g})"
        units = [[n] for n in names]
        scores = ratios
    elif config.allocation == "sensitivity":
        from .sensitivity import allocation_curves  # the scan's own module reads its record

        units, curves = allocation_curves(scan, names, config, fingerprint)
        head = f"sensitivity scan ({scan.config.method}, {scan.config.grouping})"
    else:
        raise ValueError(f"allocate needs allocation 'owl' or 'sensitivity', got {config.allocation!r}")
    unit_numel = [sum(numel[n] for n in u) for u in units]

    if config.pattern == "nm":
        m = config.m
        requested = total - total * config.n // m
        if config.allocation == "owl":
            levels = list(range(1, m + 1))
            options = [[(numel[u[0]] * (m - n) // m, numel[u[0]] * (n / m - (1 - ideal[u[0]])) ** 2)
                        for n in reversed(levels)] for u in units]
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
                          level, scores, note)

    sparsity = float(config.sparsity)
    requested = int(round(sparsity * total))
    grids = {n: _grid(config.method, "unstructured", mod) for n, mod in layers}
    if requested > sum(g.cap for g in grids.values()):
        raise ValueError(f"budget out of range: pruning {sparsity:.2%} of {total} weights needs more than the "
                         f"{LAYER_MAX_SPARSITY:.0%} per-layer limit allows; lower the sparsity")
    if config.allocation == "sensitivity":
        amounts = spread_continuous([[(0.0, 0.0)] + [(s * size, d) for s, d in c] for c, size in zip(curves, unit_numel)],
                                    requested)
        share = {n: amounts[i] / unit_numel[i] for i, u in enumerate(units) for n in u}
        ideal = share
        scores = {n: _interp([(0.0, 0.0)] + curves[i], share[n]) for i, u in enumerate(units) for n in u}
    counts = fit_counts({n: ideal[n] * numel[n] for n in names}, grids, requested)
    got = sum(counts.values())
    per = {n: counts[n] / numel[n] for n in names}
    note = (f"{head}: per-layer sparsity {min(per.values()):.1%} to {max(per.values()):.1%} over {len(names)} layers; "
            f"pruned {got}/{total} = {got / total:.4%} of their weights (requested {sparsity:.2%} = {requested}"
            + (", exact)" if got == requested else f"; {got - requested} more pruned: SparseGPT's per-block counts "
                                                    "allow no exact total)"))
    return Allocation(config.allocation, "unstructured", per, counts, numel, requested, {}, scores, note,
                      {n: grids[n].sparsity(counts[n]) for n in names})


def wanda_exact_mask(layer: LayerInputs, weight: torch.Tensor, stats: InputStats, count: int) -> torch.Tensor:
    """Wanda's mask pruning exactly ``count`` entries of a layer: each row loses ``count // rows`` of
    its lowest ``|W| * ||X||`` as in the paper, and the ``count % rows`` rows whose weakest kept entry
    is weakest lose one more (ties keep the lower index, as ``row_unstructured_mask``).

    Args:
        layer: the layer's ``LayerInputs`` (grouped view).
        weight: its weight.
        stats: its input norms (``InputStats("norms")``).
        count: weights to prune.

    Returns:
        The mask in the weight's layout, True = kept.
    """
    W = layer.matrix(weight.detach())
    scores = _wanda.wanda_scores(W.float(), stats.total.sqrt().float())
    rows, cols = scores.shape
    base, extra = divmod(int(count), rows)
    order = torch.sort(scores.abs(), dim=1, descending=True, stable=True).indices
    keep = torch.zeros(rows, cols, dtype=torch.bool)
    keep.scatter_(1, order[:, : cols - base], True)
    if extra:
        weakest_at = order[:, cols - base - 1]
        weakest = scores.gather(1, weakest_at.unsqueeze(1)).squeeze(1)
        pick = torch.sort(weakest, stable=True).indices[:extra]
        keep[pick, weakest_at[pick]] = False
    return layer.from_matrix(keep)


PER_LAYER_KEEP = {"wanda": (_wanda._keep, "norms"), "sparsegpt": (_sparsegpt._keep, "hessian")}
"""Methods that choose masks inside the shared calibration forward: their per-layer function and the
input statistics it reads (``calibration.sequential_prune``)."""


def run_allocated(method: Method, model: nn.Module, names: Sequence[str], config: Any, calibration: Any,
                  progress: ProgressFn | None, allocation: Allocation) -> MethodOutput:
    """A model-level method on the copy with each layer at its own target.

    Args:
        method: the registered method (``run`` is not None).
        model: the working copy (Wanda/SparseGPT prune it in place).
        names: layers to prune.
        config: the ``SparsifyConfig``.
        calibration: calibration inputs.
        progress: optional callback.
        allocation: the per-layer targets.

    Returns:
        The method's ``MethodOutput``.
    """
    if method.name in PER_LAYER_KEEP:
        check_calibration(calibration, method.name)
        inner, kind = PER_LAYER_KEEP[method.name]

        def keep(layer, weight, cfg, stats, notes):
            if method.name == "wanda" and config.pattern == "unstructured":
                return wanda_exact_mask(layer, weight, stats, allocation.pruned[layer.name]), None
            return inner(layer, weight, allocation.layer_config(config, layer.name), stats, notes)

        return sequential_prune(model, names, config, calibration, progress, keep, kind)
    out = method.run(model, names, config, calibration, progress)
    if out.masks:
        raise ValueError(f"method {method.name!r} chooses its masks itself with one setting for all layers; "
                         f"allocation={config.allocation!r} supports methods that score weights and "
                         f"{', '.join(PER_LAYER_KEEP)}")
    return out

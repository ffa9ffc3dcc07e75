"""Apply weight sparsity to a copy of a model, with a per-layer report.

``sparsify`` never touches the model it is given: the app shares one loaded model between every
browser session, so the masks are applied to a deep copy.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from . import serial
from .allocation import Allocation, DropCurves, allocate, run_allocated
from .cache import model_fingerprint, tensor_digest
from .config import ALLOCATIONS, CALIBRATION_ORDERS, LAYER_SETS, MAX_M, MAX_SPARSITY, PATTERNS, SCOPES, SparsifyConfig
from .display import Card, Shown, percent
from .layers import (
    CONV_GROUPINGS,
    GroupedView,
    grouped_view,
    layer_group,
    layer_weight,
    matrix_view,
    prunable_layers,
    tied_layers,
)
from .masks import nm_mask, topk_keep, unstructured_mask
from .methods import CALIBRATED_METHODS, METHODS, MethodOutput, get_method
from .methods.calibration import check_calibration, sequential_prune
from .methods.types import Calibration
from .models.base import LoadedModel, module_of
from .progress import ProgressArg, ProgressFn, reporter
from .pruned_layers import PrunedLayerStore
from .report import (
    LayerReport,
    build_layer_report,
    format_bytes,
    is_2_4,
    layer_table,
    params_by_type,
    report_csv,
    semi_structured_check,
)


@dataclass(repr=False)
class SparsifyResult(Shown):
    """The sparsified copy, its masks (True = kept, in each weight's own layout) and the report."""

    model: nn.Module
    masks: dict[str, torch.Tensor]
    report: list[LayerReport]
    config: SparsifyConfig
    weight_names: dict[str, str] = field(default_factory=dict)
    """layer name -> parameter name in ``model.state_dict()``."""
    notes: dict[str, str] = field(default_factory=dict)
    """layer name -> remark from a calibrated method (e.g. not reached by the calibration forward)."""
    calibration_order: str = ""
    """Wanda/SparseGPT: the order actually used (``block``, or ``layer`` also when the model has no
    transformer blocks); empty for the other methods."""
    calibration_note: str = ""
    """One line on the calibration order used and why (empty for uncalibrated methods)."""
    views: dict[str, GroupedView] = field(default_factory=dict)
    """layer name -> how its weight maps to the grouped matrix (``sparsekit.layers``)."""
    allocation: dict[str, float] = field(default_factory=dict)
    """Non-uniform allocation only: layer -> the sparsity it was given (N:M: ``1 - n/M``; 0 for a
    layer kept dense at the n = M level)."""
    allocation_note: str = ""
    """Non-uniform allocation only: the spread of the layer targets and the overall count achieved."""
    resumed_layers: list[str] = field(default_factory=list)
    """Wanda/SparseGPT: layers taken from an interrupted run of the same call instead of computed
    (``sparsify(resume=True)``); empty otherwise."""

    FIGURE = "layer_kept_figure"
    FIGURE_INPUT = "report"

    def summary_card(self) -> Card:
        """Kept shares and layers pruned, and one row per layer (Jupyter shows it as HTML)."""
        s = self.summary()
        head = {"layers with weights removed": f"{s['layers_with_zeros']} / {s['layers_total']}",
                "kept in pruned layers": percent(float(s["kept_fraction_pruned_layers"] or 0.0)),
                "kept in all Linear/Conv": percent(float(s["kept_fraction_all_layers"] or 0.0))}
        if self.calibration_order:
            head["calibration order"] = self.calibration_order
        rows = [{"layer": r.name, "shape": r.shape, "kept": percent(r.kept_fraction),
                 "2:4 kernel / why dense": r.skipped_reason or r.semi_structured} for r in self.report]
        return Card(f"SparsifyResult: {self.config.label()}", head, rows, self.allocation_note)

    def matrix_view(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """A layer's weight or mask as a 2-D matrix whose rows hold the N:M groups as consecutive
        columns: GPT-2 Conv1D ``[in, out]`` is transposed; a conv weight is laid out
        ``[out, kh*kw*in]`` for channel grouping and ``[out, in*kh*kw]`` for kernel grouping."""
        view = self.views.get(name)
        if view is not None:
            return view.matrix(tensor)
        return matrix_view(tensor, self.config.conv_grouping)

    def summary(self) -> dict[str, float | int | None]:
        """Totals over pruned layers and over all candidate layers.

        Returns:
            ``layers_pruned`` (the pattern was applied), ``layers_with_zeros`` (of those, the ones
            that lost at least one weight: none at 0 % sparsity), ``layers_total``,
            ``kept_fraction_pruned_layers``,
            ``kept_fraction_all_layers``; weight memory of all candidate layers per format
            (``dense_bytes``, ``bitmask_bytes``, ``csr_bytes``); and of the pruned layers only
            (``pruned_dense_bytes``, ``pruned_bitmask_bytes``, ``pruned_csr_bytes``,
            ``pruned_nm_bytes``; the N:M total is None unless every pruned layer has an N:M size,
            since a sum over some of them would understate the memory).
        """
        pruned = [r for r in self.report if r.pruned]
        total = sum(r.numel for r in self.report)
        kept = sum(r.kept for r in self.report)
        p_total = sum(r.numel for r in pruned)
        p_kept = sum(r.kept for r in pruned)
        nm_sizes = [r.nm_bytes for r in pruned if r.nm_bytes is not None]
        return {
            "layers_pruned": len(pruned),
            "layers_with_zeros": sum(r.kept < r.numel for r in pruned),
            "layers_total": len(self.report),
            "kept_fraction_pruned_layers": p_kept / p_total if p_total else 1.0,
            "kept_fraction_all_layers": kept / total if total else 1.0,
            "dense_bytes": sum(r.dense_bytes for r in self.report),
            "bitmask_bytes": sum(r.bitmask_bytes for r in self.report),
            "csr_bytes": sum(r.csr_bytes for r in self.report),
            "pruned_dense_bytes": sum(r.dense_bytes for r in pruned),
            "pruned_bitmask_bytes": sum(r.bitmask_bytes for r in pruned),
            "pruned_csr_bytes": sum(r.csr_bytes for r in pruned),
            "pruned_nm_bytes": None if len(nm_sizes) < len(pruned) else sum(nm_sizes),
        }


def _selection(names: list[str], config: SparsifyConfig) -> dict[str, str]:
    """name -> reason it stays dense ('' when selected)."""
    inc = re.compile(config.include) if config.include else None
    exc = re.compile(config.exclude) if config.exclude else None
    reasons = {}
    for name in names:
        group = layer_group(name)
        if config.layers != "all" and group != config.layers:
            reasons[name] = f"outside the '{config.layers}' layer selection (a {group} layer)"
        elif inc is not None and not inc.search(name):
            reasons[name] = "does not match include regex"
        elif exc is not None and exc.search(name):
            reasons[name] = "matches exclude regex"
        else:
            reasons[name] = ""
    chosen = [n for n in names if not reasons[n]]
    if chosen and config.keep_first_dense:
        reasons[chosen[0]] = "first layer kept dense"
    if chosen and config.keep_last_dense and (len(chosen) > 1 or not config.keep_first_dense):
        reasons[chosen[-1]] = "last layer kept dense"
    return reasons


def layer_mask(weight: torch.Tensor, view: GroupedView, config: SparsifyConfig, scores: torch.Tensor) -> torch.Tensor:
    """One layer's mask (True = kept) from its scores: N:M along the grouped view, or unstructured
    within the layer at ``config.sparsity``."""
    if config.pattern == "nm":
        return view.from_matrix(nm_mask(view.matrix(weight), config.n, config.m, scores=view.matrix(scores)))
    return unstructured_mask(weight, float(config.sparsity), scores=scores)


def masked_copy(source: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """A deep copy of ``source`` (in eval mode) whose layers named in ``masks`` hold ``weight * mask``.

    The same values as copying the module and multiplying each weight by its mask in place, with each
    masked weight written once (``sparsify`` of a layer-local method: the copy of MiniLM's pruned
    weights and their product were two passes over 42 MB). Parameter sharing, ``requires_grad`` and
    memory layout follow ``copy.deepcopy``; a parametrized weight (computed, not a parameter) is
    multiplied in the copy afterwards, as before.

    Args:
        source: the module; not modified.
        masks: layer name -> bool mask of that layer's weight shape (True = kept).

    Returns:
        The pruned copy.
    """
    modules = dict(source.named_modules())
    memo: dict[int, object] = {}
    later = []
    with torch.no_grad():
        for name, mask in masks.items():
            param = modules[name]._parameters.get("weight")
            if param is None:
                later.append(name)
                continue
            data = param.detach()
            product = torch.empty_like(data, memory_format=torch.preserve_format)
            torch.mul(data, mask.to(device=data.device, dtype=data.dtype), out=product)
            memo[id(param)] = type(param)(product, param.requires_grad)
        copied = copy.deepcopy(source, memo)
        copied_modules = dict(copied.named_modules())
        for name in later:
            weight = layer_weight(copied_modules[name])
            weight.mul_(masks[name].to(weight.dtype))
    copied.eval()
    return copied


def layer_reasons(model: nn.Module | LoadedModel, config: SparsifyConfig) -> dict[str, str]:
    """Why each Linear/Conv layer would stay dense under ``config`` ('' = it is pruned).

    Args:
        model: an ``nn.Module`` or a ``LoadedModel``.
        config: the settings (selection, pattern, M).

    Returns:
        layer name -> reason, in module order.
    """
    source = module_of(model)
    layers = prunable_layers(source)
    reasons = _selection([n for n, _ in layers], config)
    tied = tied_layers(source, layers)
    for name, module in layers:
        reason = reasons[name] if config.pattern != "dense" else "dense config"
        if not reason and name in tied:
            reason = "weight tied to another layer (e.g. embeddings)"
        weight = layer_weight(module)
        if not reason and not weight.is_floating_point():
            reason = f"weight dtype {weight.dtype} is not floating point"
        if not reason and config.pattern == "nm":
            size, label = grouped_view(module, config.conv_grouping).group_axis
            if size % config.m:
                # Any allocation leaves such a layer dense, as uniform does; the allocation note says so.
                reason = f"{label} = {size} is not a multiple of M={config.m}"
        reasons[name] = reason
    return reasons


def sparsify(
    model: nn.Module | LoadedModel,
    config: SparsifyConfig,
    *,
    progress: ProgressArg = True,
    calibration: Calibration | None = None,
    sensitivity: DropCurves | None = None,
    resume: bool = True,
) -> SparsifyResult:
    """Prune a deep copy of ``model`` according to ``config``.

    Args:
        model: an ``nn.Module`` or a ``LoadedModel`` (its ``.module`` is used). Never modified.
        config: what to prune; validated first.
        progress: True (default): a ``tqdm.auto`` bar when the call takes over 2 s; False: silent; or a
            ``progress(fraction, message)`` callback (``sparsekit.progress``).
        calibration: inputs for ``wanda``, ``sparsegpt``, ``taylor`` and OWL allocation (a float tensor
            batch, or a dict with ``input_ids``/``attention_mask``); default: the LoadedModel's ``calibration``.
        sensitivity: a ``sparsekit.sensitivity.SensitivityScan`` of this model, for
            ``allocation="sensitivity"``.
        resume: Wanda and SparseGPT (True, the default): a run that goes on for more than
            ``sparsekit.pruned_layers.CHECKPOINT_AFTER_S`` keeps each finished layer on disk, so the
            same call, interrupted (Ctrl-C, Jupyter's stop button) and run again, takes those layers
            instead of computing them and gives the result of an uninterrupted run (``resumed_layers``
            names them). False: neither read nor write them.

    Returns:
        A ``SparsifyResult`` with the pruned copy, masks (True = kept) and a per-layer report.
        Layers that cannot take the pattern (e.g. input features not a multiple of M) stay dense
        and say why in ``skipped_reason``. With a non-uniform allocation, ``allocation`` holds each
        layer's sparsity and ``allocation_note`` the overall count.
    """
    with reporter(progress, "sparsify") as report:
        return _prune_copy(model, config, report, calibration, sensitivity, resume)


def _journal(source: nn.Module, config: SparsifyConfig, calibration: Calibration | None,
             alloc: Allocation | None) -> PrunedLayerStore:
    """Where a calibrated run of these inputs keeps its finished layers."""
    batch = calibration if isinstance(calibration, dict) else {"x": calibration} if calibration is not None else {}
    digest = tensor_digest(*(batch[k] for k in sorted(batch))) + ",".join(sorted(batch))
    levels = {} if alloc is None else {"levels": alloc.levels, "pruned": alloc.pruned, "sparsity": alloc.sparsity}
    return PrunedLayerStore(PrunedLayerStore.run_key(model_fingerprint(source), serial.to_json(config), digest,
                                                     levels))


def _prune_copy(model: nn.Module | LoadedModel, config: SparsifyConfig, progress: ProgressFn | None,
                calibration: Calibration | None, sensitivity: DropCurves | None,
                resume: bool = True) -> SparsifyResult:
    config.validate()
    method = get_method(config.method)
    alloc_on = config.allocation != "uniform" and config.pattern != "dense"
    if (method.needs_calibration or config.allocation == "owl") and config.pattern != "dense" and calibration is None:
        calibration = getattr(model, "calibration", None)
    if method.needs_calibration and config.pattern != "dense":
        check_calibration(calibration, config.method)
    if alloc_on and config.allocation == "sensitivity" and sensitivity is None:
        raise ValueError("allocation='sensitivity' needs a sensitivity scan of this model: pass "
                         "sensitivity=sparsekit.sensitivity.sensitivity_scan(loaded, ...)")
    source = getattr(model, "module", model)
    if not isinstance(source, nn.Module):
        raise TypeError(f"sparsify needs an nn.Module or a LoadedModel, got {type(model).__name__}")
    layers = prunable_layers(source)
    if not layers:
        raise ValueError("the model has no Linear or Conv layers to prune")
    selection = _selection([n for n, _ in layers], config)
    if config.pattern != "dense" and all(selection.values()):
        raise ValueError(
            f"the layer selection is empty: none of the {len(layers)} Linear/Conv layers matches "
            f"(layers={config.layers!r}, include={config.include!r}, exclude={config.exclude!r})"
        )
    reasons = layer_reasons(source, config)
    alloc_needed = alloc_on and any(not r for r in reasons.values())
    # A layer-local method on a uniform allocation needs no copy until its masks are known: the copy is
    # then made with each pruned weight written once as weight * mask (``masked_copy``), not copied
    # and multiplied in place. Wanda, SparseGPT, Taylor and OWL work on the copy, which is made first.
    direct = method.run is None and not alloc_needed
    pruned_model = source if direct else copy.deepcopy(source).eval()  # direct: replaced by masked_copy below
    new_modules = dict(pruned_model.named_modules())
    views = {name: grouped_view(module, config.conv_grouping) for name, module in layers}

    alloc: Allocation | None = None
    if alloc_needed:
        fingerprint = None
        if config.allocation == "sensitivity":
            fingerprint = model_fingerprint(source)
        # The copy is still dense here: OWL's calibration forward (hooked) runs on it.
        alloc = allocate(pruned_model, [(n, m) for n, m in layers if not reasons[n]], config, calibration,
                         sensitivity, fingerprint)
        for name, level in alloc.levels.items():
            if level == config.m:
                reasons[name] = f"kept dense by the allocation (level {level}:{level})"
        unfit = [f"{n} ({r})" for n, r in reasons.items() if f"not a multiple of M={config.m}" in r]
        if config.pattern == "nm" and unfit:
            alloc = replace(alloc, note=f"{alloc.note}; left dense, as M does not fit: {', '.join(unfit)}")

    def nm_of(name: str) -> tuple[int, int] | None:
        if config.pattern != "nm":
            return None
        return (alloc.levels[name], config.m) if alloc is not None and name in alloc.levels else (config.n, config.m)

    masks: dict[str, torch.Tensor] = {}
    report: list[LayerReport | None] = []
    todo: list[tuple[str, nn.Module]] = []
    for name, module in layers:
        if reasons[name]:
            report.append(build_layer_report(name, module, views[name], layer_weight(module).numel(), reasons[name],
                                             nm_of(name)))
        else:
            todo.append((name, module))
            report.append(None)  # filled below, keeps module order

    # Model-level methods (Wanda and SparseGPT prune the copy in place; Taylor returns scores) run
    # once on the copy; layer-local ones score each layer when it comes up.
    output = MethodOutput()
    journal: PrunedLayerStore | None = None
    if method.run is not None and todo:
        names = [n for n, _ in todo]
        if resume and method.keep_layer is not None:
            journal = _journal(source, config, calibration, alloc)
        if alloc is not None:
            output = run_allocated(method, pruned_model, names, config, calibration, progress, alloc, journal)
        elif method.keep_layer is not None:
            # Wanda, SparseGPT: their run is this call, with the journal that lets it go on
            check_calibration(calibration, config.method)
            assert calibration is not None
            output = sequential_prune(pruned_model, names, config, calibration, progress, method.keep_layer,
                                      method.stats, journal)
        else:
            output = method.run(pruned_model, names, config, calibration, progress)

    def scores_of(name: str, weight: torch.Tensor) -> torch.Tensor:
        if name in output.scores:
            return output.scores[name]
        if method.layer_scores is not None:
            return method.layer_scores(weight, name, config)
        return weight  # a calibrated method's fallback: magnitude (the note says why)

    global_keep = None
    if config.pattern == "unstructured" and config.scope == "global" and todo:
        flat = torch.cat([scores_of(n, layer_weight(m).detach()).reshape(-1) for n, m in todo])
        keep_count = flat.numel() - int(round(float(config.sparsity) * flat.numel()))
        global_keep = topk_keep(flat, keep_count)

    offset = 0
    slots = [i for i, r in enumerate(report) if r is None]
    with torch.no_grad():
        for step, ((name, module), slot) in enumerate(zip(todo, slots)):
            if progress is not None:
                progress(step / max(1, len(todo)), f"pruning {name}")
            weight = layer_weight(module).detach()
            if name in output.masks:
                mask = output.masks[name]
            elif global_keep is not None:
                mask = global_keep[offset : offset + weight.numel()].reshape(weight.shape)
                offset += weight.numel()
            else:
                layer_config = alloc.layer_config(config, name) if alloc is not None else config
                mask = layer_mask(weight, views[name], layer_config, scores_of(name, weight))
            if not direct:
                layer_weight(new_modules[name]).mul_(mask.to(weight.dtype))
            masks[name] = mask
            # count_nonzero: the same count as a bool sum, several times faster (36 MiniLM masks: ~25 ms less)
            report[slot] = build_layer_report(name, module, views[name], int(mask.count_nonzero()), "", nm_of(name))
    if direct:
        pruned_model = masked_copy(source, masks)
    if progress is not None:
        progress(1.0, "done")
    filled = [r for r in report if r is not None]
    assert len(filled) == len(report)  # every pruned layer's slot was filled above
    resumed = list(journal.taken) if journal is not None else []
    if journal is not None:
        journal.clear()  # finished: an interrupted run's layers are no longer needed
    return SparsifyResult(
        model=pruned_model,
        masks=masks,
        report=filled,
        config=config,
        weight_names={name: f"{name}.weight" for name in masks},
        notes=dict(output.notes),
        calibration_order=output.order,
        calibration_note=output.order_note,
        views=views,
        allocation=dict(alloc.sparsity) if alloc is not None else {},
        allocation_note=alloc.note if alloc is not None else "",
        resumed_layers=resumed,
    )


__all__ = [
    "ALLOCATIONS", "CALIBRATED_METHODS", "CALIBRATION_ORDERS", "CONV_GROUPINGS", "LAYER_SETS", "LayerReport", "MAX_M",
    "MAX_SPARSITY", "METHODS", "PATTERNS", "SCOPES", "SparsifyConfig", "SparsifyResult", "format_bytes", "is_2_4",
    "layer_group", "layer_mask", "layer_reasons", "layer_table", "masked_copy", "params_by_type", "prunable_layers",
    "report_csv", "semi_structured_check", "sparsify",
]

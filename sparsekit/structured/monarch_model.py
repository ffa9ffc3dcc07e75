"""Replace a model's Linear layers by their Monarch projections: ``monarchize`` (a copy; the shared
model is never touched), its config and its per-layer report.

The layer selection is ``sparsify``'s (the same ``layers`` groups, include/exclude regexes and
first/last-dense switches, read through ``sparsekit.sparsify.layer_reasons``), so a Monarch model and
a masked one can be compared on exactly the same layers. GPT-2's ``Conv1D`` (a Linear stored
``[in, out]``) is projected as the Linear it is; convolutions, tied weights (a language model's output
layer shared with its embeddings) and layers the block count does not fit stay dense and say why.
Counts are of weight entries: a bias stays as it was and is left out of both sides.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import LAYER_SETS, SparsifyConfig
from ..display import Card, Shown, fmt, percent
from ..layers import (
    grouped_view,
    in_features,
    is_conv1d_transposed,
    layer_type,
    layer_weight,
    out_features,
    prunable_layers,
)
from ..models.base import LoadedModel, module_of
from ..progress import ProgressArg, reporter
from ..serial import JsonConfig
from ..sparsify import layer_reasons
from .folder import write_folder
from .monarch import MonarchLinear, monarch_blocks_for_budget

LAYOUT = ("M = P L Pᵀ R; right[k, j, i] = R_k[j, i], left[j, l, k] = L_j[l, k]; "
          "M[l·b + j, k·p + i] = L_j[l, k]·R_k[j, i]")
"""The factor layout and permutations of ``MonarchLinear`` (written to a saved folder, checked when loading)."""

MAX_BLOCKS = 4096
"""Largest block count a config accepts."""


@dataclass(frozen=True)
class MonarchConfig(JsonConfig):
    """Which layers become Monarch matrices, with how many blocks. Serialises to JSON."""

    blocks: int = 4
    """The block count ``b`` of every selected layer (its sizes must be multiples of ``b``); 0: each
    layer's own count from ``budget``."""
    budget: float = 0.0
    """With ``blocks = 0``: the fraction of each layer's weight parameters it may keep, in (0, 1]; the
    layer gets the largest block count within it (``monarch_blocks_for_budget``)."""
    layers: str = "all"
    """``all`` Linear layers, only ``mlp`` (feed-forward) layers, or only ``attention`` projections
    (``sparsekit.layers.layer_group``)."""
    include: str = ""
    """Regular expression; when set, only layers whose name matches it are projected."""
    exclude: str = ""
    """Regular expression; layers whose name matches it stay dense."""
    keep_first_dense: bool = False
    """Leave the first selected layer dense."""
    keep_last_dense: bool = False
    """Leave the last selected layer dense (e.g. a classifier head)."""

    def validate(self) -> None:
        """Raise ``ValueError`` with a clear message for any setting out of bounds."""
        b, budget = self.blocks, self.budget
        if isinstance(b, bool) or not isinstance(b, int) or not 0 <= b <= MAX_BLOCKS:
            raise ValueError(f"blocks must be an integer from 1 to {MAX_BLOCKS} (0: from the budget), got {b!r}")
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 <= budget <= 1:
            raise ValueError(f"budget must be a fraction of the dense parameters in (0, 1] (0: use blocks), got "
                             f"{budget!r}")
        if b == 0 and budget == 0:
            raise ValueError("set blocks (>= 1) or, with blocks=0, a budget in (0, 1]: a budget of 0 leaves no "
                             "parameters")
        if b and budget:
            raise ValueError(f"set either blocks or budget, not both (got blocks={b}, budget={budget})")
        if self.layers not in LAYER_SETS:
            raise ValueError(f"layers must be one of {LAYER_SETS}, got {self.layers!r}")
        self.selection().validate()  # the regexes

    def selection(self) -> SparsifyConfig:
        """The ``SparsifyConfig`` that selects the same layers (for ``layer_reasons`` and comparisons)."""
        return SparsifyConfig(pattern="unstructured", layers=self.layers, include=self.include,
                              exclude=self.exclude, keep_first_dense=self.keep_first_dense,
                              keep_last_dense=self.keep_last_dense)

    def label(self) -> str:
        """``Monarch, 4 blocks`` or ``Monarch, budget 25%``."""
        head = f"Monarch, {self.blocks} blocks" if self.blocks else f"Monarch, budget {self.budget:.0%}"
        return head if self.layers == "all" else f"{head} ({self.layers} layers)"


@dataclass(frozen=True)
class MonarchLayer:
    """One Linear/Conv layer of a ``monarchize`` call."""

    name: str
    kind: str
    """``layer_type``: ``Linear``, GPT-2's transposed ``Conv1D``, a conv."""
    shape: tuple[int, int]
    """``(out, in)`` of the weight as a matrix (convolutions: ``(out, in·kh·kw)``)."""
    blocks: int
    """The block count of its Monarch projection; 0 when it stayed dense."""
    params_before: int
    """Weight entries of the dense layer."""
    params_after: int
    """Weight entries after: ``blocks·(in + out)``, or ``params_before`` when it stayed dense."""
    bytes_before: int
    bytes_after: int
    """Weight bytes in the layer's dtype before and after (Monarch: the two factors)."""
    rel_error: float | None
    """``‖W − M‖_F / ‖W‖_F`` of the projection (None when it stayed dense)."""
    reason: str = ""
    """Why it stayed dense ('' when projected)."""

    @property
    def projected(self) -> bool:
        return self.blocks > 0

    @property
    def kept_fraction(self) -> float:
        return self.params_after / self.params_before if self.params_before else 1.0


@dataclass(repr=False)
class MonarchResult(Shown):
    """The copy with Monarch layers, its config and one ``MonarchLayer`` per Linear/Conv layer."""

    model: nn.Module
    config: MonarchConfig
    layers: list[MonarchLayer] = field(default_factory=list)
    model_params_before: int = 0
    model_params_after: int = 0
    """All parameters of the model (embeddings, norms and biases too; shared ones once)."""
    model_bytes_before: int = 0
    model_bytes_after: int = 0
    base_spec: str = ""
    """The spec of the dense model ('' when projected from a bare module)."""
    base_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Every parameter's shape in the dense model (shared ones once), for ``save``."""

    def save(self, folder: str | Path) -> Path:
        """Write the model to ``folder``: ``model.safetensors`` (the Monarch factors and every other weight) and
        ``structure.json`` (the base model's spec and shapes, the config, each layer's shape and block count, the
        factor layout and permutations). Nothing is pickled; reload it with
        ``sparsekit.structured.load_structured(folder, base=loaded)``.

        Returns:
            The folder's path.
        """
        modules = dict(self.model.named_modules())
        description: dict[str, Any] = {
            "config": json.loads(self.config.to_json()), "layout": LAYOUT,
            "layers": [dict(dataclasses.asdict(r), shape=list(r.shape),
                            bias=r.projected and getattr(modules.get(r.name), "bias", None) is not None)
                       for r in self.layers],
            "model_params": [self.model_params_before, self.model_params_after],
            "model_bytes": [self.model_bytes_before, self.model_bytes_after],
        }
        base = {"spec": self.base_spec, "class": type(self.model).__name__,
                "shapes": {n: list(s) for n, s in self.base_shapes.items()}}
        return write_folder(folder, "monarch", self.model, base, description)

    def summary(self) -> dict[str, float | int]:
        """Totals: ``layers_projected``, ``layers_total``; weight entries of the projected layers before and
        after (``projected_params_before``/``_after``) and their ratio ``kept_fraction_projected``;
        ``kept_fraction_all_layers`` over every Linear/Conv weight (as ``SparsifyResult.summary``
        counts it); ``kept_fraction_model`` over all parameters; ``max_rel_error``; weight bytes
        of the projected layers (``projected_bytes_before``/``_after``)."""
        done = [r for r in self.layers if r.projected]
        before = sum(r.params_before for r in done)
        after = sum(r.params_after for r in done)
        total = sum(r.params_before for r in self.layers)
        kept = sum(r.params_after for r in self.layers)
        return {
            "layers_projected": len(done),
            "layers_total": len(self.layers),
            "projected_params_before": before,
            "projected_params_after": after,
            "kept_fraction_projected": after / before if before else 1.0,
            "kept_fraction_all_layers": kept / total if total else 1.0,
            "kept_fraction_model": (self.model_params_after / self.model_params_before
                                    if self.model_params_before else 1.0),
            "max_rel_error": max((float(r.rel_error or 0.0) for r in done), default=0.0),
            "projected_bytes_before": sum(r.bytes_before for r in done),
            "projected_bytes_after": sum(r.bytes_after for r in done),
        }

    def summary_card(self) -> Card:
        """Kept parameters and the largest projection error, one row per layer (Jupyter shows it as HTML)."""
        s = self.summary()
        head = {"layers projected": f"{s['layers_projected']} / {s['layers_total']}",
                "kept in projected layers": percent(float(s["kept_fraction_projected"])),
                "kept in all Linear/Conv": percent(float(s["kept_fraction_all_layers"])),
                "model parameters": f"{self.model_params_after:,} of {self.model_params_before:,}",
                "largest relative error": fmt(float(s["max_rel_error"]), 3)}
        rows = [{"layer": r.name, "shape": r.shape, "blocks": r.blocks or None, "dense params": r.params_before,
                 "Monarch params": r.params_after if r.projected else None, "kept": percent(r.kept_fraction),
                 "relative error": r.rel_error, "why dense": r.reason} for r in self.layers]
        note = "relative error: ‖W − M‖_F / ‖W‖_F of the projection, before any fine-tuning"
        return Card(f"MonarchResult: {self.config.label()}", head, rows, note)


def _unique_params(module: nn.Module) -> tuple[int, int]:
    params = list(module.parameters())  # shared parameters once
    return sum(p.numel() for p in params), sum(p.numel() * p.element_size() for p in params)


def _plan(module: nn.Module, reason: str, config: MonarchConfig) -> tuple[int, str]:
    """The block count of one layer, or 0 and why it stays dense."""
    if reason:
        return 0, reason
    if not (isinstance(module, nn.Linear) or is_conv1d_transposed(module)):
        return 0, f"a {type(module).__name__}: Monarch projection replaces Linear layers only"
    n_out, n_in = out_features(module), in_features(module)
    dense = n_out * n_in
    if config.blocks:
        b = config.blocks
        bad = [f"{label} = {size} is not a multiple of blocks={b}"
               for label, size in (("out_features", n_out), ("in_features", n_in)) if size % b]
        if bad:
            return 0, " and ".join(bad)
    else:
        try:
            b = monarch_blocks_for_budget(n_out, n_in, float(config.budget))
        except ValueError:
            return 0, (f"budget {config.budget:.4g} is below the smallest Monarch matrix of this shape "
                       f"(1 block: {(n_in + n_out) / dense:.4g} of the parameters)")
    if b * (n_in + n_out) >= dense:
        return 0, f"{b} blocks keep {b * (n_in + n_out):,} parameters, not fewer than the dense {dense:,}"
    return b, ""


def monarchize(model: nn.Module | LoadedModel, config: MonarchConfig, *, progress: ProgressArg = True) -> MonarchResult:
    """A copy of ``model`` whose selected Linear layers are ``MonarchLinear`` projections of their weights.

    Args:
        model: an ``nn.Module`` or a ``LoadedModel`` (its ``.module``). Never modified.
        config: the block count (or per-layer budget) and the layer selection; validated first.
        progress: True (default): a ``tqdm.auto`` bar when the call takes over 2 s; False: silent; or a
            ``progress(fraction, message)`` callback.

    Returns:
        A ``MonarchResult``: the copy (eval mode; measure it with ``loaded.quality(result.model)``),
        one ``MonarchLayer`` per Linear/Conv layer and the parameter totals.

    Raises:
        ValueError: a config out of bounds, a model without Linear layers, or no selected layer that
            the block count fits (the message names the layers and why).
    """
    config.validate()
    source = module_of(model)
    candidates = prunable_layers(source)
    if not candidates:
        raise ValueError("the model has no Linear layers to project onto Monarch matrices")
    reasons = layer_reasons(source, config.selection())
    plans = {name: _plan(module, reasons[name], config) for name, module in candidates}
    if not any(b for b, _ in plans.values()):
        listed = "; ".join(f"{name}: {why}" for name, (_, why) in list(plans.items())[:6])
        more = f" (and {len(plans) - 6} more)" if len(plans) > 6 else ""
        raise ValueError(f"no layer can be projected with {config.label()}: {listed}{more}")
    params_before, bytes_before = _unique_params(source)
    with reporter(progress, "monarchize") as report:
        copied = copy.deepcopy(source)
        modules = dict(copied.named_modules())
        rows = []
        for step, (name, original) in enumerate(candidates):
            if report is not None:
                report(step / len(candidates), f"projecting {name}")
            b, why = plans[name]
            weight = layer_weight(original).detach()
            matrix = grouped_view(original).matrix(weight)
            n_out, n_in = (int(s) for s in matrix.shape)
            size = weight.numel() * weight.element_size()
            if not b:
                rows.append(MonarchLayer(name, layer_type(original), (n_out, n_in), 0, weight.numel(),
                                         weight.numel(), size, size, None, why))
                continue
            bias = getattr(original, "bias", None)
            layer = MonarchLinear.from_weight(matrix, b, bias if isinstance(bias, torch.Tensor) else None)
            with torch.no_grad():
                reference = matrix.to(torch.float64)
                norm = float(torch.linalg.matrix_norm(reference))
                gap = float(torch.linalg.matrix_norm(layer.to_dense().to(torch.float64) - reference))
            parent_name, _, child = name.rpartition(".")
            if name:
                setattr(modules[parent_name] if parent_name else copied, child, layer)
            else:  # the model is the layer itself
                copied = layer
            after = layer.left.numel() + layer.right.numel()
            rows.append(MonarchLayer(name, layer_type(original), (n_out, n_in), b, weight.numel(), after, size,
                                     after * weight.element_size(), gap / norm if norm else 0.0))
        if report is not None:
            report(1.0, "done")
    copied.eval()
    params_after, bytes_after = _unique_params(copied)
    return MonarchResult(copied, config, rows, params_before, params_after, bytes_before, bytes_after,
                         model.spec if isinstance(model, LoadedModel) else "",
                         {n: tuple(p.shape) for n, p in source.named_parameters()})


__all__ = ["LAYOUT", "MAX_BLOCKS", "MonarchConfig", "MonarchLayer", "MonarchResult", "monarchize"]

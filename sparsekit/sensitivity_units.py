"""The pieces of one sensitivity-scan unit: pruning its layers alone, the reconstruction-error proxy,
and the per-unit store that lets a stopped scan go on.

Each finished unit (one row of the scan's table) is written to the disk cache as soon as it is done,
under the scan's key and the unit's index and label. A scan that is stopped (``stop``, Ctrl-C, Streamlit's
Stop, a killed process) is continued by the same call, which reads the stored rows back and computes
only the missing ones.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from .cache import get_cache, make_key, read_entry
from .config import SparsifyConfig
from .layers import grouped_view, layer_weight
from .methods import get_method
from .methods.calibration import InputStats, LayerInputs, capture_input_stats
from .methods.types import Calibration
from .sparsify import layer_mask

UNIT_VERSION = 1
"""Bump when a stored unit's contents or meaning change."""


@dataclass(frozen=True)
class UnitRow:
    """One finished unit of a scan: its cells per setting, its notes and the seconds it took."""

    label: str
    quality: tuple[float | None, ...]
    drop: tuple[float | None, ...]
    proxy: tuple[float | None, ...]
    notes: tuple[str, ...] = ()
    seconds: float = 0.0

    def to_json(self) -> str:
        return json.dumps({"label": self.label, "quality": self.quality, "drop": self.drop, "proxy": self.proxy,
                           "notes": self.notes, "seconds": self.seconds})

    @classmethod
    def from_json(cls, text: Any) -> "UnitRow":
        data = json.loads(text)
        return cls(label=str(data["label"]), quality=tuple(data["quality"]), drop=tuple(data["drop"]),
                   proxy=tuple(data["proxy"]), notes=tuple(data["notes"]), seconds=float(data["seconds"]))


def unit_key(scan_key: str, index: int, label: str) -> str:
    """Where unit ``index`` (labelled ``label``) of the scan keyed ``scan_key`` is stored."""
    return make_key("sensitivity-unit", UNIT_VERSION, scan_key, index, label)


def load_units(scan_key: str, labels: Sequence[str], width: int) -> dict[int, UnitRow]:
    """The stored rows of a scan's units (index -> row); rows of another shape read as missing."""
    out = {}
    for i, label in enumerate(labels):
        row = read_entry(unit_key(scan_key, i, label), UnitRow.from_json)
        if row is not None and row.label == label and len(row.quality) == len(row.drop) == len(row.proxy) == width:
            out[i] = row
    return out


def save_unit(scan_key: str, index: int, row: UnitRow) -> None:
    """Store one finished unit (at once: a stop or a crash after this keeps it)."""
    get_cache()[unit_key(scan_key, index, row.label)] = row.to_json()


def exact_regex(names: Sequence[str]) -> str:
    """An ``include`` regex matching exactly ``names``."""
    prefix = os.path.commonprefix(list(names))
    body = "|".join(re.escape(n[len(prefix):]) for n in names)
    regex = f"^{re.escape(prefix)}(?:{body})$"
    if len(regex) > 500:
        raise ValueError(f"a group of {len(names)} layers is too large for one include regex; use grouping='layer'")
    return regex


def _stats_for(gram: InputStats, view: LayerInputs, kind: str) -> InputStats:
    """A layer's input statistics in the column order of ``view`` from its kernel-order Gram matrix."""
    G = gram.accumulated()
    if view.channel_grouping:
        shape = view.view.shape
        perm = view.matrix(torch.arange(math.prod(shape)).reshape(shape))[0]
        G = G[perm][:, perm]
    stats = InputStats(kind)
    stats.samples, stats.total = gram.samples, (G if kind == "hessian" else G.diagonal().clone())
    return stats


def prune_alone(module: nn.Module, name: str, cfg: SparsifyConfig, gram: InputStats | None,
                model_scores: dict[str, torch.Tensor]) -> torch.Tensor:
    """The weight ``cfg``'s method gives this layer when it alone is pruned in the dense model."""
    W = layer_weight(module).detach()
    method = get_method(cfg.method)
    if method.keep_layer is not None and gram is not None and gram.total is not None:
        view = LayerInputs(name, module, cfg.conv_grouping == "channel" and cfg.pattern == "nm")
        mask, new = method.keep_layer(view, W, cfg, _stats_for(gram, view, method.stats), {})
        return (new.to(W.dtype) if new is not None else W) * mask
    scores = method.layer_scores(W, name, cfg) if method.layer_scores is not None else model_scores.get(name, W)
    return W * layer_mask(W, grouped_view(module, cfg.conv_grouping), cfg, scores)


def proxy_error(modules: dict[str, nn.Module], names: Sequence[str], pruned: dict[str, torch.Tensor],
                grams: dict[str, InputStats]) -> float | None:
    """``sum ||W x - W' x||^2 / sum ||W x||^2`` over ``names`` from their input Gram matrices (None without)."""
    num = den = 0.0
    for n in names:
        gram = grams.get(n)
        if gram is None or gram.total is None:
            return None
        view = LayerInputs(n, modules[n], False)
        W = view.matrix(layer_weight(modules[n]).detach()).double()
        D = W - view.matrix(pruned[n]).double()
        num += float(((D @ gram.total) * D).sum())
        den += float(((W @ gram.total) * W).sum())
    return num / den if den > 0 else None


def input_grams(work: nn.Module, names: Sequence[str], calibration: Calibration | None) -> dict[str, InputStats]:
    """The input Gram matrices of ``names`` on the calibration data (layers without a proxy left out)."""
    modules = dict(work.named_modules())
    ok = []
    for n in names:
        try:
            LayerInputs(n, modules[n], False)
            ok.append(n)
        except ValueError:  # Conv3d, grouped conv: no proxy for them
            pass
    return capture_input_stats(work, ok, calibration, "hessian") if ok and calibration is not None else {}

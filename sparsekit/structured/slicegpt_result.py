"""What ``slice_model`` returns: the sliced model, each weight's shape before and after, exact parameter counts,
and how much of each stream position's second moment the kept directions hold."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..display import Card, Shown, fmt, percent
from .folder import write_folder
from .slicegpt_ops import SlicedRMSNorm

__all__ = ["LayerShape", "SliceResult", "shape_rows"]


@dataclass(frozen=True)
class LayerShape:
    """One weight (or shortcut matrix) of the model, as stored (GPT-2's Conv1D as ``[in, out]``)."""

    name: str
    """Parameter name (``transformer.h.0.attn.c_attn.weight``, ``transformer.h.0.attn_shortcut``)."""
    before: tuple[int, ...] | None
    """Shape in the dense model (None: a shortcut matrix, which only the sliced model has)."""
    after: tuple[int, ...] | None
    """Shape in the sliced model (None: gone, e.g. a norm's scale folded into the next layer)."""

    @property
    def params_before(self) -> int:
        return _numel(self.before)

    @property
    def params_after(self) -> int:
        return _numel(self.after)


def _numel(shape: tuple[int, ...] | None) -> int:
    n = 1
    for s in shape or (0,):
        n *= s
    return n


def shape_rows(before: nn.Module, after: nn.Module) -> list[LayerShape]:
    """Every parameter of either model with its shape in each (tied parameters once, under their first name); the
    sliced model's order, then what only the dense model has."""
    def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
        return {n: tuple(p.shape) for n, p in model.named_parameters()}

    old, new = shapes(before), shapes(after)
    rows = [LayerShape(n, old.get(n), s) for n, s in new.items()]
    rows += [LayerShape(n, s, None) for n, s in old.items() if n not in new]
    return rows


@dataclass(repr=False)
class SliceResult(Shown):
    """A SliceGPT-sliced copy of a model (``sparsekit.structured.slice_model``)."""

    module: nn.Module = field(repr=False)
    """The sliced model: a smaller dense model that runs through the same transformers code."""
    fraction: float
    """Share of the residual width deleted."""
    width: int
    """Residual width ``D`` of the dense model."""
    kept_width: int
    """Residual width ``d`` after slicing."""
    slice_head: bool
    """Whether the last block's output and the head were sliced too."""
    architecture: str
    """``gpt2``, ``llama`` or ``vit`` (the digits ViT)."""
    layers: list[LayerShape]
    """Every parameter's shape before and after."""
    params_before: int
    """Parameters of the dense model (tied ones once)."""
    params_after: int
    """Parameters of the sliced model, shortcut matrices included."""
    variance_kept: list[tuple[str, float]]
    """Stream position -> share of ``Σ xᵀx`` (its trace) that the kept directions hold, on the calibration tokens."""
    calibration_tokens: int
    """Calibration tokens the rotations were computed on (the ViT: images × 17 tokens)."""
    base_spec: str = ""
    """The spec of the dense model (``lm:small``, ``digits:vit``; '' when sliced from a bare module)."""

    @property
    def model(self) -> nn.Module:
        """The sliced model (the same object as ``module``), named as in ``SparsifyResult`` and ``MonarchResult``."""
        return self.module

    @property
    def kept_fraction(self) -> float:
        """``params_after / params_before`` (above 1 where untying the head and the shortcut matrices add more than
        slicing removes)."""
        return self.params_after / self.params_before

    def summary_card(self) -> Card:
        """Widths, parameter counts and one row per weight (Jupyter shows it as HTML)."""
        shares = [s for _, s in self.variance_kept]
        head = {"residual width": f"{self.width} → {self.kept_width}",
                "parameters": f"{fmt(self.params_before)} → {fmt(self.params_after)}",
                "kept": percent(self.kept_fraction),
                "second moment kept (lowest position)": percent(min(shares)) if shares else "—"}
        rows = [{"parameter": r.name, "before": r.before, "after": r.after} for r in self.layers]
        note = (f"{self.architecture}; rotations from {self.calibration_tokens:,} calibration tokens; "
                + ("head sliced" if self.slice_head else "last block output and head rotated, not sliced"))
        return Card(f"SliceResult: slice {percent(self.fraction)} ({self.architecture})", head, rows, note)

    def save(self, folder: str | Path) -> Path:
        """Write the sliced model to ``folder``: ``model.safetensors`` (its weights, shortcut matrices included) and
        ``structure.json`` (the base model's spec and shapes, every weight's shape before and after, the norms'
        widths, the shortcut matrices' names, the slicing settings). Nothing is pickled; reload it with
        ``sparsekit.structured.load_structured(folder, base=loaded)``.

        Returns:
            The folder's path.
        """
        description: dict[str, Any] = {
            "fraction": self.fraction, "width": self.width, "kept_width": self.kept_width,
            "slice_head": self.slice_head, "architecture": self.architecture,
            "layers": [[r.name, list(r.before) if r.before else None, list(r.after) if r.after else None]
                       for r in self.layers],
            "params_before": self.params_before, "params_after": self.params_after,
            "variance_kept": [[w, s] for w, s in self.variance_kept], "calibration_tokens": self.calibration_tokens,
            "norms": {n: [m.width, m.full_width, m.eps] for n, m in self.module.named_modules()
                      if isinstance(m, SlicedRMSNorm)},
            "shortcuts": [n for n, _ in self.module.named_parameters()
                          if n.endswith(("attn_shortcut", "mlp_shortcut"))],
        }
        base = {"spec": self.base_spec, "class": type(self.module).__name__,
                "shapes": {r.name: list(r.before) for r in self.layers if r.before is not None}}
        return write_folder(folder, "slicegpt", self.module, base, description)

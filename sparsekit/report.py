"""The per-layer report of a sparsified model: what was done to each layer, what its weight costs in
each storage format, and whether it qualifies for PyTorch's 2:4 kernels; plus model-level layer tables."""
from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, TypedDict

import torch
from torch import nn

from .layers import GroupedView, layer_group, layer_type, layer_weight, prunable_layers
from .models.base import LoadedModel, module_of


@dataclass
class LayerReport:
    """One prunable layer: what was done to it and what its weight costs in each format."""

    name: str
    layer_type: str
    group: str
    shape: tuple[int, ...]
    numel: int
    kept: int
    skipped_reason: str = ""
    semi_structured: str = ""
    dense_bytes: int = 0
    bitmask_bytes: int = 0
    csr_bytes: int = 0
    nm_bytes: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.kept <= self.numel:
            raise ValueError(f"{self.name}: kept must be between 0 and numel ({self.numel}), got {self.kept}")
        for key in ("dense_bytes", "bitmask_bytes", "csr_bytes", "nm_bytes"):
            value = getattr(self, key)
            if value is not None and value < 0:
                raise ValueError(f"{self.name}: {key} must be >= 0, got {value}")

    @property
    def kept_fraction(self) -> float:
        return self.kept / self.numel if self.numel else 1.0

    @property
    def pruned(self) -> bool:
        return not self.skipped_reason

    def as_row(self) -> dict[str, Any]:
        """A flat dict for tables and CSV (sizes in bytes)."""
        row = asdict(self)
        row["shape"] = "×".join(map(str, self.shape))
        row["kept_fraction"] = self.kept_fraction
        return row


class FormatBytes(TypedDict):
    """Weight memory of one layer per storage format, in bytes (``format_bytes``)."""

    dense_bytes: int
    bitmask_bytes: int
    csr_bytes: int
    nm_bytes: int | None
    """None unless the layer has an N:M pattern."""


class HasReport(Protocol):
    """What ``report_csv`` reads: a ``sparsify.SparsifyResult`` (which imports this module)."""

    @property
    def report(self) -> Sequence[LayerReport]: ...


def is_2_4(weight: torch.Tensor) -> bool:
    """Whether a 2-D weight has at most 2 non-zeros in every group of 4 consecutive inputs (what
    the 2:4 compressors assume: they silently drop any extra non-zero)."""
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    return bool(((weight.detach() != 0).reshape(weight.shape[0], -1, 4).sum(-1) <= 2).all())


def semi_structured_check(shape: tuple[int, ...], pattern: tuple[int, int] | None,
                          dtype: torch.dtype = torch.float16) -> str:
    """Whether a weight would run on PyTorch's 2:4 semi-structured kernels.

    The rules are read from ``torch.sparse``'s backend classes: a 2-D weight, a 2:4 pattern, a dtype
    the backend takes, and both dimensions at least and a multiple of the backend's minimum.

    Returns:
        ``"ok (...)"`` naming the backends that accept it, or the failing rules joined by ``"; "``.
    """
    from torch.sparse import semi_structured as ss

    failures = []
    if pattern != (2, 4):
        failures.append("needs a 2:4 pattern" + (f" (got {pattern[0]}:{pattern[1]})" if pattern else ""))
    if len(shape) != 2:
        failures.append(f"weight is {len(shape)}-D; only 2-D (Linear) weights")
    backends = {
        "cuSPARSELt": ss.SparseSemiStructuredTensorCUSPARSELT._DTYPE_SHAPE_CONSTRAINTS,
        "CUTLASS": ss.SparseSemiStructuredTensorCUTLASS._DTYPE_SHAPE_CONSTRAINTS,
    }
    accepted, shape_failures = [], []
    for backend, constraints in backends.items():
        rule = constraints.get(dtype)
        if rule is None:
            shape_failures.append(f"{backend} does not take {dtype}")
            continue
        if len(shape) == 2:
            rows, cols = shape
            min_rows, min_cols = rule.sparse_min_rows, rule.sparse_min_cols
            if rows < min_rows or rows % min_rows or cols < min_cols or cols % min_cols:
                shape_failures.append(
                    f"{backend} needs rows a multiple of {rule.sparse_min_rows} and columns of {rule.sparse_min_cols}"
                )
                continue
        accepted.append(backend)
    if len(shape) == 2 and not accepted:
        failures.extend(shape_failures)
    if failures:
        return "; ".join(failures)
    return f"ok ({', '.join(accepted)}; as {str(dtype).replace('torch.', '')} on CUDA)"


def format_bytes(shape: tuple[int, ...], kept: int, element_size: int, nm: tuple[int, int] | None) -> FormatBytes:
    """Weight memory in bytes: dense; bitmask (kept values + 1 bit per entry); CSR as torch stores
    it (kept values + int64 column index each + int64 row pointers); N:M compressed (kept values +
    ceil(log2 M) index bits per kept value, which is PyTorch's 2-bit metadata for 2:4)."""
    numel = math.prod(shape)
    rows = shape[0] if len(shape) >= 1 else 1
    out: FormatBytes = {
        "dense_bytes": numel * element_size,
        "bitmask_bytes": kept * element_size + math.ceil(numel / 8),
        "csr_bytes": kept * (element_size + 8) + (rows + 1) * 8,
        "nm_bytes": None,
    }
    if nm is not None:
        n, m = nm
        kept_nm = numel * n // m
        out["nm_bytes"] = kept_nm * element_size + math.ceil(kept_nm * max(1, (m - 1).bit_length()) / 8)
    return out


def build_layer_report(name: str, module: nn.Module, view: GroupedView, kept: int, reason: str,
                       nm: tuple[int, int] | None) -> LayerReport:
    """One layer's ``LayerReport``.

    Args:
        name: the layer's qualified name.
        module: the layer (its type and weight dtype are read).
        view: its ``GroupedView``.
        kept: weights kept.
        reason: why it stayed dense ('' when pruned).
        nm: ``(n, m)`` of an N:M pattern, or None.

    Returns:
        The report row, with memory per format and the 2:4 kernel check.
    """
    shape = view.shape
    # A conv weight stays N-D here: the 2:4 kernels take 2-D (Linear) weights only, and the check says so.
    matrix_shape = view.matrix_shape if view.transposed else shape
    element_size = layer_weight(module).element_size()
    sizes = format_bytes(matrix_shape, kept, element_size, nm if not reason else None)
    return LayerReport(
        name=name,
        layer_type=layer_type(module),
        group=layer_group(name),
        shape=shape,
        numel=math.prod(shape),
        kept=kept,
        skipped_reason=reason,
        semi_structured=semi_structured_check(matrix_shape, nm if not reason else None),
        **sizes,
    )


def report_csv(result: HasReport) -> str:
    """The per-layer report of a ``SparsifyResult`` as CSV text (sizes in bytes; kept_fraction in [0, 1])."""
    rows = [r.as_row() for r in result.report]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0].keys()) if rows else ["name"])
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def layer_table(model: nn.Module | LoadedModel) -> list[dict[str, str | int]]:
    """Every prunable layer: name, type, group (attention/mlp/other), weight shape, parameter count."""
    rows: list[dict[str, str | int]] = []
    for name, module in prunable_layers(module_of(model)):
        weight = layer_weight(module)
        shape = tuple(weight.shape)
        rows.append({
            "name": name,
            "type": layer_type(module),
            "group": layer_group(name),
            "weight_shape": "×".join(map(str, shape)),
            "params": sum(p.numel() for p in module.parameters(recurse=False)),
            "dtype": str(weight.dtype).replace("torch.", ""),
        })
    return rows


_OWN_PARAMS = {"cls_token": "tokens & position embedding", "pos_embed": "tokens & position embedding"}


def params_by_type(model: nn.Module | LoadedModel) -> dict[str, int]:
    """Parameter counts by the type of the module that owns them (shared tensors counted once);
    those the model holds itself (a ViT's class token and position embedding) are named by what
    they are, not by the model's class."""
    counts: dict[str, int] = {}
    seen: set[int] = set()
    root = module_of(model)
    for module in root.modules():
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            key = type(module).__name__ if module is not root else _OWN_PARAMS.get(pname, "other (model-level)")
            counts[key] = counts.get(key, 0) + p.numel()
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

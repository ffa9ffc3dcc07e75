"""What to prune and how: ``SparsifyConfig`` and the constants that bound it.

This module sits below everything that reads a config (methods, allocation, sparsify, compare,
sensitivity, studies), so each of them can take a ``SparsifyConfig`` by its type. It asks the
method registry (``sparsekit.methods.base``) about the chosen method and nothing else.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields

from .layers import CONV_GROUPINGS
from .methods.base import get_method

PATTERNS = ("dense", "nm", "unstructured")
SCOPES = ("layer", "global")
LAYER_SETS = ("all", "mlp", "attention")
CALIBRATION_ORDERS = ("block", "layer")
"""Wanda/SparseGPT: ``block`` collects all inputs of a transformer block's layers from one forward
of that block (earlier blocks pruned), as the papers' code does; ``layer`` prunes each layer on
inputs through every already-pruned layer before it, within its block too."""
MAX_M = 32
MAX_SPARSITY = 0.99
ALLOCATIONS = ("uniform", "owl", "sensitivity")
"""``uniform`` (every layer at the target), ``owl`` (outlier-weighed, Yin et al. 2023) or
``sensitivity`` (from a ``sparsekit.sensitivity`` scan)."""
MAX_OWL_M = 100.0
"""Largest OWL outlier threshold (a multiple of a layer's mean ``|W|·‖X‖``)."""
MAX_OWL_LAMBDA = 0.5
"""Largest OWL lambda (half the span of the layer sparsities)."""
OWL_UNITS = ("block", "layer")
"""What OWL scores as one unit: ``block`` (a transformer block: the outlier ratio over all its
layers together, one sparsity for all of them, as the authors' code does) or ``layer`` (each
layer alone)."""
NM_PRESETS: tuple[tuple[int, int], ...] = ((2, 4), (4, 8), (1, 4), (2, 8), (1, 2))
"""The N:M patterns offered first (N = kept), 2:4 first: the one sparse tensor cores run."""


def nm_label(n: int, m: int) -> str:
    """``"2:4"``."""
    return f"{n}:{m}"



@dataclass(frozen=True)
class SparsifyConfig:
    """What to prune and how. Serialises to JSON (``to_json``/``from_json``) for cache keys and exports."""

    pattern: str = "nm"
    """``dense`` (no pruning), ``nm`` (keep N of every M along the input dim) or ``unstructured``."""
    n: int = 2
    """N:M only: weights kept in each group of M (N = kept)."""
    m: int = 4
    """N:M only: group size, 2..32."""
    sparsity: float = 0.5
    """Unstructured only: fraction of weights pruned, 0 <= sparsity <= 0.99."""
    scope: str = "layer"
    """Unstructured only: ``layer`` prunes each layer to the sparsity; ``global`` ranks all selected
    weights together, so layers end up with different sparsities."""
    method: str = "magnitude"
    """A registered method (``sparsekit.methods``): ``magnitude`` keeps the largest |w|; ``random`` keeps a
    seeded random choice; ``wanda`` (|w| x input norm), ``sparsegpt`` (Hessian-based, rewrites kept
    weights) and ``taylor`` ((gradient x w)^2) use calibration inputs."""
    seed: int = 0
    """Seed of the random method (each layer gets its own stream derived from it and its name)."""
    layers: str = "all"
    """``all`` Linear/Conv layers, only ``mlp`` (feed-forward) layers, or only ``attention`` projections."""
    include: str = ""
    """Regular expression; when set, only layers whose name matches it are pruned."""
    exclude: str = ""
    """Regular expression; layers whose name matches it stay dense."""
    keep_first_dense: bool = False
    """Leave the first selected layer dense (the input layer is often the most sensitive)."""
    keep_last_dense: bool = False
    """Leave the last selected layer dense (e.g. a classifier head)."""
    conv_grouping: str = "channel"
    """Conv N:M groups: ``channel`` (M input channels at one kernel position; NVIDIA ASP) or
    ``kernel`` (M consecutive entries of the flattened in*kh*kw axis; original SR-STE code)."""
    calibration_order: str = "block"
    """Wanda/SparseGPT only: ``block`` (the papers' reference code: every layer of a transformer block
    is pruned on inputs from one forward of that block, the blocks before it already pruned) or
    ``layer`` (each layer on inputs through all already-pruned layers, also those of its own block).
    Models without transformer blocks use ``layer`` either way (the result says so)."""
    allocation: str = "uniform"
    """How the target is spread over the layers (``sparsekit.allocation``): ``uniform`` (every layer at
    the target), ``owl`` (more sparsity where a layer has fewer outlier weights; needs calibration
    inputs) or ``sensitivity`` (from a sensitivity scan passed to ``sparsify``). The weight-count
    weighted total stays the requested one; N:M layers get levels n:M of the same M."""
    owl_m: float = 5.0
    """OWL: an entry is an outlier when its ``|W| * ||X||`` exceeds this multiple of its layer's mean."""
    owl_lambda: float = 0.08
    """OWL: half the span of the layer sparsities around the target (the paper's lambda)."""
    owl_unit: str = "block"
    """OWL: ``block`` scores each transformer block as one unit (the outlier ratio of all its layers'
    ``|W| * ||X||`` together) and gives all its layers one sparsity, as the authors' code does; layers
    outside every block stay at the target. ``layer`` scores each layer alone. Models without
    transformer blocks use ``layer`` either way (the allocation note says so)."""

    def validate(self) -> None:
        """Raise ``ValueError`` with a clear message for any setting out of bounds."""
        if self.pattern not in PATTERNS:
            raise ValueError(f"pattern must be one of {PATTERNS}, got {self.pattern!r}")
        method = get_method(self.method)  # ValueError naming the registered methods
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {self.scope!r}")
        if self.layers not in LAYER_SETS:
            raise ValueError(f"layers must be one of {LAYER_SETS}, got {self.layers!r}")
        if self.conv_grouping not in CONV_GROUPINGS:
            raise ValueError(f"conv_grouping must be one of {CONV_GROUPINGS}, got {self.conv_grouping!r}")
        if self.calibration_order not in CALIBRATION_ORDERS:
            raise ValueError(f"calibration_order must be one of {CALIBRATION_ORDERS}, got {self.calibration_order!r}")
        for name in ("n", "m", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if self.pattern == "nm":
            if not 2 <= self.m <= MAX_M:
                raise ValueError(f"M must be between 2 and {MAX_M}, got M={self.m}")
            if not 1 <= self.n < self.m:
                raise ValueError(f"N:M needs 1 <= N < M (keep N of every M), got N={self.n}, M={self.m}")
        if self.pattern == "unstructured":
            s = self.sparsity
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 <= s <= MAX_SPARSITY:
                raise ValueError(f"sparsity must be between 0 and {MAX_SPARSITY} (fraction pruned), got {s!r}")
        if self.pattern == "unstructured" and self.scope == "global" and method.layer_local:
            raise ValueError(
                f"{self.method} compares weights within a layer (its scores are not comparable across layers); "
                "use scope='layer', or magnitude, random or taylor for a global ranking"
            )
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {self.allocation!r}")
        v = self.owl_m
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= MAX_OWL_M:
            raise ValueError(f"owl_m (the outlier threshold, a multiple of the layer mean of |W|·‖X‖) must be a "
                             f"number in (0, {MAX_OWL_M:g}], got {v!r}")
        v = self.owl_lambda
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= MAX_OWL_LAMBDA:
            raise ValueError(f"owl_lambda (half the span of the layer sparsities) must be a number between 0 and "
                             f"{MAX_OWL_LAMBDA:g}, got {v!r}")
        if self.owl_unit not in OWL_UNITS:
            raise ValueError(f"owl_unit (what OWL scores as one unit) must be one of {OWL_UNITS}, "
                             f"got {self.owl_unit!r}")
        if self.allocation != "uniform" and self.pattern == "unstructured" and self.scope == "global":
            raise ValueError(f"allocation={self.allocation!r} needs scope='layer': a global ranking already "
                             "chooses the layer sparsities itself")
        if not 0 <= self.seed < 2**31:
            raise ValueError(f"seed must be in [0, 2**31), got {self.seed}")
        for name in ("include", "exclude"):
            pattern = getattr(self, name)
            if len(pattern) > 500:
                raise ValueError(f"{name} regex is too long ({len(pattern)} characters, at most 500)")
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"{name} is not a valid regular expression: {err}") from None

    @property
    def target_density(self) -> float:
        """Kept fraction of each pruned layer (per-layer scope)."""
        if self.pattern == "nm":
            return self.n / self.m
        if self.pattern == "unstructured":
            return 1.0 - float(self.sparsity)
        return 1.0

    def label(self) -> str:
        """Short human label, e.g. ``2:4 magnitude`` or ``70% unstructured (global) random``."""
        if self.pattern == "dense":
            return "dense"
        if self.pattern == "nm":
            head = f"{self.n}:{self.m} (keep {self.n} of {self.m})"
        else:
            head = f"{self.sparsity:.0%} unstructured" + (" (global)" if self.scope == "global" else "")
        layer_order = get_method(self.method).calibration_order and self.calibration_order == "layer"
        order = " (layer order)" if layer_order else ""
        owl = ", OWL allocation" + (" (per layer)" if self.owl_unit == "layer" else "")
        alloc_labels = {"uniform": "", "owl": owl, "sensitivity": ", sensitivity allocation"}
        alloc = alloc_labels.get(self.allocation, "")
        return f"{head} {self.method}{order}{alloc}"

    def to_json(self) -> str:
        # The allocation fields are left out at their defaults, so a uniform config keeps the JSON
        # (and the cache keys built from it) it had before they existed. An OWL config always names
        # its unit: results cached before the unit existed (per layer, keyed without it) are not
        # taken for the block default.
        data = asdict(self)
        for f in fields(self):
            if f.name in _ALLOCATION_FIELDS and data[f.name] == f.default and not (
                    f.name == "owl_unit" and self.allocation == "owl"):
                del data[f.name]
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "SparsifyConfig":
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown SparsifyConfig fields: {sorted(unknown)}")
        return cls(**data)


_ALLOCATION_FIELDS = ("allocation", "owl_m", "owl_lambda", "owl_unit")


__all__ = ["ALLOCATIONS", "CALIBRATION_ORDERS", "LAYER_SETS", "MAX_M", "MAX_OWL_LAMBDA", "MAX_OWL_M", "MAX_SPARSITY",
           "NM_PRESETS", "OWL_UNITS", "PATTERNS", "SCOPES", "SparsifyConfig", "nm_label"]

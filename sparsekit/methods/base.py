"""The method registry: ``name -> Method``. A new pruning method is one module in this package
that calls ``register`` (and one import line in ``methods/__init__.py``)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

ProgressFn = Callable[[float, str], None]


@contextlib.contextmanager
def one_thread():
    # The column-by-column passes run thousands of tiny ops; with intra-op threads each one waits at
    # an OpenMP barrier, which on a busy machine made SparseGPT 10-50x slower (measured on 2 cores).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class MethodOutput:
    """What a method gives ``sparsify`` for the selected layers of its working copy."""

    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    """layer -> mask (True = kept), already applied to the copy in place (Wanda, SparseGPT)."""
    scores: dict[str, torch.Tensor] = field(default_factory=dict)
    """layer -> importance scores in the weight's layout (``sparsify`` then masks as usual)."""
    notes: dict[str, str] = field(default_factory=dict)
    """layer -> remark (e.g. not reached by the calibration forward, extra dampening)."""
    order: str = ""
    """Wanda/SparseGPT: the calibration order used, ``block`` or ``layer`` (a model without
    transformer blocks falls back to ``layer``)."""
    order_note: str = ""
    """One line saying which order was used and why."""


CalibratedPrune = MethodOutput
"""The name this record had before the registry (kept for old imports)."""

RunFn = Callable[[nn.Module, Sequence[str], Any, Any, "ProgressFn | None"], MethodOutput]
"""``run(model copy, layer names, SparsifyConfig, calibration or None, progress) -> MethodOutput``."""


@dataclass(frozen=True)
class Method:
    """One pruning method."""

    name: str
    """Registry key, the value of ``SparsifyConfig.method``."""
    label: str
    """Human name, e.g. ``SparseGPT``."""
    help: str
    """One sentence for the UI."""
    needs_calibration: bool
    """Whether ``run`` reads calibration inputs."""
    run: RunFn | None = None
    """Model-level methods: scores or masks for all named layers at once (see ``RunFn``)."""
    layer_scores: "Callable[[torch.Tensor, str, Any], torch.Tensor] | None" = None
    """Layer-local methods: ``layer_scores(weight, layer name, config)``, computed one layer at a time
    (so a large model never holds every layer's scores at once)."""
    layer_local: bool = False
    """Scores are only comparable within a layer (no global ranking across layers)."""
    calibration_order: bool = False
    """Whether ``SparsifyConfig.calibration_order`` applies."""


REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add a method to the registry (its name must be new; it needs ``run`` or ``layer_scores``)."""
    if (method.run is None) == (method.layer_scores is None):
        raise ValueError(f"method {method.name!r} needs exactly one of run= or layer_scores=")
    if method.name in REGISTRY:
        raise ValueError(f"a pruning method named {method.name!r} is already registered")
    REGISTRY[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The registered method ``name``; ``ValueError`` naming the choices otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"method must be one of {', '.join(REGISTRY)} (registered pruning methods), got {name!r}") from None

"""The method registry: ``name -> Method``. A new pruning method is one module in this package
that calls ``register`` (and one import line in ``methods/__init__.py``).

A ``Method`` declares everything the rest of sparsekit asks about it, so allocation, the cost
estimate, studies and the app read these fields instead of checking method names:

- how it chooses masks: ``layer_scores`` (one layer at a time), ``keep_layer`` (inside the shared
  calibration forward, reading the input statistics ``stats``) or ``run`` (a model-level pass);
- how its pruned counts move (``row_counts``, ``count_pieces``, ``count_mask``);
- its cost (``calibration_passes``, ``layer_flops``);
- what its seed changes (``uses_seed``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from .calibration import InputStats, KeepFn, LayerInputs
from .types import Calibration, MethodOutput, ProgressFn, PruneSettings

RunFn = Callable[[nn.Module, Sequence[str], PruneSettings, "Calibration | None", "ProgressFn | None"], MethodOutput]
"""``run(model copy, layer names, settings, calibration or None, progress) -> MethodOutput``."""
LayerScoresFn = Callable[[torch.Tensor, str, PruneSettings], torch.Tensor]
"""``layer_scores(weight, layer name, settings) -> scores`` in the weight's layout."""
CountMaskFn = Callable[[LayerInputs, torch.Tensor, InputStats, int], torch.Tensor]
"""``count_mask(layer, weight, input statistics, count) -> mask`` pruning exactly ``count`` entries."""
CountPiecesFn = Callable[[int, int], list[int]]
"""``count_pieces(rows, cols) -> sizes`` of the parts of a ``rows x cols`` matrix whose pruned counts
the method chooses separately (SparseGPT: blocks of columns)."""
LayerFlopsFn = Callable[[int, int, int], tuple[float, float]]
"""``layer_flops(rows, cols, tokens) -> (matmul-rate flops, column-pass flops)`` of one layer's work
beyond the calibration forward (SparseGPT: the Hessian, its factor, the block updates)."""


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
    """Whether it reads calibration inputs."""
    run: RunFn | None = None
    """Model-level methods: scores or masks for all named layers at once (see ``RunFn``)."""
    layer_scores: LayerScoresFn | None = None
    """Layer-local methods: ``layer_scores(weight, layer name, settings)``, computed one layer at a time
    (so a large model never holds every layer's scores at once)."""
    run_output: str = "masks"
    """What ``run`` gives: ``masks`` (it prunes the copy in place, e.g. Wanda, SparseGPT) or ``scores``
    (the copy is left as it was and ``sparsify`` masks by the scores, e.g. Taylor)."""
    layer_local: bool = False
    """Scores are only comparable within a layer (no global ranking across layers)."""
    calibration_order: bool = False
    """Whether ``SparsifyConfig.calibration_order`` applies."""
    keep_layer: KeepFn | None = None
    """Chooses one layer's mask (and new weights) inside the shared calibration forward
    (``calibration.sequential_prune``) from the statistics named by ``stats``; allocation calls it
    with each layer's own target."""
    stats: str = ""
    """Input statistics ``keep_layer`` reads: ``norms`` (per-feature squared L2 norms) or ``hessian``
    (``XᵀX``); empty for methods without ``keep_layer``."""
    count_mask: CountMaskFn | None = None
    """Unstructured allocation: a mask pruning exactly a given count of a layer (Wanda spreads it over
    rows); None = ``keep_layer`` at the layer's sparsity."""
    count_pieces: CountPiecesFn | None = None
    """Unstructured: the parts whose counts are rounded separately (None = any count of the layer)."""
    uses_seed: bool = False
    """Whether ``SparsifyConfig.seed`` changes the mask (the random baseline)."""
    calibration_passes: float | None = None
    """Cost model: forward-equivalents of the calibration work (Taylor: forward and backward, 3);
    None = the calibration order's (2 in block order, 1 in layer order)."""
    layer_flops: LayerFlopsFn | None = None
    """Cost model: per-layer work beyond the calibration forward (see ``LayerFlopsFn``)."""

    @property
    def seed_matters(self) -> bool:
        """Whether a study's seed changes the result: the mask draw, or the calibration subset."""
        return self.uses_seed or self.needs_calibration


REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add a method to the registry (its name must be new; it needs ``run`` or ``layer_scores``)."""
    if (method.run is None) == (method.layer_scores is None):
        raise ValueError(f"method {method.name!r} needs exactly one of run= or layer_scores=")
    if method.run_output not in ("masks", "scores"):
        raise ValueError(f"method {method.name!r}: run_output must be 'masks' or 'scores', got {method.run_output!r}")
    if method.keep_layer is not None and method.stats not in ("norms", "hessian"):
        raise ValueError(f"method {method.name!r}: keep_layer needs stats='norms' or 'hessian'")
    if method.name in REGISTRY:
        raise ValueError(f"a pruning method named {method.name!r} is already registered")
    REGISTRY[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The registered method ``name``; ``ValueError`` naming the choices otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"method must be one of {', '.join(REGISTRY)} (registered pruning methods), "
                         f"got {name!r}") from None


__all__ = ["Method", "REGISTRY", "get_method", "register"]

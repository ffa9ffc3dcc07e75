"""Masked forward weights: the straight-through estimator (STE, SR-STE's decay), the weight
parametrizations each training method attaches, and which layers a run makes sparse."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..layers import grouped_view, prunable_layers
from ..masks import conv_nm_mask, nm_mask
from .config import TrainConfig


class _StraightThrough(torch.autograd.Function):
    # Forward E⊙W; backward passes the gradient straight to the dense W, plus SR-STE's
    # λ_w(1−E)⊙W on the pruned weights when decay > 0.

    # ``ctx`` is Any: the decay is kept on it as an attribute, which ``FunctionCtx`` does not declare.

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, mask: torch.Tensor, decay: float) -> torch.Tensor:
        ctx.decay = decay
        if decay:
            ctx.save_for_backward(weight, mask)
        return weight * mask

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        if ctx.decay:
            weight, mask = ctx.saved_tensors
            return grad + ctx.decay * weight * (~mask), None, None
        return grad, None, None


def sparse_forward_weight(weight: torch.Tensor, mask: torch.Tensor, lambda_w: float = 0.0) -> torch.Tensor:
    """STE / SR-STE forward weight ``E ⊙ W`` with the straight-through backward.

    Args:
        weight: the dense weight W (requires grad).
        mask: bool keep-mask E of the same shape.
        lambda_w: 0 for STE; SR-STE's λ_w adds ``λ_w (1 − E) ⊙ W`` to W's gradient.

    Returns:
        ``W * E``; its gradient reaches W unmasked.
    """
    if mask.dtype != torch.bool or mask.shape != weight.shape:
        raise ValueError(f"mask must be a bool tensor of shape {tuple(weight.shape)}")
    return _StraightThrough.apply(weight, mask, float(lambda_w))


class _NMStraightThrough(nn.Module):
    """Parametrization: recompute the N:M mask from |W| on every access (every forward)."""

    def __init__(self, mask_fn: Callable[[torch.Tensor], torch.Tensor], decay: float) -> None:
        super().__init__()
        self.mask_fn = mask_fn
        self.decay = decay

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return _StraightThrough.apply(weight, self.mask_fn(weight.detach()), self.decay)


class FixedMask(nn.Module):
    """Parametrization: a mask held in a buffer; pruned weights get no gradient."""

    mask: torch.Tensor

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def weight_parametrizations(layer: nn.Module) -> parametrize.ParametrizationList:
    """The parametrizations of a masked layer's weight: ``.original`` is the dense weight, ``[0]`` the
    parametrization that holds the mask.

    Raises:
        TypeError: the layer's weight is not parametrized.
    """
    plists = layer.parametrizations if parametrize.is_parametrized(layer, "weight") else None
    plist = plists["weight"] if isinstance(plists, nn.ModuleDict) else None
    if not isinstance(plist, parametrize.ParametrizationList):
        raise TypeError(f"the weight of this {type(layer).__name__} is not parametrized")
    return plist


def dense_weight(layer: nn.Module) -> torch.Tensor:
    """A layer's dense weight W: the parametrization's original when the weight is masked, else the weight.

    Raises:
        TypeError: the layer has no weight tensor.
    """
    if parametrize.is_parametrized(layer, "weight"):
        return weight_parametrizations(layer).original
    weight = layer.weight
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{type(layer).__name__}.weight is not a tensor")
    return weight


def mask_buffer(layer: nn.Module) -> torch.Tensor:
    """The live mask buffer of a layer masked by ``FixedMask`` (or another parametrization holding ``mask``).

    Raises:
        TypeError: the layer's weight is not parametrized, or its parametrization holds no mask.
    """
    mask = weight_parametrizations(layer)[0].mask
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"the weight parametrization of this {type(layer).__name__} holds no mask tensor")
    return mask


def _nm_mask_fn(module: nn.Module, config: TrainConfig) -> Callable[..., torch.Tensor]:
    n, m = config.n, config.m
    if isinstance(module, nn.Linear):
        return lambda w, scores=None: nm_mask(w, n, m, scores=scores)
    return lambda w, scores=None: conv_nm_mask(w, n, m, grouping=config.conv_grouping, scores=scores)


_AXIS_WORDS = {"in_features": "input features", "in_channels": "input channels",
               "in_channels*kernel": "in·kh·kw entries"}


def layer_plan(module: nn.Module, config: TrainConfig) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """Which Linear/Conv layers a run makes sparse.

    Args:
        module: a digits model.
        config: the run's settings.

    Returns:
        ``(sparse, dense)``: name -> layer for the sparse ones, name -> reason for those left dense
        (an N:M grouped dimension that is not a multiple of M).
    """
    sparse: dict[str, nn.Module] = {}
    dense: dict[str, str] = {}
    for name, layer in prunable_layers(module):
        if not config.uses_nm:
            sparse[name] = layer
            continue
        size, axis = grouped_view(layer, config.conv_grouping).group_axis
        if size % config.m:
            dense[name] = f"{size} {_AXIS_WORDS[axis]}, not a multiple of M={config.m}"
        else:
            sparse[name] = layer
    return sparse, dense

"""A layer's ``weight`` as a tensor, for readers and the type checker alike.

torch types ``nn.Module.__getattr__`` as ``Tensor | Module``, so ``module.weight`` of a module held as
an ``nn.Module`` does not read as a tensor. ``layer_weight`` checks it once and says so.
"""
from __future__ import annotations

import torch
from torch import nn


def layer_weight(module: nn.Module) -> torch.Tensor:
    """``module.weight``: a parameter, or the computed tensor of a parametrized layer.

    Raises:
        TypeError: the module's ``weight`` is not a tensor.
    """
    weight = module.weight
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{type(module).__name__}.weight is a {type(weight).__name__}, not a tensor")
    return weight


__all__ = ["layer_weight"]

"""Checks shared by every mask statistic, and the matrix view the pictures use.

Kept apart from the statistics so each of them validates its inputs with the same messages.
"""
from __future__ import annotations

import math
from typing import TypeAlias

import numpy as np
import torch

TensorLike: TypeAlias = torch.Tensor | np.ndarray
"""A weight or mask as the statistics take it: a torch tensor or a numpy array."""


def _as_tensor(x: object, what: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    try:
        return torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{what} must be a torch tensor or numpy array, got {type(x).__name__}") from None


def as_matrix(t: TensorLike) -> torch.Tensor:
    """View a weight (or mask) as the 2-D matrix the pictures show.

    Args:
        t: tensor or array with at least 2 dims; ``[out, in]`` stays as it is, a conv kernel
            ``[out, in, kh, kw]`` becomes ``[out, in*kh*kw]`` (dims 1.. flattened, in order).

    Returns:
        A 2-D tensor (a view when the input is contiguous).

    Raises:
        ValueError: fewer than 2 dims (e.g. a bias), so there is no matrix to show.
    """
    t = _as_tensor(t, "tensor")
    if t.dim() < 2:
        raise ValueError(
            f"expected a 2-D matrix (or a conv weight [out, in, kh, kw]); got shape {tuple(t.shape)}"
        )
    return t.reshape(t.shape[0], math.prod(t.shape[1:]))


def _check_mask(mask: TensorLike, what: str = "mask") -> torch.Tensor:
    mask = _as_tensor(mask, what)
    if mask.dtype != torch.bool:
        raise ValueError(f"{what} must be a bool tensor (True = kept), got dtype {mask.dtype}")
    return mask


def _check_weight(weight: TensorLike) -> torch.Tensor:
    weight = _as_tensor(weight, "weight")
    if weight.dtype == torch.bool or weight.is_complex():
        raise ValueError(f"weight must be a real-valued tensor, got dtype {weight.dtype}")
    return weight


def _mask_matrix(mask: TensorLike, what: str = "mask") -> torch.Tensor:
    m = as_matrix(_check_mask(mask, what))
    if m.numel() == 0:
        raise ValueError(f"{what} is empty (shape {tuple(m.shape)})")
    return m


def _check_pair(weight: TensorLike, mask: TensorLike) -> tuple[torch.Tensor, torch.Tensor]:
    weight = _check_weight(weight)
    mask = _check_mask(mask)
    if weight.shape != mask.shape:
        raise ValueError(
            f"weight and mask shapes differ: weight {tuple(weight.shape)} vs mask {tuple(mask.shape)}"
        )
    if weight.dim() < 2:
        as_matrix(weight)  # raises with the shared "expected a 2-D matrix" message
    if weight.numel() == 0:
        raise ValueError(f"weight is empty (shape {tuple(weight.shape)})")
    return weight, mask


def _check_same_shape(mask_a: TensorLike, mask_b: TensorLike) -> tuple[torch.Tensor, torch.Tensor]:
    a = _check_mask(mask_a, "mask_a")
    b = _check_mask(mask_b, "mask_b")
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: mask_a {tuple(a.shape)} vs mask_b {tuple(b.shape)}")
    if a.device != b.device:
        b = b.to(a.device)
    return a, b


def _check_int(value: object, name: str, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        bound = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value

"""Monarch matrices (Dao et al. 2022, arXiv 2204.00595): a dense ``[out, in]`` weight replaced by
``M = P L Pᵀ R`` with ``L`` and ``R`` block-diagonal, and the paper's projection onto them.

Shape rule, for ``b`` blocks: ``in = b·p`` and ``out = b·s`` (both sizes multiples of ``b``).

- ``R`` has ``b`` blocks ``R_k`` of shape ``[b, p]``: block ``k`` reads inputs ``k·p … k·p + p − 1``
  and writes ``b`` intermediate channels ``(k, j)``, one for each block of ``L``.
- ``Pᵀ`` regroups the ``b²`` intermediate channels from ``(k, j)`` to ``(j, k)``.
- ``L`` has ``b`` blocks ``L_j`` of shape ``[s, b]``: block ``j`` reads channels ``(j, 0 … b − 1)``,
  one from each block of ``R``, and writes ``s`` outputs ``(j, l)``.
- ``P`` interleaves them: output ``(j, l)`` is row ``l·b + j`` of ``M``.

So ``M[l·b + j, k·p + i] = L_j[l, k] · R_k[j, i]``: reshaped to ``T[j, k, l, i]``, every slice ``T[j, k]``
(an ``s × p`` matrix) is the rank-1 product of one column of ``L_j`` and one row of ``R_k``, and no
factor entry appears in two slices. A matrix is Monarch exactly when all ``b²`` slices have rank ≤ 1,
so the Frobenius-nearest Monarch matrix takes the best rank-1 factor of each slice, the leading
singular triple by the Eckart–Young theorem (the paper's projection; for square ``n = b²`` it is the
``b`` blocks of ``√n × √n`` of the paper's Definition 3.1, and the layout of its reference code's
``blockdiag_butterfly_project_einsum_rank`` at rank 1 for rectangular sizes). The weight keeps
``b·p·b + b·s·b = b·(in + out)`` parameters: ``b = 1`` is a rank-1 matrix; ``b = √n`` gives the paper's
``2·n·√n``; from ``b = in·out / (in + out)`` on it is no smaller than the dense matrix.
"""
from __future__ import annotations

import math
from fractions import Fraction

import torch
from torch import nn


def _int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    return value


def check_blocks(out_features: int, in_features: int, blocks: int) -> None:
    """Raise ``ValueError`` unless ``blocks`` Monarch blocks fit an ``[out, in]`` weight.

    Args:
        out_features: rows of the weight.
        in_features: columns of the weight.
        blocks: the block count ``b`` of both ``L`` and ``R``.
    """
    out_features = _int(out_features, "out_features")
    in_features = _int(in_features, "in_features")
    blocks = _int(blocks, "blocks")
    if out_features < 1 or in_features < 1:
        raise ValueError(f"a Monarch matrix needs positive sizes, got [out={out_features}, in={in_features}]")
    if blocks < 1:
        raise ValueError(f"blocks must be at least 1, got blocks={blocks}")
    bad = [f"{label} = {size} is not a multiple of {blocks}"
           for label, size in (("out_features", out_features), ("in_features", in_features)) if size % blocks]
    if bad:
        fits = [d for d in range(1, math.gcd(out_features, in_features) + 1)
                if out_features % d == 0 and in_features % d == 0]
        raise ValueError(f"blocks={blocks} does not fit a [out={out_features}, in={in_features}] weight: "
                         f"{' and '.join(bad)} (Monarch with b blocks needs both sizes to be multiples of b; "
                         f"block counts that fit: {', '.join(map(str, fits))})")


def monarch_params(out_features: int, in_features: int, blocks: int, bias: bool = False) -> int:
    """Parameters of a Monarch layer: ``blocks·(in + out)`` factor entries (plus ``out`` with a bias).

    Args:
        out_features: rows of the weight.
        in_features: columns of the weight.
        blocks: the block count (checked by ``check_blocks``).
        bias: count a bias vector too.
    """
    check_blocks(out_features, in_features, blocks)
    return blocks * (in_features + out_features) + (out_features if bias else 0)


def monarch_blocks_for_budget(out_features: int, in_features: int, budget: float) -> int:
    """The largest block count whose Monarch weight keeps at most ``budget`` of the dense parameters.

    Counts are exact: ``blocks·(in + out) <= budget·out·in`` is compared in rational arithmetic (the
    budget as the float it is), over the block counts that divide both sizes.

    Args:
        out_features: rows of the weight.
        in_features: columns of the weight.
        budget: the fraction of the ``out·in`` dense weight parameters that may be kept, in (0, 1].

    Returns:
        The block count.

    Raises:
        ValueError: a budget outside (0, 1], or one below the smallest Monarch matrix (one block, a
            rank-1 matrix of ``in + out`` parameters).
    """
    check_blocks(out_features, in_features, 1)
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget <= 1 or math.isnan(budget):
        raise ValueError(f"budget must be a fraction of the dense parameters in (0, 1], got {budget!r}")
    allowed = Fraction(budget) * out_features * in_features
    fits = [b for b in range(1, math.gcd(out_features, in_features) + 1)
            if out_features % b == 0 and in_features % b == 0 and b * (in_features + out_features) <= allowed]
    if not fits:
        dense = out_features * in_features
        smallest = in_features + out_features
        raise ValueError(f"a budget of {budget:.4g} of the [out={out_features}, in={in_features}] weight's "
                         f"{dense:,} parameters ({float(allowed):,.1f}) leaves no Monarch matrix: the smallest "
                         f"(1 block, rank 1) keeps {smallest:,} = {smallest / dense:.4g} of them")
    return fits[-1]


def _check_weight(weight: object) -> torch.Tensor:
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() != 2:
        raise ValueError(f"Monarch projection takes a 2-D [out, in] weight, got shape {tuple(weight.shape)}")
    if not weight.is_floating_point():
        raise ValueError(f"Monarch projection needs a floating-point weight, got {weight.dtype}")
    return weight


def monarch_project(weight: torch.Tensor, blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The Frobenius-nearest Monarch matrix to ``weight``, as its two block-diagonal factors.

    Each slice ``T[j, k] = weight[l·b + j, k·p + i]`` (over ``l``, ``i``) is replaced by its leading
    singular triple ``σ u vᵀ``: ``L_j[:, k] = √σ·u`` and ``R_k[j, :] = √σ·v``. Computed in float64,
    returned in the weight's dtype and device.

    Args:
        weight: a dense ``[out, in]`` matrix (not modified).
        blocks: ``b``, dividing both ``out`` and ``in``.

    Returns:
        ``(left, right)``: ``left[j, l, k] = L_j[l, k]`` of shape ``[b, out/b, b]`` and
        ``right[k, j, i] = R_k[j, i]`` of shape ``[b, b, in/b]`` (``monarch_dense`` multiplies them out).
    """
    weight = _check_weight(weight)
    out_features, in_features = (int(s) for s in weight.shape)
    check_blocks(out_features, in_features, blocks)
    b, s, p = blocks, out_features // blocks, in_features // blocks
    with torch.no_grad():
        slices = weight.detach().to(torch.float64).reshape(s, b, b, p).permute(1, 2, 0, 3)  # [j, k, l, i]
        u, sigma, vh = torch.linalg.svd(slices, full_matrices=False)
        root = sigma[..., 0].sqrt().unsqueeze(-1)  # [j, k, 1]
        left = (u[..., :, 0] * root).permute(0, 2, 1)  # [j, k, l] -> [j, l, k]
        right = (vh[..., 0, :] * root).permute(1, 0, 2)  # [j, k, i] -> [k, j, i]
    return (left.to(weight.dtype).contiguous(), right.to(weight.dtype).contiguous())


def monarch_dense(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """The dense ``[out, in]`` matrix ``P L Pᵀ R`` of the factors ``monarch_project`` returns."""
    if left.dim() != 3 or right.dim() != 3 or left.shape[0] != left.shape[2] or tuple(right.shape[:2]) != (
            left.shape[0], left.shape[0]):
        raise ValueError(f"Monarch factors must be left [b, out/b, b] and right [b, b, in/b], got "
                         f"{tuple(left.shape)} and {tuple(right.shape)}")
    b, s, p = left.shape[0], left.shape[1], right.shape[2]
    return torch.einsum("jlk,kji->ljki", left, right).reshape(s * b, b * p)


class MonarchLinear(nn.Module):
    """A Linear layer whose weight is a Monarch matrix ``P L Pᵀ R``, kept as its two factors.

    ``forward(x) = x @ M.T + bias``, computed as two batched matmuls over the blocks (``M`` is never
    formed): ``b·(in + out)`` multiply-adds per input row instead of ``in·out``.
    """

    def __init__(self, in_features: int, out_features: int, blocks: int, bias: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        """A Monarch layer with random factors (each ``R_k`` and ``L_j`` initialised like an
        ``nn.Linear`` of its own fan-in).

        Args:
            in_features: input size, a multiple of ``blocks``.
            out_features: output size, a multiple of ``blocks``.
            blocks: the block count ``b`` of ``L`` and ``R``.
            bias: add a learnable bias.
            device: where the parameters live.
            dtype: their dtype.
        """
        super().__init__()
        check_blocks(out_features, in_features, blocks)
        self.in_features, self.out_features, self.blocks = in_features, out_features, blocks
        b, s, p = blocks, out_features // blocks, in_features // blocks
        def uniform(*shape: int, fan_in: int) -> nn.Parameter:
            bound = 1 / math.sqrt(fan_in)
            return nn.Parameter(torch.empty(*shape, device=device, dtype=dtype).uniform_(-bound, bound))

        self.right = uniform(b, b, p, fan_in=p)
        """``right[k, j, i] = R_k[j, i]``: block ``k`` of ``R`` (``[b, in/b]``)."""
        self.left = uniform(b, s, b, fan_in=b)
        """``left[j, l, k] = L_j[l, k]``: block ``j`` of ``L`` (``[out/b, b]``)."""
        self.bias = uniform(out_features, fan_in=in_features) if bias else None

    @classmethod
    def from_weight(cls, weight: torch.Tensor, blocks: int, bias: torch.Tensor | None = None) -> MonarchLinear:
        """The layer holding ``monarch_project(weight, blocks)`` (and a copy of ``bias``).

        Args:
            weight: the dense ``[out, in]`` weight (not modified).
            blocks: the block count.
            bias: ``[out]`` or None.
        """
        weight = _check_weight(weight)
        out_features, in_features = (int(s) for s in weight.shape)
        if bias is not None and tuple(bias.shape) != (out_features,):
            raise ValueError(f"bias of shape {tuple(bias.shape)} does not fit a [{out_features}, {in_features}] weight")
        layer = cls(in_features, out_features, blocks, bias is not None, weight.device, weight.dtype)
        left, right = monarch_project(weight, blocks)
        with torch.no_grad():
            layer.left.copy_(left)
            layer.right.copy_(right)
            if bias is not None and layer.bias is not None:
                layer.bias.copy_(bias.detach())
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"MonarchLinear takes inputs with {self.in_features} features, got shape {tuple(x.shape)}")
        b, p = self.blocks, self.in_features // self.blocks
        lead = x.shape[:-1]
        h = x.reshape(-1, b, p).transpose(0, 1)  # [k, rows, p]: the input of each block of R
        h = torch.bmm(h, self.right.transpose(1, 2))  # [k, rows, j]
        h = h.permute(2, 1, 0)  # Pᵀ: [j, rows, k], the input of each block of L
        h = torch.bmm(h, self.left.transpose(1, 2))  # [j, rows, l]
        y = h.permute(1, 2, 0).reshape(*lead, self.out_features)  # P: output l·b + j
        return y if self.bias is None else y + self.bias

    def to_dense(self) -> torch.Tensor:
        """The ``[out, in]`` weight ``M`` this layer multiplies by."""
        return monarch_dense(self.left, self.right)

    @property
    def n_params(self) -> int:
        """Parameters held: the two factors and the bias."""
        return sum(p.numel() for p in self.parameters())

    @property
    def stored_bytes(self) -> int:
        """Bytes of those parameters in their dtype."""
        return sum(p.numel() * p.element_size() for p in self.parameters())

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, blocks={self.blocks}, "
                f"bias={self.bias is not None}")


__all__ = ["MonarchLinear", "check_blocks", "monarch_blocks_for_budget", "monarch_dense", "monarch_params",
           "monarch_project"]

"""The weight operations SliceGPT is made of (``slicegpt`` applies them; ``slicegpt_vit`` and ``io`` use them too):
a model's parts on the residual stream, weights as float64 matrices, norm folding, centring and rotating the
layers that write the stream, the second moment of one stream position on calibration data and its PCA."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..layers import is_conv1d_transposed
from ..methods.calibration import calibration_size, calibration_slice, run_model, token_mask

__all__ = [
    "CHUNK_ROWS", "SlicedRMSNorm", "StreamBlock", "StreamParts", "centre_stream_writer", "centre_writer", "fold_norm",
    "pca", "put", "read", "rotate_stream_writer", "second_moment", "write",
]

CHUNK_ROWS = 16
"""Calibration rows per forward."""


class SlicedRMSNorm(nn.Module):
    """``x / sqrt(‖x‖² / full_width + eps)`` without parameters: what a folded LayerNorm or RMSNorm becomes. The
    divisor stays the original width after slicing (the authors' ``RMSN(mean_dim)``)."""

    def __init__(self, width: int, full_width: int, eps: float) -> None:
        super().__init__()
        self.width, self.full_width, self.eps = width, full_width, float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).sum(-1, keepdim=True) / self.full_width + self.eps)
        return h.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.width}, full_width={self.full_width}, eps={self.eps}"


@dataclass
class StreamBlock:
    """One transformer block: its module, the names of its two norms, the layers reading each norm and the
    layers writing the stream after attention and after the MLP."""

    module: nn.Module
    norms: tuple[str, str]
    attn_in: list[nn.Module]
    attn_out: nn.Module
    mlp_in: list[nn.Module]
    mlp_out: nn.Module


@dataclass
class StreamParts:
    """A pre-LN transformer as SliceGPT sees it. ``writers`` write the stream before the first block: an
    ``nn.Embedding`` (rows are stream vectors), an ``nn.Linear`` (outputs are stream vectors) or
    ``(module, attribute)`` of a parameter whose last dimension is the stream (the ViT's class token and position
    embedding)."""

    arch: str
    writers: list[Any]
    blocks: list[StreamBlock]
    final_owner: nn.Module
    final_name: str
    head: nn.Linear
    eps: float
    width: int


# --------------------------------------------------------------------------------------------------
# Weights as float64 matrices [out, in], written back in the model's dtype


def matrix(m: Any) -> torch.Tensor:
    w = m.weight.detach().double()
    return w.T if is_conv1d_transposed(m) else w


def bias_of(m: nn.Module) -> torch.Tensor | None:
    b = getattr(m, "bias", None)
    return None if b is None else b.detach().double()


def put(m: Any, w: torch.Tensor, b: torch.Tensor | None = None) -> None:
    """Set ``m``'s weight to the ``[out, in]`` matrix ``w`` (and bias ``b``), updating its size attributes."""
    dtype = m.weight.dtype
    if isinstance(m, nn.Embedding):
        m.weight = nn.Parameter(w.to(dtype).contiguous())
        m.embedding_dim = w.shape[1]
        return
    if is_conv1d_transposed(m):
        m.weight = nn.Parameter(w.T.to(dtype).contiguous())
        m.nf, m.nx = w.shape
    else:
        m.weight = nn.Parameter(w.to(dtype).contiguous())
        m.out_features, m.in_features = w.shape
    if b is not None:
        m.bias = nn.Parameter(b.to(dtype).contiguous())


def fold_norm(norm: nn.Module, readers: list[nn.Module]) -> None:
    """``W·(γ⊙x + β) + b = (W·diag γ)·x + (b + W·β)`` for each reader."""
    gamma = getattr(norm, "weight", None)
    beta = getattr(norm, "bias", None)
    for r in readers:
        w, b = matrix(r), bias_of(r)
        if beta is not None:
            shift = w @ beta.detach().double()
            b = shift if b is None else b + shift
        put(r, w * gamma.detach().double() if gamma is not None else w, b)


def centre_writer(m: nn.Module) -> None:
    """Subtract the mean over outputs from each column of ``m``'s weight (and from its bias)."""
    w, b = matrix(m), bias_of(m)
    put(m, w - w.mean(0, keepdim=True), None if b is None else b - b.mean())


def read(readers: list[nn.Module], q: torch.Tensor) -> None:
    """Readers of a stream position rotated by ``q``: ``W ← W·Q``."""
    for r in readers:
        put(r, matrix(r) @ q)


def write(writer: nn.Module, q: torch.Tensor) -> None:
    """A writer of a stream position rotated by ``q``: ``W ← Qᵀ·W``, ``b ← Qᵀ·b``."""
    b = bias_of(writer)
    put(writer, q.T @ matrix(writer), None if b is None else q.T @ b)


def _stream_param(writer: tuple[nn.Module, str]) -> torch.Tensor:
    owner, attr = writer
    return getattr(owner, attr).detach().double()


def centre_stream_writer(writer: Any) -> None:
    """Make every stream vector a writer produces mean-free (a LayerNorm's centring moved into the writer)."""
    if isinstance(writer, nn.Embedding):
        w = writer.weight.detach().double()
        put(writer, w - w.mean(-1, keepdim=True))
    elif isinstance(writer, nn.Linear):
        centre_writer(writer)
    else:
        p = _stream_param(writer)
        owner, attr = writer
        setattr(owner, attr, nn.Parameter((p - p.mean(-1, keepdim=True)).to(getattr(owner, attr).dtype)))


def rotate_stream_writer(writer: Any, q: torch.Tensor) -> None:
    """A writer of the first stream position rotated (and sliced) by ``q``."""
    if isinstance(writer, nn.Embedding):
        put(writer, writer.weight.detach().double() @ q)
    elif isinstance(writer, nn.Linear):
        write(writer, q)
    else:
        owner, attr = writer
        setattr(owner, attr, nn.Parameter((_stream_param(writer) @ q).to(getattr(owner, attr).dtype).contiguous()))


# --------------------------------------------------------------------------------------------------
# Principal directions of one position of the stream


class _Stop(Exception):
    pass


def second_moment(model: nn.Module, calibration: Any, module: nn.Module, output: bool) -> torch.Tensor:
    """``Σ xᵀx`` (float64) over the calibration tokens of ``module``'s input (or output); the forward stops there.
    Padding tokens (``attention_mask`` 0) are left out; images count every token."""
    total: list[torch.Tensor] = []
    mask: list[torch.Tensor | None] = [None]

    def add(x: Any) -> None:
        x = x[0] if isinstance(x, tuple) else x
        rows = x.detach().double().reshape(-1, x.shape[-1])
        if mask[0] is not None:
            rows = rows[mask[0].reshape(-1)]
        h = rows.T @ rows
        if total:
            total[0] += h
        else:
            total.append(h)
        raise _Stop

    def pre(_m: nn.Module, args: tuple, kwargs: dict) -> None:
        add(args[0] if args else kwargs["hidden_states"])

    def post(_m: nn.Module, _args: tuple, out: Any) -> None:
        add(out)

    handle = module.register_forward_hook(post) if output else module.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        with torch.no_grad():
            for start in range(0, calibration_size(calibration), CHUNK_ROWS):
                chunk = calibration_slice(calibration, start, start + CHUNK_ROWS)
                mask[0] = token_mask(chunk)
                try:
                    run_model(model, chunk)
                except _Stop:
                    continue
                raise RuntimeError(f"the calibration forward never reached {type(module).__name__}")
    finally:
        handle.remove()
    return total[0]


def pca(h: torch.Tensor, keep: int) -> tuple[torch.Tensor, float]:
    """Eigenvectors of ``h``, largest eigenvalue first, and the share of ``trace(h)`` the first ``keep`` hold."""
    values, vectors = torch.linalg.eigh(h)
    order = torch.argsort(values, descending=True)
    values, vectors = values[order], vectors[:, order]
    total = float(values.clamp(min=0).sum())
    return vectors, (float(values[:keep].clamp(min=0).sum()) / total if total > 0 else 1.0)

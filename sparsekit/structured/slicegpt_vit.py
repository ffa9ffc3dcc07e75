"""SliceGPT on the digits ViT (``sparsekit.models.digits_nets.DigitsViT``).

The ViT is pre-LayerNorm: each block computes ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``, and the head reads
``norm(x[:, 0])``. So the residual stream only ever enters a LayerNorm, never leaves one, and SliceGPT applies as
to GPT-2. The stream is written before the first block by three things: the patch embedding (a Linear from the
2×2 patch to the width), the class token and the position embedding (parameters whose last dimension is the
width); they are centred and rotated as GPT-2's token and position embeddings are. Inside a block the writers are
``attn.proj`` and ``mlp.fc2``, the readers ``attn.q/k/v`` (after ``norm1``) and ``mlp.fc1`` (after ``norm2``); the head
reads the final norm.

Two module classes change (subclasses, so ``isinstance`` checks and the attention recording still work):
``SlicedViTBlock`` adds ``x·S`` instead of ``x`` on each residual (the shortcut matrices), and ``SlicedViTAttention``
marks the attention of a sliced block (``Attention.forward`` reshapes the heads' output to the heads' width,
``n_heads·head_dim``, not the sliced input's).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..models.digits_nets import Attention, Block
from .slicegpt_ops import StreamBlock, StreamParts

__all__ = ["SlicedViTAttention", "SlicedViTBlock", "vit_parts"]


class SlicedViTAttention(Attention):
    """The digits ViT's attention reading a sliced stream: ``Attention.forward`` already reshapes the heads'
    output to the heads' width, so only the class name marks a sliced model's attention."""


class SlicedViTBlock(Block):
    """The digits ViT's block with SliceGPT shortcut matrices on its residual adds (None: the identity)."""

    attn_shortcut: torch.Tensor | None
    mlp_shortcut: torch.Tensor | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x if self.attn_shortcut is None else x @ self.attn_shortcut
        h = a + self.attn(self.norm1(x))
        m = h if self.mlp_shortcut is None else h @ self.mlp_shortcut
        return m + self.mlp(self.norm2(h))


def make_sliced(block: nn.Module) -> None:
    """Turn a ViT ``Block`` into a ``SlicedViTBlock`` (and its attention into ``SlicedViTAttention``) in place, with
    no shortcut matrices yet."""
    block.__class__ = SlicedViTBlock
    block.attn.__class__ = SlicedViTAttention
    block.register_parameter("attn_shortcut", None)
    block.register_parameter("mlp_shortcut", None)


def vit_parts(model: Any) -> StreamParts:
    """The ``DigitsViT``'s stream writers, blocks, final norm and head."""
    blocks = [StreamBlock(b, ("norm1", "norm2"), [b.attn.q, b.attn.k, b.attn.v], b.attn.proj, [b.mlp.fc1], b.mlp.fc2)
              for b in model.blocks]
    norm = model.norm
    eps = float(norm.eps) if isinstance(norm, nn.LayerNorm) else float(getattr(norm, "eps", 1e-5))
    return StreamParts("vit", [model.patch_embed, (model, "cls_token"), (model, "pos_embed")], blocks, model, "norm",
                       model.head, eps, int(model.pos_embed.shape[-1]))

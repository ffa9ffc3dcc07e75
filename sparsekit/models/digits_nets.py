"""The three digits networks (MLP, CNN, a small ViT with readable attention) and their builder.

Only the architectures live here: what they are trained on, how, and where their weights come
from is ``digits``, which re-exports every name below.

Every model takes a float tensor ``[batch, 1, 8, 8]`` with values in 0..1 and returns logits
``[batch, 10]``.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

ARCHITECTURES = ("mlp", "cnn", "vit")
ARCH_LABELS = {"mlp": "MLP", "cnn": "CNN", "vit": "ViT"}
"""How each architecture is written in labels and text."""
N_CLASSES = 10


class DigitsMLP(nn.Module):
    """64 -> 256 -> 128 -> 10 with ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 256)
        self.fc2 = nn.Linear(256, 128)
        self.head = nn.Linear(128, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.head(x)


class DigitsCNN(nn.Module):
    """Two 3x3 conv layers (1 -> 16 -> 32 channels), a 2x2 max-pool, and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1)
        self.head = nn.Linear(32 * 4 * 4, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.head(x.flatten(1))


class Attention(nn.Module):
    """Multi-head self-attention in plain torch, so its probabilities can be read and masked.

    Attributes:
        record_attention: when True, every forward stores the softmax probabilities
            ``[batch, heads, queries, keys]`` (detached) in ``last_attention``.
        last_attention: the probabilities of the latest recorded forward, else None.
        score_mask: optional bool tensor broadcastable to ``[batch, heads, queries, keys]``;
            False entries are excluded before the softmax (True = attend).
    """

    def __init__(self, dim: int, n_heads: int) -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"dim {dim} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.head_dim = dim // n_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.record_attention = False
        self.last_attention: torch.Tensor | None = None
        self.score_mask: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        if self.score_mask is not None:
            # The most negative finite value rather than -inf: a fully masked row then becomes
            # uniform instead of NaN.
            scores = scores.masked_fill(~self.score_mask.to(torch.bool), torch.finfo(scores.dtype).min)
        probs = scores.softmax(dim=-1)
        if self.record_attention:
            self.last_attention = probs.detach()
        # The heads' width, which equals the input's here (a SliceGPT-sliced stream is narrower than the heads).
        out = (probs @ v).transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim)
        return self.proj(out)


class MLPBlock(nn.Module):
    """The transformer feed-forward part: fc1 -> GELU -> fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, n_heads: int, mlp_hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, n_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class DigitsViT(nn.Module):
    """A two-block vision transformer: 2x2 patches give 16 tokens, plus a class token (17 total)."""

    patch = 2
    dim = 64
    n_heads = 4
    depth = 2
    mlp_hidden = 128

    def __init__(self) -> None:
        super().__init__()
        n_patches = (8 // self.patch) ** 2
        self.patch_embed = nn.Linear(self.patch * self.patch, self.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, self.dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n_patches + 1, self.dim) * 0.02)
        self.blocks = nn.ModuleList(Block(self.dim, self.n_heads, self.mlp_hidden) for _ in range(self.depth))
        self.norm = nn.LayerNorm(self.dim)
        self.head = nn.Linear(self.dim, N_CLASSES)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """``[b, 1, 8, 8]`` -> ``[b, 16, 4]``: row-major 2x2 patches, each flattened row-major."""
        b, p = x.shape[0], self.patch
        x = x.reshape(b, 8 // p, p, 8 // p, p).permute(0, 1, 3, 2, 4)
        return x.reshape(b, (8 // p) ** 2, p * p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(self.patchify(x))
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls, tokens], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, 0]))


_BUILDERS: dict[str, Callable[[], nn.Module]] = {"mlp": DigitsMLP, "cnn": DigitsCNN, "vit": DigitsViT}


def build_digits_model(arch: str) -> nn.Module:
    """A freshly initialised (untrained) digits model.

    Args:
        arch: ``"mlp"``, ``"cnn"`` or ``"vit"``.

    Returns:
        The module, in train mode.
    """
    if arch not in _BUILDERS:
        raise ValueError(f"unknown digits architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    return _BUILDERS[arch]()

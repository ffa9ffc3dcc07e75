"""Which layers can be pruned, and how a weight is laid out as a matrix of N:M groups.

The one place that knows Linear, Conv and GPT-2's transposed ``Conv1D``. Everything that needs a
weight "as rows of groups" (masks, calibrated methods, statistics, pictures, training) goes
through ``GroupedView``:

- Linear ``[out, in]``: as it is; groups run along ``in``.
- GPT-2 ``Conv1D`` stores ``[in, out]``: transposed.
- Conv ``[out, in, *kernel]``, ``channel`` grouping (NVIDIA ASP): ``[out, *kernel, in]`` flattened to
  ``[out, kh·kw·in]``, so M input channels at one kernel position are consecutive.
- Conv, ``kernel`` grouping (the original SR-STE code): ``[out, in·kh·kw]``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

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


CONV_GROUPINGS = ("channel", "kernel")

_ATTENTION_WORDS = re.compile(
    r"(^|[._])(attn|attention|self_attn|q_proj|k_proj|v_proj|o_proj|query|key|value|qkv|c_attn|q|k|v|proj_q|proj_k|proj_v)([._]|$)"
)
_MLP_WORDS = re.compile(
    r"(^|[._])(mlp|ffn|feed_forward|intermediate|fc1|fc2|c_fc|gate_proj|up_proj|down_proj|dense_h_to_4h|dense_4h_to_h|w1|w2|w3)([._]|$)"
)


def is_conv1d_transposed(module: nn.Module) -> bool:
    """GPT-2's ``transformers.pytorch_utils.Conv1D``: a linear layer that stores its weight as ``[in, out]``."""
    return type(module).__name__ == "Conv1D" and not isinstance(module, nn.Conv1d)


def is_prunable(module: nn.Module) -> bool:
    """Linear, Conv1d/2d/3d or GPT-2 Conv1D with a tensor weight."""
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    return (isinstance(module, kinds) or is_conv1d_transposed(module)) and isinstance(
        getattr(module, "weight", None), torch.Tensor)


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Linear and Conv layers (and GPT-2 style Conv1D), in module order."""
    return [(name, module) for name, module in model.named_modules() if is_prunable(module)]


def tied_layers(model: nn.Module, layers: list[tuple[str, nn.Module]] | None = None) -> set[str]:
    """Names of the layers whose weight tensor is also registered elsewhere (e.g. a language
    model's output layer tied to its embeddings): pruning them would prune the other use too.

    Args:
        model: the model.
        layers: its ``prunable_layers`` (computed when None).

    Returns:
        The tied layers' names.
    """
    layers = prunable_layers(model) if layers is None else layers
    seen: dict[int, int] = {}
    for _, module in model.named_modules(remove_duplicate=False):
        for p in module.parameters(recurse=False):
            seen[id(p)] = seen.get(id(p), 0) + 1
    return {name for name, mod in layers if seen.get(id(mod.weight), 0) > 1}


def layer_type(module: nn.Module) -> str:
    """A short type name for reports (GPT-2's Conv1D says that it is transposed)."""
    if is_conv1d_transposed(module):
        return "Conv1D (GPT-2, [in, out])"
    return type(module).__name__


def layer_group(name: str) -> str:
    """``attention``, ``mlp`` or ``other``, from the layer's qualified name."""
    lowered = name.lower()
    if _ATTENTION_WORDS.search(lowered):
        return "attention"
    if _MLP_WORDS.search(lowered):
        return "mlp"
    # BERT names its feed-forward output `layer.N.output.dense` and the attention output
    # `layer.N.attention.output.dense` (caught above).
    if re.search(r"(^|\.)output\.dense$", lowered):
        return "mlp"
    return "other"


def _weight(module: nn.Module) -> torch.Tensor:
    """The weight tensor of a prunable layer."""
    weight = module.weight
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{type(module).__name__}.weight is not a tensor: not a prunable layer")
    return weight


def in_features(module: nn.Module) -> int:
    """Input features (channels for a conv) of a prunable layer."""
    w = _weight(module)
    return int(w.shape[0] if is_conv1d_transposed(module) else w.shape[1])


def out_features(module: nn.Module) -> int:
    """Output features (channels for a conv) of a prunable layer."""
    w = _weight(module)
    return int(w.shape[1] if is_conv1d_transposed(module) else w.shape[0])


@dataclass(frozen=True)
class GroupedView:
    """How one layer's weight (or any tensor of its shape: mask, scores) maps to the 2-D matrix whose
    rows hold the N:M groups as consecutive columns, and back."""

    shape: tuple[int, ...]
    """The weight's own shape."""
    transposed: bool = False
    """GPT-2 Conv1D (weight stored ``[in, out]``)."""
    channel_grouping: bool = True
    """Conv only: ``channel`` grouping (True) or ``kernel`` grouping (False)."""

    @property
    def conv(self) -> bool:
        return len(self.shape) > 2

    @property
    def matrix_shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of the grouped matrix."""
        if self.transposed:
            return (self.shape[1], self.shape[0])
        if len(self.shape) == 1:
            return (1, self.shape[0])
        return (self.shape[0], math.prod(self.shape[1:]))

    @property
    def group_axis(self) -> tuple[int, str]:
        """``(size, label)`` of the axis whose length must be a multiple of M."""
        if self.transposed:
            return self.shape[0], "in_features"
        if self.conv:
            if self.channel_grouping:
                return self.shape[1], "in_channels"
            return math.prod(self.shape[1:]), "in_channels*kernel"
        return self.shape[-1], "in_features"

    def matrix(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (the weight's shape) as the grouped matrix (a view where the layout allows)."""
        if tuple(t.shape) != self.shape:
            raise ValueError(f"tensor of shape {tuple(t.shape)} does not fit a weight of shape {self.shape}")
        if self.transposed:
            return t.t()
        if self.conv:
            if self.channel_grouping:
                return t.movedim(1, -1).reshape(self.shape[0], -1)
            return t.reshape(self.shape[0], -1)
        return t if t.dim() == 2 else t.reshape(1, -1)

    def from_matrix(self, mat: torch.Tensor) -> torch.Tensor:
        """Inverse of ``matrix``: the grouped matrix back in the weight's own layout (contiguous)."""
        if self.transposed:
            return mat.t().contiguous()
        if self.conv:
            if self.channel_grouping:
                moved = (self.shape[0], *self.shape[2:], self.shape[1])
                return mat.reshape(moved).movedim(-1, 1).contiguous()
            return mat.reshape(self.shape).contiguous()
        return mat.reshape(self.shape)


def grouped_view(module: nn.Module, conv_grouping: str = "channel") -> GroupedView:
    """The ``GroupedView`` of a prunable layer's weight.

    Args:
        module: a layer from ``prunable_layers``.
        conv_grouping: ``channel`` or ``kernel`` (conv layers only).
    """
    if conv_grouping not in CONV_GROUPINGS:
        raise ValueError(f"conv_grouping must be one of {CONV_GROUPINGS}, got {conv_grouping!r}")
    return GroupedView(tuple(int(s) for s in _weight(module).shape), is_conv1d_transposed(module),
                       conv_grouping == "channel")


def matrix_view(tensor: torch.Tensor, grouping: str = "channel") -> torch.Tensor:
    """A weight-shaped tensor of a Linear or Conv layer as its grouped matrix (see ``GroupedView``).

    Args:
        tensor: the tensor (Linear ``[out, in]`` or conv ``[out, in, *kernel]``; 1-D becomes one row).
        grouping: ``channel`` or ``kernel`` (conv only).

    Returns:
        A 2-D view or copy.
    """
    if grouping not in CONV_GROUPINGS:
        raise ValueError(f"grouping must be one of {CONV_GROUPINGS}, got {grouping!r}")
    return GroupedView(tuple(tensor.shape), False, grouping == "channel").matrix(tensor)


def group_widths(model: nn.Module, conv_grouping: str = "channel") -> dict[str, int]:
    """Each prunable layer's N:M group axis length: the widths an M must divide.

    Args:
        model: the network.
        conv_grouping: ``channel`` (input channels) or ``kernel`` (in·kh·kw) for conv layers.

    Returns:
        layer name -> size of the axis its groups run along.
    """
    return {name: grouped_view(module, conv_grouping).group_axis[0] for name, module in prunable_layers(model)}


def fitting_group_sizes(widths: dict[str, int], max_m: int) -> list[int]:
    """The group sizes ``2 <= M <= max_m`` that divide every width (a pattern with such an M can
    prune every layer); empty when the widths share no divisor above 1 up to ``max_m``."""
    return [m for m in range(2, max_m + 1) if all(w % m == 0 for w in widths.values())]

"""Channel permutation for N:M (Pool & Yu, 2021; NVIDIA ASP).

Reorders a layer's input channels, and the producing layer's outputs with them, so that N:M groups
hold a better mix of large and small weights. The network computes the same function; more
magnitude survives N:M. ``search`` finds the order for one matrix; ``channels`` applies it across a
model (with progress, stop and resume).
"""
from .channels import ChannelPermutation, permute_channels
from .search import (
    PERMUTATION_CHECK_SAMPLES,
    PermutationSearch,
    StopFn,
    nm_kept_magnitude,
    search_permutation,
    unstructured_kept_magnitude,
)

__all__ = [
    "PERMUTATION_CHECK_SAMPLES", "ChannelPermutation", "PermutationSearch", "StopFn", "nm_kept_magnitude",
    "permute_channels", "search_permutation", "unstructured_kept_magnitude",
]

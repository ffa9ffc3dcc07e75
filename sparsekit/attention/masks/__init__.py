"""Attention mask families as FlexAttention ``mask_mod`` factories, grouped by kind, and the
registry ``PATTERNS`` they fill as they are imported.

The import order below is the registry's order (the order the app lists the patterns in).
"""
# isort: off
# Not sorted: importing a family module registers its patterns, so this order is the registry's.
from .core import MAX_COLUMNS, MAX_PARAM, MaskMod, materialize, materialize_heads
from .registry import PATTERNS, Fit, Param, PatternContext, PatternInfo, arg, pattern
from .local import causal, dilated_window, full, sliding_window
from .global_tokens import a_shape, bigbird, bigbird_random_blocks, longformer
from .sparse_transformer import fixed, strided
from .data_dependent import block_topk, block_topk_table, vertical_slash, vertical_slash_sets
from .vdit import diagonal, multi_diagonal, parse_columns, vertical_stripe
from .compose import and_masks, or_masks, per_head
# isort: on

__all__ = [
    "Fit",
    "MAX_COLUMNS",
    "MAX_PARAM",
    "MaskMod",
    "PATTERNS",
    "Param",
    "PatternContext",
    "PatternInfo",
    "a_shape",
    "and_masks",
    "arg",
    "bigbird",
    "bigbird_random_blocks",
    "block_topk",
    "block_topk_table",
    "causal",
    "diagonal",
    "dilated_window",
    "fixed",
    "full",
    "longformer",
    "materialize",
    "materialize_heads",
    "multi_diagonal",
    "or_masks",
    "parse_columns",
    "pattern",
    "per_head",
    "sliding_window",
    "strided",
    "vertical_slash",
    "vertical_slash_sets",
    "vertical_stripe",
]

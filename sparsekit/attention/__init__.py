"""Attention sparsity: capture real attention, a library of patterns as FlexAttention
``mask_mod`` functions, metrics (density, recall, output error), in-forward application with
end-to-end quality, and a per-head pattern search under a density budget.

    from sparsekit.attention import *
    cap = capture_attention(model, "some text")                 # every layer and head
    m = measure(cap, PatternSpec.of("sliding_window", window=8))  # density / recall / error per head
    q = attention_quality(model, PatternSpec.of("a_shape", sink=4, local=8))   # dense vs sparse
    res = search_heads(calibration_captures(model), SearchConfig(budget=0.3))  # a pattern per head
"""
from .apply import AttentionQuality, SparseAttentionModel, apply_attention, attention_quality, model_shape
from .capture import (
    MAX_TOKENS,
    AttentionCapture,
    attention_support,
    calibration_captures,
    calibration_inputs,
    capture_attention,
    capture_batch,
    passage_ids,
)
from .masks import PATTERNS, MaskMod, PatternContext, and_masks, materialize, materialize_heads, or_masks
from .metrics import HeadMetrics, density, masked_output, measure, measure_many, output_error, plan_masks, recall
from .search import DEFAULT_FAMILIES, SEARCH_FAMILIES, SearchConfig, SearchResult, search_heads
from .specs import AttentionPlan, PatternSpec

__all__ = [
    "AttentionCapture",
    "AttentionPlan",
    "AttentionQuality",
    "DEFAULT_FAMILIES",
    "HeadMetrics",
    "MAX_TOKENS",
    "MaskMod",
    "PATTERNS",
    "PatternContext",
    "PatternSpec",
    "SEARCH_FAMILIES",
    "SearchConfig",
    "SearchResult",
    "SparseAttentionModel",
    "and_masks",
    "apply_attention",
    "attention_quality",
    "attention_support",
    "calibration_captures",
    "calibration_inputs",
    "capture_attention",
    "capture_batch",
    "density",
    "masked_output",
    "materialize",
    "materialize_heads",
    "measure",
    "measure_many",
    "model_shape",
    "or_masks",
    "output_error",
    "passage_ids",
    "plan_masks",
    "recall",
    "search_heads",
]

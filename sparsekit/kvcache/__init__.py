"""Key/value-cache sparsity for causal LMs: Mustafar's per-token / per-channel magnitude pruning, and the
StreamingLLM and H2O eviction baselines (``KVConfig``, ``evaluate_kv``, masks and cache bytes)."""
from .config import KVConfig
from .loop import KVPruner, KVResult, cache_bytes, causal_module, evaluate_kv, greedy_generate
from .masks import (
    bitmap_bytes,
    channel_mask,
    csr_bytes,
    dense_bytes,
    kept_count,
    mustafar_reference_mask,
    token_mask,
)

__all__ = [
    "KVConfig", "KVPruner", "KVResult", "bitmap_bytes", "cache_bytes", "causal_module", "channel_mask", "csr_bytes",
    "dense_bytes", "evaluate_kv", "greedy_generate", "kept_count", "mustafar_reference_mask", "token_mask",
]

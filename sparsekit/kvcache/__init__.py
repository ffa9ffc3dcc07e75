"""Key/value-cache sparsity for causal LMs: Mustafar's per-token / per-channel magnitude and output-aware
pruning, and the StreamingLLM and H2O eviction baselines (``KVConfig``, ``evaluate_kv``, ``kv_sweep``,
masks and cache bytes)."""
from .config import KVConfig
from .evaluate import KVResult, attention_errors, evaluate_kv
from .loop import (
    KVPruner,
    KVTrace,
    cache_bytes,
    causal_module,
    dense_reference,
    greedy_generate,
    private_causal,
    run_kv,
)
from .masks import (
    bitmap_bytes,
    channel_mask,
    csr_bytes,
    dense_bytes,
    kept_count,
    mustafar_reference_mask,
    score_mask,
    token_mask,
)
from .score import KVRecorder, group_sum
from .sweep import SWEEP_METHODS, kv_sweep, sweep_config

__all__ = [
    "KVConfig", "KVPruner", "KVRecorder", "KVResult", "KVTrace", "SWEEP_METHODS", "attention_errors", "bitmap_bytes",
    "cache_bytes", "causal_module", "channel_mask", "csr_bytes", "dense_bytes", "dense_reference", "evaluate_kv",
    "greedy_generate", "group_sum", "kept_count", "kv_sweep", "mustafar_reference_mask", "private_causal", "run_kv",
    "score_mask", "sweep_config", "token_mask",
]

"""Key/value-cache settings as study cells (``kind="kv"``): a grid over KV methods × sparsities × held-out texts.

A KV study's axes, in ``StudySpec`` terms:

- ``models``: causal LMs (``lm:small``, ``hf:<GPT-2 or LLaMA directory>``);
- ``methods``: ``sparsekit.kvcache.SWEEP_METHODS``: ``mustafar-token``, ``mustafar-channel`` (Mustafar's
  magnitude pruning per token vector / per channel), their ``-output`` variants (output-aware score),
  ``streaming`` (StreamingLLM: sinks + last tokens), ``h2o`` (heavy hitters + last tokens);
- ``patterns``: ``kv:S`` (keys and values at sparsity S) or ``kv:SK/SV`` (keys at SK, values at SV);
- ``seeds``: indices of held-out texts (``kv_text_ids``), so a group's interval is taken over texts;
- ``kv``: a ``KVStudy`` with what every cell shares (text length, prefill, dense window, tokens generated).

**Count convention** (the same as ``sparsekit.kvcache``): a vector of D entries at sparsity s keeps
``N = D - floor(s * D)`` entries. StreamingLLM and H2O evict whole tokens, so a sparsity is turned into the
tokens they keep as ``kv_sweep`` does (``kvcache.sweep_config``): the dense window plus the share
``kept_count(D, s) / D`` of the older cached tokens (s the mean of the K and V sparsity), so that at the end
of the text they keep as many entries as Mustafar does.

Metrics of a cell (``kv_metrics``): ``perplexity`` (teacher forced with the pruned cache, over the tokens
after the prefill), ``perplexity_ratio`` (that over the dense model's perplexity on the same text: texts differ
far more in perplexity than settings do, so the ratio's interval over texts is the tighter one), ``agreement``
(next-token argmax equal to the dense model's), ``attention_error`` (the mean over layers and heads of the
relative attention-output error), ``cache_bytes`` (the cache at the end of the text in the method's own
layout, as ``kv_sweep``'s ``bytes``: Mustafar's bitmap, the kept tokens dense for eviction) and
``generated_equal`` (share of the greedy tokens equal to dense).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..serial import JsonConfig

if TYPE_CHECKING:
    from ..kvcache import KVConfig

__all__ = [
    "KV_METHODS", "KV_METRICS", "KV_VERSION", "KVStudy", "canonical_kv_pattern", "check_kv_spec", "head_dim_of",
    "kv_cell_config", "kv_config_for", "kv_metrics", "kv_text_count", "kv_text_ids", "parse_kv_pattern",
]

KV_VERSION = 2
"""Part of every KV cell key: bump when a KV record's contents or meaning change."""
KV_METHODS = ("mustafar-token", "mustafar-channel", "mustafar-token-output", "mustafar-channel-output", "streaming",
              "h2o")
"""The names of ``sparsekit.kvcache.SWEEP_METHODS`` (checked equal by the tests)."""
KV_METRICS = ("perplexity", "perplexity_ratio", "agreement", "attention_error", "cache_bytes", "generated_equal")
KV_HIGHER_IS_BETTER = {"perplexity": False, "perplexity_ratio": False, "agreement": True, "attention_error": False,
                       "cache_bytes": False, "generated_equal": True}
MAX_TEXT_TOKENS = 4096


@dataclass(frozen=True)
class KVStudy(JsonConfig):
    """What every cell of a KV study shares."""

    tokens: int = 128
    """Tokens of each held-out text (the texts are cut into rows of this many)."""
    prompt: int = 32
    """Prefill length; perplexity and agreement cover the later tokens."""
    residual_length: int = 16
    """Newest tokens kept dense (Mustafar's window; the eviction baselines' recent window is sized from it)."""
    new_tokens: int = 16
    """Greedy tokens generated after the whole text, dense and pruned."""

    def __post_init__(self) -> None:
        for name in ("tokens", "prompt", "residual_length", "new_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"KVStudy.{name} must be a whole number >= 0, got {value!r}")
        if not 2 <= self.tokens <= MAX_TEXT_TOKENS:
            raise ValueError(f"KVStudy.tokens must be 2 to {MAX_TEXT_TOKENS}, got {self.tokens}")
        if not 1 <= self.prompt < self.tokens:
            raise ValueError(f"KVStudy.prompt must be 1 to tokens - 1 = {self.tokens - 1} (at least one token after "
                             f"the prefill is scored), got {self.prompt}")
        if self.residual_length >= self.tokens - 1:
            raise ValueError(f"the dense window (residual_length {self.residual_length}) is as long as the "
                             f"{self.tokens - 1} tokens the cache holds: nothing would be pruned")


def parse_kv_pattern(text: str) -> tuple[float, float]:
    """``kv:0.5`` -> ``(0.5, 0.5)``; ``kv:0.7/0.3`` -> ``(0.7, 0.3)`` (key, value sparsity, each in [0, 1))."""
    raw = str(text).strip().lower()
    head, sep, tail = raw.partition(":")
    help_text = "write kv:S (keys and values at sparsity S, e.g. kv:0.5) or kv:SK/SV (e.g. kv:0.7/0.3)"
    if not sep or head != "kv":
        raise ValueError(f"bad KV pattern {text!r}: {help_text}")
    parts = tail.split("/")
    if len(parts) > 2:
        raise ValueError(f"bad KV pattern {text!r}: {help_text}")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"bad KV pattern {text!r}: {tail!r} is not a number; {help_text}") from None
    for v in values:
        if not (math.isfinite(v) and 0.0 <= v < 1.0):
            raise ValueError(f"bad KV pattern {text!r}: a sparsity is the fraction of entries zeroed, in [0, 1) "
                             f"(1 would zero every entry), got {v:g}")
    return values[0], values[-1]


def canonical_kv_pattern(text: str) -> str:
    """``kv:0.50`` -> ``kv:0.5``, ``kv:0.5/0.5`` -> ``kv:0.5``."""
    k, v = parse_kv_pattern(text)
    return f"kv:{k:g}" if k == v else f"kv:{k:g}/{v:g}"


def kv_config_for(method: str, k_sparsity: float, v_sparsity: float, residual_length: int, cached_tokens: int,
                  head_dim: int) -> "KVConfig":
    """The ``KVConfig`` of a KV method name (``KV_METHODS``) at a K/V sparsity: ``kvcache.sweep_config``'s (the
    rule ``kv_sweep`` uses), Mustafar with its own key and value sparsity, the eviction baselines sized at
    the mean of the two."""
    from dataclasses import replace

    from ..kvcache import sweep_config

    if method not in KV_METHODS:
        raise ValueError(f"unknown KV method {method!r}; choose one of {', '.join(KV_METHODS)}")
    if method.startswith("mustafar"):
        base = sweep_config(method, k_sparsity, tokens_cached=cached_tokens, head_dim=head_dim,
                            residual=residual_length)
        return replace(base, v_sparsity=v_sparsity)
    return sweep_config(method, (k_sparsity + v_sparsity) / 2, tokens_cached=cached_tokens, head_dim=head_dim,
                        residual=residual_length)


def head_dim_of(module: Any) -> int:
    """Entries of one head's key vector in a transformers causal LM."""
    config = module.config
    explicit = getattr(config, "head_dim", None)
    if isinstance(explicit, int) and explicit > 0:
        return explicit
    hidden = getattr(config, "n_embd", None) or config.hidden_size
    heads = getattr(config, "n_head", None) or config.num_attention_heads
    return int(hidden) // int(heads)


def _full_rows(loaded: Any, tokens: int) -> Any:
    from ..models.lm_small import heldout_rows, lm_small_heldout

    rows = heldout_rows(loaded.tokenizer, lm_small_heldout(), tokens)
    return rows["input_ids"][rows["attention_mask"].sum(dim=1) == tokens]


def kv_text_count(loaded: Any, tokens: int) -> int:
    """How many held-out texts of ``tokens`` tokens there are (``kv_text_ids``)."""
    return int(_full_rows(loaded, tokens).shape[0])


def kv_text_ids(loaded: Any, index: int, tokens: int) -> Any:
    """Held-out text ``index``: the small LM's held-out pieces tokenised with the model's tokenizer, laid end
    to end and cut into rows of ``tokens`` (``lm_small.heldout_rows``); only full rows count.

    Raises:
        ValueError: an index past the full rows.
    """
    full = _full_rows(loaded, tokens)
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < full.shape[0]:
        raise ValueError(f"held-out text {index!r} does not exist: there are {full.shape[0]} texts of {tokens} "
                         "tokens (indices from 0)")
    return full[index]


def kv_cell_config(method: str, pattern: str, text: int, settings: KVStudy) -> str:
    """The JSON a KV cell carries (and its key hashes): method, pattern, text index and the shared settings."""
    parse_kv_pattern(pattern)
    return json.dumps({"method": method, "pattern": canonical_kv_pattern(pattern), "text": int(text),
                       "settings": json.loads(settings.to_json())}, sort_keys=True)


def kv_metrics(result: Any) -> dict[str, float]:
    """A cell's metrics from an ``evaluate_kv`` result (see the module docstring)."""
    b = result.bytes
    same = sum(a == d for a, d in zip(result.generated, result.dense_generated))
    heads = [e for row in result.attention_error for e in row]
    own = b["bitmap"] if result.config.method == "mustafar" else b["dense"]
    return {"perplexity": result.perplexity, "perplexity_ratio": result.perplexity / result.dense_perplexity,
            "agreement": result.agreement,
            "attention_error": sum(heads) / len(heads) if heads else math.nan, "cache_bytes": float(own),
            "generated_equal": same / len(result.dense_generated) if result.dense_generated else math.nan}


def check_kv_spec(spec: Any) -> None:
    """Clear messages for a KV study's axes (a ``StudySpec`` of ``kind="kv"``)."""
    if not spec.models:
        raise ValueError("the KV study has no models: give at least one causal LM (e.g. lm:small)")
    if len(set(spec.models)) != len(spec.models):
        raise ValueError(f"models lists a value twice: {list(spec.models)}")
    unknown = [m for m in spec.methods if m not in KV_METHODS]
    if unknown:
        raise ValueError(f"unknown KV method(s) {', '.join(map(repr, unknown))}; a KV study compares "
                         f"{', '.join(KV_METHODS)}")
    canon = [canonical_kv_pattern(p) for p in spec.patterns]
    if len(set(canon)) != len(canon):
        raise ValueError(f"patterns lists a setting twice: {list(spec.patterns)}")
    if spec.lambda_w or spec.base is not None or spec.train is not None:
        raise ValueError("lambda_w, base and train belong to oneshot and training studies; a KV study takes "
                         "its shared settings in kv")
    if spec.kv is not None and not isinstance(spec.kv, KVStudy):
        raise ValueError("kv must be KVStudy settings (tokens, prompt, residual_length, new_tokens)")
    bad = [m for m in spec.metrics if m not in KV_METRICS]
    if bad:
        raise ValueError(f"unknown metric(s) {bad}; KV metrics are {', '.join(KV_METRICS)}")

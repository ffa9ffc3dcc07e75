"""``KVConfig``: what to prune or evict in a causal LM's key/value cache, checked on construction.

Three methods:

- ``mustafar`` (Mustafar, arXiv 2505.22913): zero the smallest-|x| entries of the cached keys (at
  ``k_sparsity``) and values (at ``v_sparsity``), per token vector (``axis="token"``) or per channel
  over the pruned tokens (``axis="channel"``); the ``residual_length`` most recent tokens stay dense
  and tokens are pruned as they leave that window. Entries are ranked by ``|x|`` (``score="magnitude"``)
  or by the authors' output-aware score (``score="output"``: keys weighted by the recent queries, values by
  the attention they received; exact formula in ``sparsekit.kvcache.score``).
- ``streaming`` (StreamingLLM): keep the first ``sinks`` tokens and the last ``window`` tokens,
  evict the rest.
- ``h2o`` (Heavy-Hitter Oracle): keep the ``recent`` last tokens and the ``heavy`` older tokens with
  the highest attention accumulated so far, evict the rest (once evicted, a token stays evicted).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..serial import JsonConfig

__all__ = ["AXES", "METHODS", "SCORES", "KVConfig"]

METHODS = ("mustafar", "streaming", "h2o")
AXES = ("token", "channel")
SCORES = ("magnitude", "output")


@dataclass(frozen=True)
class KVConfig(JsonConfig):
    """A key/value-cache pruning or eviction setting (JSON through ``to_json``/``from_json``).

    The sparsity count is exact: a vector of ``D`` entries keeps ``D - floor(s * D)`` of them (the
    largest |x|; equal |x| broken by position, the earlier entry kept). See
    ``sparsekit.kvcache.masks.kept_count`` and its note on the authors' code (one fewer zeroed).
    """

    method: str = "mustafar"
    k_sparsity: float = 0.5
    """Fraction of each key vector (or key channel) zeroed, in [0, 1) (mustafar)."""
    v_sparsity: float = 0.5
    """Fraction of each value vector (or value channel) zeroed, in [0, 1) (mustafar)."""
    axis: str = "token"
    """``token``: each token's head vector (D entries); ``channel``: each channel over the pruned tokens."""
    score: str = "magnitude"
    """``magnitude`` (|x|) or ``output`` (Mustafar's output-aware score, ``sparsekit.kvcache.score``; mustafar)."""
    residual_length: int = 16
    """Most recent tokens kept dense (mustafar)."""
    sinks: int = 4
    """First tokens always kept (streaming)."""
    window: int = 16
    """Last tokens kept (streaming)."""
    heavy: int = 16
    """Older tokens kept by accumulated attention (h2o)."""
    recent: int = 16
    """Last tokens kept (h2o)."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"KVConfig.method must be one of {', '.join(METHODS)}, got {self.method!r}")
        for name in ("k_sparsity", "v_sparsity"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"KVConfig.{name} must be a number in [0, 1) (the fraction of entries zeroed; "
                                 f"1 would zero every entry), got {value!r}")
        if self.axis not in AXES:
            raise ValueError(f"KVConfig.axis must be 'token' (each token vector) or 'channel' (each channel over "
                             f"the pruned tokens), got {self.axis!r}")
        if self.score not in SCORES:
            raise ValueError(f"KVConfig.score must be 'magnitude' (|x|) or 'output' (Mustafar's output-aware "
                             f"score), got {self.score!r}")
        if self.score == "output" and self.method != "mustafar":
            raise ValueError(f"KVConfig.score='output' ranks entries for mustafar pruning; {self.method} evicts "
                             "whole tokens: leave score='magnitude'")
        for name in ("residual_length", "sinks", "window", "heavy", "recent"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"KVConfig.{name} must be a whole number >= 0, got {value!r}")
        if self.method == "streaming" and self.sinks + self.window == 0:
            raise ValueError("KVConfig for streaming keeps no token at all: set sinks or window above 0")
        if self.method == "h2o" and self.heavy + self.recent == 0:
            raise ValueError("KVConfig for h2o keeps no token at all: set heavy or recent above 0")

    @property
    def dense_tokens(self) -> int:
        """The most recent tokens that no rule touches (the dense window)."""
        return {"mustafar": self.residual_length, "streaming": self.window, "h2o": self.recent}[self.method]

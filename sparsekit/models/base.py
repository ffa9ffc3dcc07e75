"""The one shape every model source is loaded into."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

DEFAULT_MEMORY_BUDGET_MB = 2048


def memory_budget_mb() -> float:
    """Largest model (parameter bytes, MB) the loader accepts: ``$SPARSEKIT_MEMORY_BUDGET_MB``
    or 2048."""
    raw = os.environ.get("SPARSEKIT_MEMORY_BUDGET_MB")
    if raw is None:
        return float(DEFAULT_MEMORY_BUDGET_MB)
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"SPARSEKIT_MEMORY_BUDGET_MB must be a number of megabytes, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"SPARSEKIT_MEMORY_BUDGET_MB must be positive, got {raw!r}")
    return value


def check_budget(n_bytes: int, budget_mb: float | None, what: str) -> None:
    """Raise ``ValueError`` when ``n_bytes`` exceeds the budget, naming both sizes."""
    budget = memory_budget_mb() if budget_mb is None else float(budget_mb)
    size_mb = n_bytes / 2**20
    if size_mb > budget:
        raise ValueError(
            f"{what} needs {size_mb:,.1f} MB of weights, over the memory budget of {budget:,.4g} MB "
            "(raise SPARSEKIT_MEMORY_BUDGET_MB or pass memory_budget_mb to allow it)"
        )


def state_token(module: nn.Module) -> tuple:
    """What a cache of a module's outputs depends on: the identity, storage and in-place version of
    every parameter and buffer. torch bumps a tensor's version on each in-place write, so the token
    changes when the module is modified in place or a tensor of it is replaced.

    Args:
        module: any module.

    Returns:
        A hashable token; equal tokens mean nothing was changed in between.
    """
    parts = []
    for t in [*module.parameters(), *module.buffers()]:
        try:
            version = t._version
        except RuntimeError:  # a tensor made under inference_mode keeps no version counter
            version = -1
        parts.append((id(t), t.data_ptr(), tuple(t.shape), version))
    return tuple(parts)


def module_of(model: nn.Module | LoadedModel) -> nn.Module:
    """The ``nn.Module`` of a ``LoadedModel`` (any object's ``.module``), or the module itself.

    Raises:
        TypeError: what it comes to is not an ``nn.Module``.
    """
    source = getattr(model, "module", model)
    if not isinstance(source, nn.Module):
        raise TypeError(f"expected an nn.Module or a LoadedModel, got {type(model).__name__}")
    return source


# A quality metric maps a module (the dense one or a sparsified copy) to named numbers.
# Its first key is the headline figure; ``higher_is_better`` says which way is good.
QualityFn = Callable[[nn.Module], dict[str, float]]


@dataclass
class LoadedModel:
    """A model from any source, ready to sparsify.

    The ``module`` is shared (``st.cache_resource`` hands the same object to every browser session):
    never modify it in place; ``sparsekit.sparsify`` works on a copy.
    """

    spec: str
    """The spec string it was loaded from (``minilm``, ``digits:cnn``, ``hf:<dir>``)."""
    name: str
    """Human-readable name."""
    kind: str
    """``encoder`` (sentence embeddings), ``causal-lm`` or ``image-classifier``."""
    module: nn.Module
    """The dense model, in eval mode, on CPU."""
    quality_fn: QualityFn
    """``quality_fn(module) -> {metric: value}``; the first key is the headline metric."""
    calibration: Any
    """Inputs for calibration-based methods: a float tensor batch for images, a dict of token
    tensors (``input_ids``, ``attention_mask``) for text."""
    tokenizer: Any = None
    """Hugging Face tokenizer for text models, else None."""
    preprocess: Callable[[Any], Any] | None = None
    """Turns raw user input (a list of strings, or 8x8 images as a float array) into model input."""
    metric_names: dict[str, str] = field(default_factory=dict)
    """Metric key -> label with units, e.g. ``{"accuracy": "held-out accuracy (%)"}``."""
    higher_is_better: dict[str, bool] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    """Source details: path, architecture, dtype, notes on unsupported parts."""

    _dense_quality: dict[str, float] | None = field(default=None, repr=False)
    _dense_key: tuple | None = field(default=None, repr=False)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    @property
    def n_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.module.parameters())

    def quality(self, module: nn.Module | None = None) -> dict[str, float]:
        """Quality of ``module`` (default: the dense model, computed once and remembered)."""
        if module is None or module is self.module:
            # Remembered for these weights and this evaluation set (a metric object may swap its set).
            key = (state_token(self.module), getattr(self.quality_fn, "eval_key", None))
            if self._dense_quality is None or self._dense_key != key:
                with torch.inference_mode():
                    self._dense_quality = self.quality_fn(self.module)
                self._dense_key = key
            return dict(self._dense_quality)
        with torch.inference_mode():
            return self.quality_fn(module)

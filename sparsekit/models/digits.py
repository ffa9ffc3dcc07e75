"""Three small classifiers for scikit-learn's 8x8 handwritten digits, shipped trained.

The models are tiny on purpose: they train in seconds on a laptop CPU, so a browser user can see
what sparsity does to an MLP, a CNN and a vision transformer without downloading anything. The
weights of the default training configs ship with the package (``bundled/<arch>.safetensors``,
written by ``python scripts/train_digits.py``), so every machine starts from
the same weights: training is float-order dependent, and a model retrained on another CPU would
differ slightly. Any other config is trained on first use and cached on disk as safetensors
bytes, keyed by architecture, training config and ``VERSION`` (bump it whenever an architecture
changes shape or behaviour; bundled files of an older version are then ignored).

Every model takes a float tensor ``[batch, 1, 8, 8]`` with values in 0..1 (the raw 0..16 pixel
values divided by 16) and returns logits ``[batch, 10]``. The architectures live in
``digits_nets`` and are re-exported here; the loading code stays in this module because tests
(and callers) patch ``BUNDLED_DIR`` and ``train_digits_model`` on it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..cache import get_cache, make_key
from ..progress import ProgressFn
from .base import LoadedModel, check_budget
from .digits_nets import (
    ARCH_LABELS,
    ARCHITECTURES,
    N_CLASSES,
    Attention,
    Block,
    DigitsCNN,
    DigitsMLP,
    DigitsViT,
    MLPBlock,
    build_digits_model,
)
from .weights import load_state_dict_strict, safetensors_header

__all__ = [
    "ARCH_LABELS", "ARCHITECTURES", "BUNDLED_DIR", "CALIBRATION_SIZE", "DEFAULT_TRAIN_CONFIGS", "N_CLASSES",
    "PIXEL_MAX", "VERSION", "Attention", "Block", "DigitsCNN", "DigitsData", "DigitsMLP", "DigitsTrainConfig",
    "DigitsViT",
    "MLPBlock", "ProgressFn", "build_digits_model", "bundled_path", "digits_accuracy", "digits_model_cached",
    "digits_split", "load_digits", "preprocess_digits", "train_digits_model", "trained_digits_model",
    "write_bundled",
]

VERSION = 1
"""Bump when an architecture or the training recipe changes, so stale cached weights are ignored."""
PIXEL_MAX = 16.0
CALIBRATION_SIZE = 256



@dataclass(frozen=True)
class DigitsTrainConfig:
    """How a digits model is trained; part of the cache key."""

    epochs: int = 20
    """Passes over the training split."""
    batch_size: int = 64
    """Images per optimiser step."""
    lr: float = 2e-3
    """Peak AdamW learning rate (one-cycle schedule: 10% warm-up, then cosine decay)."""
    weight_decay: float = 1e-4
    """AdamW decoupled weight decay."""
    seed: int = 0
    """Seed for weight initialisation and batch order."""
    test_fraction: float = 0.2
    """Share of the 1797 images held out for the accuracy metric (stratified by label)."""
    split_seed: int = 0
    """Seed of the train/test split; changing it changes the held-out set."""


DEFAULT_TRAIN_CONFIGS: Mapping[str, DigitsTrainConfig] = {
    "mlp": DigitsTrainConfig(epochs=20, lr=2e-3),
    "cnn": DigitsTrainConfig(epochs=20, lr=3e-3),
    # Transformers lack the convolutional prior, so the ViT needs more passes and stronger decay.
    "vit": DigitsTrainConfig(epochs=30, lr=2e-3, weight_decay=0.05),
}

_NAMES = {"mlp": "digits MLP (64-256-128-10)", "cnn": "digits CNN (2 conv + linear)",
          "vit": "digits ViT (2 blocks, dim 64)"}


# ---------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class DigitsData:
    """The digits split as model-ready tensors (``x`` is ``[n, 1, 8, 8]`` in 0..1)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def digits_split(test_fraction: float = 0.2, split_seed: int = 0) -> DigitsData:
    """scikit-learn's digits, split stratified by label.

    Args:
        test_fraction: share of the images held out.
        split_seed: ``random_state`` of ``train_test_split``.

    Returns:
        The train and held-out tensors.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        data.images, data.target, test_size=test_fraction, random_state=split_seed, stratify=data.target
    )
    return DigitsData(
        x_train=preprocess_digits(x_train),
        y_train=torch.as_tensor(y_train, dtype=torch.long),
        x_test=preprocess_digits(x_test),
        y_test=torch.as_tensor(y_test, dtype=torch.long),
    )


def preprocess_digits(images: Any) -> torch.Tensor:
    """Raw 8x8 digit images (pixel values 0..16) -> model input.

    Args:
        images: an array or tensor shaped ``[8, 8]``, ``[n, 8, 8]``, ``[n, 64]`` or ``[n, 1, 8, 8]``.

    Returns:
        float32 tensor ``[n, 1, 8, 8]`` with values in 0..1.
    """
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    shape = tuple(x.shape)
    if shape == (8, 8):
        x = x.reshape(1, 1, 8, 8)
    elif x.ndim == 3 and shape[1:] == (8, 8):
        x = x.unsqueeze(1)
    elif x.ndim == 2 and shape[1] == 64:
        x = x.reshape(-1, 1, 8, 8)
    elif not (x.ndim == 4 and shape[1:] == (1, 8, 8)):
        raise ValueError(f"expected 8x8 images shaped [8, 8], [n, 8, 8], [n, 64] or [n, 1, 8, 8]; got {list(shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("digit images contain NaN or infinite values")
    if x.numel() and (x.min() < 0 or x.max() > PIXEL_MAX):
        raise ValueError(f"digit pixel values must lie in 0..16, got {x.min().item():g}..{x.max().item():g}")
    return (x / PIXEL_MAX).contiguous()


# ---------------------------------------------------------------------------------------------
# Training and the cache


def train_digits_model(
    arch: str, config: DigitsTrainConfig, data: DigitsData, progress: ProgressFn | None = None
) -> nn.Module:
    """Train a digits model from scratch, deterministically for a given config.

    Args:
        arch: ``"mlp"``, ``"cnn"`` or ``"vit"``.
        config: training settings.
        data: the split to train on (only the training half is used).
        progress: optional ``progress(fraction, message)`` callback, called once per epoch.

    Returns:
        The trained module, in eval mode.
    """
    # Seed a forked RNG so that training is reproducible without resetting the caller's RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return _train(arch, config, data, progress)


def _train(arch: str, config: DigitsTrainConfig, data: DigitsData, progress: ProgressFn | None) -> nn.Module:
    model = build_digits_model(arch)
    gen = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    n = data.x_train.shape[0]
    steps_per_epoch = math.ceil(n / config.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch, pct_start=0.1, anneal_strategy="cos"
    )
    model.train()
    for epoch in range(config.epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, config.batch_size):
            idx = order[start : start + config.batch_size]
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if progress is not None:
            progress((epoch + 1) / config.epochs, f"training digits {arch}: epoch {epoch + 1}/{config.epochs}")
    return model.eval()


def _state_bytes(model: nn.Module, metadata: dict[str, str]) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().contiguous() for k, v in model.state_dict().items()}, metadata=metadata)


BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
"""Where the trained weights of the default configs ship."""


def bundled_path(arch: str) -> Path:
    return BUNDLED_DIR / f"{arch}.safetensors"


def _bundled_blob(arch: str, config: DigitsTrainConfig) -> bytes | None:
    """The shipped weights of ``arch`` when they were trained with ``config`` by this ``VERSION``."""
    path = bundled_path(arch)
    if arch not in DEFAULT_TRAIN_CONFIGS or not path.is_file():
        return None
    blob = path.read_bytes()
    meta = _metadata(blob)
    try:
        same = (meta.get("version") == str(VERSION) and meta.get("arch") == arch
                and json.loads(meta.get("train_config", "null")) == dataclasses.asdict(config))
    except ValueError:
        return None
    return blob if same else None


def digits_model_cached(arch: str, config: "DigitsTrainConfig | None" = None) -> bool:
    """Whether ``arch`` (default training config) loads without training: shipped or in the disk cache."""
    if arch not in DEFAULT_TRAIN_CONFIGS:
        return False
    config = config or DEFAULT_TRAIN_CONFIGS[arch]
    if _bundled_blob(arch, config) is not None:
        return True
    return make_key("digits-model", arch, dataclasses.asdict(config), VERSION) in get_cache()


def trained_digits_model(
    arch: str,
    config: DigitsTrainConfig | None = None,
    data: DigitsData | None = None,
    progress: ProgressFn | None = None,
    *,
    use_bundled: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """A trained digits model: the shipped weights, the disk cache, or trained now (and then cached).

    Args:
        arch: ``"mlp"``, ``"cnn"`` or ``"vit"``.
        config: training settings (default: ``DEFAULT_TRAIN_CONFIGS[arch]``).
        data: the split (default: ``digits_split`` with the config's split settings).
        progress: optional ``progress(fraction, message)`` callback.
        use_bundled: take the shipped weights when they match ``config`` (False: cache or train).

    Returns:
        ``(module in eval mode, details)`` where details has ``source`` (``bundled``, ``cache`` or
        ``trained``), ``cached`` (not trained now) and ``train_seconds``.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    if arch not in DEFAULT_TRAIN_CONFIGS:
        raise ValueError(f"unknown digits architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    config = config or DEFAULT_TRAIN_CONFIGS[arch]
    candidates = []
    if use_bundled:
        candidates.append(("bundled", _bundled_blob(arch, config)))
    key = make_key("digits-model", arch, dataclasses.asdict(config), VERSION)
    cache = get_cache()
    candidates.append(("cache", cache.get(key)))
    for source, blob in candidates:
        if not isinstance(blob, bytes):
            continue
        try:
            model = build_digits_model(arch)
            load_state_dict_strict(model, load(blob), f"digits:{arch}")
            train_seconds = float(_metadata(blob).get("train_seconds", "nan"))
            return model.eval(), {"source": source, "cached": True, "train_seconds": train_seconds}
        except (SafetensorError, ValueError):
            continue  # An unreadable or stale entry: fall through (and retrain over a cache entry).
    if data is None:
        data = digits_split(config.test_fraction, config.split_seed)
    start = time.perf_counter()
    model = train_digits_model(arch, config, data, progress)
    seconds = time.perf_counter() - start
    cache.set(key, _state_bytes(model, {"arch": arch, "train_seconds": f"{seconds:.3f}"}))
    return model, {"source": "trained", "cached": False, "train_seconds": seconds}


def write_bundled(arch: str) -> Path:
    """Train ``arch`` with its default config (no cache, no bundled file) and write the shipped file.

    Returns:
        The path written; its metadata records the config, ``VERSION``, the held-out accuracy and
        the torch version it was trained with.
    """
    config = DEFAULT_TRAIN_CONFIGS[arch]
    data = digits_split(config.test_fraction, config.split_seed)
    start = time.perf_counter()
    model = train_digits_model(arch, config, data)
    seconds = time.perf_counter() - start
    accuracy = digits_accuracy(model, data.x_test, data.y_test)
    BUNDLED_DIR.mkdir(parents=True, exist_ok=True)
    path = bundled_path(arch)
    path.write_bytes(_state_bytes(model, {
        "arch": arch, "version": str(VERSION), "train_config": json.dumps(dataclasses.asdict(config), sort_keys=True),
        "accuracy": f"{accuracy:.6f}", "train_seconds": f"{seconds:.3f}", "torch": torch.__version__,
        "written_by": "python scripts/train_digits.py"}))
    return path


def _metadata(blob: bytes) -> dict[str, str]:
    return safetensors_header(blob).get("__metadata__", {}) or {}


# ---------------------------------------------------------------------------------------------
# LoadedModel


def digits_accuracy(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy in percent.

    Args:
        module: a digits model.
        x: model input ``[n, 1, 8, 8]``.
        y: labels ``[n]``.

    Returns:
        100 x the fraction of images whose argmax logit equals the label.
    """
    with torch.inference_mode():
        pred = module(x).argmax(dim=-1)
    return 100.0 * int((pred == y).sum()) / max(int(y.numel()), 1)


def load_digits(
    arch: str,
    *,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    memory_budget_mb: float | None = None,
    progress: ProgressFn | None = None,
) -> LoadedModel:
    """A digits model as a ``LoadedModel`` (trained or cached, or with the given weights).

    Args:
        arch: ``"mlp"``, ``"cnn"`` or ``"vit"``.
        state_dict: user weights to use instead of training; must match the architecture exactly.
        memory_budget_mb: size limit (default ``$SPARSEKIT_MEMORY_BUDGET_MB``).
        progress: optional ``progress(fraction, message)`` callback.

    Returns:
        The loaded model; ``quality_fn`` gives held-out accuracy in percent.
    """
    config = DEFAULT_TRAIN_CONFIGS[arch] if arch in DEFAULT_TRAIN_CONFIGS else None
    if config is None:
        raise ValueError(f"unknown digits architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    data = digits_split(config.test_fraction, config.split_seed)
    notes: list[str] = []
    if state_dict is not None:
        module = build_digits_model(arch)
        load_state_dict_strict(module, state_dict, f"digits:{arch}")
        module.eval()
        source = "upload"
        notes.append("weights supplied by the user; accuracy is measured on the built-in held-out split")
        details: dict[str, Any] = {}
    else:
        module, details = trained_digits_model(arch, config, data, progress)
        source = details["source"]
        if source == "bundled":
            notes.append("weights shipped with sparsekit (default training config, identical on every machine)")
    check_budget(sum(p.numel() * p.element_size() for p in module.parameters()), memory_budget_mb, f"digits:{arch}")
    x_test, y_test = data.x_test, data.y_test

    def quality_fn(m: nn.Module) -> dict[str, float]:
        return {"accuracy": digits_accuracy(m, x_test, y_test)}

    info: dict[str, Any] = {
        "source": source,
        "architecture": type(module).__name__,
        "dtype": "float32",
        "notes": notes,
        "train_config": dataclasses.asdict(config),
        "n_train": int(data.x_train.shape[0]),
        "n_test": int(x_test.shape[0]),
        "weights_sha256": hashlib.sha256(_state_bytes(module, {})).hexdigest(),
    }
    if "train_seconds" in details:
        info["train_seconds"] = details["train_seconds"]
    if progress is not None:
        progress(1.0, f"digits:{arch} ready")
    return LoadedModel(
        spec=f"digits:{arch}",
        name=_NAMES[arch],
        kind="image-classifier",
        module=module,
        quality_fn=quality_fn,
        calibration=data.x_train[:CALIBRATION_SIZE].clone(),
        preprocess=preprocess_digits,
        metric_names={"accuracy": "held-out accuracy (%)"},
        higher_is_better={"accuracy": True},
        info=info,
    )

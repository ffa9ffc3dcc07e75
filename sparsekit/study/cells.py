"""Running one cell: ``run_cell(cell) -> record``, the same function on every backend.

A worker process loads a model once and keeps it (``worker_model``, one model at a time, so the memory
estimate of ``study.memory`` holds), and never modifies it: ``sparsify`` prunes a deep copy.

What a seed changes (the record says it in ``seed_matters`` and ``seed_effect``):

- calibrated methods (Wanda, SparseGPT, Taylor): the calibration subset, drawn with that seed from the
  model's calibration pool: for digits models ``CALIBRATION_SIZE`` of the training-split images, for
  text models ``CALIBRATION_SENTENCES`` of the odd-indexed built-in sentences (the even ones score quality);
- random: ``SparsifyConfig.seed``, the random mask;
- magnitude: nothing (``seed_matters`` is False: its seeds repeat one number, and share one cache entry);
- training: the initial weights and the batch order.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, replace
from functools import lru_cache
from typing import Any, TypedDict, Unpack

import torch

from ..evaluate import evaluate
from ..methods.types import Calibration
from ..models.base import LoadedModel
from ..models.digits import DigitsData
from ..store import finite_json
from .records import CellRecord
from .spec import Cell

MODEL_CACHE_SIZE = 1
"""Models a worker keeps loaded; cells arrive model-major, so one is enough and memory stays bounded."""
DELAY_ENV = "SPARSEKIT_STUDY_CELL_DELAY_S"
"""Seconds every cell sleeps before it starts (default 0): a testing and demo aid that makes cells slow
enough to watch progress or to kill a worker mid-cell."""
RUNTIME_FIELDS = ("seconds", "worker")
"""Record fields that differ between two runs of the same cell (timing, which process); the rest is
deterministic wherever the computation is."""

_MODELS: OrderedDict[str, LoadedModel] = OrderedDict()
_MODELS_LOCK = threading.Lock()


class CellContext(TypedDict, total=False):
    """What an in-process run may hand ``run_cell`` besides the cell (``backends.LocalBackend``)."""

    loaded: LoadedModel | None
    calibration: Calibration | None
    data: DigitsData | None


def worker_model(spec: str) -> LoadedModel:
    """The loaded model for ``spec``, loaded once per process.

    Args:
        spec: model spec for ``sparsekit.load_model``.

    Returns:
        The shared ``LoadedModel`` (never modify it).
    """
    with _MODELS_LOCK:  # a page may run studies from several sessions' threads
        loaded = _MODELS.get(spec)
        if loaded is None:
            from ..models import load_model

            while len(_MODELS) >= MODEL_CACHE_SIZE:
                _MODELS.popitem(last=False)
            loaded = load_model(spec)
            _MODELS[spec] = loaded
        _MODELS.move_to_end(spec)
        return loaded


@lru_cache(maxsize=4)
def _digits_pool(test_fraction: float, split_seed: int) -> torch.Tensor:
    from ..models.digits import digits_split

    return digits_split(test_fraction, split_seed).x_train


def _draw(pool_size: int, count: int, seed: int) -> list[int]:
    # Sorted, so a subset keeps the pool's order (float sums over calibration batches depend on it).
    gen = torch.Generator().manual_seed(int(seed))
    return sorted(torch.randperm(pool_size, generator=gen)[:count].tolist())


def calibration_subset(loaded: LoadedModel, seed: int) -> tuple[Calibration, dict[str, Any]]:
    """A seeded calibration set for a model, the same size as its own.

    Args:
        loaded: a ``LoadedModel``.
        seed: seed of the draw.

    Returns:
        ``(calibration inputs, info)``; info has ``pool`` and ``drawn`` sizes, ``seed`` and ``source``.
        A model with no known pool gets its own calibration set back (``source`` says so).
    """
    if loaded.spec.startswith("digits:") and isinstance(loaded.calibration, torch.Tensor):
        from ..models.digits import CALIBRATION_SIZE, DEFAULT_TRAIN_CONFIGS

        cfg = DEFAULT_TRAIN_CONFIGS.get(loaded.spec.split(":", 1)[1])
        if cfg is not None:
            pool = _digits_pool(cfg.test_fraction, cfg.split_seed)
            idx = _draw(len(pool), CALIBRATION_SIZE, seed)
            info = {"source": "digits training split", "pool": len(pool), "drawn": len(idx), "seed": seed}
            return pool[idx].clone(), info
    if getattr(loaded, "tokenizer", None) is not None:
        from ..models import text, text_metrics

        sentences = text_metrics.pick_sentences(10**9, 1)  # the whole odd-indexed pool
        idx = _draw(len(sentences), text.CALIBRATION_SENTENCES, seed)
        ids = text_metrics.tokenize(loaded.tokenizer, [sentences[i] for i in idx])
        pad_id = _pad_id(loaded.tokenizer)
        pack = getattr(text, "pack", None)
        if loaded.kind == "causal-lm" and pack is not None:
            # As the loader does: causal LMs calibrate on the sentences packed into rows.
            batch = pack(ids, getattr(text, "CALIBRATION_PACK_LENGTH", 128), pad_id)
        else:
            batch = text_metrics.pad(ids, pad_id)
        info = {"source": "odd-indexed built-in sentences", "pool": len(sentences), "drawn": len(idx), "seed": seed}
        return batch, info
    return loaded.calibration, {"source": "the model's own calibration set (no pool to draw from)",
                                "pool": None, "drawn": None, "seed": None}


def _pad_id(tokenizer: Any) -> int:
    from ..models import text_metrics

    helper = getattr(text_metrics, "padding_id", None)
    if helper is not None:
        return helper(tokenizer)
    for attr in ("pad_token_id", "eos_token_id", "unk_token_id"):
        if isinstance(getattr(tokenizer, attr, None), int):
            return getattr(tokenizer, attr)
    return 0


def run_oneshot(cell: Cell, *, loaded: LoadedModel | None = None, calibration: Calibration | None = None) -> CellRecord:
    """Prune and measure one oneshot cell (``sparsekit.evaluate.evaluate``).

    Args:
        cell: the cell.
        loaded: the model (default: ``worker_model(cell.model)``).
        calibration: calibration inputs to use instead of the cell's own (as ``compare`` passes them).

    Returns:
        The record (see ``run_cell``).
    """
    loaded = loaded if loaded is not None else worker_model(cell.model)
    config = cell.sparsify_config()
    calib_info = None
    if calibration is None and cell.calibration_seed is not None:
        calibration, calib_info = calibration_subset(loaded, cell.calibration_seed)
    row = evaluate(loaded, config, calibration=calibration)
    if calib_info is not None:
        seed_matters = calib_info["pool"] is not None and calib_info["pool"] > calib_info["drawn"]
    else:
        seed_matters = cell.seed_effect == "random mask"
    metrics = row.quality
    return CellRecord(
        **cell.labels(), status="done", error=None,
        metrics=dict(metrics),
        higher_is_better={k: bool(loaded.higher_is_better.get(k, True)) for k in metrics},
        kept_fraction=1.0 - row.sparsity, memory_bytes=row.best_bytes, dense_bytes=row.dense_bytes,
        seed_matters=seed_matters, seed_effect=cell.seed_effect if seed_matters else "",
        calibration=calib_info, seconds=row.seconds, detail=row.to_json(),
    )


def run_training(cell: Cell, *, data: DigitsData | None = None) -> CellRecord:
    """Train one STE/SR-STE cell on the digits data and measure it (``seedresults.run_metrics``). A cell
    interrupted half-way continues from its last finished epoch when run again (``train_resuming``).

    Args:
        cell: the cell.
        data: the digits split (default ``digits_split()``).

    Returns:
        The record (see ``run_cell``).
    """
    from ..models.digits import digits_split
    from ..training.loop import train_resuming
    from ..training.seedresults import LOWER_IS_BETTER, METRICS, run_metrics

    cfg = cell.train_config()
    start = time.perf_counter()
    run = run_metrics(train_resuming(cfg, data=data if data is not None else digits_split()))
    detail = asdict(run)
    return CellRecord(
        **cell.labels(), status="done", error=None,
        metrics={k: float(detail[k]) for k in METRICS},
        higher_is_better={k: not LOWER_IS_BETTER[k] for k in METRICS},
        kept_fraction=cfg.n / cfg.m, memory_bytes=None, dense_bytes=None,
        seed_matters=True, seed_effect=cell.seed_effect, calibration=None,
        seconds=time.perf_counter() - start, detail=detail,
    )


def run_kv(cell: Cell, *, loaded: LoadedModel | None = None) -> CellRecord:
    """Measure one KV-cache cell (``sparsekit.kvcache.evaluate_kv`` on its held-out text; ``study.kvcells``).

    Args:
        cell: the cell (``kind="kv"``).
        loaded: the causal LM (default: loaded once per process by spec).

    Returns:
        The record: ``kvcells.KV_METRICS``, ``kept_fraction`` (nonzero cache entries of all),
        ``memory_bytes`` (the cache in its cheapest layout), ``dense_bytes`` (the full dense cache) and the
        bytes per layout, the ``KVConfig`` run and both generations in ``detail``.
    """
    from ..kvcache import causal_module, evaluate_kv
    from .kvcells import (
        KV_HIGHER_IS_BETTER,
        KVStudy,
        head_dim_of,
        kv_config_for,
        kv_metrics,
        kv_text_ids,
        parse_kv_pattern,
    )

    loaded = loaded if loaded is not None else worker_model(cell.model)
    module = causal_module(loaded)
    data = json.loads(cell.config)
    settings = KVStudy.from_json(data["settings"])
    k, v = parse_kv_pattern(data["pattern"])
    config = kv_config_for(data["method"], k, v, settings.residual_length, settings.tokens - 1, head_dim_of(module))
    ids = kv_text_ids(loaded, int(data["text"]), settings.tokens)
    start = time.perf_counter()
    result = evaluate_kv(loaded, ids, config, prompt=settings.prompt, new_tokens=settings.new_tokens,
                         generation_prompt=settings.tokens if settings.new_tokens else None)
    metrics = kv_metrics(result)
    return CellRecord(
        **cell.labels(), status="done", error=None, metrics=dict(metrics),
        higher_is_better={m: KV_HIGHER_IS_BETTER[m] for m in metrics}, kept_fraction=result.kept_fraction,
        memory_bytes=int(metrics["cache_bytes"]), dense_bytes=result.bytes["full"], seed_matters=True,
        seed_effect=cell.seed_effect, calibration=None, seconds=time.perf_counter() - start,
        detail={"config": json.loads(config.to_json()), "bytes": dict(result.bytes),
                "dense_perplexity": result.dense_perplexity, "generated": list(result.generated),
                "dense_generated": list(result.dense_generated), "text": int(data["text"]),
                "attention_error": [list(row) for row in result.attention_error]},
    )


def run_soup(cell: Cell, *, loaded: LoadedModel | None = None) -> CellRecord:
    """Run one soup ingredient (``study.soupcells.run_ingredient``): a fixed-mask recovery with the cell's seed.

    Returns:
        The record: the ingredient's final quality as metrics, the whole run (weights, mask) in ``detail``.
    """
    from .soupcells import SEED_EFFECT, run_ingredient

    out = run_ingredient(cell.config, loaded if loaded is not None else worker_model(cell.model))
    return CellRecord(**cell.labels(), status="done", error=None, metrics=out["metrics"],
                      higher_is_better=out["higher_is_better"], kept_fraction=out["kept_fraction"], memory_bytes=None,
                      dense_bytes=None, seed_matters=True, seed_effect=SEED_EFFECT, calibration=None,
                      seconds=out["seconds"], detail=out["detail"])


def run_cell(cell: Cell, *, loaded: LoadedModel | None = None, calibration: Calibration | None = None,
             data: DigitsData | None = None) -> CellRecord:
    """Run one cell. Pure: same cell, same record (apart from ``RUNTIME_FIELDS``) on any backend.

    Args:
        cell: the cell.
        loaded: oneshot: a model already loaded (default: loaded once per process by spec).
        calibration: oneshot: calibration inputs overriding the cell's draw.
        data: training: the digits split.

    Returns:
        The ``CellRecord`` (``status`` ``done``, ``worker`` this process), its values strict JSON (a NaN
        metric as None): the cell's axis values, ``metrics``, ``higher_is_better``, ``kept_fraction``,
        ``memory_bytes`` (best format, oneshot), ``dense_bytes``, ``seed_matters``, ``seed_effect``,
        ``calibration`` (the draw), ``seconds`` (compute) and ``detail`` (the ``CompareRow`` or the
        ``SeedRun`` as JSON).

    Raises:
        Whatever the computation raises (``safe_run`` turns it into a failed record).
    """
    if cell.kind == "oneshot":
        record = run_oneshot(cell, loaded=loaded, calibration=calibration)
    elif cell.kind == "training":
        record = run_training(cell, data=data)
    elif cell.kind == "kv":
        record = run_kv(cell, loaded=loaded)
    elif cell.kind == "soup":
        record = run_soup(cell, loaded=loaded)
    else:
        raise ValueError(f"unknown cell kind {cell.kind!r}")
    return CellRecord.from_json(finite_json(replace(record, worker=worker_info()).to_json()))


def worker_info() -> dict[str, int | str]:
    """``{"pid", "host"}`` of this process."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


def failed_record(cell: Cell, error: BaseException | str) -> CellRecord:
    """The record of a cell that raised: its axis values, ``status`` ``failed`` and the message."""
    message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return CellRecord(**cell.labels(), status="failed", error=message[:2000], metrics={}, higher_is_better={},
                      kept_fraction=None, memory_bytes=None, dense_bytes=None, seed_matters=None,
                      seed_effect="", calibration=None, seconds=None, detail=None, worker=worker_info())


def safe_run(cell: Cell, **context: Unpack[CellContext]) -> CellRecord:
    """``run_cell`` that returns a failed record instead of raising (backends run this).

    Args:
        cell: the cell.
        **context: passed to ``run_cell``.

    Returns:
        The record, ``status`` ``done`` or ``failed``.
    """
    delay = float(os.environ.get(DELAY_ENV, "0") or 0)
    if delay > 0:
        time.sleep(delay)
    try:
        return run_cell(cell, **context)
    except Exception as err:  # noqa: BLE001 - any error of one cell is that cell's result; the study goes on
        return failed_record(cell, err)


def comparable(record: CellRecord) -> dict[str, Any]:
    """A record as JSON without its run-dependent fields (timing, worker), for comparing two runs of a cell."""
    out = {k: v for k, v in record.to_json().items() if k not in RUNTIME_FIELDS}
    detail = out.get("detail")
    if isinstance(detail, dict):
        out["detail"] = {k: v for k, v in detail.items() if k not in ("seconds", "prune_seconds")}
    return out

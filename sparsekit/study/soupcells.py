"""Sparse Model Soups as study cells (``kind="soup"``): one cell = one ingredient, i.e. one fixed-mask
recovery run of a pruned model with one seed (``sparsekit.recovery.model_soup``'s loop, one run at a time).

A soup study's axes, in ``StudySpec`` terms:

- ``models``, ``methods``, ``patterns``, ``base``: the pruned model, as a oneshot study prunes it (``N:M`` or
  ``unstructured:S``; calibrated methods use the model's own calibration set, as the Sparsify page does);
- ``seeds``: *outer* seeds; outer seed ``o`` soups the ingredients of recovery seeds ``o·k … o·k + k − 1``
  (``ingredient_seeds``), so a group's interval is taken over whole soups;
- ``soup``: a ``SoupStudy`` with k (``ingredients``), ``rounds`` (1 only, see below) and the ``RecoveryConfig``
  every ingredient shares (its mode is set to ``fixed`` and its seed to the ingredient's).

A cell's key hashes the pruning, the recovery settings and the ingredient's seed only, so an ingredient is
computed once whatever study asks for it. Its record carries the ingredient's final quality as metrics and,
in ``detail["run"]``, the whole recovery run (weights and mask) as base64 safetensors
(``recovery.record_to_bytes``): the soup is then averaged from the records alone (``study.soupstudy``), on
whatever machine the cells ran. For a model of ~20 M weights a record holds ~110 MB of text: soups of large
models are slow and heavy (the page warns).

Rounds > 1 (prune the soup further and soup again) are refused here: a round's ingredients start from the
previous round's soup, so they are not independent cells; ``model_soup(..., rounds=r)`` runs them.
"""
from __future__ import annotations

import base64
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any

from ..config import SparsifyConfig
from ..recovery.config import RecoveryConfig, default_recovery_config
from ..serial import JsonConfig

__all__ = ["MAX_SOUP_INGREDIENTS", "SOUP_VERSION", "SoupStudy", "check_soup_spec", "ingredient_seeds",
           "run_ingredient", "soup_cell_config", "soup_recovery_config"]

SOUP_VERSION = 1
"""Part of every soup cell key: bump when a soup record's contents or meaning change."""
MAX_SOUP_INGREDIENTS = 64
SEED_EFFECT = "order of the training examples"


@dataclass(frozen=True)
class SoupStudy(JsonConfig):
    """What every soup of a soup study shares."""

    ingredients: int = 4
    """k: fixed-mask recovery runs averaged into one soup (2..64)."""
    rounds: int = 1
    """Prune-more-then-soup rounds; a study runs 1 (use ``recovery.model_soup`` for more)."""
    recovery: RecoveryConfig | None = None
    """The ingredients' recovery settings (mode set to fixed, seed per ingredient); None = the model kind's
    defaults (``default_recovery_config``)."""

    def check(self) -> None:
        """Raise ``ValueError`` with a clear message for anything out of bounds."""
        k = self.ingredients
        if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= MAX_SOUP_INGREDIENTS:
            raise ValueError(f"a soup averages 2 to {MAX_SOUP_INGREDIENTS} ingredients (soup.ingredients), got {k!r}")
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 1:
            raise ValueError(f"soup.rounds must be a whole number >= 1, got {self.rounds!r}")
        if self.rounds > 1:
            raise ValueError(f"a soup study runs one round (got rounds={self.rounds}): the ingredients of a further "
                             "round start from the previous round's soup, so they cannot be independent cells; "
                             "run sparsekit.recovery.model_soup(..., rounds=r) for prune-more-then-soup")
        if self.recovery is not None:
            if not isinstance(self.recovery, RecoveryConfig):
                raise ValueError("soup.recovery must be RecoveryConfig settings (steps, lr, batch_size ...)")
            replace(self.recovery, mode="fixed").validate()


def ingredient_seeds(outer: int, k: int) -> list[int]:
    """The recovery seeds of outer seed ``outer``'s ``k`` ingredients: ``outer·k … outer·k + k − 1``."""
    return [int(outer) * int(k) + j for j in range(int(k))]


def soup_recovery_config(recovery: RecoveryConfig | None, kind: str, seed: int) -> RecoveryConfig:
    """An ingredient's recovery settings: ``recovery`` (or the model kind's defaults), fixed mask, ``seed``."""
    base = recovery if recovery is not None else default_recovery_config(kind)
    return replace(base, mode="fixed", seed=int(seed))


def soup_cell_config(sparsify: SparsifyConfig, recovery: RecoveryConfig | None, seed: int) -> str:
    """The JSON a soup cell carries (and its key hashes): the pruning, the shared recovery settings, the seed."""
    rec = None if recovery is None else json.loads(replace(recovery, mode="fixed", seed=0).to_json())
    return json.dumps({"sparsify": json.loads(sparsify.to_json()), "recovery": rec, "seed": int(seed)},
                      sort_keys=True)


def read_cell_config(text: str) -> tuple[SparsifyConfig, RecoveryConfig | None, int]:
    """Inverse of ``soup_cell_config``."""
    data = json.loads(text)
    rec = None if data["recovery"] is None else RecoveryConfig.from_json(data["recovery"])
    return SparsifyConfig.from_json(json.dumps(data["sparsify"])), rec, int(data["seed"])


def check_soup_spec(spec: Any) -> None:
    """Clear messages for a soup study's own fields (a ``StudySpec`` of ``kind="soup"``); the model, method and
    pattern axes are checked as a oneshot study's."""
    dense = [p for p in spec.patterns if str(p).strip().lower() in ("dense", "unstructured:0", "unstructured:0.0")]
    if dense:
        raise ValueError(f"pattern {dense[0]!r} prunes nothing: a soup averages recoveries of a pruned model "
                         "(use N:M such as 2:4 or unstructured:S such as unstructured:0.7)")
    if spec.lambda_w or spec.train is not None or spec.kv is not None:
        raise ValueError("lambda_w, train and kv belong to training and KV studies; a soup study takes its "
                         "recovery settings in soup")
    if spec.soup is not None and not isinstance(spec.soup, SoupStudy):
        raise ValueError("soup must be SoupStudy settings (ingredients, rounds, recovery)")
    (spec.soup or SoupStudy()).check()


_PRUNED: OrderedDict[str, Any] = OrderedDict()
_PRUNED_LOCK = threading.Lock()


def pruned_model(loaded: Any, config: SparsifyConfig) -> Any:
    """``sparsify(loaded, config)``, kept per process for the last two settings (every ingredient of a soup
    starts from the same pruned model); never modified by a recovery."""
    from ..sparsify import sparsify

    key = f"{getattr(loaded, 'spec', '')}|{id(loaded.module)}|{config.to_json()}"
    with _PRUNED_LOCK:
        hit = _PRUNED.get(key)
        if hit is None:
            hit = sparsify(loaded, config, progress=False)
            while len(_PRUNED) >= 2:
                _PRUNED.popitem(last=False)
            _PRUNED[key] = hit
        _PRUNED.move_to_end(key)
        return hit


def run_ingredient(config_text: str, loaded: Any) -> dict[str, Any]:
    """Run one ingredient: the pruned model recovered in fixed mode with the cell's seed.

    Args:
        config_text: the cell's config (``soup_cell_config``).
        loaded: the dense model.

    Returns:
        What the cell's record carries: ``metrics``, ``higher_is_better``, ``kept_fraction``, ``seconds`` and
        ``detail`` (the run as base64 safetensors under ``run``, the qualities before recovery and dense).

    Raises:
        ValueError: a setting ``recover`` refuses, or a run that did not complete.
    """
    from ..recovery import make_objective, record_to_bytes, recover

    sparsify_config, recovery, seed = read_cell_config(config_text)
    result = pruned_model(loaded, sparsify_config)
    config = soup_recovery_config(recovery, loaded.kind, seed)
    objective = make_objective(loaded, config.resolve_loss(loaded.kind), None)
    rec = recover(result, loaded, config, progress=False, objective=objective, name=f"soup ingredient seed {seed}")
    if rec.status != "complete":
        raise ValueError(f"ingredient seed {seed} did not complete ({rec.status}: {rec.message})")
    final = dict(rec.intervals[-1].quality)
    return {"metrics": final, "higher_is_better": {m: bool(loaded.higher_is_better.get(m, True)) for m in final},
            "kept_fraction": float(result.summary()["kept_fraction_all_layers"] or 0.0), "seconds": rec.seconds,
            "detail": {"recovery_seed": seed, "pruned_quality": dict(rec.intervals[0].quality),
                       "dense_quality": dict(rec.dense_quality), "metric": rec.metric,
                       "run": base64.b64encode(record_to_bytes(rec)).decode("ascii")}}


def ingredient_run(detail: dict[str, Any]) -> Any:
    """The ``RecoveryRecord`` a soup record's ``detail`` carries (weights and mask included)."""
    from ..recovery import record_from_bytes

    return record_from_bytes(base64.b64decode(detail["run"]))

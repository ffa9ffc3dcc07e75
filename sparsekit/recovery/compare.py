"""Fixed mask vs STE vs SR-STE on the same budget: one recovery run per mode, one table."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np

from ..models.base import LoadedModel
from ..sparsify import SparsifyResult
from .config import MODE_LABELS, MODES, RecoveryConfig
from .loop import StopFn, check_inputs, recover
from .objectives import make_objective
from .records import RecoveryProgress, RecoveryRecord
from .store import save_recovery

__all__ = ["ModeComparison", "compare_modes"]


@dataclass
class ModeComparison:
    """Recovery runs of one pruned model that differ only in the mode.

    Attributes:
        records: mode -> its run, in the order run.
    """

    records: dict[str, RecoveryRecord]

    def rows(self) -> list[dict[str, Any]]:
        """One row per mode: the headline metric dense / before / after, the gap recovered, and how
        much the mask moved (SAD from the pruned mask as a fraction, mean flip rate per step, and
        the share of weights that oscillated over the run).

        Returns:
            Dicts, ready for a table or CSV.
        """
        out = []
        for mode, rec in self.records.items():
            numel = sum(rec.numel.values())
            run_flips = rec.run_flips
            moved = rec.sad_series(from_start=True, fraction=True)
            out.append({
                "mode": MODE_LABELS.get(mode, mode), "status": rec.status, "steps": rec.steps_done,
                "metric": rec.metric, "dense": rec.dense, "before": rec.before, "after": rec.after,
                "gap recovered": rec.gap_recovered,
                "SAD from pruned mask": float(moved[-1]) if moved.size else None,
                "mean flip rate": float(np.mean(rec.step_flip_rate)) if rec.step_flip_rate else 0.0,
                "oscillating": run_flips.oscillation_rate() if run_flips and numel else 0.0,
                "seconds": rec.seconds,
            })
        return out


def compare_modes(
    result: SparsifyResult,
    loaded: LoadedModel,
    config: RecoveryConfig,
    *,
    modes: Sequence[str] = MODES,
    corpus: Sequence[str] | None = None,
    progress: Callable[[str, RecoveryProgress], None] | None = None,
    stop: StopFn | None = None,
    save: bool = False,
) -> ModeComparison:
    """Recover the same pruned model once per mode with otherwise identical settings (steps,
    learning rate, batches in the same seeded order).

    Args:
        result: the pruned model (an N:M result when ``modes`` includes ``ste`` or ``srste``).
        loaded: the dense model.
        config: the shared settings; its ``mode`` is replaced by each of ``modes``.
        modes: which modes, in order (each at most once).
        corpus: sentences for text models (default: the shipped corpus).
        progress: ``progress(mode, RecoveryProgress)`` during each run.
        stop: asked before every step of every run; True stops the current run and skips the rest.
        save: keep every run in the run store.

    Returns:
        The ``ModeComparison``.

    Raises:
        ValueError: an unknown or repeated mode, or any input ``recover`` refuses; every mode is
            checked before the first run starts.
    """
    modes = list(modes)
    if not modes:
        raise ValueError(f"give at least one mode to compare ({', '.join(MODES)})")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {unknown[0]!r}")
    if len(set(modes)) != len(modes):
        raise ValueError(f"each mode at most once, got {modes}")
    configs = {mode: replace(config, mode=mode) for mode in modes}
    for cfg in configs.values():
        check_inputs(result, loaded, cfg)
    if loaded.kind == "image-classifier" and corpus is not None:
        raise ValueError("a corpus is for text models; a digits model trains on its own training split")
    # One set of distillation targets for every mode (for MiniLM, a dense pass over the corpus).
    objective = make_objective(loaded, config.resolve_loss(loaded.kind), corpus)
    records: dict[str, RecoveryRecord] = {}
    for mode, cfg in configs.items():
        report = None if progress is None else (lambda p, mode=mode: progress(mode, p))
        rec = recover(result, loaded, cfg, corpus=corpus, progress=report, stop=stop,
                      checkpoint=save_recovery if save else None, objective=objective)
        records[mode] = rec
        if rec.status == "stopped":
            break
    return ModeComparison(records)

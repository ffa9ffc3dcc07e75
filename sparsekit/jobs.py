"""Which jobs are heavy: the ones a shared server should run a few at a time.

A server that many people use at once (a classroom on one Streamlit process) queues the heavy
jobs and runs the light ones at once. The library decides which is which, from the kind of job and,
for the kinds whose cost grows with the model, the model's prunable weights and the method:

- always heavy: ``training``, ``scan`` (sensitivity), ``study``, ``recovery``, ``benchmark``,
  ``seed_study``;
- heavy on a model above ``HEAVY_WEIGHTS`` prunable weights: ``sweep`` (compare), ``permutation``,
  ``attention_search``, ``allocation``;
- ``sparsify``: heavy when its method needs calibration (Wanda, SparseGPT, Taylor, ...) and the
  model is above ``HEAVY_WEIGHTS``; magnitude and random never are.
"""
from __future__ import annotations

from .methods import get_method

HEAVY_WEIGHTS = 1_000_000
"""Above this many prunable weights a calibrated method (or a sweep, search or permutation) is heavy:
the digits models (tens of thousands) stay light, MiniLM (about 21 M) is heavy."""

ALWAYS_HEAVY = frozenset({"training", "scan", "study", "recovery", "benchmark", "seed_study"})
HEAVY_BY_SIZE = frozenset({"sweep", "permutation", "attention_search", "allocation"})
KINDS = ALWAYS_HEAVY | HEAVY_BY_SIZE | {"sparsify"}


def is_heavy(kind: str, *, weights: int | None = None, method: str | None = None) -> bool:
    """Whether a job of ``kind`` is heavy (see the module's docstring).

    Args:
        kind: one of ``KINDS``.
        weights: the model's prunable weights (needed for the kinds that depend on size; None
            counts as a large model).
        method: the pruning method of a ``sparsify`` job.

    Raises:
        ValueError: an unknown kind, or a ``sparsify`` job without a method.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown job kind {kind!r}: one of {', '.join(sorted(KINDS))}")
    if kind in ALWAYS_HEAVY:
        return True
    large = weights is None or weights > HEAVY_WEIGHTS
    if kind in HEAVY_BY_SIZE:
        return large
    if method is None:
        raise ValueError("a sparsify job's heaviness depends on its method: pass method=")
    return large and get_method(method).needs_calibration

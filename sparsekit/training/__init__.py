"""Sparse training from scratch on the digits models: dense, STE, SR-STE, gradual pruning, random mask.

- **STE**: every forward uses ``W̃ = E ⊙ W`` where the N:M keep-mask ``E`` is recomputed from the
  current dense ``|W|`` at every step (the contract's ``nm_mask``/``conv_nm_mask``); the backward
  passes the gradient of ``W̃`` straight to the dense ``W``.
- **SR-STE** (Zhou et al., 2021): the same, plus ``λ_w (1 − E) ⊙ W`` added to the gradient, so pruned
  weights get an extra decay (λ_w = 2e-4 in the official code).
- **gradual**: magnitude pruning to an unstructured target with Zhu & Gupta's cubic schedule.
- **random**: a fixed, seeded random N:M mask (the random-pruning baseline).
- **dense**: no mask; the N:M masks magnitude pruning *would* pick are still recorded, so the dense
  run shows how much the top-N topology moves on its own.

A run is seeded and deterministic. ``train`` returns a ``RunRecord`` (metrics, bit-packed mask
snapshots, final weights); ``run_and_save`` also keeps it in the run store (one key per run plus an
index, each written atomically), so a stopped or crashed run leaves a readable partial entry, and keeps
its state at every epoch's end (``sparsekit.resume``): the same call run again continues a stopped run
from its last finished epoch and ends exactly as a run never stopped (``resumable_run`` names it).

Modules: ``config`` (settings, bounds and per-architecture defaults), ``ste`` (masked forward weights),
``loop`` (training), ``records`` (what a run produces, its bytes, exports, SAD summary and the at-chance
check), ``store`` (saved runs), ``grid`` (methods × N:M patterns as configs); the public names of all six
are importable from ``sparsekit.training`` itself. ``seedstudy``/``seedresults`` (STE vs SR-STE over seeds) are
imported on their own, as ``sparsekit.training.seedstudy``.
"""
from ..store import owner_alive, process_token
from .config import (
    ARCH_DEFAULT_FIELDS,
    ARCH_DEFAULTS,
    CONV_GROUPINGS,
    DEFAULT_LAMBDA_W,
    DIGITS_IMAGES,
    DIGITS_TRAIN_SIZE,
    EFFECT_LAMBDA_W,
    MAX_EPOCHS,
    MAX_LAMBDA_W,
    MAX_LR,
    MAX_M,
    MAX_SNAPSHOTS,
    MAX_SPARSITY,
    MAX_STEPS,
    METHOD_LABELS,
    METHODS,
    NM_METHODS,
    OPTIMIZERS,
    SCHEDULES,
    SNAPSHOT_UNITS,
    STATUSES,
    TrainConfig,
    default_train_config,
    srste_effect_config,
    zhu_gupta_sparsity,
)
from .grid import MAX_GRID_RUNS, PATTERN_METHODS, run_grid
from .loop import _Run, run_and_save, train
from .records import (
    CHANCE_MIN_EPOCHS,
    FORMAT_VERSION,
    EpochMetrics,
    RunRecord,
    StepCallback,
    TrainProgress,
    at_chance,
    chance_warning,
    metrics_csv,
    run_from_bytes,
    run_to_bytes,
    runs_json,
    sad_csv,
    sad_summary,
)
from .ste import layer_plan, sparse_forward_weight
from .store import _INDEX_KEY, _run_key, delete_run, list_runs, load_run, rename_run, resumable_run, save_run

# Private names kept importable from here for the tests and benchmarks that reach into them.
_PRIVATE = (_INDEX_KEY, _Run, _run_key)

__all__ = [
    "ARCH_DEFAULTS", "ARCH_DEFAULT_FIELDS", "CHANCE_MIN_EPOCHS", "CONV_GROUPINGS", "DEFAULT_LAMBDA_W",
    "DIGITS_IMAGES", "DIGITS_TRAIN_SIZE", "EFFECT_LAMBDA_W", "EpochMetrics", "FORMAT_VERSION",
    "MAX_EPOCHS", "MAX_GRID_RUNS", "MAX_LAMBDA_W", "MAX_LR", "MAX_M", "MAX_SNAPSHOTS", "MAX_SPARSITY", "MAX_STEPS",
    "METHODS", "METHOD_LABELS", "NM_METHODS", "OPTIMIZERS", "PATTERN_METHODS", "RunRecord", "SCHEDULES",
    "SNAPSHOT_UNITS", "STATUSES",
    "StepCallback", "TrainConfig", "TrainProgress", "at_chance", "chance_warning", "default_train_config",
    "delete_run", "layer_plan", "list_runs", "load_run", "metrics_csv", "owner_alive", "process_token", "rename_run",
    "resumable_run", "run_and_save", "run_from_bytes", "run_to_bytes",
    "run_grid", "runs_json", "sad_csv", "sad_summary", "save_run", "sparse_forward_weight", "srste_effect_config",
    "train", "zhu_gupta_sparsity",
]

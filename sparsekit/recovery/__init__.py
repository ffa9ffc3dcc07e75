"""Recovery fine-tuning of a pruned pretrained model: win back the quality pruning cost.

Take ``result = sparsekit.sparsify(loaded, config)`` and train a copy of ``result.model`` on the
same budget in one of three modes:

- **fixed**: the pruned mask stays exactly as it is and pruned weights get no gradient (the classic
  prune-then-fine-tune recipe);
- **STE**: the N:M mask is recomputed from the dense shadow weights at every step, and the gradient
  reaches every shadow weight straight through the mask (``sparsekit.training.ste``);
- **SR-STE**: STE plus the decay λ_w (1 − E) ⊙ W on the pruned shadow weights (Zhou et al., 2021).

What it trains on depends on the model: digits models on their training split (labels, or KL to
the dense logits); encoders such as MiniLM by distillation to the dense model's sentence
embeddings, and causal LMs by next-token distillation, both on the corpus shipped in
``sparsekit.data`` (disjoint from the evaluation sentences). Every ``eval_every`` steps the run
records the model's own quality metric, the training loss, SAD per layer since the last evaluation
and since the pruned mask, the per-step flip rate and the oscillating weights (``sparsekit.flips``);
``RecoveryRecord.gap_recovered`` is the share of the dense-to-pruned gap won back.

The shared dense model and the given result are never changed. Runs persist in the run store
(``recover_and_save``, ``load_recovery``, ``list_recoveries``; a stopped run is continued from its last
evaluation by the same ``recover_and_save`` call, ``resumable_recovery`` names it), the recovered weights export as
safetensors (``recovered_safetensors``), and ``compare_modes`` runs fixed / STE / SR-STE side by side.

Modules: ``config`` (settings and bounds), ``objectives`` (data and losses per model kind),
``loop`` (training), ``records`` (what a run produces, the gap formula, its bytes), ``store``
(saved runs, export), ``compare`` (modes side by side).
"""
from .compare import ModeComparison, compare_modes
from .config import (
    DEFAULT_LOSS,
    KIND_DEFAULTS,
    LOSSES,
    LOSSES_BY_KIND,
    MAX_BATCH,
    MAX_INTERVALS,
    MAX_STEPS,
    MODE_LABELS,
    MODES,
    RecoveryConfig,
    default_recovery_config,
)
from .loop import StopFn, check_inputs, layer_levels, recover
from .objectives import Objective, clean_corpus, make_objective, pooled_embeddings
from .records import (
    FORMAT_VERSION,
    ProgressFn,
    RecoveryInterval,
    RecoveryProgress,
    RecoveryRecord,
    gap_recovered,
    record_from_bytes,
    record_to_bytes,
)
from .soup import SoupResult, SoupRound, model_soup, next_config, uniform_soup
from .store import (
    delete_recovery,
    list_recoveries,
    load_recovery,
    recover_and_save,
    recovered_model,
    recovered_safetensors,
    resumable_recovery,
    save_recovery,
)

__all__ = [
    "DEFAULT_LOSS", "FORMAT_VERSION", "KIND_DEFAULTS", "LOSSES", "LOSSES_BY_KIND", "MAX_BATCH", "MAX_INTERVALS",
    "MAX_STEPS", "MODES", "MODE_LABELS", "ModeComparison", "Objective", "ProgressFn", "RecoveryConfig",
    "RecoveryInterval", "RecoveryProgress", "RecoveryRecord", "StopFn", "check_inputs", "clean_corpus", "compare_modes",
    "default_recovery_config", "delete_recovery", "gap_recovered", "layer_levels", "list_recoveries",
    "load_recovery", "make_objective", "pooled_embeddings", "record_from_bytes", "record_to_bytes", "recover",
    "recover_and_save", "recovered_model", "recovered_safetensors", "resumable_recovery", "save_recovery",
    "SoupResult", "SoupRound", "model_soup", "next_config", "uniform_soup",
]

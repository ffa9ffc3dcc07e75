"""The model zoo: every source (bundled MiniLM, digits models, the shipped causal LM ``lm:small``, Hugging Face
directories, uploaded weights) loads into one ``LoadedModel`` through ``load_model``."""
from .base import LoadedModel, check_budget, memory_budget_mb
from .lm_small import heldout_perplexity, heldout_rows, lm_small_heldout
from .loader import BUILTIN_SPECS, list_model_dirs, load_model, model_roots

__all__ = [
    "BUILTIN_SPECS",
    "LoadedModel",
    "check_budget",
    "heldout_perplexity",
    "heldout_rows",
    "list_model_dirs",
    "lm_small_heldout",
    "load_model",
    "memory_budget_mb",
    "model_roots",
]

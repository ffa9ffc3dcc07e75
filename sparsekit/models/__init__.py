"""The model zoo: every source (bundled MiniLM, digits models, Hugging Face directories, uploaded
weights) loads into one ``LoadedModel`` through ``load_model``."""
from .base import LoadedModel, check_budget, memory_budget_mb
from .loader import BUILTIN_SPECS, list_model_dirs, load_model, model_roots

__all__ = [
    "BUILTIN_SPECS",
    "LoadedModel",
    "check_budget",
    "list_model_dirs",
    "load_model",
    "memory_budget_mb",
    "model_roots",
]

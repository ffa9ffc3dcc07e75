"""sparsekit: explore weight and attention sparsity of neural networks.

The public contract lives here: ``nm_mask``, ``unstructured_mask``, ``sad``, ``load_model``,
``SparsifyConfig`` and ``sparsify``.
"""
import os as _os

# Before torch and numba load their OpenMP runtime: workers waiting at a barrier sleep instead of
# spinning. After numba's parallel mask kernels ran once, a spinning worker took a core from torch
# on a 2-core machine (a MiniLM recovery step 4.7-5.2 s instead of 0.37-0.55 s; README "Speed note").
# Only a default: a value the user set wins. numba's OpenMP runtime (the system libgomp, loaded with
# its first parallel kernel) reads it even if torch, which bundles its own libgomp, was imported first.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .masks import conv_nm_mask, nm_mask, sad, unstructured_mask
from .models import LoadedModel, load_model
from .sparsify import SparsifyConfig, SparsifyResult, sparsify

__all__ = [
    "nm_mask",
    "unstructured_mask",
    "sad",
    "conv_nm_mask",
    "load_model",
    "LoadedModel",
    "SparsifyConfig",
    "SparsifyResult",
    "sparsify",
]
__version__ = "0.1.0"

"""sparsekit: explore weight and attention sparsity of neural networks.

The public contract lives here: ``nm_mask``, ``unstructured_mask``, ``sad``, ``load_model``,
``SparsifyConfig`` and ``sparsify``.
"""
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

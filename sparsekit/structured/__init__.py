"""Structured alternatives to masks: transformations of a model that change the shape of its
weights instead of zeroing entries (Monarch projection; SliceGPT), reported on the same
kept-parameters and stored-bytes axes as ``sparsekit.sparsify``. ``SliceResult.save`` and
``MonarchResult.save`` write a folder (safetensors + JSON); ``load_structured`` rebuilds the model from it.
``family_points`` (also ``sparsekit.compare.family_points``) measures every family on one equal-cost axis."""
from .equal_cost import FamilyPoints, FamilyRow, family_points
from .io import load_structured, structured_zip
from .monarch import MonarchLinear, monarch_blocks_for_budget, monarch_params, monarch_project
from .monarch_model import MonarchConfig, MonarchLayer, MonarchResult, monarchize
from .slicegpt import SlicedRMSNorm, slice_model, sliced_width
from .slicegpt_result import LayerShape, SliceResult

__all__ = [
    "MonarchConfig", "MonarchLayer", "MonarchLinear", "MonarchResult", "monarch_blocks_for_budget", "monarch_params",
    "monarch_project", "monarchize",
    "LayerShape", "SliceResult", "SlicedRMSNorm", "slice_model", "sliced_width",
    "load_structured", "structured_zip",
    "FamilyPoints", "FamilyRow", "family_points",
]

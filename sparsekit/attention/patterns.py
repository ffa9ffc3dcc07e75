"""The attention pattern API in one module, for imports written before it was split into
``sparsekit.attention.masks`` (mask families, composition, the registry) and
``sparsekit.attention.specs`` (``PatternSpec``, ``AttentionPlan``). The names are the same objects.
"""
from . import masks, specs

__all__ = [*masks.__all__, *specs.__all__]

# Bound from the modules' own lists rather than restated, so this shim cannot drift from them.
globals().update({name: getattr(masks if name in masks.__all__ else specs, name) for name in __all__})

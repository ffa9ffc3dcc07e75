"""Pruning methods: a registry ``name -> Method`` and one module per method.

A new method is one module here that builds a ``Method`` and calls ``register``, plus one import
line below; ``SparsifyConfig``, allocation, the cost estimate, studies, the app's method list and its
help text read the registry (what a ``Method`` declares), never a method's name.
"""
from .base import REGISTRY, Method, get_method, register
from .types import Calibration, MethodOutput, PruneSettings

# Each module registers itself on import; the order here is the order of the app's method list.
from . import magnitude  # isort: skip
from . import random_mask  # isort: skip
from . import wanda  # isort: skip
from . import sparsegpt  # isort: skip
from . import taylor  # isort: skip

_REGISTERED = (magnitude, random_mask, wanda, sparsegpt, taylor)

METHODS = tuple(REGISTRY)
"""Registered method names, in registration order."""
CALIBRATED_METHODS = tuple(name for name, m in REGISTRY.items() if m.needs_calibration)
"""Methods that need calibration inputs."""

__all__ = ["CALIBRATED_METHODS", "Calibration", "METHODS", "Method", "MethodOutput", "PruneSettings", "REGISTRY",
           "get_method", "register"]

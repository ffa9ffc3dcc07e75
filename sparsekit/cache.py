"""One disk cache for everything that should survive a restart.

Keys are built from JSON-serialised configs and content hashes, never from pickled tensors,
so that the same request always maps to the same entry.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import weakref
from pathlib import Path
from typing import Any

import diskcache
import torch
from torch import nn

_CACHES: dict[str, diskcache.Cache] = {}
_FINGERPRINTS: "weakref.WeakKeyDictionary[nn.Module, str]" = weakref.WeakKeyDictionary()


def cache_dir() -> Path:
    """The cache location: ``$SPARSEKIT_CACHE_DIR`` or ``~/.cache/sparsekit``."""
    env = os.environ.get("SPARSEKIT_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sparsekit"


def get_cache() -> diskcache.Cache:
    """The process-wide cache for the current ``cache_dir()`` (re-read on every call so tests can
    point ``SPARSEKIT_CACHE_DIR`` at a temporary folder)."""
    path = str(cache_dir())
    cache = _CACHES.get(path)
    if cache is None:
        os.makedirs(path, exist_ok=True)
        cache = diskcache.Cache(path, size_limit=4 * 2**30)
        _CACHES[path] = cache
    return cache


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        return {"__dc__": type(obj).__name__, **fields}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in sorted(obj.items())}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, bytes):
        return {"sha256": hashlib.sha256(obj).hexdigest()}
    raise TypeError(f"cannot build a cache key from {type(obj).__name__}")


def make_key(kind: str, *parts: Any) -> str:
    """A stable cache key: ``kind`` plus the SHA-256 of the JSON form of ``parts``."""
    payload = json.dumps(_jsonable(list(parts)), sort_keys=True, separators=(",", ":"))
    return f"{kind}:{hashlib.sha256(payload.encode()).hexdigest()}"


def tensor_digest(*tensors: torch.Tensor) -> str:
    """SHA-256 over the raw bytes, dtypes and shapes of tensors (for content-addressed keys)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(dtype=torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def model_fingerprint(module: nn.Module) -> str:
    """SHA-256 of a module's state dict (names, shapes, dtypes and bytes); remembered per module."""
    known = _FINGERPRINTS.get(module)
    if known is None:
        state = module.state_dict()
        names = json.dumps(sorted(state), separators=(",", ":"))
        known = make_key("weights", names, tensor_digest(*(state[k] for k in sorted(state))))
        _FINGERPRINTS[module] = known
    return known

"""The folder a sliced or Monarch model is saved to, and read back without unpickling anything.

A folder holds two files:

- ``model.safetensors``: every tensor of the model's ``state_dict`` once (a tensor tied to another, such as a
  language model's head shared with its token embedding, is stored under its first name only);
- ``structure.json``: what rebuilds the architecture around them: the format and version, the kind
  (``slicegpt`` or ``monarch``), the base model (its spec, its class and every parameter's shape in the dense
  model, so that a folder cannot be loaded onto another model), each stored tensor's shape and dtype, the tied
  names, and the kind's own description (``SliceResult.save``, ``MonarchResult.save``).

``write_folder`` and ``read_folder`` know nothing of either kind; ``sparsekit.structured.io.load_structured``
rebuilds the model.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..models.weights import safetensors_header

__all__ = ["FORMAT", "STRUCTURE_FILE", "VERSION", "WEIGHTS_FILE", "read_folder", "write_folder"]

FORMAT = "sparsekit-structured"
VERSION = 1
STRUCTURE_FILE = "structure.json"
WEIGHTS_FILE = "model.safetensors"
_DTYPES = {str(t).removeprefix("torch."): t for t in (torch.float32, torch.float16, torch.bfloat16, torch.float64)}
_ST_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


def write_folder(folder: str | Path, kind: str, module: nn.Module, base: dict[str, Any], description: dict[str, Any]
                 ) -> Path:
    """Write ``module``'s tensors and ``structure.json`` into ``folder`` (created if needed; the two files are
    replaced).

    Args:
        folder: the target folder.
        kind: ``slicegpt`` or ``monarch``.
        module: the model to save.
        base: ``{"spec", "class", "shapes": {parameter: shape}}`` of the dense model it came from.
        description: the kind's own record (JSON-able).

    Returns:
        The folder's path.
    """
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise ValueError(f"cannot save into {path}: it is a file, not a folder")
    path.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    first: dict[tuple, str] = {}
    for name, t in module.state_dict().items():
        key = (t.data_ptr(), tuple(t.shape), t.stride(), t.dtype) if t.numel() else ("empty", name)
        if key in first:
            tied[name] = first[key]
            continue
        first[key] = name
        if str(t.dtype).removeprefix("torch.") not in _DTYPES:
            raise ValueError(f"cannot save {name}: dtype {t.dtype} (floating point tensors only)")
        tensors[name] = t.detach().cpu().contiguous().clone()
    record = {
        "format": FORMAT, "version": VERSION, "kind": kind, "base": base,
        "tensors": {n: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
                    for n, t in tensors.items()},
        "tied": tied, kind: description,
    }
    save_file(tensors, str(path / WEIGHTS_FILE), metadata={"format": FORMAT, "kind": kind})
    (path / STRUCTURE_FILE).write_text(json.dumps(record, indent=1) + "\n")
    return path


def read_folder(folder: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``structure.json`` and the tensors of a saved folder, checked against each other.

    Raises:
        ValueError: a missing folder or file, a JSON that is not one of these records, or tensors whose names,
            shapes or dtypes differ from what the JSON describes (each named).
    """
    path = Path(folder)
    if not path.is_dir():
        raise ValueError(f"no saved model at {path}: not a folder (save one with SliceResult.save or "
                         "MonarchResult.save)")
    for name in (STRUCTURE_FILE, WEIGHTS_FILE):
        if not (path / name).is_file():
            raise ValueError(f"{path} has no {name}: a saved structured model needs {STRUCTURE_FILE} (the "
                             f"architecture) and {WEIGHTS_FILE} (the weights)")
    try:
        record = json.loads((path / STRUCTURE_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path / STRUCTURE_FILE} is not valid JSON: {err}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{path / STRUCTURE_FILE} is not a sparsekit structured-model record (format "
                         f"{record.get('format') if isinstance(record, dict) else None!r}, expected {FORMAT!r})")
    if record.get("version") != VERSION:
        raise ValueError(f"{path / STRUCTURE_FILE} has version {record.get('version')!r}; this sparsekit reads "
                         f"version {VERSION}")
    for key, kind in (("kind", str), ("base", dict), ("tensors", dict), ("tied", dict)):
        if not isinstance(record.get(key), kind):
            raise ValueError(f"{path / STRUCTURE_FILE}: {key!r} is missing or not a {kind.__name__}")
    if not isinstance(record.get(record["kind"]), dict):
        raise ValueError(f"{path / STRUCTURE_FILE}: kind {record['kind']!r} has no description")
    header = safetensors_header(path / WEIGHTS_FILE)
    stored = {n: v for n, v in header.items() if n != "__metadata__"}
    described: dict[str, Any] = record["tensors"]
    _compare(stored, described, path)
    return record, load_file(str(path / WEIGHTS_FILE))


def _compare(stored: dict[str, Any], described: dict[str, Any], path: Path) -> None:
    where = f"{path}: {STRUCTURE_FILE} and {WEIGHTS_FILE} disagree"
    missing = sorted(set(described) - set(stored))
    extra = sorted(set(stored) - set(described))
    if missing or extra:
        parts = ([f"described but not stored: {', '.join(missing[:5])}"] if missing else []) + (
            [f"stored but not described: {', '.join(extra[:5])}"] if extra else [])
        raise ValueError(f"{where}: {'; '.join(parts)}")
    for name, entry in described.items():
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: the entry of {name} is not a record")
        shape, dtype = stored[name].get("shape"), _ST_DTYPES.get(stored[name].get("dtype"), stored[name].get("dtype"))
        if list(entry.get("shape", [])) != list(shape):
            raise ValueError(f"{where}: {name} has shape {tuple(entry.get('shape', []))} in {STRUCTURE_FILE} but "
                             f"{tuple(shape)} in {WEIGHTS_FILE}")
        if entry.get("dtype") != dtype:
            raise ValueError(f"{where}: {name} is {entry.get('dtype')} in {STRUCTURE_FILE} but {dtype} in "
                             f"{WEIGHTS_FILE}")

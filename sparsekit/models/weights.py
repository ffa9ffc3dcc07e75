"""Reading weight files safely: safetensors headers, uploads, and strict state-dict loading.

Nothing here unpickles anything. Pickled checkpoints (``torch.save`` zips, raw pickles) are
recognised by their magic bytes and refused with a hint to convert them.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .base import check_budget

# A safetensors header is JSON describing tensors; even very large sharded checkpoints stay far
# below this, so anything bigger is a corrupt or hostile length prefix.
_MAX_HEADER_BYTES = 100 * 2**20
_PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")

# Bytes per element, by safetensors dtype name.
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "F4": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}
_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4"}

CONVERT_HINT = (
    "convert it to safetensors first, e.g. "
    "`safetensors.torch.save_file(model.state_dict(), 'model.safetensors')`"
)


def pickle_kind(data: bytes) -> str | None:
    """What kind of pickled container ``data`` starts like, or None.

    Args:
        data: the first bytes of a file (8 are enough).

    Returns:
        ``"a zip archive (torch.save)"``, ``"a pickle"`` or None.
    """
    if data[:4] == b"PK\x03\x04":
        return "a zip archive (torch.save)"
    # Pickle protocols 2-5 open with PROTO (0x80) and the protocol number.
    if len(data) >= 2 and data[0] == 0x80 and 2 <= data[1] <= 5:
        return "a pickle"
    return None


def _invalid(reason: str) -> ValueError:
    return ValueError(f"not a valid safetensors file: {reason}")


def _parse_header(head8: bytes, read_json: Any, total: int) -> dict[str, Any]:
    if len(head8) < 8:
        raise _invalid(f"only {total} bytes long")
    (n,) = struct.unpack("<Q", head8)
    if n > _MAX_HEADER_BYTES or 8 + n > total:
        raise _invalid(f"header length {n} does not fit a {total}-byte file")
    try:
        header = json.loads(read_json(n))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _invalid(f"header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise _invalid("header is not a JSON object")
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not (
            isinstance(entry, dict)
            and entry.get("dtype") in _DTYPE_BYTES
            and isinstance(entry.get("shape"), list)
            and all(isinstance(d, int) and d >= 0 for d in entry["shape"])
            and isinstance(entry.get("data_offsets"), list)
            and len(entry["data_offsets"]) == 2
        ):
            raise _invalid(f"bad header entry for tensor {name!r}")
    return header


def safetensors_header(source: bytes | str | os.PathLike) -> dict[str, Any]:
    """The JSON header of a safetensors file, read without loading any tensor data.

    Args:
        source: the file's bytes, or its path.

    Returns:
        The header: tensor name -> ``{"dtype", "shape", "data_offsets"}``, plus ``__metadata__``.

    Raises:
        ValueError: "not a valid safetensors file: ..." when the header is malformed.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        return _parse_header(data[:8], lambda n: data[8 : 8 + n], len(data))
    path = Path(source)
    total = path.stat().st_size
    with open(path, "rb") as f:
        head8 = f.read(8)
        return _parse_header(head8, lambda n: f.read(n), total)


def loaded_bytes(header: Mapping[str, Any], *, float_bytes: int | None = 4) -> int:
    """Memory the tensors in a safetensors header will take once loaded.

    Args:
        header: from ``safetensors_header``.
        float_bytes: bytes per element of floating tensors after loading (we load as float32),
            or None to keep the stored size.

    Returns:
        The byte count.
    """
    total = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        numel = 1
        for d in entry["shape"]:
            numel *= d
        size = float_bytes if (float_bytes and entry["dtype"] in _FLOAT_DTYPES) else _DTYPE_BYTES[entry["dtype"]]
        total += numel * size
    return total


def parse_weights(data: bytes, memory_budget_mb: float | None, what: str = "uploaded weights"
                  ) -> dict[str, torch.Tensor]:
    """Turn uploaded safetensors bytes into a state dict, refusing anything else.

    Args:
        data: the uploaded file's bytes.
        memory_budget_mb: size limit in MB (None: ``$SPARSEKIT_MEMORY_BUDGET_MB``); checked before
            parsing.
        what: how to name the upload in messages.

    Returns:
        Tensor name -> tensor (on CPU).

    Raises:
        ValueError: pickled data, over budget, or not a valid safetensors file.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"weights must be bytes or a path, got {type(data).__name__}")
    data = bytes(data)
    kind = pickle_kind(data[:8])
    if kind is not None:
        raise ValueError(f"{what} look like {kind}, which is never unpickled here; {CONVERT_HINT}")
    check_budget(len(data), memory_budget_mb, what)
    safetensors_header(data)  # clear messages for the common corruptions before the parser runs
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        return load(data)
    except (SafetensorError, RuntimeError, ValueError) as e:
        raise _invalid(str(e)) from None


def _listing(items: list[str], limit: int = 5) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def load_state_dict_strict(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    what: str,
    ignore_unexpected: frozenset[str] = frozenset(),
) -> None:
    """Load ``state`` into ``module`` in place, requiring exactly its keys and shapes.

    Floating tensors are cast to the parameter's dtype (a float16 upload of a float32 model is fine).

    Args:
        module: the target; modified in place.
        state: tensor name -> tensor.
        what: the architecture's name for error messages (e.g. ``"digits:mlp"``).
        ignore_unexpected: extra keys to drop silently (buffers old checkpoints still carry).

    Raises:
        ValueError: naming a few missing keys, unexpected keys and shape/dtype mismatches.
    """
    expected = module.state_dict()
    missing = sorted(k for k in expected if k not in state)
    unexpected = sorted(k for k in state if k not in expected and k not in ignore_unexpected)
    mismatched = []
    converted: dict[str, torch.Tensor] = {}
    for k, ref in expected.items():
        if k not in state:
            continue
        t = state[k]
        if tuple(t.shape) != tuple(ref.shape):
            mismatched.append(f"{k} {list(t.shape)} vs expected {list(ref.shape)}")
        elif t.is_floating_point() != ref.is_floating_point():
            mismatched.append(f"{k} dtype {t.dtype} vs expected {ref.dtype}")
        else:
            converted[k] = t.to(ref.dtype)
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys: {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_listing(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches: {_listing(mismatched)}")
        raise ValueError(f"these weights do not fit the {what} architecture (wrong architecture?): " + "; ".join(parts))
    module.load_state_dict(converted, strict=True)

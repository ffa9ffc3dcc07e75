"""Take a pruned model with you: safetensors weights + masks + a JSON manifest, and 2:4 on CUDA.

An export is three files, also packed as one zip:

- ``model.safetensors``: the pruned state dict, loadable as ``load_model(spec, weights=...)`` for
  the built-in architectures (``minilm``, ``digits:*``) or with ``load_state_dict`` anywhere;
- ``masks.safetensors``: one bool tensor per pruned layer (``<layer>.weight_mask``, True = kept);
- ``manifest.json``: the model spec, the SparsifyConfig, the per-layer report, quality (dense and
  sparse) and the SHA-256 of both tensor files.
"""
from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import torch
from torch import nn

from .models import BUILTIN_SPECS, load_model
from .models.base import LoadedModel
from .sparsify import SparsifyResult, is_2_4, semi_structured_check


def masks_safetensors(result: SparsifyResult, metadata: dict[str, str] | None = None) -> bytes:
    """Masks as safetensors bytes: one bool tensor per layer, keyed ``<layer>.weight_mask``."""
    from safetensors.torch import save

    tensors = {f"{name}.weight_mask": mask.contiguous() for name, mask in result.masks.items()}
    meta = {"sparsify_config": result.config.to_json(), "convention": "True = kept"}
    meta.update(metadata or {})
    return save(tensors, metadata=meta)


def weights_safetensors(result: SparsifyResult, metadata: dict[str, str] | None = None) -> bytes:
    """The pruned model's state dict as safetensors bytes (tied tensors saved once each name)."""
    from safetensors.torch import save

    state = {k: v.detach().contiguous().clone() for k, v in result.model.state_dict().items()}
    meta = {"sparsify_config": result.config.to_json()}
    meta.update(metadata or {})
    return save(state, metadata=meta)


def iter_layer_weights(result: SparsifyResult) -> Iterable[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, pruned weight, mask) for every pruned layer."""
    modules = dict(result.model.named_modules())
    for name, mask in result.masks.items():
        yield name, modules[name].weight.detach(), mask


EXPORT_FORMAT = "sparsekit-export"
EXPORT_VERSION = 1
FILES = ("model.safetensors", "masks.safetensors", "manifest.json")
MAX_EXPORT_BYTES = 4 * 2**30
"""Largest zip (and largest member) ``read_export`` accepts."""
_ZIP_TIME = (2020, 1, 1, 0, 0, 0)  # fixed, so the same export always gives the same bytes


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def export_files(
    result: SparsifyResult,
    loaded: LoadedModel | None = None,
    *,
    quality: dict[str, float] | None = None,
) -> dict[str, bytes]:
    """The three export files for a sparsify result.

    Args:
        result: what ``sparsify`` returned.
        loaded: the ``LoadedModel`` it came from (for the spec, name and quality); optional.
        quality: the sparse model's quality (computed from ``loaded`` when omitted and available).

    Returns:
        ``{"model.safetensors": bytes, "masks.safetensors": bytes, "manifest.json": bytes}``.
    """
    if not isinstance(result, SparsifyResult):
        raise TypeError(f"export_files needs a SparsifyResult, got {type(result).__name__}")
    spec = getattr(loaded, "spec", None)
    if quality is None and loaded is not None:
        quality = loaded.quality(result.model)
    meta = {"sparsekit_spec": spec or "", "format": EXPORT_FORMAT}
    weights = weights_safetensors(result, meta)
    masks = masks_safetensors(result, meta)
    manifest = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "spec": spec,
        "model_name": getattr(loaded, "name", None),
        "kind": getattr(loaded, "kind", None),
        "config": asdict(result.config),
        "config_label": result.config.label(),
        "summary": result.summary(),
        "report": [r.as_row() for r in result.report],
        "notes": dict(result.notes),
        "quality": quality,
        "dense_quality": loaded.quality() if loaded is not None else None,
        "metric_names": dict(getattr(loaded, "metric_names", {}) or {}),
        "files": {"model.safetensors": _sha256(weights), "masks.safetensors": _sha256(masks)},
        "torch_version": torch.__version__,
        "reload": (f"sparsekit.load_model({spec!r}, weights=<model.safetensors bytes>)" if spec and not
                   spec.startswith("hf:")
                   else "model.load_state_dict(safetensors.torch.load(<model.safetensors bytes>))"),
    }
    return {
        "model.safetensors": weights,
        "masks.safetensors": masks,
        "manifest.json": json.dumps(manifest, indent=2, sort_keys=True, default=float).encode(),
    }


def export_zip(files: dict[str, bytes]) -> bytes:
    """Pack export files into one zip (stored uncompressed, with fixed timestamps)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in FILES:
            if name in files:
                info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
                zf.writestr(info, files[name])
    return buf.getvalue()


def read_export(data: bytes | dict[str, bytes]) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Open an export (zip bytes or the dict of files) and check it.

    Args:
        data: what ``export_zip`` or ``export_files`` returned.

    Returns:
        ``(manifest, files)``.

    Raises:
        ValueError: not a zip, missing or extra members, oversize, wrong format, or a tensor
            file whose SHA-256 differs from the manifest's.
    """
    if isinstance(data, dict):
        files = dict(data)
    else:
        if len(data) > MAX_EXPORT_BYTES:
            raise ValueError(
                f"the export is {len(data) / 2**20:,.0f} MB; at most {MAX_EXPORT_BYTES / 2**20:,.0f} MB"
            )
        try:
            zf = zipfile.ZipFile(io.BytesIO(bytes(data)))
        except zipfile.BadZipFile:
            raise ValueError("not a sparsekit export: the data is not a zip archive") from None
        with zf:
            names = zf.namelist()
            unexpected = sorted(set(names) - set(FILES))
            if unexpected:
                raise ValueError(f"not a sparsekit export: unexpected members {unexpected[:5]}")
            files = {}
            for info in zf.infolist():
                if info.file_size > MAX_EXPORT_BYTES:
                    raise ValueError(f"{info.filename} is {info.file_size / 2**20:,.0f} MB when unpacked; too large")
                files[info.filename] = zf.read(info)
    missing = [f for f in FILES if f not in files]
    if missing:
        raise ValueError(f"not a complete sparsekit export: missing {missing}")
    try:
        manifest = json.loads(files["manifest.json"])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"manifest.json is not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        raise ValueError("manifest.json is not a sparsekit export manifest")
    for name, digest in (manifest.get("files") or {}).items():
        if name in files and _sha256(files[name]) != digest:
            raise ValueError(f"{name} does not match the SHA-256 in manifest.json (corrupted or edited)")
    return manifest, files


def reload_export(
    data: bytes | dict[str, bytes], *, memory_budget_mb: float | None = None
) -> tuple[LoadedModel, dict[str, Any], dict[str, torch.Tensor]]:
    """Load an export back through ``load_model`` and check that its masks hold.

    Args:
        data: export zip bytes or files dict.
        memory_budget_mb: passed to ``load_model``.

    Returns:
        ``(LoadedModel, manifest, masks)``; the model computes what the exported pruned model did.

    Raises:
        ValueError: the export is invalid, its spec is not a built-in architecture that accepts
            ``weights=``, or a weight is non-zero where its mask says pruned.
    """
    from safetensors.torch import load

    manifest, files = read_export(data)
    spec = manifest.get("spec")
    if not isinstance(spec, str) or spec not in BUILTIN_SPECS:
        raise ValueError(
            f"exports of {spec!r} cannot be reloaded through load_model(weights=...), which takes the built-in "
            f"architectures ({', '.join(BUILTIN_SPECS)}); load model.safetensors with load_state_dict instead"
        )
    loaded = load_model(spec, weights=files["model.safetensors"], memory_budget_mb=memory_budget_mb)
    masks = {k.removesuffix(".weight_mask"): v for k, v in load(files["masks.safetensors"]).items()}
    modules = dict(loaded.module.named_modules())
    for name, mask in masks.items():
        module = modules.get(name)
        if module is None or tuple(module.weight.shape) != tuple(mask.shape):
            raise ValueError(f"mask {name!r} does not match a layer of the reloaded {spec} model")
        if bool((module.weight.detach()[~mask] != 0).any()):
            raise ValueError(f"layer {name!r} has non-zero weights where its mask says pruned")
    return loaded, manifest, masks


# ---------------------------------------------------------------------------------------------
# 2:4 semi-structured (CUDA)


@dataclass
class SemiStructuredResult:
    """Which Linear layers now hold ``torch.sparse`` semi-structured weights."""

    model: nn.Module | None
    """The converted copy on CUDA in ``dtype`` (None when nothing could run)."""
    converted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    """layer (or ``"*"`` for the whole model) -> why it was not converted."""
    available: bool = False
    """Whether CUDA (and the semi-structured kernels) were available."""


def to_semi_structured(
    model: nn.Module | SparsifyResult | LoadedModel, *, dtype: torch.dtype = torch.float16, device: str = "cuda"
) -> SemiStructuredResult:
    """Convert every eligible Linear weight of a 2:4-pruned model to PyTorch's semi-structured format.

    A layer is eligible when its weight has at most 2 non-zeros in every group of 4 along the input
    dimension and its shape passes ``sparsify.semi_structured_check`` for ``dtype``. Without CUDA
    nothing is converted and ``available`` is False (with the reason under ``skipped["*"]``).

    Args:
        model: an ``nn.Module``, ``SparsifyResult`` or ``LoadedModel`` (not modified; a copy is converted).
        dtype: ``torch.float16`` or ``torch.bfloat16`` (what the 2:4 kernels take).
        device: a CUDA device.

    Returns:
        A ``SemiStructuredResult`` with the converted copy.
    """
    import copy

    source = getattr(model, "model", None) if isinstance(model, SparsifyResult) else getattr(model, "module", model)
    if not isinstance(source, nn.Module):
        raise TypeError(
            f"to_semi_structured needs an nn.Module, SparsifyResult or LoadedModel, got {type(model).__name__}"
        )
    if not torch.cuda.is_available():
        return SemiStructuredResult(
            model=None,
            skipped={"*": "CUDA is not available: 2:4 semi-structured kernels need an NVIDIA GPU (Ampere or newer)"},
        )
    major, _ = torch.cuda.get_device_capability(torch.device(device))
    if major < 8:
        return SemiStructuredResult(
            model=None, skipped={"*": f"GPU compute capability {major}.x; 2:4 kernels need 8.0 (Ampere) or newer"}
        )
    from torch.sparse import to_sparse_semi_structured

    work = copy.deepcopy(source).to(device=device, dtype=dtype).eval()
    out = SemiStructuredResult(model=work, available=True)
    for name, module in work.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        shape = tuple(module.weight.shape)
        if not is_2_4(module.weight):
            out.skipped[name] = "weight is not 2:4 sparse"
            continue
        check = semi_structured_check(shape, (2, 4), dtype)
        if not check.startswith("ok"):
            out.skipped[name] = check
            continue
        try:
            module.weight = nn.Parameter(to_sparse_semi_structured(module.weight.detach()), requires_grad=False)
        except (RuntimeError, ValueError) as err:  # a backend that refuses a shape or dtype
            out.skipped[name] = f"to_sparse_semi_structured failed: {str(err).splitlines()[0][:200]}"
            continue
        out.converted.append(name)
    return out

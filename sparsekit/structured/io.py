"""Reload a sliced or Monarch model saved with ``SliceResult.save`` or ``MonarchResult.save``: the base model
(loaded again from its spec, or given) gives the architecture, ``structure.json`` says what changes in it, and
``model.safetensors`` gives every weight. Nothing is unpickled. The rebuilt model runs the same modules on the same
weights, so its outputs equal the saved model's bit for bit.
"""
from __future__ import annotations

import copy
import io
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..layers import is_conv1d_transposed
from ..models.base import LoadedModel
from ..models.digits_nets import DigitsViT
from ..models.loader import load_model
from .folder import read_folder
from .monarch import MonarchLinear
from .monarch_model import LAYOUT, MonarchConfig, MonarchLayer, MonarchResult
from .slicegpt import model_parts, to_sliced_structure
from .slicegpt_ops import SlicedRMSNorm
from .slicegpt_result import LayerShape, SliceResult

__all__ = ["load_structured", "structured_zip"]


def structured_zip(result: SliceResult | MonarchResult, name: str = "model") -> bytes:
    """``result.save`` into a zip (the two files under the folder ``name``/), as bytes: what a browser downloads.
    Unzip it and pass the folder to ``load_structured``."""
    if not isinstance(result, (SliceResult, MonarchResult)):
        raise ValueError(f"structured_zip takes a SliceResult or a MonarchResult, got {type(result).__name__}")
    if not name or any(c in name for c in "/\\") or name in (".", ".."):
        raise ValueError(f"the folder name inside the zip must be a plain name, got {name!r}")
    buffer = io.BytesIO()
    with tempfile.TemporaryDirectory() as tmp:
        folder = result.save(Path(tmp) / name)
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(folder.iterdir()):
                archive.write(file, f"{name}/{file.name}")
    return buffer.getvalue()


def load_structured(folder: str | Path, base: LoadedModel | nn.Module | None = None) -> SliceResult | MonarchResult:
    """The model saved in ``folder``, rebuilt around ``base``.

    Args:
        folder: a folder written by ``SliceResult.save`` or ``MonarchResult.save``.
        base: the dense model it was made from (a ``LoadedModel`` or its module; never modified). None: load the
            spec recorded in the folder with ``sparsekit.load_model``.

    Returns:
        A ``SliceResult`` or ``MonarchResult`` like the one saved (its ``.model`` is the rebuilt model, in eval
        mode).

    Raises:
        ValueError: a missing folder or file; a ``structure.json`` that does not match the weights' names, shapes or
            dtypes; a base model other than the one the folder was saved from (its spec, class or parameter
            shapes differ); a folder with no spec and no base given.
    """
    record, tensors = read_folder(folder)
    saved_base: dict[str, Any] = record["base"]
    spec = str(saved_base.get("spec") or "")
    if base is None:
        if not spec:
            raise ValueError(f"{folder} was saved from a bare module (no spec): pass base= the dense model")
        base = load_model(spec)
    module = base.module if isinstance(base, LoadedModel) else base
    if not isinstance(module, nn.Module):
        raise ValueError(f"base must be a LoadedModel or an nn.Module, got {type(base).__name__}")
    _check_base(folder, saved_base, module, base.spec if isinstance(base, LoadedModel) else "")
    kind = record["kind"]
    description: dict[str, Any] = record[kind]
    model: Any = copy.deepcopy(module).eval()
    try:
        if kind == "slicegpt":
            _slicegpt_skeleton(model, description)
        elif kind == "monarch":
            model = _monarch_skeleton(model, description)
        else:
            raise ValueError(f"{folder}: unknown kind {kind!r} (slicegpt or monarch)")
        _assign(model, tensors, record["tied"])
    except (KeyError, TypeError, AttributeError, IndexError) as err:
        raise ValueError(f"{folder}: structure.json does not describe a model that fits {spec or 'the base'}: "
                         f"{type(err).__name__}: {err}") from None
    model.eval()
    if kind == "slicegpt":
        return _slice_result(model, description, spec)
    return _monarch_result(model, description, spec, saved_base)


def _check_base(folder: str | Path, saved: dict[str, Any], module: nn.Module, spec: str) -> None:
    saved_spec, saved_class = str(saved.get("spec") or ""), saved.get("class")
    name = type(module).__name__
    if saved_spec and spec and saved_spec != spec:
        raise ValueError(f"{folder} was saved from {saved_spec} ({saved_class}); the base given is {spec} ({name}). "
                         f"Load {saved_spec} and pass it as base")
    if saved_class != name:
        raise ValueError(f"{folder} was saved from a {saved_class} ({saved_spec or 'no spec'}); the base given is a "
                         f"{name}")
    want = {n: list(s) for n, s in dict(saved.get("shapes") or {}).items()}
    have = {n: list(p.shape) for n, p in module.named_parameters()}
    if want != have:
        def shown(shapes: dict[str, list[int]], n: str) -> str:
            return str(tuple(shapes[n])) if n in shapes else "absent"

        diff = [f"{n}: saved {shown(want, n)}, base {shown(have, n)}"
                for n in sorted(set(want) | set(have)) if want.get(n) != have.get(n)]
        raise ValueError(f"{folder} was saved from another {saved_class} ({saved_spec or 'no spec'}): its dense "
                         f"parameters differ from the base's ({len(diff)} differ; {'; '.join(diff[:3])})")


def _slicegpt_skeleton(model: Any, description: dict[str, Any]) -> None:
    """The base turned into the sliced architecture (norms, block classes); the weights come next."""
    if not isinstance(model, DigitsViT):
        model.config.tie_word_embeddings = False
    parts = model_parts(model)
    to_sliced_structure(parts)
    modules = dict(model.named_modules())
    norms: dict[str, Any] = description["norms"]
    found = {n for n, m in modules.items() if isinstance(m, SlicedRMSNorm)}
    if found != set(norms):
        raise ValueError(f"structure.json names the norms {sorted(norms)[:4]}, the base has {sorted(found)[:4]}")
    for name, (width, full_width, eps) in norms.items():
        norm = modules[name]
        norm.width, norm.full_width, norm.eps = int(width), int(full_width), float(eps)


def _monarch_skeleton(model: nn.Module, description: dict[str, Any]) -> nn.Module:
    if description.get("layout") != LAYOUT:
        raise ValueError(f"the Monarch layout in structure.json ({description.get('layout')!r}) is not this "
                         f"sparsekit's ({LAYOUT!r})")
    for row in description["layers"]:
        if not row["blocks"]:
            continue
        n_out, n_in = (int(v) for v in row["shape"])
        name = row["name"]
        dtype = next(model.parameters()).dtype
        layer = MonarchLinear(n_in, n_out, int(row["blocks"]), bool(row["bias"]), dtype=dtype)
        parent, _, child = name.rpartition(".")
        if not name:
            model = layer
            continue
        owner = model.get_submodule(parent) if parent else model
        if not hasattr(owner, child):
            raise ValueError(f"structure.json projects {name}, which the base model does not have")
        setattr(owner, child, layer)
    return model


def _assign(model: nn.Module, tensors: dict[str, torch.Tensor], tied: dict[str, str]) -> None:
    """Every stored tensor becomes its parameter (or buffer) as it is, shape and dtype included; tied names share
    the first one's parameter. Then the model's state dict must have exactly these names."""
    for name, tensor in tensors.items():
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        if attr in owner._parameters:
            owner._parameters[attr] = nn.Parameter(tensor, requires_grad=tensor.is_floating_point())
        elif attr in owner._buffers:
            owner._buffers[attr] = tensor
        else:
            raise ValueError(f"the saved tensor {name} has no place in the rebuilt model")
    for alias, first in tied.items():
        owner_name, _, attr = alias.rpartition(".")
        src_owner, _, src_attr = first.rpartition(".")
        src = model.get_submodule(src_owner) if src_owner else model
        dst = model.get_submodule(owner_name) if owner_name else model
        dst._parameters[attr] = src._parameters[src_attr]
    m: Any
    for m in model.modules():
        w = getattr(m, "weight", None)
        if not isinstance(w, torch.Tensor) or w.dim() != 2:
            continue
        if isinstance(m, nn.Embedding):
            m.embedding_dim = w.shape[1]
        elif is_conv1d_transposed(m):
            m.nx, m.nf = (int(s) for s in w.shape)
        elif isinstance(m, nn.Linear):
            m.out_features, m.in_features = (int(s) for s in w.shape)
    names = set(model.state_dict())
    want = set(tensors) | set(tied)
    if names != want:
        missing, extra = sorted(names - want), sorted(want - names)
        raise ValueError(f"the rebuilt model and the saved tensors differ: not saved {missing[:5]}, saved but not in "
                         f"the model {extra[:5]}")


def _slice_result(model: nn.Module, d: dict[str, Any], spec: str) -> SliceResult:
    def shape(v: Any) -> tuple[int, ...] | None:
        return None if v is None else tuple(int(x) for x in v)

    return SliceResult(
        module=model, fraction=float(d["fraction"]), width=int(d["width"]), kept_width=int(d["kept_width"]),
        slice_head=bool(d["slice_head"]), architecture=str(d["architecture"]),
        layers=[LayerShape(str(n), shape(b), shape(a)) for n, b, a in d["layers"]],
        params_before=int(d["params_before"]), params_after=int(d["params_after"]),
        variance_kept=[(str(w), float(s)) for w, s in d["variance_kept"]],
        calibration_tokens=int(d["calibration_tokens"]), base_spec=spec)


def _monarch_result(model: nn.Module, d: dict[str, Any], spec: str, base: dict[str, Any]) -> MonarchResult:
    rows = [MonarchLayer(str(r["name"]), str(r["kind"]), (int(r["shape"][0]), int(r["shape"][1])), int(r["blocks"]),
                         int(r["params_before"]), int(r["params_after"]), int(r["bytes_before"]), int(r["bytes_after"]),
                         None if r["rel_error"] is None else float(r["rel_error"]), str(r["reason"]))
            for r in d["layers"]]
    (p0, p1), (b0, b1) = d["model_params"], d["model_bytes"]
    return MonarchResult(model, MonarchConfig.from_json(d["config"]), rows, int(p0), int(p1), int(b0), int(b1), spec,
                         {n: tuple(int(x) for x in s) for n, s in dict(base["shapes"]).items()})

"""``load_model``: one entry point for every model source, and the policy that guards it.

Browser users type spec strings, so everything a spec can reach is checked before any weights are
read: paths must resolve (symlinks followed) inside ``$SPARSEKIT_MODEL_ROOTS``; only safetensors
weights are read (never a pickle, never ``torch.load``); no remote code runs; and the weight size
is estimated from the safetensors headers and compared with the memory budget before loading.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

import torch

from ..progress import ProgressFn
from .base import LoadedModel, check_budget
from .digits import load_digits
from .lm_small import LM_SMALL_DIR, LM_SMALL_SPEC, load_lm_small
from .text import load_hf_text_model, load_minilm
from .weights import _FLOAT_DTYPES, _PICKLE_SUFFIXES, CONVERT_HINT, loaded_bytes, parse_weights, safetensors_header

WeightsArg = bytes | str | os.PathLike | None

ROOTS_ENV = "SPARSEKIT_MODEL_ROOTS"

BUILTIN_SPECS: Mapping[str, str] = MappingProxyType(
    {
        "minilm": "all-MiniLM-L6-v2 sentence encoder (bundled, 22M parameters)",
        "digits:mlp": "MLP on 8x8 digits (weights shipped; trained by scripts/train_digits.py)",
        "digits:cnn": "CNN on 8x8 digits (weights shipped; trained by scripts/train_digits.py)",
        "digits:vit": "vision transformer on 8x8 digits (weights shipped; trained by scripts/train_digits.py)",
        LM_SMALL_SPEC: "small GPT-2 causal LM, 4 layers x 128 (weights and tokenizer shipped, 1.35M parameters; "
                       "trained by scripts/train_lm_small.py)",
    }
)
"""Spec -> description of the models that need no download and accept ``weights=`` uploads."""

_HF_SPEC_HELP = f"hf:<model directory under ${ROOTS_ENV}, or a Hugging Face hub id>"
_MAX_SPEC_CHARS = 1024
# A hub id is "name" or "owner/name" made of these characters (no "..", no leading dot).
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
# Tokenizer and config files a text model needs; weights other than safetensors are never fetched.
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]
_OTHER_WEIGHT_SUFFIXES = (".h5", ".msgpack", ".onnx", ".gguf")


def _spec_list() -> str:
    return ", ".join(list(BUILTIN_SPECS) + [_HF_SPEC_HELP])


# ---------------------------------------------------------------------------------------------
# Roots


def model_roots() -> list[Path]:
    """The directories models may be loaded from: ``$SPARSEKIT_MODEL_ROOTS`` (os.pathsep-separated),
    each resolved with ``os.path.realpath``.

    Returns:
        The roots, in the order given, without duplicates (possibly empty).
    """
    roots: list[Path] = []
    for part in os.environ.get(ROOTS_ENV, "").split(os.pathsep):
        part = part.strip()
        if part:
            root = Path(os.path.realpath(os.path.expanduser(part)))
            if root not in roots:
                roots.append(root)
    return roots


def _inside(path: Path, root: Path) -> bool:
    return os.path.commonpath([str(path), str(root)]) == str(root)


def _roots_text(roots: list[Path]) -> str:
    return ", ".join(str(r) for r in roots) if roots else f"none configured; set ${ROOTS_ENV}"


def _no_roots_error(target: str) -> ValueError:
    return ValueError(
        f"cannot open {target!r}: no model roots are configured. Set ${ROOTS_ENV} to the "
        f"directories (separated by {os.pathsep!r}) that models may be loaded from"
    )


def _outside_error(target: str, roots: list[Path]) -> ValueError:
    return ValueError(f"{target!r} is outside the allowed model roots ({_roots_text(roots)})")


_MAX_NAME_BYTES = 255  # one path component, as most file systems allow
_MAX_PATH_BYTES = 4096


def _check_length(target: str, expanded: str) -> None:
    """A clear message for a path no file system can hold (instead of "[Errno 36] File name too long")."""
    longest = max((len(part.encode()) for part in Path(expanded).parts), default=0)
    if longest > _MAX_NAME_BYTES or len(expanded.encode()) > _MAX_PATH_BYTES:
        shown = target if len(target) <= 60 else f"{target[:40]}…{target[-15:]}"
        raise ValueError(f"the model path {shown!r} is too long ({len(target)} characters; a folder or file name "
                         f"may have at most {_MAX_NAME_BYTES}): give the path of a model folder under the model roots")


def resolve_under_roots(target: str) -> Path | None:
    """Resolve a user-given path against the allowed roots, following symlinks.

    An absolute path must resolve inside a root; a relative one is tried under each root in turn.

    Args:
        target: the path as typed.

    Returns:
        The real path of an existing file or directory inside a root, or None when a relative
        path exists under no root (the caller may then try it as a hub id).

    Raises:
        ValueError: the path resolves outside every root (including via symlinks or ``..``),
            or an absolute path is given while no roots are configured.
    """
    roots = model_roots()
    expanded = os.path.expanduser(target)
    _check_length(target, expanded)
    if os.path.isabs(expanded):
        if not roots:
            raise _no_roots_error(target)
        real = Path(os.path.realpath(expanded))
        if not any(_inside(real, root) for root in roots):
            raise _outside_error(target, roots)
        return real if real.exists() else None
    escaped = False
    for root in roots:
        joined = root / expanded
        real = Path(os.path.realpath(joined))
        if not _inside(real, root):
            escaped = escaped or os.path.lexists(joined) or ".." in Path(expanded).parts
            continue
        if real.exists():
            return real
    if escaped:
        raise _outside_error(target, roots)
    return None


def _readable_config(file: Path) -> bool:
    """Whether ``file`` is a JSON object (a broken ``config.json`` is not worth offering)."""
    try:
        return file.is_file() and isinstance(json.loads(file.read_text(encoding="utf-8")), dict)
    except (OSError, UnicodeDecodeError, ValueError):
        return False


def list_model_dirs() -> list[Path]:
    """Hugging Face model directories (holding a ``config.json`` that is a JSON object; folders
    whose ``config.json`` is broken are left out) at most two levels below each root, for a picker.

    Returns:
        Real paths, sorted, each inside a root (symlinks leading out are skipped).
    """
    found: set[Path] = set()
    for root in model_roots():
        if not root.is_dir():
            continue
        level = [root]
        for depth in range(3):
            next_level = []
            for d in level:
                real = Path(os.path.realpath(d))
                if not _inside(real, root):
                    continue
                if _readable_config(real / "config.json"):
                    found.add(real)
                if depth < 2:
                    try:
                        next_level += [c for c in sorted(real.iterdir()) if c.is_dir() and not c.name.startswith(".")]
                    except OSError:
                        continue  # unreadable folder: nothing to offer from it
            level = next_level
    return sorted(found)


# ---------------------------------------------------------------------------------------------
# Vetting a Hugging Face directory before transformers touches it


def vet_model_dir(path: Path, memory_budget_mb: float | None) -> list[str]:
    """Check a model directory against the loading policy, without loading weights.

    Args:
        path: the real path of the directory.
        memory_budget_mb: size limit (None: ``$SPARSEKIT_MEMORY_BUDGET_MB``).

    Returns:
        Notes for ``LoadedModel.info["notes"]`` (e.g. dtype conversion).

    Raises:
        ValueError: not a directory, no ``config.json``, custom code (``auto_map``), no
            safetensors weights, corrupt weight headers, or over budget.
    """
    if not path.is_dir():
        raise ValueError(f"{path} is not a directory; give a Hugging Face model directory")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{path} is not a Hugging Face model directory (it has no config.json)")
    for name in ("config.json", "tokenizer_config.json"):
        file = path / name
        if not file.is_file():
            continue
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{file} is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{file} is not a JSON object")
        if "auto_map" in data:
            raise ValueError(
                f"{path.name} needs custom code ({name} has an auto_map); remote code is disabled "
                "(trust_remote_code=False), so only architectures built into transformers load"
            )
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        pickled = sorted(f.name for f in path.iterdir() if f.suffix.lower() in _PICKLE_SUFFIXES)
        other = sorted(f.name for f in path.iterdir() if f.suffix.lower() in _OTHER_WEIGHT_SUFFIXES)
        if pickled:
            raise ValueError(
                f"{path.name} has only pickled weights ({', '.join(pickled[:3])}); sparsekit reads "
                f"safetensors only and never unpickles. Re-save with "
                "`model.save_pretrained(dir, safe_serialization=True)`"
            )
        found = f" (found {', '.join(other[:3])})" if other else ""
        raise ValueError(f"{path.name} has no safetensors weights{found}; sparsekit loads *.safetensors only")
    headers = [safetensors_header(f) for f in shards]
    check_budget(sum(loaded_bytes(h) for h in headers), memory_budget_mb, f"model {path.name}")
    dtypes = {e["dtype"] for h in headers for k, e in h.items() if k != "__metadata__"}
    stored = sorted((dtypes & _FLOAT_DTYPES) - {"F32"})
    return [f"weights stored as {', '.join(stored)} were loaded as float32"] if stored else []


def _hub_offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return flag in {"1", "true", "yes", "on"} or bool(constants.HF_HUB_OFFLINE)


def _hub_snapshot(repo_id: str, memory_budget_mb: float | None, notes: list[str]) -> Path:
    """A local snapshot of a hub model: from the hub cache when offline, else downloaded (only
    config, tokenizer and safetensors files, after a size check)."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    roots = _roots_text(model_roots())
    if not _hub_offline():
        try:
            info = HfApi().model_info(repo_id, files_metadata=True, timeout=10)
        except (RepositoryNotFoundError, GatedRepoError) as e:
            raise ValueError(
                f"{repo_id!r} is neither a model directory under the allowed roots ({roots}) nor an "
                f"accessible Hugging Face hub model ({type(e).__name__})"
            ) from None
        except Exception as e:  # no network, timeouts, proxies: fall back to the local cache
            notes.append(f"hub unreachable ({type(e).__name__}); used the local cache")
        else:
            sizes = [s.size or 0 for s in (info.siblings or []) if s.rfilename.endswith(".safetensors")]
            if not sizes:
                raise ValueError(f"hub model {repo_id!r} has no safetensors weights; sparsekit loads *.safetensors "
                                 "only")
            check_budget(sum(sizes), memory_budget_mb, f"hub model {repo_id}")
            return Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS))
    try:
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS, local_files_only=True))
    except Exception as e:  # LocalEntryNotFoundError and friends all mean "not cached"
        raise ValueError(
            f"{repo_id!r} is not a model directory under the allowed roots ({roots}), and as a Hugging "
            f"Face hub id it could not be found offline in the local hub cache ({type(e).__name__})"
        ) from None


def _load_hf(target: str, memory_budget_mb: float | None, progress: ProgressFn | None,
             allow_hub: bool = True) -> LoadedModel:
    if not target:
        raise ValueError(f"'hf:' needs a model directory or hub id: {_HF_SPEC_HELP}")
    notes: list[str] = []
    real = resolve_under_roots(target)
    source, name = "hf-dir", None
    if real is None:
        if not _HUB_ID.match(target):
            roots = model_roots()
            if not roots:
                raise _no_roots_error(target)
            raise ValueError(f"{target!r} was not found under the allowed model roots ({_roots_text(roots)})")
        if not allow_hub:
            raise ValueError(
                f"{target!r} is not a directory under the allowed model roots ({_roots_text(model_roots())}), "
                "and Hugging Face hub ids are disabled here (the server sets SPARSEKIT_ALLOW_HUB=1 to allow them)"
            )
        if progress is not None:
            progress(0.05, f"looking up {target} in the Hugging Face hub cache")
        real = _hub_snapshot(target, memory_budget_mb, notes)
        source, name = "hf-hub", target
    notes += vet_model_dir(real, memory_budget_mb)
    try:
        return load_hf_text_model(
            real, spec=f"hf:{target}", source=source, name=name, progress=progress, notes=notes
        )
    except (OSError, RuntimeError) as e:
        raise ValueError(f"could not load {target!r}: {str(e).splitlines()[0][:300]}") from None


# ---------------------------------------------------------------------------------------------
# Uploaded weights


def _read_weights(weights: bytes | str | os.PathLike, memory_budget_mb: float | None
                  ) -> tuple[dict[str, torch.Tensor], str]:
    if isinstance(weights, (bytes, bytearray, memoryview)):
        data = bytes(weights)
    elif isinstance(weights, (str, os.PathLike)):
        name = os.fspath(weights)
        suffix = Path(name).suffix.lower()
        if suffix in _PICKLE_SUFFIXES:
            raise ValueError(f"{Path(name).name} is a pickled checkpoint ({suffix}), which is never loaded here; "
                             f"{CONVERT_HINT}")
        if suffix != ".safetensors":
            raise ValueError(f"weights must be a .safetensors file, got {Path(name).name!r}")
        real = resolve_under_roots(name)
        if real is None or not real.is_file():
            raise ValueError(
                f"weights file {name!r} was not found under the allowed model roots "
                f"({_roots_text(model_roots())}); pass the file's bytes instead of a path to load it from anywhere"
            )
        check_budget(real.stat().st_size, memory_budget_mb, f"weights file {real.name}")
        data = real.read_bytes()
    else:
        raise TypeError(f"weights must be bytes or a path to a .safetensors file, got {type(weights).__name__}")
    return parse_weights(data, memory_budget_mb), hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------
# The entry point


def load_model(
    spec: str,
    *,
    weights: WeightsArg = None,
    memory_budget_mb: float | None = None,
    progress: ProgressFn | None = None,
    allow_hub: bool = True,
) -> LoadedModel:
    """Load a model from any supported source.

    Args:
        spec: ``"minilm"``, ``"digits:mlp"``, ``"digits:cnn"``, ``"digits:vit"``, ``"lm:small"`` (a small
            GPT-2 causal LM shipped with sparsekit), or
            ``"hf:<dir>"`` (a Hugging Face model directory under ``$SPARSEKIT_MODEL_ROOTS``,
            absolute or relative to a root) / ``"hf:<owner/name>"`` (a hub id, from the local hub
            cache when offline).
        weights: safetensors bytes, or the path of a ``.safetensors`` file under the model roots,
            holding your own weights for a built-in architecture (``minilm``, ``digits:*``, ``lm:small``).
        memory_budget_mb: largest accepted weight size in MB (default
            ``$SPARSEKIT_MEMORY_BUDGET_MB`` or 2048); checked before any weights are read.
        progress: optional ``progress(fraction, message)`` callback for slow steps.
        allow_hub: whether ``hf:<owner/name>`` may be looked up in the Hugging Face hub (and
            its local cache). The app turns this off unless ``$SPARSEKIT_ALLOW_HUB`` is ``1``,
            so browser users reach only the model roots.

    Returns:
        The model with its quality metric, calibration inputs and preprocessing.

    Raises:
        ValueError: unknown spec, a path outside the roots, pickled or corrupt weights, remote
            code, unsupported architectures, weights that do not fit, or over budget; the message
            says which and what to do.
    """
    if not isinstance(spec, str):
        raise TypeError(f"spec must be a string, got {type(spec).__name__}")
    if len(spec) > _MAX_SPEC_CHARS:
        raise ValueError(f"spec is {len(spec)} characters long; the limit is {_MAX_SPEC_CHARS}")
    if memory_budget_mb is not None and not (isinstance(memory_budget_mb, (int, float)) and memory_budget_mb > 0):
        raise ValueError(f"memory_budget_mb must be a positive number, got {memory_budget_mb!r}")
    text = spec.strip()
    key = text.lower()

    if key.startswith("hf:"):
        if weights is not None:
            raise ValueError(
                "weights= replaces the weights of a built-in architecture (minilm, digits:*, lm:small); "
                "for a Hugging Face model put the safetensors files in its directory"
            )
        return _load_hf(text[3:].strip(), memory_budget_mb, progress, allow_hub)
    if key not in BUILTIN_SPECS:
        if key.startswith("lm:"):
            shipped = ", ".join(s for s in BUILTIN_SPECS if s.startswith("lm:"))
            raise ValueError(f"unknown causal LM {spec!r}: the shipped ones are {shipped} (other causal LMs load as "
                             f"hf:<dir>); valid specs: {_spec_list()}")
        raise ValueError(f"unknown model spec {spec!r}; valid specs: {_spec_list()}")

    state, digest = _read_weights(weights, memory_budget_mb) if weights is not None else (None, None)
    if key == "minilm":
        model = load_minilm(state_dict=state, memory_budget_mb=memory_budget_mb, progress=progress)
    elif key == LM_SMALL_SPEC:
        # The shipped folder passes the same policy as any Hugging Face directory before it loads.
        notes = vet_model_dir(LM_SMALL_DIR, memory_budget_mb)
        model = load_lm_small(state_dict=state, notes=notes, progress=progress)
    else:
        model = load_digits(key.split(":", 1)[1], state_dict=state, memory_budget_mb=memory_budget_mb,
                            progress=progress)
    if digest is not None:
        model.info["upload_sha256"] = digest
    return model

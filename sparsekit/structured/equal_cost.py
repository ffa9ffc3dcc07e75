"""Every family of structure on one equal-cost axis: unstructured masks, each N:M level, SliceGPT fractions
and Monarch block counts, each measured as kept parameters of the whole model and as stored bytes in the
family's own format, next to the model's own quality (``loaded.quality``).

The counting rule, the same for every family:

- **kept parameters** = the parameter entries the model has to store: every parameter tensor of the
  returned model once (tied/shared tensors once, as ``model.parameters()`` lists them), a masked weight
  counting only its kept entries. Embeddings, norms, biases and layers left dense count in full, so the
  share is over *all* of the model's parameters, not only the changed layers. ``kept share`` divides by
  the dense model's count of the same kind (SliceGPT's shortcut matrices and untied head can take it
  above 1).
- **stored bytes** = every parameter tensor at its dtype's size, except that a masked weight is stored in
  its family's format: unstructured as kept values + a 1-bit mask per entry (bitmap); N:M as kept values +
  ``ceil(log2 M)`` index bits per kept value (2:4: PyTorch's 2-bit metadata); a SliceGPT model is a smaller
  dense model (all its tensors dense, shortcuts included); a Monarch layer stores its two factors.

``family_points`` never raises for a family that does not apply to the model (SliceGPT on a post-LN model,
the digits ViT or a model without blocks; Monarch where no layer fits the block count): it records the
family, the setting and the reason in ``FamilyPoints.skipped``.

Each finished setting is kept in the disk cache (keyed by the model's weights, its calibration batch, the
setting, the method and the quality function), so a call stopped half-way (Ctrl-C, Jupyter's stop button)
and run again measures only the settings it had not finished (``FamilyPoints.resumed`` names the others).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..cache import calibration_digest, get_cache, make_key, model_fingerprint, read_entry
from ..config import SparsifyConfig
from ..display import Card, Shown, percent
from ..methods import METHODS
from ..models.base import LoadedModel
from ..progress import ProgressArg, reporter
from ..sparsify import sparsify
from .monarch_model import MonarchConfig, monarchize
from .slicegpt import slice_model

__all__ = ["FAMILIES", "FamilyPoints", "FamilyRow", "family_points", "model_bytes", "model_params"]

FAMILIES = ("dense", "unstructured", "N:M", "SliceGPT", "Monarch")
"""The families, in the order rows are produced (and the figure's legend)."""
POINTS_VERSION = 1
"""Version of what a kept row holds and how it is measured: bump it when either changes."""


@dataclass(frozen=True)
class FamilyRow:
    """One model on the equal-cost axis."""

    family: str
    """One of ``FAMILIES``."""
    setting: str
    """``50%`` (unstructured sparsity of the selected layers), ``2:4``, ``slice 20%``, ``16 blocks``, ``dense``."""
    kept_params: int
    """Parameter entries stored (see the module docstring for the rule)."""
    dense_params: int
    """The dense model's count by the same rule."""
    stored_bytes: int
    """Bytes in the family's own format (module docstring)."""
    quality: dict[str, float] = field(default_factory=dict)
    """``loaded.quality`` of the model."""
    detail: str = ""
    """What changed (layers masked or projected, the residual width)."""

    @property
    def kept_share(self) -> float:
        return self.kept_params / self.dense_params if self.dense_params else 1.0


@dataclass(repr=False)
class FamilyPoints(Shown):
    """``family_points``' result: the rows (dense first) and the families or settings that were skipped.
    In Jupyter it shows a card (one row per setting); ``.figure(metric=...)`` draws
    ``viz.family_cost_figure``."""

    model: str
    rows: list[FamilyRow]
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    """``(family, setting, reason)``; ``setting`` is ``all`` when the family does not apply to the model."""
    resumed: list[str] = field(default_factory=list)
    """Settings (``"family setting"``) read from an earlier, interrupted or finished call instead of measured."""

    FIGURE = "family_cost_figure"

    def summary_card(self) -> Card:
        """The settings measured and skipped, and one row per setting: kept share, bytes, quality."""
        head = {"settings": str(sum(r.family != "dense" for r in self.rows)), "skipped": str(len(self.skipped))}
        if self.resumed:
            head["kept from an earlier call"] = str(len(self.resumed))
        rows = [{"family": r.family, "setting": r.setting, "kept": percent(r.kept_share),
                 "bytes": f"{r.stored_bytes:,} B", **r.quality} for r in self.rows]
        note = "; ".join(f"{fam} {setting}: {why}" for fam, setting, why in self.skipped)
        return Card(f"FamilyPoints: {self.model}", head, rows, note)

    def table(self, metrics: Sequence[str] | None = None) -> list[dict[str, object]]:
        """Flat dicts (family, setting, kept parameters, kept share, stored bytes, each metric) for printing."""
        names = list(metrics) if metrics is not None else list(self.rows[0].quality) if self.rows else []
        return [{"family": r.family, "setting": r.setting, "kept params": r.kept_params,
                 "kept share": r.kept_share, "bytes": r.stored_bytes,
                 **{m: r.quality.get(m) for m in names}} for r in self.rows]


def model_params(module: nn.Module, masks: Mapping[str, torch.Tensor] | None = None) -> int:
    """Parameter entries stored: every tensor once, a masked weight by its kept entries (``masks``: parameter
    name -> boolean mask with True = kept)."""
    masks = masks or {}
    total = 0
    for name, p in module.named_parameters():
        mask = masks.get(name)
        total += int(mask.count_nonzero()) if mask is not None else p.numel()
    return total


def model_bytes(module: nn.Module) -> int:
    """Every parameter tensor once, dense, at its dtype's size."""
    return sum(p.numel() * p.element_size() for p in module.parameters())


def _fractions(values: object, what: str) -> tuple[float, ...]:
    out = []
    for v in _sequence(values, what):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
            raise ValueError(f"{what}: each value must be a number in [0, 1), got {v!r}")
        out.append(float(v))
    return tuple(dict.fromkeys(out))


def _sequence(values: object, what: str) -> list[object]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ValueError(f"{what} must be a list of settings, got {values!r}")
    return list(values)


def _patterns(values: object) -> tuple[tuple[int, int], ...]:
    out = []
    for v in _sequence(values, "nm"):
        pair = tuple(v) if isinstance(v, (tuple, list)) else ()
        if (len(pair) != 2 or any(isinstance(x, bool) or not isinstance(x, int) for x in pair)
                or not 0 < pair[0] < pair[1]):
            raise ValueError(f"nm: each pattern must be a pair (n, m) of integers with 0 < n < m, got {v!r}")
        out.append((int(pair[0]), int(pair[1])))
    return tuple(dict.fromkeys(out))


def _blocks(values: object) -> tuple[int, ...]:
    out = []
    for v in _sequence(values, "monarch_blocks"):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"monarch_blocks: each block count must be an integer >= 1, got {v!r}")
        out.append(v)
    return tuple(dict.fromkeys(out))


def _masked_row(loaded: LoadedModel, config: SparsifyConfig, family: str, setting: str,
                measure: Callable[[nn.Module], dict[str, float]]) -> FamilyRow:
    result = sparsify(loaded, config, progress=False)
    pruned = [r for r in result.report if r.pruned]
    masks = {result.weight_names[r.name]: result.masks[r.name] for r in pruned}
    kept = model_params(result.model, masks)
    names = set(masks)
    byte_count = sum(p.numel() * p.element_size() for n, p in result.model.named_parameters() if n not in names)
    for r in pruned:
        fmt = r.nm_bytes if family == "N:M" else r.bitmask_bytes
        if fmt is None:  # cannot happen for an N:M config (every pruned layer has an N:M size); be explicit
            raise ValueError(f"{r.name}: no N:M size in the report")
        byte_count += fmt
    return FamilyRow(family, setting, kept, model_params(loaded.module), byte_count, measure(result.model),
                     f"{len(pruned)}/{len(result.report)} layers masked, {config.method}")


def family_points(loaded: LoadedModel, *, unstructured: Sequence[float] = (0.5, 0.7),
                  nm: Sequence[tuple[int, int]] = ((2, 4),), slicegpt: Sequence[float] = (0.1, 0.2, 0.3),
                  monarch_blocks: Sequence[int] = (4, 16), method: str = "magnitude",
                  quality: Callable[[nn.Module], dict[str, float]] | None = None,
                  quality_key: str | None = None, resume: bool = True,
                  progress: ProgressArg = True) -> FamilyPoints:
    """The dense model and every family's settings on one axis (kept parameters; stored bytes), with quality.

    Args:
        loaded: the model (never modified; every setting works on a copy).
        unstructured: sparsities of the selected Linear/Conv layers (``SparsifyConfig``'s default selection),
            each in [0, 1).
        nm: ``(n, m)`` patterns, n kept of every m.
        slicegpt: SliceGPT slicing fractions of the residual width, each in [0, 1).
        monarch_blocks: Monarch block counts (every Linear whose sizes they divide and which they shrink).
        method: the scoring method of the unstructured and N:M masks (``sparsekit.methods.METHODS``).
        quality: ``module -> {metric: value}`` measuring every model (default ``loaded.quality``; e.g. add a
            held-out perplexity).
        quality_key: a name for your own ``quality`` function; with it, its finished settings are kept and
            reused like the default's (without it, a custom ``quality`` measures every setting each call).
        resume: reuse the settings an earlier call with the same inputs finished, and keep each new one
            (False: measure all, keep nothing).
        progress: True (a ``tqdm.auto`` bar after 2 s), False, or a ``progress(fraction, message)`` callback.

    Returns:
        ``FamilyPoints``: one ``FamilyRow`` per setting that applies (dense first), and ``skipped``
        entries ``(family, setting, reason)`` for those that do not.

    Raises:
        ValueError: no settings at all, a sparsity or fraction outside [0, 1), a bad N:M pair or block count,
            an unknown method, or something other than a ``LoadedModel``.
    """
    if not isinstance(loaded, LoadedModel):
        raise ValueError(f"family_points takes a LoadedModel (sparsekit.load_model), got {type(loaded).__name__}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    sparsities = _fractions(unstructured, "unstructured")
    patterns = _patterns(nm)
    fractions = _fractions(slicegpt, "slicegpt")
    blocks = _blocks(monarch_blocks)
    jobs = ([("unstructured", s) for s in sparsities] + [("N:M", p) for p in patterns]
            + [("SliceGPT", f) for f in fractions] + [("Monarch", b) for b in blocks])
    if not jobs:
        raise ValueError("choose at least one setting: unstructured, nm, slicegpt or monarch_blocks are all empty")
    measure = quality if quality is not None else loaded.quality
    if not callable(measure):
        raise ValueError(f"quality must be a function module -> dict of metrics, got {type(quality).__name__}")
    if quality_key is not None and (not isinstance(quality_key, str) or not quality_key):
        raise ValueError(f"quality_key must be a non-empty string naming the quality function, got {quality_key!r}")
    if quality is None:
        quality_key = f"loaded.quality {getattr(loaded.quality_fn, 'eval_key', None)!r}"
    base_key = _base_key(loaded, method, quality_key) if resume and quality_key is not None else None
    dense_params = model_params(loaded.module)
    resumed: list[str] = []
    rows = [FamilyRow("dense", "dense", dense_params, dense_params, model_bytes(loaded.module), measure(loaded.module),
                      "the model as loaded")]
    skipped: list[tuple[str, str, str]] = []
    with reporter(progress, "family points") as report:
        for step, (family, value) in enumerate(jobs):
            setting = _setting(family, value)
            if report is not None:
                report(step / len(jobs), f"{family} {setting}")
            if any(f == family and s == "all" for f, s, _ in skipped):
                continue
            key = None if base_key is None else make_key("family-point", base_key, family, value)
            kept = None if key is None else read_entry(key, _read_row)
            if kept is not None:
                rows.append(kept)
                resumed.append(f"{family} {setting}")
                continue
            if family in ("unstructured", "N:M"):
                config = (SparsifyConfig(pattern="unstructured", sparsity=float(value), method=method)  # type: ignore[arg-type]
                          if family == "unstructured" else
                          SparsifyConfig(pattern="nm", n=value[0], m=value[1], method=method))  # type: ignore[index]
                row = _masked_row(loaded, config, family, setting, measure)
            else:
                try:
                    row = _structured_row(loaded, family, value, dense_params, measure)
                except ValueError as err:
                    reason = str(err)
                    model_wide = family == "SliceGPT" and not reason.startswith("slicing")
                    skipped.append((family, "all" if model_wide else setting, reason))
                    continue
            rows.append(row)
            if key is not None:
                get_cache().set(key, json.dumps(asdict(row)))
        if report is not None:
            report(1.0, "done")
    return FamilyPoints(loaded.spec, rows, skipped, resumed)


def _base_key(loaded: LoadedModel, method: str, quality_key: str) -> str:
    """What every kept setting of this call shares: the weights, the calibration batch, method and quality."""
    return make_key("family-points", POINTS_VERSION, torch.__version__, loaded.spec, model_fingerprint(loaded.module),
                    calibration_digest(loaded.calibration), method, quality_key)


def _read_row(raw: object) -> FamilyRow:
    """A kept row (JSON of ``FamilyRow``); raises ValueError for anything else, so it is measured again."""
    data = json.loads(raw) if isinstance(raw, (str, bytes)) else None
    if not isinstance(data, dict) or set(data) != {f for f in FamilyRow.__dataclass_fields__}:
        raise ValueError("not a kept family row")
    quality = data["quality"]
    if (data["family"] not in FAMILIES or not isinstance(data["setting"], str)
            or not all(isinstance(data[k], int) and not isinstance(data[k], bool)
                       for k in ("kept_params", "dense_params", "stored_bytes"))
            or not isinstance(quality, dict)
            or not all(isinstance(k, str) and isinstance(v, (int, float)) for k, v in quality.items())):
        raise ValueError("not a kept family row")
    return FamilyRow(data["family"], data["setting"], data["kept_params"], data["dense_params"], data["stored_bytes"],
                     {k: float(v) for k, v in quality.items()}, str(data["detail"]))


def _setting(family: str, value: object) -> str:
    if family == "unstructured":
        return f"{float(value):.0%}"  # type: ignore[arg-type]
    if family == "N:M" and isinstance(value, tuple):
        return f"{value[0]}:{value[1]}"
    if family == "SliceGPT":
        return f"slice {float(value):.0%}"  # type: ignore[arg-type]
    return f"{value} blocks"


def _structured_row(loaded: LoadedModel, family: str, value: object, dense_params: int,
                    measure: Callable[[nn.Module], dict[str, float]]) -> FamilyRow:
    if family == "SliceGPT":
        sliced = slice_model(loaded, float(value), progress=False)  # type: ignore[arg-type]
        return FamilyRow(family, _setting(family, value), model_params(sliced.module), dense_params,
                         model_bytes(sliced.module), measure(sliced.module),
                         f"width {sliced.width} → {sliced.kept_width}")
    mon = monarchize(loaded, MonarchConfig(blocks=int(value)), progress=False)  # type: ignore[call-overload]
    s = mon.summary()
    return FamilyRow(family, _setting(family, value), model_params(mon.model), dense_params, model_bytes(mon.model),
                     measure(mon.model), f"{s['layers_projected']}/{s['layers_total']} layers projected")


"""Layer sensitivity scan: prune one layer (or one group of layers) at a time and record the drop.

Each cell of the unit x setting table prunes only that unit of a copy (``sparsify`` with an exact
``include`` regex) and measures the model's quality against dense. Next to it a cheap proxy: the
unit's own output reconstruction error on the dense model's calibration inputs,
``sum ||W x - W' x||^2 / sum ||W x||^2`` over its layers (W' the pruned weight, as SparseGPT rewrote
it), from each layer's input Gram matrix ``X^T X``. ``proxy`` mode computes only the proxy, without a
model copy or an evaluation per cell. Scans are cached on disk per model fingerprint and config, and
each unit as it finishes (``sensitivity_units``): a stopped scan continues where it was.
"""
from __future__ import annotations

import copy
import csv
import io
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable, Sequence

import torch
from torch import nn

from . import sensitivity_units as store
from .cache import get_cache, make_key, model_fingerprint, read_entry, tensor_digest
from .config import SparsifyConfig
from .display import Card, Shown, fmt
from .layers import layer_group, layer_weight
from .methods import get_method
from .methods.calibration import check_calibration, transformer_blocks
from .models.base import LoadedModel, module_of
from .progress import ProgressArg, ProgressFn, reporter
from .ranks import average_ranks as average_ranks  # re-exported: part of this module's interface
from .ranks import spearman
from .sparsify import layer_reasons, sparsify

GROUPINGS = ("layer", "block-kind")
"""``layer``: every prunable layer alone; ``block-kind``: the attention (or MLP, or other) layers of
one transformer block together (a layer outside every block stays alone)."""
MODES = ("full", "proxy")
MAX_SETTINGS = 12
SENSITIVITY_VERSION = 1
"""Bump when a scan's contents or meaning change, so stale cached scans are ignored."""


@dataclass(frozen=True)
class SensitivityConfig:
    """What a sensitivity scan prunes. Serialises to JSON (``to_json``/``from_json``) for cache keys."""

    method: str = "magnitude"
    """A registered pruning method (``sparsekit.methods``)."""
    sparsities: tuple[float, ...] = (0.5, 0.7, 0.9)
    """Unstructured settings: fractions pruned, each in (0, 0.99]."""
    nm: tuple[tuple[int, int], ...] = ()
    """N:M settings ``(n, m)``, N = kept."""
    grouping: str = "layer"
    """``layer`` or ``block-kind`` (see ``GROUPINGS``)."""
    mode: str = "full"
    """``full``: quality drop and proxy per cell; ``proxy``: the reconstruction-error proxy only."""
    metric: str = ""
    """Quality metric whose drop is recorded; empty: the model's headline metric."""
    layers: str = "all"
    """``all``, ``mlp`` or ``attention`` layers (as ``SparsifyConfig.layers``)."""
    exclude: str = ""
    """Regular expression of layers left out of the scan."""
    conv_grouping: str = "channel"
    """Conv N:M grouping (as ``SparsifyConfig.conv_grouping``)."""
    calibration_order: str = "block"
    """Wanda/SparseGPT calibration order (as ``SparsifyConfig.calibration_order``)."""
    seed: int = 0
    """Seed of the random method."""

    def __post_init__(self) -> None:
        # JSON brings lists; the config stays hashable and comparable with tuples.
        if isinstance(self.sparsities, list):
            object.__setattr__(self, "sparsities", tuple(self.sparsities))
        if isinstance(self.nm, (list, tuple)):
            object.__setattr__(self, "nm", tuple(tuple(p) if isinstance(p, list) else p for p in self.nm))

    def settings(self) -> list[SparsifyConfig]:
        """One ``SparsifyConfig`` per column (N:M first), without the per-unit ``include``."""
        base = SparsifyConfig(method=self.method, layers=self.layers, exclude=self.exclude, seed=self.seed,
                              conv_grouping=self.conv_grouping, calibration_order=self.calibration_order)
        return ([replace(base, pattern="nm", n=n, m=m) for n, m in self.nm]
                + [replace(base, pattern="unstructured", sparsity=s) for s in self.sparsities])

    def labels(self) -> list[str]:
        """Column labels: ``2:4``, ``70%``."""
        return [f"{n}:{m}" for n, m in self.nm] + [f"{100 * s:g}%" for s in self.sparsities]

    def validate(self) -> None:
        """Raise ``ValueError`` with a clear message for any setting out of bounds."""
        if self.grouping not in GROUPINGS:
            raise ValueError(f"grouping must be one of {GROUPINGS}, got {self.grouping!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        for p in self.nm:
            if not (isinstance(p, tuple) and len(p) == 2):
                raise ValueError(f"nm settings must be (n, m) pairs, got {p!r}")
        for s in self.sparsities:
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s <= 0.99:
                raise ValueError(f"scan sparsities must be numbers in (0, 0.99], got {s!r}")
        count = len(self.nm) + len(self.sparsities)
        if count == 0:
            raise ValueError("choose at least one sparsity or N:M setting to scan")
        if count > MAX_SETTINGS:
            raise ValueError(f"the scan has {count} settings; at most {MAX_SETTINGS}")
        if len(set(self.labels())) != count:
            raise ValueError(f"the scan settings repeat: {self.labels()}")
        for cfg in self.settings():
            cfg.validate()  # method, N:M bounds, regex, seed

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "SensitivityConfig":
        return cls(**json.loads(text))


Cells = tuple[tuple["float | None", ...], ...]


@dataclass(frozen=True, repr=False)
class SensitivityScan(Shown):
    """A unit x setting table of quality drops (positive = worse than dense) and proxy errors."""

    config: SensitivityConfig
    spec: str
    """The model's spec (``digits:mlp``, ``minilm``)."""
    fingerprint: str
    """``compare.model_fingerprint`` of the scanned weights."""
    metric: str
    higher_is_better: bool
    dense_quality: float
    settings: tuple[str, ...]
    """Column labels (``SensitivityConfig.labels``)."""
    units: tuple[str, ...]
    """Row labels: a layer name, or ``<block> <kind>`` for a group."""
    unit_layers: tuple[tuple[str, ...], ...]
    unit_numel: tuple[int, ...]
    quality: Cells
    """Metric with only that unit pruned; None: not measured (proxy mode, pattern does not fit, stopped)."""
    drop: Cells
    """Dense minus pruned quality, sign-flipped for lower-is-better metrics: positive = worse."""
    proxy: Cells
    """Relative output reconstruction error of the unit on the calibration inputs."""
    spearman: tuple["float | None", ...]
    """Per setting: Spearman rank correlation of proxy vs drop across units (None: too few values)."""
    complete: bool = True
    """False when the scan was stopped early (only its finished units are cached: the same call continues it)."""
    seconds: float = 0.0
    notes: tuple[str, ...] = ()
    not_reached: tuple[str, ...] = ()
    """Units a stopped scan did not get to (their rows are None); empty when complete."""

    FIGURE = "sensitivity_heatmap"

    def summary_card(self) -> Card:
        """The units that cost most at the strongest setting, and the proxy's rank agreement."""
        last = len(self.settings) - 1
        order = sorted(range(len(self.units)), key=lambda i: -(self.drop[i][last] or -math.inf))
        rows = [{"unit": self.units[i], "weights": self.unit_numel[i],
                 **{f"drop {s}": self.drop[i][j] for j, s in enumerate(self.settings)}} for i in order]
        head = {"model": self.spec, "metric": f"{self.metric} (dense {fmt(self.dense_quality)})",
                "units": str(len(self.units)), "settings": ", ".join(self.settings),
                "complete": "yes" if self.complete else "no (stopped)"}
        if any(v is not None for v in self.spearman):
            head["Spearman proxy vs drop"] = ", ".join(fmt(v, 3) for v in self.spearman)
        return Card(f"SensitivityScan ({self.config.method}, {self.config.grouping})", head, rows,
                    "Rows: most sensitive first at the last setting; drop = dense minus pruned (positive = worse).")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "SensitivityScan":
        data = json.loads(text)
        data["config"] = SensitivityConfig(**data["config"])
        data["not_reached"] = data.get("not_reached", ())
        for key in ("settings", "units", "unit_numel", "spearman", "notes", "not_reached"):
            data[key] = tuple(data[key])
        for key in ("unit_layers", "quality", "drop", "proxy"):
            data[key] = tuple(tuple(row) for row in data[key])
        return cls(**data)

    def to_csv(self) -> str:
        """The table as CSV: one row per unit, ``drop``, ``proxy`` and ``quality`` columns per setting."""
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["unit", "layers", "weights"] + [f"{what} {s}" for what in ("drop", "proxy", "quality")
                                                         for s in self.settings])
        for i, unit in enumerate(self.units):
            cells = [v for table in (self.drop, self.proxy, self.quality) for v in table[i]]
            writer.writerow([unit, ";".join(self.unit_layers[i]), self.unit_numel[i]]
                            + ["" if v is None else repr(float(v)) for v in cells])
        return buf.getvalue()

    def describe(self) -> str:
        """``method, grouping`` of the scan, for allocation notes."""
        return f"{self.config.method}, {self.config.grouping}"

    def allocation_curves(self, names: Sequence[str], config: SparsifyConfig,
                          fingerprint: str | None = None) -> tuple[list[list[str]], list[list[tuple[float, float]]]]:
        """What ``allocation.allocate`` reads from this scan (complete, full mode, of the same model):
        the units covering ``names`` and their drop curves for ``config``'s pattern.

        Args:
            names: the layers to be pruned.
            config: the ``SparsifyConfig`` (unstructured, or N:M with the M to use).
            fingerprint: the model's fingerprint, checked against the scan's.

        Returns:
            ``(units, curves)``: per unit its layers (those in ``names``) and its points, unstructured
            ``(sparsity, drop)`` by sparsity, N:M ``(n, drop)`` from ``(M, 0)`` (dense) down.
        """
        if fingerprint is not None and self.fingerprint != fingerprint:
            raise ValueError("the sensitivity scan was measured on a different model (its weights differ); "
                             "scan this model")
        if not self.complete:
            raise ValueError("the sensitivity scan is incomplete (it was stopped); run it to the end")
        if self.config.mode != "full":
            raise ValueError("allocation needs measured quality drops; this scan is proxy-only (mode='proxy')")
        covered = {n for layers in self.unit_layers for n in layers}
        missing = [n for n in names if n not in covered]
        if missing:
            raise ValueError(f"the sensitivity scan does not cover {len(missing)} of the layers to prune (e.g. "
                             f"{missing[0]}); scan with the same layer selection")
        if config.pattern == "nm":
            cols: list[tuple[int, float]] = [(j, c.n) for j, c in enumerate(self.config.settings())
                                             if c.pattern == "nm" and c.m == config.m]
            what = f"N:M settings with M={config.m}"
        else:
            cols = [(j, c.sparsity) for j, c in enumerate(self.config.settings()) if c.pattern == "unstructured"]
            what = "unstructured settings"
        if not cols:
            raise ValueError(f"the sensitivity scan has no {what}; scan them first")
        want = set(names)
        units, curves = [], []
        for i, layers in enumerate(self.unit_layers):
            members = [n for n in layers if n in want]
            if not members:
                continue
            points = []
            for j, value in cols:
                cell = self.drop[i][j]
                if cell is None:
                    raise ValueError(f"the sensitivity scan has no drop for {self.units[i]} at {self.settings[j]}")
                points.append((float(value), float(cell)))
            if config.pattern == "nm":
                points = [(float(config.m), 0.0)] + sorted(points, reverse=True)
            units.append(members)
            curves.append(sorted(points) if config.pattern != "nm" else points)
        return units, curves


def scan_units(model: nn.Module | LoadedModel, config: SensitivityConfig) -> list[tuple[str, list[str]]]:
    """The rows of a scan: ``(label, layer names)`` in module order.

    Args:
        model: an ``nn.Module`` or ``LoadedModel``.
        config: the scan config (grouping, layer selection).

    Returns:
        One entry per layer (``layer``) or per block and kind (``block-kind``).
    """
    module = module_of(model)
    probe = SparsifyConfig(pattern="unstructured", layers=config.layers, exclude=config.exclude)
    names = [n for n, r in layer_reasons(module, probe).items() if not r]
    if not names:
        raise ValueError(f"no prunable layer is selected (layers={config.layers!r}, exclude={config.exclude!r})")
    if config.grouping == "layer":
        return [(n, [n]) for n in names]
    blocks = [b for b, _ in transformer_blocks(module)]
    groups: dict[str, list[str]] = {}
    for n in names:
        block = next((b for b in blocks if n.startswith(b + ".")), None)
        groups.setdefault(f"{block} {layer_group(n)}" if block else n, []).append(n)
    return list(groups.items())


def _scan_key(loaded: LoadedModel, config: SensitivityConfig, metric: str) -> str:
    calibration = getattr(loaded, "calibration", None)
    calib = "" if calibration is None else tensor_digest(
        *(calibration[k] for k in sorted(calibration)) if isinstance(calibration, dict) else (calibration,))
    # What the quality is measured on: a text model's evaluation ids (``set_eval_ids`` can change them).
    evaluation = getattr(getattr(loaded, "quality_fn", None), "eval_digest", "")
    return make_key("sensitivity", SENSITIVITY_VERSION, loaded.spec, model_fingerprint(loaded.module),
                    config.to_json(), calib, metric, evaluation)


def cached_scan(loaded: LoadedModel, config: SensitivityConfig, *, partial: bool = False) -> "SensitivityScan | None":
    """The scan the disk cache holds for this model and config, or None (nothing is computed).

    Args:
        loaded: a ``LoadedModel``.
        config: what the scan pruned.
        partial: also give a stopped scan: the units finished so far (``complete=False``, the other rows
            None), when at least one is stored.

    Returns:
        The ``SensitivityScan`` or None.
    """
    config.validate()
    metric = config.metric or next(iter(loaded.quality()))
    key = _scan_key(loaded, config, metric)
    hit = read_entry(key, SensitivityScan.from_json)  # an older version's: None
    if hit is not None or not partial:
        return hit
    labels = [u for u, _ in scan_units(loaded.module, config)]
    if not store.load_units(key, labels, len(config.labels())):
        return None
    return sensitivity_scan(loaded, config, progress=False, stop=lambda: True)


def sensitivity_scan(loaded: LoadedModel, config: SensitivityConfig = SensitivityConfig(), *,
                     progress: ProgressArg = True,
                     stop: Callable[[], bool] | None = None, use_cache: bool = True) -> SensitivityScan:
    """Prune each unit alone at each setting and record the quality drop and the proxy error.

    Args:
        loaded: a ``LoadedModel`` (its module is never modified: every cell prunes a copy, and the
            calibration hooks run on a copy).
        config: what to scan; validated first.
        progress: True (default): a ``tqdm.auto`` bar when the scan takes over 2 s; False: silent; or a
            ``progress(fraction, message)`` callback, called once per unit.
        stop: optional callable, asked before each unit to compute; when it returns True the scan ends
            there and the record says ``complete=False`` (the rows not reached are None).
        use_cache: read and write the disk cache: the finished scan, and each unit as it finishes, so a
            scan that was stopped (``stop``, Ctrl-C, a killed process) is continued by the same call,
            computing only the units not yet stored.

    Returns:
        A ``SensitivityScan``.
    """
    with reporter(progress, "sensitivity scan") as report:
        return _sensitivity_scan(loaded, config, progress=report, stop=stop, use_cache=use_cache)


def _sensitivity_scan(loaded: LoadedModel, config: SensitivityConfig = SensitivityConfig(), *,
                      progress: ProgressFn | None = None,
                      stop: Callable[[], bool] | None = None, use_cache: bool = True) -> SensitivityScan:
    config.validate()
    module = loaded.module
    dense = loaded.quality()
    metric = config.metric or next(iter(dense))
    if metric not in dense:
        raise ValueError(f"metric {metric!r} is not one of this model's metrics {list(dense)}")
    method = get_method(config.method)
    calibration = getattr(loaded, "calibration", None)
    if method.needs_calibration or config.mode == "proxy":
        check_calibration(calibration, f"{config.method} sensitivity scan" if method.needs_calibration else
                          "the proxy of the sensitivity scan")
    key = _scan_key(loaded, config, metric)
    if use_cache and (hit := read_entry(key, SensitivityScan.from_json)) is not None:
        return hit  # an entry an older version wrote reads as missing and is computed again

    t0 = time.perf_counter()
    settings, labels = config.settings(), config.labels()
    units = scan_units(module, config)
    fits = [layer_reasons(module, cfg) for cfg in settings]
    modules = dict(module.named_modules())
    hib = bool(loaded.higher_is_better.get(metric, True))
    # Units a stopped run finished come back from the store first; only the others are computed.
    rows = store.load_units(key, [u for u, _ in units], len(settings)) if use_cache else {}
    work: nn.Module | None = None
    model_scores: dict[str, torch.Tensor] = {}
    # Proxy-only scans prune each unit alone without a forward when the method allows it: per-layer
    # scores, a per-layer keep on the captured statistics, or model-level scores computed once.
    direct = config.mode == "proxy" and (method.layer_scores is not None or method.keep_layer is not None
                                         or (method.run is not None and method.run_output == "scores"))
    complete = True
    for i, (label, names) in enumerate(units):
        if i in rows:
            continue
        if stop is not None and stop():
            complete = False
            break
        if progress is not None:
            done = len(rows)
            progress(done / len(units), f"{label} ({done + 1}/{len(units)})")
        if work is None:
            work = copy.deepcopy(module).eval()  # hooks and gradients go here, never on the shared module
            if direct and method.run is not None and method.keep_layer is None and method.layer_scores is None:
                model_scores = method.run(work, [n for _, u in units for n in u], settings[0], calibration,
                                          None).scores
        rows[i] = _scan_unit(loaded, config, label, names, modules, work, fits, dense[metric], metric, hib,
                             direct, model_scores)
        if use_cache:
            store.save_unit(key, i, rows[i])
    empty = tuple([None] * len(settings))  # rows a stop left out
    quality = [rows[i].quality if i in rows else empty for i in range(len(units))]
    drop = [rows[i].drop if i in rows else empty for i in range(len(units))]
    proxy = [rows[i].proxy if i in rows else empty for i in range(len(units))]
    notes = [n for i in sorted(rows) for n in rows[i].notes]
    rho = tuple(spearman([p[j] for p in proxy], [d[j] for d in drop]) for j in range(len(settings)))
    scan = SensitivityScan(
        config=config, spec=loaded.spec, fingerprint=model_fingerprint(module), metric=metric, higher_is_better=hib,
        dense_quality=float(dense[metric]), settings=tuple(labels), units=tuple(u for u, _ in units),
        unit_layers=tuple(tuple(n) for _, n in units),
        unit_numel=tuple(sum(layer_weight(modules[n]).numel() for n in names) for _, names in units),
        quality=tuple(quality), drop=tuple(drop), proxy=tuple(proxy), spearman=rho, complete=complete,
        seconds=time.perf_counter() - t0 + sum(r.seconds for r in rows.values()), notes=tuple(dict.fromkeys(notes)),
        not_reached=tuple(u for i, (u, _) in enumerate(units) if i not in rows))
    if progress is not None and complete:
        progress(1.0, "done")
    if use_cache and complete:
        get_cache()[key] = scan.to_json()
    return scan


def _scan_unit(loaded: LoadedModel, config: SensitivityConfig, label: str, names: Sequence[str],
               modules: dict[str, nn.Module], work: nn.Module, fits: list[dict[str, str]], dense: float, metric: str,
               hib: bool, direct: bool, model_scores: dict[str, torch.Tensor]) -> store.UnitRow:
    """Prune one unit alone at every setting: its quality, drop and proxy per setting."""
    start = time.perf_counter()
    grams = store.input_grams(work, names, getattr(loaded, "calibration", None))
    q_row: list[float | None] = []
    d_row: list[float | None] = []
    p_row: list[float | None] = []
    notes: list[str] = []
    for cfg, fit, setting in zip(config.settings(), fits, config.labels()):
        blocked = [fit[n] for n in names if fit[n]]
        if blocked:
            notes.append(f"{label} at {setting}: {blocked[0]}")
            for row in (q_row, d_row, p_row):
                row.append(None)
            continue
        q = None
        if direct:
            pruned = {n: store.prune_alone(modules[n], n, cfg, grams.get(n), model_scores) for n in names}
        else:
            res = sparsify(loaded, replace(cfg, include=store.exact_regex(names), layers="all", exclude=""),
                           progress=None)
            new = dict(res.model.named_modules())
            pruned = {n: layer_weight(new[n]).detach() for n in names}
            if config.mode == "full":
                q = float(loaded.quality(res.model)[metric])
            del res
        q_row.append(q)
        d_row.append(None if q is None else (dense - q if hib else q - dense))
        p_row.append(store.proxy_error(modules, names, pruned, grams))
    return store.UnitRow(label, tuple(q_row), tuple(d_row), tuple(p_row), tuple(notes), time.perf_counter() - start)

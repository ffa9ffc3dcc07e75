"""What a study is: a grid of sparsity experiments (``StudySpec``) and the cells it enumerates (``Cell``).

Kinds: ``oneshot`` (every model × pattern × method × seed pruned once by ``sparsekit.sparsify``, measured with
the model's own quality metric), ``training`` (every N:M pattern × ``ste``/``srste`` × λ_w × seed trains a digits
model from scratch and measures late SAD, final accuracy and late flips), ``kv`` (``study.kvcells``) and ``soup``
(``study.soupcells``: the ingredients of model soups).

Patterns are strings: ``N:M`` keeps N of every M consecutive weights (``2:4``); ``unstructured:S`` prunes
the fraction S of each layer's weights (``unstructured:0.5``). A cell's ``key`` is a hash of everything
its result depends on (the model spec, the full pruning or training config, the calibration draw) and
of the code versions, so the same cell in two studies is computed once and shared through the cache.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from typing import Any, Mapping, TypedDict

from .. import serial
from ..cache import make_key
from ..evaluate import COMPARE_VERSION
from ..methods import METHODS, get_method
from ..models.loader import BUILTIN_SPECS, resolve_under_roots
from ..models.text_metrics import CAUSAL_METRICS, ENCODER_METRICS
from ..sparsify import MAX_M, MAX_SPARSITY, SparsifyConfig
from ..stats import DEFAULT_CONFIDENCE
from ..training.config import DEFAULT_LAMBDA_W, MAX_LAMBDA_W, TrainConfig, default_train_config
from ..training.seedresults import METRICS as TRAINING_METRICS
from ..training.seedresults import STUDY_VERSION as TRAINING_VERSION
from .kvcells import KV_VERSION, KVStudy, canonical_kv_pattern, check_kv_spec, kv_cell_config
from .soupcells import SOUP_VERSION, SoupStudy, check_soup_spec, ingredient_seeds, soup_cell_config

CELL_VERSION = 1
"""Part of every cell key: bump when a study record's contents or meaning change."""
KINDS = ("oneshot", "training", "kv", "soup")
TRAINING_METHODS = ("ste", "srste")
QUALITY_METRICS = ("accuracy", *ENCODER_METRICS, *CAUSAL_METRICS)
"""Quality metrics the model zoo produces (digits accuracy, encoder fidelity, causal-LM fidelity)."""
MAX_CELLS = 1000
"""Most cells one study may hold."""
MAX_AXIS = 64
"""Most values on one axis."""
MAX_NAME = 120


def parse_pattern(text: str) -> tuple[str, int, int, float]:
    """Read a pattern string.

    Args:
        text: ``N:M`` (keep N of every M, e.g. ``2:4``) or ``unstructured:S`` (prune the fraction S of
            every layer, e.g. ``unstructured:0.5``).

    Returns:
        ``(pattern, n, m, sparsity)`` in ``SparsifyConfig`` terms (unused fields at their defaults).

    Raises:
        ValueError: anything else, or values out of bounds.
    """
    raw = str(text).strip().lower()
    help_text = "write N:M (keep N of every M, e.g. 2:4) or unstructured:S (S = fraction pruned, e.g. unstructured:0.5)"
    head, sep, tail = raw.partition(":")
    if sep and head == "unstructured":
        try:
            s = float(tail)
        except ValueError:
            raise ValueError(f"bad pattern {text!r}: {tail!r} is not a number; {help_text}") from None
        if not (math.isfinite(s) and 0.0 < s <= MAX_SPARSITY):
            raise ValueError(f"bad pattern {text!r}: the pruned fraction must be > 0 and at most {MAX_SPARSITY}")
        return "unstructured", 2, 4, s
    if sep and head.strip().isdigit() and tail.strip().isdigit():
        n, m = int(head), int(tail)
        if not 2 <= m <= MAX_M:
            raise ValueError(f"bad pattern {text!r}: M must be between 2 and {MAX_M}")
        if not 1 <= n < m:
            raise ValueError(f"bad pattern {text!r}: N:M needs 1 <= N < M (N = weights kept of every M)")
        return "nm", n, m, 0.5
    raise ValueError(f"bad pattern {text!r}: {help_text}")


def canonical_pattern(text: str) -> str:
    """``" 2:4 "`` -> ``2:4``, ``unstructured:0.50`` -> ``unstructured:0.5``."""
    pattern, n, m, s = parse_pattern(text)
    return f"{n}:{m}" if pattern == "nm" else f"unstructured:{s:g}"


def model_files_token(model: str) -> list[list[str | int]]:
    """For a Hugging Face directory (``hf:<dir>``): name, size and modification time of its files, so a
    checkpoint changed in place gets new cell keys without the driver loading it. Empty for the built-in
    models (they change only with a release) and for a directory this process cannot resolve."""
    if not model.startswith("hf:"):
        return []
    try:
        path = resolve_under_roots(model[3:])
    except ValueError:
        return []
    if path is None or not path.is_dir():
        return []
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(path.iterdir()) if f.is_file()]


class CellLabels(TypedDict):
    """A cell's axis values, as its record carries them (``Cell.labels``)."""

    kind: str
    model: str
    method: str
    pattern: str
    seed: int
    lambda_w: float | None


@dataclass(frozen=True)
class Cell:
    """One experiment of a study; ``key`` names its result in the cache."""

    kind: str
    """``oneshot`` or ``training``."""
    model: str
    """Model spec for ``sparsekit.load_model`` (training: ``digits:<arch>``)."""
    method: str
    """Pruning method (oneshot) or ``ste``/``srste`` (training)."""
    pattern: str
    """Pattern string (``2:4``, ``unstructured:0.5``)."""
    seed: int
    """The seed axis value (what it changes is ``seed_effect``)."""
    config: str
    """JSON of the ``SparsifyConfig`` or ``TrainConfig`` actually run."""
    lambda_w: float | None = None
    """Training SR-STE's λ_w (None for STE and for oneshot cells)."""
    calibration_seed: int | None = None
    """Oneshot calibrated methods: seed of the calibration subset drawn from the model's pool; None = the
    model's own calibration set."""
    seed_effect: str = ""
    """What the seed changes: ``calibration subset``, ``random mask``, ``initial weights and batch order``,
    or empty when nothing does (magnitude)."""

    def identity(self) -> dict[str, Any]:
        """Everything the result depends on (the seed label and the method name are inside ``config``)."""
        version = {"oneshot": COMPARE_VERSION, "kv": KV_VERSION, "soup": SOUP_VERSION}.get(self.kind,
                                                                                         TRAINING_VERSION)
        out = {"kind": self.kind, "model": self.model, "config": json.loads(self.config),
               "calibration_seed": self.calibration_seed, "versions": [CELL_VERSION, version]}
        files = model_files_token(self.model)
        if files:
            out["files"] = files
        return out

    @property
    def key(self) -> str:
        """Content key of the result: equal for equal ``identity()`` in any study."""
        return make_key(f"study-cell-{self.kind}", self.identity())

    def labels(self) -> CellLabels:
        """The axis values a record carries."""
        return {"kind": self.kind, "model": self.model, "method": self.method, "pattern": self.pattern,
                "seed": self.seed, "lambda_w": self.lambda_w}

    def label(self) -> str:
        """``digits:mlp 2:4 wanda seed 1``."""
        lam = f" λ={self.lambda_w:g}" if self.lambda_w is not None else ""
        return f"{self.model} {self.pattern} {self.method}{lam} seed {self.seed}"

    def sparsify_config(self) -> SparsifyConfig:
        """The pruning config of a oneshot (or soup) cell."""
        own = json.dumps(json.loads(self.config)["sparsify"]) if self.kind == "soup" else self.config
        return SparsifyConfig.from_json(own)

    def train_config(self) -> TrainConfig:
        """The training config of a training cell."""
        return TrainConfig.from_json(self.config)

    def to_json(self) -> str:
        """The cell as sorted JSON (``sparsekit.serial.dumps``)."""
        return serial.dumps(self)

    @classmethod
    def from_json(cls, text: str | Mapping[str, Any]) -> "Cell":
        """Inverse of ``to_json``, under ``sparsekit.serial``'s rule."""
        return serial.from_json(cls, text)


def oneshot_cell(model: str, config: SparsifyConfig, *, seed: int | None = None,
                 calibration_seed: int | None = None) -> Cell:
    """A oneshot cell for a ready ``SparsifyConfig``.

    Args:
        model: model spec.
        config: the full pruning config.
        seed: seed label (default ``config.seed``).
        calibration_seed: seeded calibration subset, or None for the model's own calibration set.

    Returns:
        The cell (its pattern string derived from the config).
    """
    pattern = f"{config.n}:{config.m}" if config.pattern == "nm" else (
        f"unstructured:{config.sparsity:g}" if config.pattern == "unstructured" else "dense")
    method = get_method(config.method)
    effect = "calibration subset" if calibration_seed is not None else (
        "random mask" if method.uses_seed else "")
    return Cell("oneshot", model, config.method, pattern, config.seed if seed is None else int(seed),
                config.to_json(), None, calibration_seed, effect)


def training_cell(config: TrainConfig) -> Cell:
    """A training cell for a ready ``TrainConfig`` (STE's λ_w is fixed, so STE runs share one key)."""
    lam = float(config.lambda_w) if config.method == "srste" else None
    if config.method != "srste":
        config = replace(config, lambda_w=DEFAULT_LAMBDA_W)
    return Cell("training", f"digits:{config.arch}", config.method, f"{config.n}:{config.m}", config.seed,
                config.to_json(), lam, None, "initial weights and batch order")


@dataclass(frozen=True)
class StudySpec:
    """A grid of sparsity experiments. Serialises to JSON (``to_json``/``from_json``); the page writes the
    same JSON the command line reads."""

    name: str = "study"
    """Shown in progress, status and exports."""
    kind: str = "oneshot"
    """``oneshot`` (prune and measure) or ``training`` (train from scratch with STE/SR-STE)."""
    models: tuple[str, ...] = ("digits:mlp",)
    """Oneshot: model specs for ``sparsekit.load_model`` (``minilm``, ``digits:cnn``, ``hf:<dir>``). Training:
    empty or ``digits:<train.arch>`` (the architecture comes from ``train``)."""
    methods: tuple[str, ...] = ("magnitude", "wanda")
    """Oneshot: registered pruning methods (``sparsekit.methods``). Training: ``ste`` and/or ``srste``."""
    patterns: tuple[str, ...] = ("2:4",)
    """``N:M`` (keep N of every M) or, oneshot only, ``unstructured:S`` (prune the fraction S)."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds; a cell group's interval is taken over them. A seed draws the calibration subset of the
    calibrated methods, the random method's mask, or a training run's initial weights and batch order."""
    lambda_w: tuple[float, ...] = ()
    """Training only: SR-STE decays to run (empty = ``train.lambda_w``); STE ignores them."""
    metrics: tuple[str, ...] = ()
    """Quality metrics to summarise (empty = all the records carry)."""
    base: SparsifyConfig | None = None
    """Oneshot only: settings shared by every cell (layer selection, conv grouping ...); pattern, method and
    seed are set per cell. None = ``SparsifyConfig()``."""
    train: TrainConfig | None = None
    """Training only: the run settings (architecture, epochs, optimiser ...); method, N:M, λ_w and seed
    are set per cell, snapshots are taken every epoch. None = ``default_train_config("cnn")``."""
    confidence: float = DEFAULT_CONFIDENCE
    """Coverage of the intervals over seeds."""
    kv: KVStudy | None = None
    """KV only (``study.kvcells``): settings every cell shares (seeds are held-out text indices); None = defaults."""
    soup: SoupStudy | None = None
    """Soup only (``study.soupcells``): k, rounds, recovery settings (seeds are outer seeds); None = defaults."""

    def __post_init__(self) -> None:
        for name in ("models", "methods", "patterns", "metrics"):
            object.__setattr__(self, name, _strings(getattr(self, name), name))
        object.__setattr__(self, "seeds", tuple(self.seeds) if isinstance(self.seeds, (list, tuple)) else self.seeds)
        object.__setattr__(self, "lambda_w", tuple(self.lambda_w) if isinstance(self.lambda_w, (list, tuple))
                           else self.lambda_w)
        if isinstance(self.base, Mapping):
            object.__setattr__(self, "base", SparsifyConfig.from_json(json.dumps(dict(self.base))))
        if isinstance(self.train, Mapping):
            object.__setattr__(self, "train", TrainConfig.from_json(dict(self.train)))
        if isinstance(self.kv, Mapping):
            object.__setattr__(self, "kv", KVStudy.from_json(dict(self.kv)))
        if isinstance(self.soup, Mapping):
            object.__setattr__(self, "soup", SoupStudy.from_json(dict(self.soup)))

    @property
    def study_id(self) -> str:
        """Key of this study's status entry (a hash of the spec)."""
        return make_key("study", json.loads(self.to_json()))

    def train_base(self) -> TrainConfig:
        """Training settings of every cell (``train`` or the CNN's defaults), snapshots every epoch."""
        base = self.train if self.train is not None else default_train_config("cnn")
        return replace(base, snapshot_unit="epoch", snapshot_every=1)

    def validate(self) -> None:
        """Raise ``ValueError`` with a message a user understands for anything out of bounds."""
        if self.kind not in KINDS:
            raise ValueError(f"unknown study kind {self.kind!r}; choose oneshot (prune and measure), training "
                             "(train with STE/SR-STE), kv (prune the KV cache of a causal LM) or soup (a model soup)")
        if not isinstance(self.name, str):
            raise ValueError(f"the study's name must be text (a string in quotes), got {type(self.name).__name__} "
                             f"{self.name!r}")
        if not self.name.strip() or len(self.name) > MAX_NAME:
            raise ValueError(f"the study needs a name of 1 to {MAX_NAME} characters, got {self.name!r}")
        if not isinstance(self.confidence, (int, float)) or not 0.5 <= self.confidence < 1.0:
            raise ValueError(f"confidence must be in [0.5, 1), got {self.confidence!r}")
        for extra, what in (("kv", "KV"), ("soup", "soup")):
            if getattr(self, extra) is not None and self.kind != extra:
                raise ValueError(f"{extra} settings belong to a {what} study (kind {extra}); leave {extra} empty")
        self._check_seeds()
        for axis in ("methods", "patterns"):
            values = getattr(self, axis)
            if not values:
                raise ValueError(f"the study has no {axis}: give at least one")
            if len(values) > MAX_AXIS:
                raise ValueError(f"at most {MAX_AXIS} {axis}, got {len(values)}")
            if len(set(values)) != len(values):
                raise ValueError(f"{axis} lists a value twice: {list(values)}")
        if self.kind in ("oneshot", "soup"):
            self._check_oneshot()
        elif self.kind == "kv":
            check_kv_spec(self)
            for model in self.models:
                _check_model(model)
        else:
            self._check_training()
        count = self.cell_count()
        if count > MAX_CELLS:
            raise ValueError(f"this study has {count} cells ({self._grid_text()}), over the limit of {MAX_CELLS}; "
                             "use fewer models, methods, patterns or seeds")
        for cell in self.cells() if self.kind != "kv" else ():
            (cell.train_config() if cell.kind == "training" else cell.sparsify_config()).validate()

    def _check_seeds(self) -> None:
        if not isinstance(self.seeds, tuple):
            raise ValueError(f"seeds must be a list of whole numbers, e.g. [0, 1, 2]; got {self.seeds!r}")
        if not self.seeds:
            raise ValueError("the study has no seeds: give at least one (two or more for an interval)")
        for s in self.seeds:
            if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**31:
                raise ValueError(f"seeds must be whole numbers in [0, 2**31), got {s!r}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds lists a value twice: {list(self.seeds)}")
        if len(self.seeds) > MAX_AXIS:
            raise ValueError(f"at most {MAX_AXIS} seeds, got {len(self.seeds)}")

    def _check_oneshot(self) -> None:
        if not self.models:
            raise ValueError("the study has no models: give at least one (e.g. digits:mlp or minilm)")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"models lists a value twice: {list(self.models)}")
        for model in self.models:
            _check_model(model)
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {', '.join(map(repr, unknown))}; the registered methods are "
                             f"{', '.join(METHODS)}")
        for p in self.patterns:
            parse_pattern(p)
        if self.lambda_w:
            raise ValueError("lambda_w is an SR-STE training setting; leave it empty for a oneshot study")
        if self.train is not None:
            raise ValueError("train settings belong to a training study; leave train empty for a oneshot study")
        bad = [m for m in self.metrics if m not in QUALITY_METRICS]
        if bad:
            raise ValueError(f"unknown metric(s) {bad}; oneshot metrics are {', '.join(QUALITY_METRICS)}")
        if self.base is not None and not isinstance(self.base, SparsifyConfig):
            raise ValueError("base must be SparsifyConfig settings")
        if self.kind == "soup":
            check_soup_spec(self)

    def _check_training(self) -> None:
        bad = [m for m in self.methods if m not in TRAINING_METHODS]
        if bad:
            raise ValueError(f"unknown training method(s) {bad}; a training study compares ste and srste")
        for p in self.patterns:
            if parse_pattern(p)[0] != "nm":
                raise ValueError(f"bad pattern {p!r}: a training study trains N:M masks (e.g. 2:4)")
        if self.train is not None and not isinstance(self.train, TrainConfig):
            raise ValueError("train must be TrainConfig settings")
        arch = self.train_base().arch
        if self.models not in ((), (f"digits:{arch}",)):
            raise ValueError(f"a training study trains digits:{arch} (set by train.arch); leave models empty or "
                             f"give exactly digits:{arch}, got {list(self.models)}")
        if self.base is not None:
            raise ValueError("base (pruning settings) belongs to a oneshot study; use train for a training study")
        for lam in self.lambda_w:
            if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0 < lam <= MAX_LAMBDA_W:
                raise ValueError(f"λ_w values must be > 0 and at most {MAX_LAMBDA_W:g} (λ_w = 0 is STE), got {lam!r}")
        if len(set(self.lambda_w)) != len(self.lambda_w):
            raise ValueError(f"lambda_w lists a value twice: {list(self.lambda_w)}")
        bad = [m for m in self.metrics if m not in TRAINING_METRICS]
        if bad:
            raise ValueError(f"unknown metric(s) {bad}; training metrics are {', '.join(TRAINING_METRICS)}")

    def cell_count(self) -> int:
        """Cells of the grid (computed without building them)."""
        if self.kind in ("oneshot", "kv", "soup"):
            k = (self.soup or SoupStudy()).ingredients if self.kind == "soup" else 1
            return len(self.models) * len(self.methods) * len(self.patterns) * len(self.seeds) * k
        variants = sum(len(self._lambdas()) if m == "srste" else 1 for m in self.methods)
        return variants * len(self.patterns) * len(self.seeds)

    def _grid_text(self) -> str:
        if self.kind in ("oneshot", "kv", "soup"):
            k = f" × {(self.soup or SoupStudy()).ingredients} ingredients" if self.kind == "soup" else ""
            return (f"{len(self.models)} models × {len(self.methods)} methods × {len(self.patterns)} patterns × "
                    f"{len(self.seeds)} seeds{k}")
        return (f"{len(self.methods)} methods × {len(self._lambdas())} λ_w × {len(self.patterns)} patterns × "
                f"{len(self.seeds)} seeds")

    def _lambdas(self) -> tuple[float, ...]:
        return tuple(float(v) for v in self.lambda_w) or (float(self.train_base().lambda_w),)

    def cells(self) -> list[Cell]:
        """Every cell, model-major then seed-major (a study stopped early holds whole seeds; a worker
        meets one model's cells together and loads it once).

        Returns:
            The cells in a fixed order; call ``validate`` first for clear messages.
        """
        out: list[Cell] = []
        if self.kind == "oneshot":
            base = self.base or SparsifyConfig()
            for model in self.models:
                for seed in self.seeds:
                    for p in self.patterns:
                        pattern, n, m, s = parse_pattern(p)
                        for method in self.methods:
                            out.append(_oneshot_axis_cell(model, base, pattern, n, m, s, method, seed))
            return out
        if self.kind == "soup":
            soup, base = self.soup or SoupStudy(), self.base or SparsifyConfig()
            return [Cell("soup", model, method, canonical_pattern(p), s, soup_cell_config(_oneshot_axis_cell(
                model, base, *parse_pattern(p), method, base.seed).sparsify_config(), soup.recovery, s), None, None,
                "order of the training examples") for model in self.models for o in self.seeds for p in self.patterns
                for method in self.methods for s in ingredient_seeds(o, soup.ingredients)]
        if self.kind == "kv":
            settings = self.kv or KVStudy()
            return [Cell("kv", model, method, canonical_kv_pattern(p), seed, kv_cell_config(method, p, seed, settings),
                         None, None, "held-out text") for model in self.models for seed in self.seeds
                    for p in self.patterns for method in self.methods]
        train = self.train_base()
        for seed in self.seeds:
            for p in self.patterns:
                _, n, m, _ = parse_pattern(p)
                for method in self.methods:
                    for lam in (self._lambdas() if method == "srste" else (DEFAULT_LAMBDA_W,)):
                        out.append(training_cell(replace(train, method=method, n=n, m=m, seed=seed, lambda_w=lam)))
        return out

    def to_json(self) -> str:
        """The spec as sorted JSON, configs as objects (``sparsekit.serial.dumps``)."""
        return serial.dumps(self)

    @classmethod
    def from_json(cls, text: str | Mapping[str, Any]) -> "StudySpec":
        """Inverse of ``to_json`` (also takes the parsed dict), under ``sparsekit.serial``'s rule.

        Raises:
            ValueError: text that is not a JSON object, or a field this class does not have.
        """
        return serial.from_json(cls, text, what="study spec")


def _oneshot_axis_cell(model: str, base: SparsifyConfig, pattern: str, n: int, m: int, s: float, method: str,
                       seed: int) -> Cell:
    registered = get_method(method)
    calibrated = registered.needs_calibration
    # Only a method that uses the seed (the random baseline) reads SparsifyConfig.seed; pinning it elsewhere
    # lets seed-free cells share a key.
    config_seed = seed if registered.uses_seed else 0
    config = replace(base, pattern=pattern, n=n, m=m, sparsity=s, method=method, seed=config_seed,
                     scope=base.scope if pattern == "unstructured" else "layer")
    return oneshot_cell(model, config, seed=seed, calibration_seed=seed if calibrated else None)


def _check_model(model: str) -> None:
    if model in BUILTIN_SPECS or (model.startswith("hf:") and len(model) > 3 and len(model) <= 1024):
        return
    raise ValueError(f"unknown model {model!r}; use one of {', '.join(BUILTIN_SPECS)} or hf:<model directory>")


def _strings(values: object, name: str) -> tuple[str, ...]:
    if isinstance(values, str):
        raise ValueError(f"{name} must be a list of strings, got the single string {values!r}")
    if not isinstance(values, (list, tuple)):
        raise ValueError(f"{name} must be a list, got {type(values).__name__}")
    if not all(isinstance(v, str) for v in values):
        raise ValueError(f"{name} must hold strings, got {list(values)!r}")
    out = tuple(v.strip() for v in values)
    return tuple(canonical_pattern(v) if name == "patterns" and _parses(v) else v for v in out)


def _parses(text: str) -> bool:
    try:
        parse_pattern(text)
    except ValueError:
        return False
    return True

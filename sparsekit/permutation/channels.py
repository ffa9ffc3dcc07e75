"""Channel permutation of a whole model: each consumer layer's input channels and its producers'
outputs reordered together (the function stays the same), with progress, stop and resume."""
from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ..cache import get_cache, make_key, model_fingerprint, read_entry
from ..layers import in_features, is_conv1d_transposed, is_prunable, layer_weight, out_features, prunable_layers
from ..methods.calibration import calibration_slice, check_calibration, main_output, run_model
from ..methods.types import Calibration
from ..models.base import LoadedModel
from ..progress import ProgressArg, ProgressFn, reporter
from .search import PERMUTATION_CHECK_SAMPLES, StopFn, search_permutation


def _permutable(module: nn.Module) -> bool:
    return is_prunable(module) and not isinstance(module, nn.Conv3d)


def _permute_outputs(module: nn.Module, perm: torch.Tensor) -> None:
    weight = layer_weight(module)
    with torch.no_grad():
        if is_conv1d_transposed(module):
            weight.copy_(weight[:, perm])
        else:
            weight.copy_(weight[perm])
        bias = getattr(module, "bias", None)
        if bias is not None:
            bias.copy_(bias[perm])


def _permute_inputs(module: nn.Module, perm: torch.Tensor) -> None:
    weight = layer_weight(module)
    with torch.no_grad():
        if is_conv1d_transposed(module):
            weight.copy_(weight[perm])
        else:
            weight.copy_(weight[:, perm])


def _apply_pair(producers: list[nn.Module], consumer: nn.Module, perm: torch.Tensor) -> None:
    for p in producers:
        _permute_outputs(p, perm)
    _permute_inputs(consumer, perm)


def _consumer_matrix(module: nn.Module) -> torch.Tensor:
    """The consumer weight as ``[rows, input channels]``: the rows of a conv are (out, kernel position)."""
    w = layer_weight(module).detach()
    if is_conv1d_transposed(module):
        return w.t()
    if w.dim() > 2:
        return w.movedim(1, -1).reshape(-1, w.shape[1])
    return w


def _parent(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def _outputs_close(a: Any, b: Any) -> bool:
    ta, tb = main_output(a).float(), main_output(b).float()
    scale = max(1.0, float(ta.abs().max()))
    return bool(((ta - tb).abs() <= 1e-5 * scale).all())


@dataclass
class ChannelPermutation:
    """A function-preserving channel permutation of a model copy, and what it buys under N:M."""

    model: nn.Module
    """The permuted copy (computes the same function as the original)."""
    rows: list[dict]
    """One dict per permuted consumer layer: ``layer``, ``producers``, ``kept_before``,
    ``kept_after``, ``kept_unstructured``, ``kept_row_bound``, ``recovered_share``, ``swaps``,
    ``seconds`` and ``perm`` (the new input-channel order as a list, for ``resume``)."""
    skipped: dict[str, str]
    """Consumer layer -> why it was not permuted."""
    perms: dict[str, torch.Tensor]
    """Consumer layer -> the permutation applied to its input channels."""
    n: int
    m: int
    stopped: bool = False
    """True when ``should_stop`` ended the run early: the layers in ``rows`` are permuted, those in
    ``not_reached`` are left as they were."""
    not_reached: list[str] = field(default_factory=list)
    """Consumer layers the run did not get to because it was stopped."""
    stored_layers: list[str] = field(default_factory=list)
    """Consumer layers whose permutation an earlier call with the same inputs had found (kept on disk,
    ``use_cache``), taken instead of searched again."""

    @property
    def layers_searched(self) -> int:
        """Number of layers permuted (searched in this run or taken from ``resume``)."""
        return len(self.rows)

    def recovered_share(self) -> float:
        """Share of the total gap (over permuted layers) between plain N:M and unstructured recovered."""
        gap = sum(r["kept_unstructured"] - r["kept_before"] for r in self.rows)
        gained = sum(r["kept_after"] - r["kept_before"] for r in self.rows)
        return gained / gap if gap > 0 else 0.0


def permute_channels(
    model: nn.Module | LoadedModel,
    n: int = 2,
    m: int = 4,
    *,
    calibration: Calibration | None = None,
    include: Callable[[str], bool] | None = None,
    max_rounds: int = 100,
    max_seconds_per_layer: float = 20.0,
    progress: ProgressArg = True,
    should_stop: StopFn | None = None,
    on_layer: Callable[[dict], None] | None = None,
    resume: Sequence[Mapping] | None = None,
    use_cache: bool = True,
) -> ChannelPermutation:
    """Permute input channels of N:M-prunable layers, and the producing layers' outputs with them.

    A consumer layer can be permuted when the layers right before it (the immediately preceding
    prunable layer, possibly with earlier siblings of the same shape, e.g. LLaMA's gate and up
    projections) produce its input elementwise (through activations, not through attention heads,
    residual sums or LayerNorm). That is confirmed on calibration inputs: a random permutation must
    leave the outputs unchanged (within 1e-5) before the search runs. Only candidates that pass
    are permuted, so the copy computes the same function.

    Layers are searched in order, each on its original weights, so a run stopped after k layers
    gives exactly the permutations of the first k layers of a full run.

    Args:
        model: an ``nn.Module`` or a ``LoadedModel`` (never modified; a copy is permuted).
        n: kept per group.
        m: group size.
        calibration: inputs for the function check (default: the LoadedModel's).
        include: optional filter on consumer layer names.
        max_rounds: search rounds per layer.
        max_seconds_per_layer: search time limit per layer.
        progress: optional ``progress(fraction, message)``, called before each layer and after
            every search round; the fractions rise (each layer weighted by its search cost,
            rows x channels²) and end at 1.
        should_stop: optional ``should_stop() -> bool``, asked before each layer and after each
            search round. True ends the run: the layers finished so far stay permuted; the layer
            being searched and every later one are left unpermuted (``stopped``, ``not_reached``).
        on_layer: optional ``on_layer(row)``, called with each permuted layer's row (``perm``
            included) as soon as it is done, so a caller keeps finished layers even when the run
            is interrupted.
        resume: rows of an earlier run of the same model with the same ``n``, ``m`` and limits
            (``rows`` or what ``on_layer`` received): those layers take their stored permutation
            instead of a new search.
        use_cache: True (default): each layer's row is kept in the disk cache as soon as it is found,
            under the model's weights, ``n``, ``m``, the limits and the layer; the same call, stopped
            or interrupted (Ctrl-C) and run again, takes the finished layers from there
            (``stored_layers``) and searches only the others. False: neither read nor write them.

    Returns:
        A ``ChannelPermutation`` with the permuted copy and a per-layer report.

    Raises:
        ValueError: bad N:M, no calibration, no prunable layers, or ``resume`` rows that do not
            fit this model.
    """
    with reporter(progress, "channel permutation") as report:
        return _permute_channels(model, n, m, calibration=calibration, include=include, max_rounds=max_rounds,
                                 max_seconds_per_layer=max_seconds_per_layer, progress=report,
                                 should_stop=should_stop, on_layer=on_layer, resume=resume, use_cache=use_cache)


def _permute_channels(
    model: nn.Module | LoadedModel,
    n: int = 2,
    m: int = 4,
    *,
    calibration: Calibration | None = None,
    include: Callable[[str], bool] | None = None,
    max_rounds: int = 100,
    max_seconds_per_layer: float = 20.0,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    on_layer: Callable[[dict], None] | None = None,
    resume: Sequence[Mapping] | None = None,
    use_cache: bool = True,
) -> ChannelPermutation:

    if not 1 <= n < m:
        raise ValueError(f"N:M needs 1 <= N < M (keep N of every M), got N={n}, M={m}")
    source = getattr(model, "module", model)
    if not isinstance(source, nn.Module):
        raise TypeError(f"permute_channels needs an nn.Module or a LoadedModel, got {type(model).__name__}")
    if calibration is None:
        calibration = getattr(model, "calibration", None)
    check_calibration(calibration, "channel permutation")
    assert calibration is not None
    layers = prunable_layers(source)
    if not layers:
        raise ValueError("the model has no Linear or Conv layers to permute")
    resumed = _resume_rows(resume)
    store = _LayerRows(source, n, m, max_rounds, max_seconds_per_layer) if use_cache else None
    stored_layers: list[str] = []
    work = copy.deepcopy(source).eval()
    mods = dict(work.named_modules())
    names = [name for name, _ in layers]
    sample = calibration_slice(calibration, 0, PERMUTATION_CHECK_SAMPLES)
    with torch.no_grad():
        reference = run_model(work, sample)

    def stop_now() -> bool:
        return should_stop is not None and bool(should_stop())

    def report(fraction: float, message: str) -> None:
        if progress is not None:
            progress(min(max(fraction, 0.0), 1.0), message)

    # Plan first (cheap: shape checks and one forward per candidate), so the progress fractions can
    # weigh each search by its cost from the start.
    gen = torch.Generator().manual_seed(0)
    skipped: dict[str, str] = {}
    plan: list[tuple[str, list[str] | None]] = []  # (consumer, producers or None = resumed)
    not_reached: list[str] = []
    stopped = False
    for idx, cname in enumerate(names):
        if include is not None and not include(cname):
            continue
        report(0.0, f"checking which layers can be permuted: {cname}")
        reason, candidates = _static_check(names, idx, mods, m)
        if reason:
            skipped[cname] = reason
        elif cname in resumed:
            plan.append((cname, None))
        elif store is not None and (row := store.get(cname, in_features(mods[cname]))) is not None:
            resumed[cname] = row
            stored_layers.append(cname)
            plan.append((cname, None))
        elif stopped or stop_now():
            stopped = True
            not_reached.append(cname)
        else:
            chosen = _function_check(work, mods, candidates, mods[cname], sample, reference, gen)
            if chosen is None:
                skipped[cname] = (f"permuting {', '.join(candidates[0])} changes the output: its input is not "
                                  "produced elementwise (attention heads, residual sums or normalisation in between)")
            else:
                plan.append((cname, chosen))

    weights = [0.0 if producers is None else _search_cost(mods[c]) for c, producers in plan]
    total = sum(weights) or 1.0
    done = 0.0
    rows: list[dict] = []
    perms: dict[str, torch.Tensor] = {}
    for (cname, producers), weight in zip(plan, weights):
        consumer = mods[cname]
        if producers is None:
            row = _apply_resumed(resumed[cname], mods, consumer)
            perms[cname] = torch.as_tensor(row["perm"], dtype=torch.long)
            rows.append(row)
            continue
        if stopped or stop_now():
            stopped = True
            not_reached.append(cname)
            continue
        report(done / total, f"layer {len(rows) + 1}/{len(plan)}: {cname}")
        start = done

        def layer_progress(f: float, msg: str, start: float = start, weight: float = weight, cname: str = cname
                           ) -> None:
            report((start + f * weight) / total, f"layer {len(rows) + 1}/{len(plan)}: {cname}, {msg}")

        found = search_permutation(_consumer_matrix(consumer), n, m, max_rounds=max_rounds,
                                   max_seconds=max_seconds_per_layer, progress=layer_progress,
                                   should_stop=should_stop)
        done += weight
        if found.stopped:  # a half-searched layer would differ from a full run's: leave it as it is
            stopped = True
            not_reached.append(cname)
            continue
        _apply_pair([mods[p] for p in producers], consumer, found.perm)
        perms[cname] = found.perm
        row = {
            "layer": cname,
            "producers": ", ".join(producers),
            "kept_before": found.kept_before,
            "kept_after": found.kept_after,
            "kept_unstructured": found.kept_unstructured,
            "kept_row_bound": found.kept_row_bound,
            "recovered_share": found.recovered_share,
            "swaps": found.swaps,
            "seconds": found.seconds,
            "perm": found.perm.tolist(),
        }
        rows.append(row)
        if store is not None:
            store.put(cname, row)
        if on_layer is not None:
            on_layer(dict(row))
    with torch.no_grad():
        if not _outputs_close(run_model(work, sample), reference):  # every pair was checked; belt and braces
            if stored_layers and store is not None:
                store.forget(stored_layers)
                raise ValueError("the permutations kept on disk for this model change its output; they were removed: "
                                 "run again to search afresh")
            if resumed:
                raise ValueError("the resumed permutations change the model's output: they come from another "
                                 "model or setting; search afresh")
            raise RuntimeError("the permuted model's outputs differ from the original's")
    report(1.0, "permutation stopped" if stopped else "permutation done")
    return ChannelPermutation(model=work, rows=rows, skipped=skipped, perms=perms, n=n, m=m, stopped=stopped,
                              not_reached=not_reached, stored_layers=stored_layers)


class _LayerRows:
    """The rows of finished layers kept in the disk cache, by the model's weights, N:M, the search
    limits and the layer (a row is JSON: plain numbers and the permutation as a list)."""

    VERSION = 1

    def __init__(self, source: nn.Module, n: int, m: int, max_rounds: int, max_seconds: float) -> None:
        self.base = make_key("permutation-run", self.VERSION, model_fingerprint(source), n, m, int(max_rounds),
                             float(max_seconds))

    def _key(self, layer: str) -> str:
        return make_key("permutation-layer", self.VERSION, self.base, layer)

    def get(self, layer: str, channels: int) -> dict | None:
        """The row of ``layer`` (``channels`` inputs), or None: missing, damaged or not a permutation."""
        row = read_entry(self._key(layer), json.loads)
        if not isinstance(row, dict) or row.get("layer") != layer or not all(
                k in row for k in ("producers", "perm", "kept_before", "kept_after", "kept_unstructured")):
            return None
        perm = row["perm"]
        if not isinstance(perm, list) or sorted(p for p in perm if isinstance(p, int)) != list(range(channels)):
            return None
        return row

    def put(self, layer: str, row: dict) -> None:
        get_cache().set(self._key(layer), json.dumps(row))

    def forget(self, layers: Sequence[str]) -> None:
        for layer in layers:
            get_cache().delete(self._key(layer))


def _static_check(names: list[str], idx: int, mods: dict, m: int) -> tuple[str, list[list[str]]]:
    """Why consumer ``names[idx]`` cannot be permuted ("" if it may be), and its producer candidates."""
    consumer = mods[names[idx]]
    if idx == 0:
        return "first layer: its input comes from outside the network", []
    if (not _permutable(consumer) or isinstance(consumer, nn.Conv1d)
            or (layer_weight(consumer).dim() > 2 and consumer.groups != 1)):
        return f"{type(consumer).__name__} consumers are not supported", []
    cin = in_features(consumer)
    if cin % m:
        return f"{cin} input channels are not a multiple of M={m}", []
    candidates = _producer_candidates(names, idx, mods, cin, type(consumer))
    if not candidates:
        return "no preceding layer produces its input channels", []
    return "", candidates


def _function_check(work: nn.Module, mods: dict, candidates: list[list[str]], consumer: nn.Module, sample: Any,
                    reference: Any, gen: torch.Generator) -> list[str] | None:
    """The first producer set whose random joint permutation with the consumer keeps the outputs."""
    cin = in_features(consumer)
    for producers in candidates:
        trial = torch.randperm(cin, generator=gen)
        _apply_pair([mods[p] for p in producers], consumer, trial)
        with torch.no_grad():
            ok = _outputs_close(run_model(work, sample), reference)
        _apply_pair([mods[p] for p in producers], consumer, torch.argsort(trial))
        if ok:
            return producers
    return None


def _search_cost(consumer: nn.Module) -> float:
    rows, cols = _consumer_matrix(consumer).shape
    return float(rows) * cols * cols  # the all-pairs L1 distances dominate a search


def _resume_rows(resume: Sequence[Mapping] | None) -> dict[str, dict]:
    if resume is None:
        return {}
    if isinstance(resume, (str, bytes, Mapping)) or not isinstance(resume, Sequence):
        raise ValueError(f"resume must be a list of layer rows, got {type(resume).__name__}")
    out = {}
    for i, row in enumerate(resume):
        if not isinstance(row, Mapping) or not all(k in row for k in ("layer", "producers", "perm")):
            raise ValueError(f"resume[{i}] must be a layer row with 'layer', 'producers' and 'perm'")
        out[str(row["layer"])] = dict(row)
    return out


def _apply_resumed(row: dict, mods: dict, consumer: nn.Module) -> dict:
    cin = in_features(consumer)
    producers = [p for p in str(row["producers"]).split(", ") if p]
    try:
        perm = torch.as_tensor(row["perm"], dtype=torch.long)
    except (TypeError, ValueError, RuntimeError):
        perm = None
    fits = (perm is not None and perm.dim() == 1 and perm.numel() == cin
            and torch.equal(perm.sort().values, torch.arange(cin)) and producers
            and all(p in mods and _permutable(mods[p]) and out_features(mods[p]) == cin for p in producers))
    if perm is None or not fits:
        raise ValueError(f"resume: the stored permutation of {row['layer']} does not fit this model "
                         f"({cin} input channels, producers {row['producers']!r})")
    _apply_pair([mods[p] for p in producers], consumer, perm)
    return {**row, "perm": perm.tolist()}


def _producer_candidates(names: list[str], idx: int, mods: dict, cin: int, kind: type) -> list[list[str]]:
    """Producer sets to try for consumer ``names[idx]``: the preceding layer alone, then with the
    earlier same-parent siblings of the same output size (gate + up projections)."""
    first = names[idx - 1]
    p0 = mods[first]
    if not _permutable(p0) or out_features(p0) != cin:
        return []
    if isinstance(p0, (nn.Conv1d, nn.Conv2d)) != isinstance(mods[names[idx]], (nn.Conv1d, nn.Conv2d)):
        return []  # conv -> linear goes through a flatten that interleaves channels and positions
    out = [[first]]
    group = [first]
    for j in range(idx - 2, -1, -1):
        other = mods[names[j]]
        if _parent(names[j]) != _parent(first) or not _permutable(other) or out_features(other) != cin:
            break
        group = [names[j], *group]
        out.append(list(group))
    return out

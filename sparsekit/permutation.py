"""Channel permutation for N:M (Pool & Yu, 2021; NVIDIA ASP).

Reorders a layer's input channels, and the producing layer's outputs with them, so that N:M groups
hold a better mix of large and small weights. The network computes the same function; more
magnitude survives N:M.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from .layers import in_features, is_conv1d_transposed, is_prunable, out_features, prunable_layers
from .masks import nm_mask, unstructured_mask
from .methods.base import ProgressFn, one_thread
from .methods.calibration import calibration_slice, check_calibration, main_output, run_model
from .methods.wanda import row_unstructured_mask

PERMUTATION_CHECK_SAMPLES = 8
"""Calibration samples used to confirm that a permutation leaves the function unchanged."""

StopFn = Callable[[], bool]
"""``should_stop() -> bool``: asked between search rounds and before each layer; True ends the search."""


def nm_kept_magnitude(matrix: torch.Tensor, n: int, m: int) -> float:
    """Sum of ``|w|`` that N:M (keep ``n`` of every ``m`` along rows) keeps in ``matrix``."""
    a = matrix.detach().abs().double()
    return float(a[nm_mask(a, n, m)].sum())


def unstructured_kept_magnitude(matrix: torch.Tensor, density: float, *, per_row: bool = False) -> float:
    """Sum of ``|w|`` kept by unstructured magnitude pruning at ``density`` (kept fraction), over the
    whole matrix (the app's layer-wise unstructured pattern) or within each row."""
    a = matrix.detach().abs().double()
    if per_row:
        return float(a[row_unstructured_mask(a, 1.0 - density)].sum())
    return float(a[unstructured_mask(a, 1.0 - density)].sum())


@dataclass
class PermutationSearch:
    """Result of a channel-permutation search on one matrix."""

    perm: torch.Tensor
    """New column order: ``matrix[:, perm]`` is the permuted matrix."""
    kept_before: float
    """``|w|`` kept by N:M in the original order."""
    kept_after: float
    """``|w|`` kept by N:M after the permutation (never below ``kept_before``)."""
    kept_unstructured: float
    """``|w|`` kept by layer-wise unstructured magnitude pruning at the same density."""
    kept_row_bound: float
    """``|w|`` kept by per-row unstructured pruning at the same density: no N:M mask, under any
    permutation, keeps more (each row keeps exactly that many)."""
    swaps: int
    rounds: int
    seconds: float
    stopped: bool = False
    """True when ``should_stop`` ended the search before a local optimum or a limit (the
    permutation is still valid and never lowers the kept magnitude)."""

    @property
    def recovered_share(self) -> float:
        """Share of the gap between plain N:M and unstructured that the permutation recovers."""
        gap = self.kept_unstructured - self.kept_before
        return (self.kept_after - self.kept_before) / gap if gap > 0 else 0.0


def _group_stats(a: torch.Tensor, cols: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each member p of one group (columns ``cols`` of ``a``): per-row sum of the top n-1 of the
    other members, per-row n-th largest of the others, and the group's current kept sum."""
    g = a[:, cols]  # [R, m]
    m = g.shape[1]
    kept = g.topk(n, dim=1).values.sum().item()
    s_list, t_list = [], []
    for j in range(m):
        others = torch.cat([g[:, :j], g[:, j + 1 :]], dim=1)
        top = others.topk(n, dim=1).values  # descending
        s_list.append(top[:, : n - 1].sum(1))
        t_list.append(top[:, n - 1])
    return torch.stack(s_list, 1), torch.stack(t_list, 1), torch.tensor(kept, dtype=a.dtype)


def _exact_swap_gain(a: torch.Tensor, perm: torch.Tensor, m: int, n: int, pp: int, pq: int) -> float:
    gp, gq = pp // m, pq // m
    g1, g2 = perm[gp * m : (gp + 1) * m].clone(), perm[gq * m : (gq + 1) * m].clone()
    old = a[:, g1].topk(n, dim=1).values.sum() + a[:, g2].topk(n, dim=1).values.sum()
    g1[pp - gp * m], g2[pq - gq * m] = perm[pq], perm[pp]
    new = a[:, g1].topk(n, dim=1).values.sum() + a[:, g2].topk(n, dim=1).values.sum()
    return float(new - old)


def search_permutation(
    matrix: torch.Tensor,
    n: int,
    m: int,
    *,
    max_rounds: int = 100,
    max_seconds: float = 30.0,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> PermutationSearch:
    """Greedy channel-swap search for a column permutation that raises the N:M-kept magnitude.

    Swapping column p (group G) with column q (group G') changes only G and G'. With the others of
    G fixed, the kept magnitude of G with q in p's place is, per row, the sum of the top n-1 others
    plus ``max(|w_q|, n-th largest other)``; summed over rows, ``max(a, t) = (a + t + |a - t|)/2``
    turns the gains of all pairs at once into one L1 distance matrix (``torch.cdist``). Each round
    applies the best positive swaps that touch disjoint groups, so the kept magnitude rises
    strictly with every swap, and stops at a local optimum (no single swap helps).

    Args:
        matrix: ``[rows, cols]``; N:M groups are M consecutive columns; ``cols % m == 0``.
        n: kept per group.
        m: group size.
        max_rounds: most rounds of swaps.
        max_seconds: time limit (the search stops after the round that passes it).
        progress: optional ``progress(fraction, message)`` after every round; the fraction is the
            larger of the rounds and the time used (of ``max_rounds``, ``max_seconds``), so it only
            rises, and it is 1 at the end.
        should_stop: optional callable asked after every round; True ends the search there
            (``stopped`` is then set).

    Returns:
        The permutation and the kept magnitudes before/after and of the unstructured references.
    """
    if matrix.dim() != 2:
        raise ValueError(f"search_permutation needs a 2-D matrix, got shape {tuple(matrix.shape)}")
    rows, cols = matrix.shape
    if not 1 <= n < m:
        raise ValueError(f"N:M needs 1 <= N < M, got N={n}, M={m}")
    if cols % m:
        raise ValueError(f"{cols} columns are not a multiple of M={m}")
    with one_thread():
        return _search(matrix, n, m, max_rounds, max_seconds, progress, should_stop)


def _search(matrix, n, m, max_rounds, max_seconds, progress=None, should_stop=None) -> PermutationSearch:
    rows, cols = matrix.shape
    start_time = time.perf_counter()
    a = matrix.detach().abs().double()
    n_groups = cols // m
    perm = torch.arange(cols)
    before = nm_kept_magnitude(a, n, m)
    # Candidate gains are ranked in float32 (cdist dominates the cost); each chosen swap's gain is
    # then recomputed exactly in float64 before it is applied, so the kept magnitude never drops.
    a32 = a.float()
    a_t = a32.T.contiguous()  # [cols, rows]
    colsum = a32.sum(0)  # [cols]
    # Per column id: const[p] and the thresholds t[:, p] describing "p's group without p".
    s_sum = torch.zeros(cols)
    t_mat = torch.zeros(rows, cols)
    group_kept = torch.zeros(n_groups)
    col_group = torch.empty(cols, dtype=torch.long)  # group of each column id

    def refresh(groups: list[int]) -> torch.Tensor:
        touched = []
        for g in groups:
            members = perm[g * m : (g + 1) * m]
            s, t, kept = _group_stats(a32, members, n)
            s_sum[members] = s.sum(0)
            t_mat[:, members] = t
            group_kept[g] = kept
            col_group[members] = g
            touched.append(members)
        return torch.cat(touched)

    def d_rows(ids: torch.Tensor) -> torch.Tensor:
        # D[p, x] = change of p's group when column x takes p's place.
        t_cols = t_mat[:, ids].T.contiguous()  # [k, rows]
        maxsum = 0.5 * (colsum.unsqueeze(0) + t_cols.sum(1, keepdim=True) + torch.cdist(t_cols, a_t, p=1))
        return s_sum[ids].unsqueeze(1) + maxsum - group_kept[col_group[ids]].unsqueeze(1)

    refresh(list(range(n_groups)))
    D = d_rows(torch.arange(cols))
    tol = 1e-9 * max(before, 1e-30)
    lower = torch.ones(cols, cols, dtype=torch.bool).tril()
    swaps = rounds = 0
    stopped = False
    while rounds < max_rounds and time.perf_counter() - start_time < max_seconds:
        if should_stop is not None and should_stop():
            stopped = True
            break
        rounds += 1
        gain = D + D.T
        # Each unordered pair once, and never two columns of the same group.
        gain.masked_fill_(lower | (col_group.unsqueeze(0) == col_group.unsqueeze(1)), -math.inf)
        flat = gain.reshape(-1)
        k = min(flat.numel(), max(4 * n_groups, 64))
        values, idx = flat.topk(k)
        used: set[int] = set()
        chosen: list[tuple[int, int]] = []
        pos = torch.empty(cols, dtype=torch.long)
        pos[perm] = torch.arange(cols)
        for v, i in zip(values.tolist(), idx.tolist()):
            if v <= tol:
                break
            p, q = divmod(i, cols)
            gp, gq = int(col_group[p]), int(col_group[q])
            if gp in used or gq in used:
                continue
            if _exact_swap_gain(a, perm, m, n, int(pos[p]), int(pos[q])) <= tol:
                continue
            used.update((gp, gq))
            chosen.append((p, q))
        if not chosen:
            break
        for p, q in chosen:
            pp, pq = int(pos[p]), int(pos[q])
            perm[pp], perm[pq] = q, p
        swaps += len(chosen)
        touched = refresh(sorted(used))
        D[touched] = d_rows(touched)
        if progress is not None:
            used_share = max(rounds / max_rounds, (time.perf_counter() - start_time) / max_seconds)
            progress(min(used_share, 1.0), f"round {rounds}, {swaps} swaps")
    if progress is not None:
        progress(1.0, f"{rounds} rounds, {swaps} swaps")
    after = nm_kept_magnitude(a[:, perm], n, m)
    if after < before:  # cannot happen with exact gains; guard against rounding all the same
        perm, after = torch.arange(cols), before
    density = n / m
    return PermutationSearch(
        perm=perm,
        kept_before=before,
        kept_after=after,
        kept_unstructured=unstructured_kept_magnitude(a, density),
        kept_row_bound=unstructured_kept_magnitude(a, density, per_row=True),
        swaps=swaps,
        rounds=rounds,
        seconds=time.perf_counter() - start_time,
        stopped=stopped,
    )


def _permutable(module: nn.Module) -> bool:
    return is_prunable(module) and not isinstance(module, nn.Conv3d)


def _permute_outputs(module: nn.Module, perm: torch.Tensor) -> None:
    with torch.no_grad():
        if is_conv1d_transposed(module):
            module.weight.copy_(module.weight[:, perm])
        else:
            module.weight.copy_(module.weight[perm])
        if getattr(module, "bias", None) is not None:
            module.bias.copy_(module.bias[perm])


def _permute_inputs(module: nn.Module, perm: torch.Tensor) -> None:
    with torch.no_grad():
        if is_conv1d_transposed(module):
            module.weight.copy_(module.weight[perm])
        else:
            module.weight.copy_(module.weight[:, perm])


def _apply_pair(producers: list[nn.Module], consumer: nn.Module, perm: torch.Tensor) -> None:
    for p in producers:
        _permute_outputs(p, perm)
    _permute_inputs(consumer, perm)


def _consumer_matrix(module: nn.Module) -> torch.Tensor:
    """The consumer weight as ``[rows, input channels]``: the rows of a conv are (out, kernel position)."""
    w = module.weight.detach()
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
    model: Any,
    n: int = 2,
    m: int = 4,
    *,
    calibration: Any = None,
    include: Callable[[str], bool] | None = None,
    max_rounds: int = 100,
    max_seconds_per_layer: float = 20.0,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    on_layer: Callable[[dict], None] | None = None,
    resume: Sequence[Mapping] | None = None,
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

    Returns:
        A ``ChannelPermutation`` with the permuted copy and a per-layer report.

    Raises:
        ValueError: bad N:M, no calibration, no prunable layers, or ``resume`` rows that do not
            fit this model.
    """

    if not 1 <= n < m:
        raise ValueError(f"N:M needs 1 <= N < M (keep N of every M), got N={n}, M={m}")
    source = getattr(model, "module", model)
    if not isinstance(source, nn.Module):
        raise TypeError(f"permute_channels needs an nn.Module or a LoadedModel, got {type(model).__name__}")
    if calibration is None:
        calibration = getattr(model, "calibration", None)
    check_calibration(calibration, "channel permutation")
    layers = prunable_layers(source)
    if not layers:
        raise ValueError("the model has no Linear or Conv layers to permute")
    resumed = _resume_rows(resume)
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

        def layer_progress(f: float, msg: str, start=start, weight=weight, cname=cname) -> None:
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
        if on_layer is not None:
            on_layer(dict(row))
    with torch.no_grad():
        if not _outputs_close(run_model(work, sample), reference):  # every pair was checked; belt and braces
            if resumed:
                raise ValueError("the resumed permutations change the model's output: they come from another "
                                 "model or setting; search afresh")
            raise RuntimeError("the permuted model's outputs differ from the original's")
    report(1.0, "permutation stopped" if stopped else "permutation done")
    return ChannelPermutation(model=work, rows=rows, skipped=skipped, perms=perms, n=n, m=m, stopped=stopped,
                              not_reached=not_reached)


def _static_check(names: list[str], idx: int, mods: dict, m: int) -> tuple[str, list[list[str]]]:
    """Why consumer ``names[idx]`` cannot be permuted ("" if it may be), and its producer candidates."""
    consumer = mods[names[idx]]
    if idx == 0:
        return "first layer: its input comes from outside the network", []
    if (not _permutable(consumer) or isinstance(consumer, nn.Conv1d)
            or (consumer.weight.dim() > 2 and consumer.groups != 1)):
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
    if not fits:
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

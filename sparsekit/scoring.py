"""Calibration-based pruning: Wanda, SparseGPT and Taylor scores, and channel permutation for N:M.

Magnitude pruning looks at the weights alone. The methods here also look at what flows through
them, using a small set of calibration inputs:

- **Wanda** (Sun et al., 2023): score ``|W_ij| * ||X_j||_2`` (``X_j`` = input feature j over all
  calibration tokens), compared within each output row (unstructured) or each group of M along the
  row (N:M). No weight update.
- **SparseGPT** (Frantar & Alistarh, 2023): per layer, ``H = 2 X^T X / n`` (n = calibration
  samples, i.e. sequences or images, as the reference counts them) dampened by
  ``0.01 * mean(diag H)``; the upper Cholesky factor of ``H^-1`` drives a column-by-column pass in
  blocks of 128 that chooses the mask by ``w^2 / [H^-1]_ii^2`` and spreads each pruned weight's
  error over the columns not yet visited, so the kept weights are rewritten.
- **Taylor** (Molchanov et al., 2019): ``(g * w)^2`` summed over calibration mini-batches, with
  ``g`` the gradient of a label-free calibration loss (see ``calibration_loss``).

Wanda and SparseGPT run in one calibration forward, in one of two orders (``calibration_order``):
``block`` (default, the papers' reference code) collects the inputs of every layer of a
transformer block from one forward of that block, the blocks before it already pruned, then
prunes them together; ``layer`` prunes each layer when the forward reaches it, on inputs computed
by every already-pruned layer before it, including those of its own block.

Channel permutation (Pool & Yu, 2021; NVIDIA ASP) reorders a layer's input channels, and the
producing layer's outputs with them, so that N:M groups hold a better mix of large and small
weights. The network computes the same function; more magnitude survives N:M.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .masks import nm_mask, unstructured_mask

CALIBRATED_METHODS = ("wanda", "sparsegpt", "taylor")
SPARSEGPT_BLOCK = 128
"""Columns per SparseGPT block (the paper's and reference code's value)."""
SPARSEGPT_DAMP = 0.01
"""SparseGPT dampening: ``lambda = 0.01 * mean(diag H)``."""
TAYLOR_BATCH = 16
"""Calibration samples per Taylor mini-batch (the squared importances are summed over them)."""
CONTRASTIVE_TEMPERATURE = 0.05
"""Temperature of the encoder calibration loss (SimCSE's value)."""
PERMUTATION_CHECK_SAMPLES = 8
"""Calibration samples used to confirm that a permutation leaves the function unchanged."""

ProgressFn = Callable[[float, str], None]


# ---------------------------------------------------------------------------------------------
# Formulas on one weight matrix


def wanda_scores(weight: torch.Tensor, input_norms: torch.Tensor) -> torch.Tensor:
    """Wanda importance ``S_ij = |W_ij| * ||X_j||_2``.

    Args:
        weight: ``[out, in]`` (a conv weight ``[out, *rest]`` takes norms of ``prod(rest)`` entries,
            one per entry of its flattened input patch).
        input_norms: ``[in]`` L2 norm of each input feature over the calibration tokens.

    Returns:
        Scores shaped like ``weight`` (non-negative).
    """
    rest = weight.shape[1:]
    if input_norms.numel() != math.prod(rest):
        raise ValueError(f"{input_norms.numel()} input norms do not fit a weight of shape {tuple(weight.shape)}")
    return weight.detach().abs() * input_norms.to(weight.dtype).reshape(rest).unsqueeze(0)


def row_unstructured_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Unstructured mask compared within each row: every row of ``scores`` ``[rows, cols]`` loses its
    ``round(sparsity * cols)`` smallest ``|scores|`` (ties keep the lower index).

    Args:
        scores: ``[rows, cols]``.
        sparsity: fraction pruned per row, ``0 <= sparsity < 1``.

    Returns:
        Bool mask, True = kept.
    """
    if not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    rows, cols = scores.shape
    keep_count = cols - int(round(float(sparsity) * cols))
    order = torch.sort(scores.detach().abs(), dim=1, descending=True, stable=True).indices
    keep = torch.zeros(rows, cols, dtype=torch.bool, device=scores.device)
    keep.scatter_(1, order[:, :keep_count], True)
    return keep


@contextlib.contextmanager
def _one_thread():
    # The column-by-column passes run thousands of tiny ops; with intra-op threads each one waits at
    # an OpenMP barrier, which on a busy machine made SparseGPT 10-50x slower (measured on 2 cores).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    *,
    sparsity: float | None = None,
    nm: tuple[int, int] | None = None,
    blocksize: int = SPARSEGPT_BLOCK,
    damp: float = SPARSEGPT_DAMP,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """SparseGPT on one weight matrix: choose the mask and rewrite the kept weights.

    Args:
        weight: ``[rows, cols]``; N:M groups are M consecutive columns.
        hessian: ``[cols, cols]``, ``2 X^T X / n`` of the layer's calibration inputs.
        sparsity: unstructured: fraction pruned in every block of ``blocksize`` columns.
        nm: ``(n, m)``: keep ``n`` of every ``m`` consecutive columns (N = kept).
        blocksize: columns per block (lowered to a multiple of M for N:M).
        damp: dampening as a fraction of ``mean(diag H)``.

    Returns:
        ``(new weight, mask True = kept, info)``; pruned entries of the new weight are 0; info has
        ``damp`` (the dampening used, raised when H was not positive definite) and ``loss`` (the
        algorithm's own estimate of the increase in ``||WX - W'X||^2``).
    """
    if (sparsity is None) == (nm is None):
        raise ValueError("give exactly one of sparsity (unstructured) or nm=(n, m)")
    with _one_thread():
        return _sparsegpt(weight, hessian, sparsity, nm, blocksize, damp)


def _sparsegpt(weight, hessian, sparsity, nm, blocksize, damp):
    rows, cols = weight.shape
    if hessian.shape != (cols, cols):
        raise ValueError(f"hessian shape {tuple(hessian.shape)} does not match {cols} weight columns")
    if nm is not None:
        n, m = nm
        if cols % m:
            raise ValueError(f"{cols} columns are not a multiple of M={m}")
        blocksize = max(m, blocksize - blocksize % m)
    W = weight.detach().clone().float()
    H = hessian.detach().clone().double()
    # Inputs that are zero on every calibration token carry no information: the reference code
    # gives them a unit diagonal and zeroes their weights.
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    base = damp * torch.mean(torch.diag(H)).item()
    used = base
    for attempt in range(6):
        try:
            Hd = H + used * torch.eye(cols, dtype=H.dtype)
            Hinv = torch.cholesky_inverse(torch.linalg.cholesky(Hd))
            U = torch.linalg.cholesky(Hinv, upper=True).float()
            break
        except RuntimeError:  # torch.linalg.LinAlgError: not positive definite; dampen more
            used = base * 10 ** (attempt + 1)
    else:
        raise ValueError("the calibration Hessian stayed singular even with 100000x dampening")

    keep = torch.ones(rows, cols, dtype=torch.bool)
    loss = 0.0
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        d = torch.diag(U1)
        inv_d = (1.0 / d).tolist()
        if sparsity is not None:
            keep1 = unstructured_mask(W1, float(sparsity), scores=W1**2 / d.unsqueeze(0) ** 2)
        else:
            keep1 = torch.ones_like(W1, dtype=torch.bool)
        pruned1 = (~keep1).to(W1.dtype)
        for i in range(count):
            if nm is not None and i % m == 0:
                # The group's mask is chosen only now, after the errors of the earlier columns
                # have been folded into it.
                # A stable sort keeps nm_mask's tie rule (lower index wins) without a kernel launch
                # per group of M columns.
                score = W1[:, i : i + m] ** 2 / d[i : i + m].unsqueeze(0) ** 2
                order = torch.sort(score, dim=1, descending=True, stable=True).indices
                group_keep = torch.zeros_like(score, dtype=torch.bool)
                keep1[:, i : i + m] = group_keep.scatter_(1, order[:, :n], True)
                pruned1[:, i : i + m] = (~keep1[:, i : i + m]).to(W1.dtype)
            # Column i is final once its own error is taken out: the kept weights stay, the pruned
            # ones go, and the error (w - q) / d is spread over the columns still to come.
            err = W1[:, i] * pruned1[:, i] * inv_d[i]
            if i + 1 < count:
                W1[:, i + 1 :].addr_(err, U1[i, i + 1 :], alpha=-1.0)
            Err1[:, i] = err
        loss += float((Err1**2).sum()) / 2
        W[:, i1:i2] = W1 * keep1
        keep[:, i1:i2] = keep1
        if i2 < cols:
            W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    W[~keep] = 0.0
    return W.to(weight.dtype), keep, {"damp": used, "damp_raised": used > base, "loss": loss}


# ---------------------------------------------------------------------------------------------
# A layer's weight as a matrix whose rows hold the N:M groups as consecutive columns, and its
# calibration inputs as rows of X in the same column order.


def _is_conv1d_transposed(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and not isinstance(module, nn.Conv1d)


class _LayerView:
    def __init__(self, name: str, module: nn.Module, channel_grouping: bool) -> None:
        self.name, self.module = name, module
        self.transposed = _is_conv1d_transposed(module)
        self.conv = isinstance(module, (nn.Conv1d, nn.Conv2d))
        if isinstance(module, nn.Conv3d):
            raise ValueError(f"{name}: calibrated methods support Linear, Conv1d and Conv2d layers, not Conv3d; "
                             "exclude it with the exclude regex")
        if self.conv:
            if module.groups != 1:
                raise ValueError(f"{name}: grouped convolutions (groups={module.groups}) are not supported by the "
                                 "calibrated methods; exclude it with the exclude regex")
            if module.padding_mode != "zeros":
                raise ValueError(f"{name}: padding_mode={module.padding_mode!r} is not supported by the calibrated "
                                 "methods; exclude it with the exclude regex")
        # Channel grouping puts the input channel last so that M channels at one kernel position
        # are consecutive; unstructured masks do not care about the order.
        self.channel_grouping = channel_grouping and self.conv

    def matrix(self, t: torch.Tensor) -> torch.Tensor:
        if self.transposed:
            return t.t()
        if self.conv:
            if self.channel_grouping:
                return t.movedim(1, -1).reshape(t.shape[0], -1)
            return t.reshape(t.shape[0], -1)
        return t

    def from_matrix(self, mat: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        if self.transposed:
            return mat.t().contiguous()
        if self.conv:
            if self.channel_grouping:
                moved = (shape[0], *shape[2:], shape[1])
                return mat.reshape(moved).movedim(-1, 1).contiguous()
            return mat.reshape(shape).contiguous()
        return mat

    def columns(self, x: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
        """Rows of X ``[tokens, cols]`` for this layer's input ``x``."""
        x = x.detach()
        if not self.conv:
            if token_mask is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(token_mask.shape):
                return x[token_mask].float()  # padding tokens are not calibration data
            return x.reshape(-1, x.shape[-1]).float()
        mod = self.module
        if isinstance(mod, nn.Conv1d):
            x4 = x.unsqueeze(2)
            kernel, dilation, stride = (1, mod.kernel_size[0]), (1, mod.dilation[0]), (1, mod.stride[0])
            padding = (0, self._padding()[0])
        else:
            x4 = x
            kernel, dilation, stride, padding = mod.kernel_size, mod.dilation, mod.stride, self._padding()
        patches = F.unfold(x4.float(), kernel, dilation=dilation, padding=padding, stride=stride)
        cols = patches.transpose(1, 2).reshape(-1, patches.shape[1])  # c-major: (c, kh, kw)
        if self.channel_grouping:
            c = mod.in_channels
            cols = cols.reshape(-1, c, cols.shape[1] // c).transpose(1, 2).reshape(-1, cols.shape[1])
        return cols

    def _padding(self) -> tuple[int, ...]:
        mod = self.module
        if isinstance(mod.padding, str):
            if mod.padding == "valid":
                return tuple(0 for _ in mod.kernel_size)
            if any(k % 2 == 0 for k in mod.kernel_size):
                raise ValueError(f"{self.name}: padding='same' with an even kernel is not supported by the calibrated methods")
            return tuple(d * (k - 1) // 2 for k, d in zip(mod.kernel_size, mod.dilation))
        return tuple(mod.padding)


# ---------------------------------------------------------------------------------------------
# Calibration data


def check_calibration(calibration: Any, method: str = "calibrated") -> None:
    """Raise ``ValueError`` unless ``calibration`` is a non-empty float tensor or a dict with
    ``input_ids`` (and optionally ``attention_mask``)."""
    hint = ("pass calibration=... (a float tensor batch, or a dict with input_ids and attention_mask) or a "
            "LoadedModel, whose .calibration holds the digits training images or the built-in sentences")
    if calibration is None:
        raise ValueError(f"method {method!r} needs calibration data, and none was given; {hint}")
    if isinstance(calibration, torch.Tensor):
        if calibration.numel() == 0 or calibration.shape[0] == 0:
            raise ValueError(f"method {method!r}: the calibration batch is empty; {hint}")
        if not calibration.is_floating_point():
            raise ValueError(f"method {method!r}: calibration tensor must be floating point, got {calibration.dtype}")
        return
    if isinstance(calibration, dict):
        ids = calibration.get("input_ids")
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[0] == 0:
            raise ValueError(f"method {method!r}: calibration dict needs input_ids, a non-empty [batch, length] tensor")
        mask = calibration.get("attention_mask")
        if mask is not None and (not isinstance(mask, torch.Tensor) or mask.shape != ids.shape):
            raise ValueError(f"method {method!r}: calibration attention_mask must match input_ids' shape {tuple(ids.shape)}")
        return
    raise ValueError(f"method {method!r}: calibration must be a tensor or a dict of token tensors, got "
                     f"{type(calibration).__name__}; {hint}")


def calibration_size(calibration: Any) -> int:
    """Number of samples (images or sequences) in a calibration batch."""
    return int((calibration["input_ids"] if isinstance(calibration, dict) else calibration).shape[0])


def calibration_slice(calibration: Any, start: int, stop: int) -> Any:
    """Samples ``start:stop`` of a calibration batch (tensor or dict of tensors)."""
    if isinstance(calibration, dict):
        return {k: v[start:stop] for k, v in calibration.items()}
    return calibration[start:stop]


def _token_mask(calibration: Any) -> torch.Tensor | None:
    if isinstance(calibration, dict) and calibration.get("attention_mask") is not None:
        return calibration["attention_mask"].bool()
    return None


def run_model(model: nn.Module, inputs: Any) -> Any:
    """One forward on calibration-style inputs (``model(x)`` or ``model(**token_tensors)``)."""
    if isinstance(inputs, dict):
        kwargs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        try:
            params = inspect.signature(model.forward).parameters
        except (TypeError, ValueError):
            params = {}
        if "use_cache" in params:
            kwargs["use_cache"] = False  # a KV cache is useless here and costs memory
        return model(**kwargs)
    return model(inputs)


def main_output(out: Any) -> torch.Tensor:
    """The tensor a model output stands for: itself, ``logits``, ``last_hidden_state`` or item 0."""
    if isinstance(out, torch.Tensor):
        return out
    for attr in ("logits", "last_hidden_state"):
        value = getattr(out, attr, None)
        if isinstance(value, torch.Tensor):
            return value
    return out[0]


def calibration_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """A label-free loss on a calibration batch, for gradient-based (Taylor) importance.

    - classifier (a tensor input, ``[batch, classes]`` output): cross-entropy against the model's
      own argmax prediction (calibration images carry no labels);
    - causal LM (an output with ``logits``): next-token cross-entropy on the real tokens;
    - encoder (hidden states): in-batch contrastive loss on mean-pooled, normalised embeddings, each
      sentence's positive being its own detached embedding (keeps sentences apart, which is what
      the embedding-fidelity metrics measure).

    Args:
        model: the module (in a grad-enabled context).
        batch: a slice of the calibration inputs.

    Returns:
        A scalar loss.
    """
    out = run_model(model, batch)
    if isinstance(batch, torch.Tensor):
        logits = main_output(out)
        if logits.dim() != 2:
            raise ValueError(f"Taylor scores need a classifier output [batch, classes], got shape {tuple(logits.shape)}")
        return F.cross_entropy(logits, logits.detach().argmax(-1))
    mask = batch.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(batch["input_ids"])
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        valid = mask[:, 1:].bool()
        return F.cross_entropy(logits[:, :-1][valid].float(), batch["input_ids"][:, 1:][valid])
    hidden = main_output(out).float()
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    emb = F.normalize((hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9), dim=-1)
    sims = emb @ emb.detach().T / CONTRASTIVE_TEMPERATURE
    return F.cross_entropy(sims, torch.arange(emb.shape[0]))


# ---------------------------------------------------------------------------------------------
# The calibrated methods on a whole model (called by sparsify on its copy)


@dataclass
class CalibratedPrune:
    """What a calibrated method produced for ``sparsify``."""

    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    """Wanda/SparseGPT: layer -> mask (True = kept), already applied to the model in place."""
    scores: dict[str, torch.Tensor] = field(default_factory=dict)
    """Taylor: layer -> importance scores, weight layout (sparsify then masks as usual)."""
    notes: dict[str, str] = field(default_factory=dict)
    """layer -> remark (e.g. not reached by the calibration forward, extra dampening)."""
    order: str = ""
    """Wanda/SparseGPT: the calibration order used, ``block`` or ``layer`` (a model without
    transformer blocks falls back to ``layer``)."""
    order_note: str = ""
    """One line saying which order was used and why."""


def calibrated_prune(
    model: nn.Module,
    names: Sequence[str],
    config: Any,
    calibration: Any,
    *,
    progress: ProgressFn | None = None,
) -> CalibratedPrune:
    """Run a calibrated method on ``model`` (a copy owned by the caller; modified in place).

    Args:
        model: the module to prune (Wanda/SparseGPT prune it in place; Taylor only reads it).
        names: qualified names of the layers to prune, in module order.
        config: a ``SparsifyConfig`` with ``method`` in ``wanda``, ``sparsegpt``, ``taylor``.
        calibration: a float tensor batch, or a dict with ``input_ids``/``attention_mask``.
        progress: optional ``progress(fraction, message)`` callback.

    Returns:
        A ``CalibratedPrune`` with masks (Wanda/SparseGPT) or scores (Taylor).
    """
    check_calibration(calibration, config.method)
    if config.method == "taylor":
        return taylor_scores(model, names, calibration, progress=progress)
    if config.method in ("wanda", "sparsegpt"):
        return _sequential_prune(model, names, config, calibration, progress)
    raise ValueError(f"{config.method!r} is not a calibrated method; choose one of {CALIBRATED_METHODS}")


class _InputStats:
    """What a calibrated method needs of one layer's inputs, accumulated over forward calls.

    SparseGPT: ``X^T X`` and the number of calibration *samples* (sequences or images), so that
    ``H = 2 X^T X / n_samples`` as the reference's ``add_batch`` builds it (it counts sequences, not
    tokens; the count matters where an input is dead on every token: its diagonal is set to 1 and
    the 1 % dampening is relative to the live ones). Wanda: the squared L2 norm of every input
    feature over all calibration tokens.
    """

    def __init__(self, method: str) -> None:
        self.method = method
        self.samples = 0
        self.total: torch.Tensor | None = None

    def add(self, X: torch.Tensor, samples: int) -> None:
        Xd = X.double()
        part = Xd.pow(2).sum(0) if self.method == "wanda" else Xd.T @ Xd
        self.total = part if self.total is None else self.total + part
        self.samples += int(samples)

    def hessian(self) -> torch.Tensor:
        return (2.0 / max(self.samples, 1)) * self.total


def _layer_keep(view: _LayerView, weight: torch.Tensor, config: Any, stats: _InputStats, notes: dict[str, str]):
    """Mask (weight layout) for one layer from its calibration inputs; returns (mask, new weight or None)."""
    W = view.matrix(weight.detach())
    nm = (config.n, config.m) if config.pattern == "nm" else None
    if config.method == "wanda":
        norms = stats.total.sqrt()
        scores = wanda_scores(W.float(), norms.float())
        if nm is not None:
            keep = nm_mask(W, nm[0], nm[1], scores=scores)
        else:
            keep = row_unstructured_mask(scores, float(config.sparsity))
        return view.from_matrix(keep, weight.shape), None
    new, keep, info = sparsegpt_prune(W, stats.hessian(), sparsity=None if nm else float(config.sparsity), nm=nm)
    if info["damp_raised"]:
        notes[view.name] = f"Hessian not positive definite at 1% dampening; used {info['damp']:.3g}"
    return view.from_matrix(keep, weight.shape), view.from_matrix(new, weight.shape)


def transformer_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The repeated blocks of a model: entries of an ``nn.ModuleList`` whose entries are all of one
    class and each hold a Linear/Conv layer (BERT's ``encoder.layer``, GPT-2's ``transformer.h``,
    Llama's ``model.layers``, the digits ViT's ``blocks``). Lists nested inside a block (experts,
    say) are part of that block.

    Args:
        model: the module.

    Returns:
        ``(qualified name, block)`` in module order; empty when the model has no such list.
    """
    blocks: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) < 1:
            continue
        if any(name == b or name.startswith(b + ".") for b, _ in blocks):
            continue
        kinds = {type(child) for child in module}
        if len(kinds) != 1:
            continue
        if not all(any(_is_weight_layer(m) for m in child.modules()) for child in module):
            continue
        prefix = f"{name}." if name else ""
        blocks.extend((f"{prefix}{i}", child) for i, child in enumerate(module))
    return blocks


def _is_weight_layer(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)) or _is_conv1d_transposed(module)


def _sequential_prune(model, names, config, calibration, progress) -> CalibratedPrune:
    """Wanda/SparseGPT over the model in one calibration forward.

    ``calibration_order="block"`` (the papers' reference code): at each transformer block, one
    extra forward of that block alone (previous blocks already pruned, this one still dense) collects
    the inputs of all its layers; they are pruned together, and the real forward then goes on
    through the pruned block. ``"layer"``: each layer is pruned when the forward reaches it, so a
    block's later layers see inputs from its already-pruned earlier ones. Layers outside every
    block (embeddings, heads) are pruned on arrival in both orders.
    """
    modules = dict(model.named_modules())
    channel = getattr(config, "conv_grouping", "channel") == "channel" and config.pattern == "nm"
    views = {modules[n]: _LayerView(n, modules[n], channel) for n in names}
    token_mask = _token_mask(calibration)
    out = CalibratedPrune()
    total = len(names)
    order = getattr(config, "calibration_order", "block")
    blocks: dict[nn.Module, list[str]] = {}
    if order == "block":
        for bname, block in transformer_blocks(model):
            inside = [n for n in names if n.startswith(bname + ".")]
            if inside:
                blocks[block] = inside
        if blocks:
            out.order = "block"
            out.order_note = (f"block order: {len(blocks)} transformer blocks, each pruned on inputs from one "
                              "forward of the block with the blocks before it already pruned")
        else:
            out.order = "layer"
            out.order_note = "no transformer blocks found in this model: layer order used (each layer on inputs " \
                             "from the already-pruned layers before it)"
    else:
        out.order = "layer"
        out.order_note = "layer order: each layer pruned on inputs from all already-pruned layers before it"
    state: dict[str, Any] = {"capture": None, "inside": False}

    def prune(view: _LayerView, stats: _InputStats) -> None:
        if progress is not None:
            progress(0.9 * len(out.masks) / max(total, 1), f"{config.method}: {view.name}")
        weight = view.module.weight
        with torch.no_grad():
            keep, new = _layer_keep(view, weight, config, stats, out.notes)
            if new is not None:
                weight.copy_(new.to(weight.dtype))
            weight.mul_(keep.to(weight.dtype))
        out.masks[view.name] = keep

    def layer_hook(module, args):
        view = views.get(module)
        if view is None or view.name in out.masks or not args or not isinstance(args[0], torch.Tensor):
            return
        x = args[0]
        X = view.columns(x, token_mask)
        samples = x.shape[0] if x.dim() >= 2 else 1  # sequences, images, or rows of a 2-D batch
        capture = state["capture"]
        if capture is not None:
            if view.name in capture:
                capture[view.name].add(X, samples)
            return
        stats = _InputStats(config.method)
        stats.add(X, samples)
        prune(view, stats)

    def block_hook(block, args, kwargs):
        if state["inside"]:
            return None
        todo = [n for n in blocks[block] if n not in out.masks]
        if not todo:
            return None
        capture = {n: _InputStats(config.method) for n in todo}
        state["capture"], state["inside"] = capture, True
        try:
            block(*args, **kwargs)
        finally:
            state["capture"], state["inside"] = None, False
        for n in todo:
            if capture[n].total is not None:
                prune(views[modules[n]], capture[n])
        return None

    handles = [m.register_forward_pre_hook(layer_hook) for m in views]
    handles += [b.register_forward_pre_hook(block_hook, with_kwargs=True) for b in blocks]
    try:
        with torch.no_grad():
            run_model(model, calibration)
    finally:
        for h in handles:
            h.remove()
    # A layer the forward never calls has no inputs to calibrate on: it falls back to magnitude.
    for name in names:
        if name not in out.masks:
            out.notes[name] = "not reached by the calibration forward: magnitude scores used"
    return out


def taylor_scores(
    model: nn.Module,
    names: Sequence[str],
    calibration: Any,
    *,
    batch_size: int = TAYLOR_BATCH,
    progress: ProgressFn | None = None,
) -> CalibratedPrune:
    """First-order Taylor importance ``sum over mini-batches of (g * w)^2`` for each named layer.

    Args:
        model: the dense module (its parameters are not changed; gradients are not stored in ``.grad``).
        names: layers to score.
        calibration: calibration inputs, split into mini-batches of ``batch_size``.
        batch_size: samples per mini-batch.
        progress: optional ``progress(fraction, message)`` callback.

    Returns:
        A ``CalibratedPrune`` whose ``scores`` map each layer to a tensor of its weight's shape.
    """
    check_calibration(calibration, "taylor")
    modules = dict(model.named_modules())
    weights = [modules[n].weight for n in names]
    flags = [w.requires_grad for w in weights]
    scores = {n: torch.zeros_like(w, dtype=torch.float32) for n, w in zip(names, weights)}
    notes: dict[str, str] = {}
    size = calibration_size(calibration)
    starts = list(range(0, size, batch_size))
    # The weights need gradients even when the caller runs under no_grad or inference mode.
    with torch.inference_mode(False), torch.enable_grad():
        try:
            for w in weights:
                w.requires_grad_(True)
            for step, start in enumerate(starts):
                if progress is not None:
                    progress(0.9 * step / len(starts), f"taylor: gradients of batch {step + 1}/{len(starts)}")
                loss = calibration_loss(model, calibration_slice(calibration, start, start + batch_size))
                grads = torch.autograd.grad(loss, weights, allow_unused=True)
                for name, w, g in zip(names, weights, grads):
                    if g is not None:
                        scores[name] += (g.detach() * w.detach()).float() ** 2
        finally:
            for w, flag in zip(weights, flags):
                w.requires_grad_(flag)
    for name, w in zip(names, weights):
        if not bool(scores[name].any()):
            notes[name] = "no gradient reached this layer: magnitude scores used"
            scores[name] = w.detach().abs().float()
    return CalibratedPrune(scores=scores, notes=notes)


# ---------------------------------------------------------------------------------------------
# Channel permutation for N:M


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
    with _one_thread():
        return _search(matrix, n, m, max_rounds, max_seconds)


def _search(matrix, n, m, max_rounds, max_seconds) -> PermutationSearch:
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
    while rounds < max_rounds and time.perf_counter() - start_time < max_seconds:
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
    )


def _permutable(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)) or _is_conv1d_transposed(module)


def _out_features(module: nn.Module) -> int:
    if _is_conv1d_transposed(module):
        return module.weight.shape[1]
    return module.weight.shape[0]


def _in_features(module: nn.Module) -> int:
    if _is_conv1d_transposed(module):
        return module.weight.shape[0]
    return module.weight.shape[1]


def _permute_outputs(module: nn.Module, perm: torch.Tensor) -> None:
    with torch.no_grad():
        if _is_conv1d_transposed(module):
            module.weight.copy_(module.weight[:, perm])
        else:
            module.weight.copy_(module.weight[perm])
        if getattr(module, "bias", None) is not None:
            module.bias.copy_(module.bias[perm])


def _permute_inputs(module: nn.Module, perm: torch.Tensor) -> None:
    with torch.no_grad():
        if _is_conv1d_transposed(module):
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
    if _is_conv1d_transposed(module):
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
    ``kept_after``, ``kept_unstructured``, ``kept_row_bound``, ``recovered_share``, ``swaps``, ``seconds``."""
    skipped: dict[str, str]
    """Consumer layer -> why it was not permuted."""
    perms: dict[str, torch.Tensor]
    """Consumer layer -> the permutation applied to its input channels."""
    n: int
    m: int

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
) -> ChannelPermutation:
    """Permute input channels of N:M-prunable layers, and the producing layers' outputs with them.

    A consumer layer can be permuted when the layers right before it (the immediately preceding
    prunable layer, possibly with earlier siblings of the same shape, e.g. LLaMA's gate and up
    projections) produce its input elementwise (through activations, not through attention heads,
    residual sums or LayerNorm). That is confirmed on calibration inputs: a random permutation must
    leave the outputs unchanged (within 1e-5) before the search runs. Only candidates that pass
    are permuted, so the copy computes the same function.

    Args:
        model: an ``nn.Module`` or a ``LoadedModel`` (never modified; a copy is permuted).
        n: kept per group.
        m: group size.
        calibration: inputs for the function check (default: the LoadedModel's).
        include: optional filter on consumer layer names.
        max_rounds: search rounds per layer.
        max_seconds_per_layer: search time limit per layer.
        progress: optional ``progress(fraction, message)`` callback.

    Returns:
        A ``ChannelPermutation`` with the permuted copy and a per-layer report.
    """
    from .sparsify import prunable_layers  # sparsify imports this module lazily

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
    work = copy.deepcopy(source).eval()
    mods = dict(work.named_modules())
    names = [name for name, _ in layers]
    sample = calibration_slice(calibration, 0, PERMUTATION_CHECK_SAMPLES)
    with torch.no_grad():
        reference = run_model(work, sample)
    gen = torch.Generator().manual_seed(0)
    rows: list[dict] = []
    skipped: dict[str, str] = {}
    perms: dict[str, torch.Tensor] = {}
    for idx, cname in enumerate(names):
        if progress is not None:
            progress(idx / len(names), f"permutation: {cname}")
        consumer = mods[cname]
        if include is not None and not include(cname):
            continue
        if idx == 0:
            skipped[cname] = "first layer: its input comes from outside the network"
            continue
        if not _permutable(consumer) or isinstance(consumer, nn.Conv1d) or (consumer.weight.dim() > 2 and consumer.groups != 1):
            skipped[cname] = f"{type(consumer).__name__} consumers are not supported"
            continue
        cin = _in_features(consumer)
        if cin % m:
            skipped[cname] = f"{cin} input channels are not a multiple of M={m}"
            continue
        candidates = _producer_candidates(names, idx, mods, cin, type(consumer))
        if not candidates:
            skipped[cname] = "no preceding layer produces its input channels"
            continue
        chosen = None
        for producers in candidates:
            trial = torch.randperm(cin, generator=gen)
            _apply_pair([mods[p] for p in producers], consumer, trial)
            with torch.no_grad():
                ok = _outputs_close(run_model(work, sample), reference)
            inverse = torch.argsort(trial)
            _apply_pair([mods[p] for p in producers], consumer, inverse)
            if ok:
                chosen = producers
                break
        if chosen is None:
            skipped[cname] = (f"permuting {', '.join(candidates[0])} changes the output: its input is not produced "
                              "elementwise (attention heads, residual sums or normalisation in between)")
            continue
        found = search_permutation(_consumer_matrix(consumer), n, m, max_rounds=max_rounds,
                                   max_seconds=max_seconds_per_layer)
        _apply_pair([mods[p] for p in chosen], consumer, found.perm)
        perms[cname] = found.perm
        rows.append({
            "layer": cname,
            "producers": ", ".join(chosen),
            "kept_before": found.kept_before,
            "kept_after": found.kept_after,
            "kept_unstructured": found.kept_unstructured,
            "kept_row_bound": found.kept_row_bound,
            "recovered_share": found.recovered_share,
            "swaps": found.swaps,
            "seconds": found.seconds,
        })
    with torch.no_grad():
        if not _outputs_close(run_model(work, sample), reference):  # every pair was checked; belt and braces
            raise RuntimeError("the permuted model's outputs differ from the original's")
    if progress is not None:
        progress(1.0, "permutation done")
    return ChannelPermutation(model=work, rows=rows, skipped=skipped, perms=perms, n=n, m=m)


def _producer_candidates(names: list[str], idx: int, mods: dict, cin: int, kind: type) -> list[list[str]]:
    """Producer sets to try for consumer ``names[idx]``: the preceding layer alone, then with the
    earlier same-parent siblings of the same output size (gate + up projections)."""
    first = names[idx - 1]
    p0 = mods[first]
    if not _permutable(p0) or _out_features(p0) != cin:
        return []
    if isinstance(p0, (nn.Conv1d, nn.Conv2d)) != isinstance(mods[names[idx]], (nn.Conv1d, nn.Conv2d)):
        return []  # conv -> linear goes through a flatten that interleaves channels and positions
    out = [[first]]
    group = [first]
    for j in range(idx - 2, -1, -1):
        other = mods[names[j]]
        if _parent(names[j]) != _parent(first) or not _permutable(other) or _out_features(other) != cin:
            break
        group = [names[j], *group]
        out.append(list(group))
    return out

"""Calibration inputs and the one calibration forward that Wanda and SparseGPT share.

``sequential_prune`` runs the calibration batch through the model copy once, in one of two orders
(``SparsifyConfig.calibration_order``): ``block`` (default, the papers' reference code) collects
the inputs of every layer of a transformer block from one forward of that block, the blocks before
it already pruned, then prunes them together; ``layer`` prunes each layer when the forward reaches
it, on inputs computed by every already-pruned layer before it, including those of its own block.
Layers outside every block (embeddings, heads) are pruned on arrival in both orders.
"""
from __future__ import annotations

import contextlib
import inspect
from collections.abc import Mapping
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import grouped_view, is_conv1d_transposed, is_prunable, layer_weight
from .stats import InputStats
from .types import Calibration, FinishedLayer, LayerJournal, MethodOutput, ProgressFn, PruneSettings

CONTRASTIVE_TEMPERATURE = 0.05
"""Temperature of the encoder calibration loss (SimCSE's value)."""


def check_calibration(calibration: object, method: str = "calibrated") -> None:
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
            raise ValueError(f"method {method!r}: calibration attention_mask must match input_ids' shape "
                             f"{tuple(ids.shape)}")
        return
    raise ValueError(f"method {method!r}: calibration must be a tensor or a dict of token tensors, got "
                     f"{type(calibration).__name__}; {hint}")


def calibration_size(calibration: Calibration) -> int:
    """Number of samples (images or sequences) in a calibration batch."""
    return int((calibration["input_ids"] if isinstance(calibration, dict) else calibration).shape[0])


def calibration_slice(calibration: Calibration, start: int, stop: int) -> Calibration:
    """Samples ``start:stop`` of a calibration batch (tensor or dict of tensors)."""
    if isinstance(calibration, dict):
        return {k: v[start:stop] for k, v in calibration.items()}
    return calibration[start:stop]


def token_mask(calibration: Calibration) -> torch.Tensor | None:
    if isinstance(calibration, dict) and calibration.get("attention_mask") is not None:
        return calibration["attention_mask"].bool()
    return None


def run_model(model: nn.Module, inputs: Calibration) -> Any:
    """One forward on calibration-style inputs (``model(x)`` or ``model(**token_tensors)``); the model's own
    output (a tensor, a tuple or a transformers ``ModelOutput``)."""
    if isinstance(inputs, dict):
        names = ("input_ids", "attention_mask", "token_type_ids")
        kwargs: dict[str, object] = {k: v for k, v in inputs.items() if k in names}
        params: Mapping[str, inspect.Parameter]
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


def calibration_loss(model: nn.Module, batch: Calibration) -> torch.Tensor:
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
            raise ValueError("Taylor scores need a classifier output [batch, classes], got shape "
                             f"{tuple(logits.shape)}")
        return F.cross_entropy(logits, logits.detach().argmax(-1))
    mask = batch.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(batch["input_ids"])
    lm_logits = getattr(out, "logits", None)
    if isinstance(lm_logits, torch.Tensor):
        valid = mask[:, 1:].bool()
        return F.cross_entropy(lm_logits[:, :-1][valid].float(), batch["input_ids"][:, 1:][valid])
    hidden = main_output(out).float()
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    emb = F.normalize((hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9), dim=-1)
    sims = emb @ emb.detach().T / CONTRASTIVE_TEMPERATURE
    return F.cross_entropy(sims, torch.arange(emb.shape[0]))



class LayerInputs:
    """One layer under a calibrated method: its grouped weight view, and its calibration inputs as
    rows of X in the same column order as the grouped matrix."""

    def __init__(self, name: str, module: nn.Module, channel_grouping: bool) -> None:
        self.name, self.module = name, module
        self.conv = isinstance(module, (nn.Conv1d, nn.Conv2d))
        if isinstance(module, nn.Conv3d):
            raise ValueError(f"{name}: calibrated methods support Linear, Conv1d and Conv2d layers, not Conv3d; "
                             "exclude it with the exclude regex")
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            if module.groups != 1:
                raise ValueError(f"{name}: grouped convolutions (groups={module.groups}) are not supported by the "
                                 "calibrated methods; exclude it with the exclude regex")
            if module.padding_mode != "zeros":
                raise ValueError(f"{name}: padding_mode={module.padding_mode!r} is not supported by the calibrated "
                                 "methods; exclude it with the exclude regex")
        # Channel grouping puts the input channel last so that M channels at one kernel position
        # are consecutive; unstructured masks do not care about the order.
        self.channel_grouping = channel_grouping and self.conv
        self.view = grouped_view(module, "channel" if channel_grouping else "kernel")

    def matrix(self, t: torch.Tensor) -> torch.Tensor:
        return self.view.matrix(t)

    def from_matrix(self, mat: torch.Tensor) -> torch.Tensor:
        return self.view.from_matrix(mat)

    def columns(self, x: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
        """Rows of X ``[tokens, cols]`` for this layer's input ``x``."""
        x = x.detach()
        if not self.conv:
            flat = x.reshape(-1, x.shape[-1])
            if token_mask is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(token_mask.shape):
                # Padding tokens are not calibration data. Packed rows (a causal LM's calibration)
                # pad only the end of the last row: the real tokens are then a leading slice, no copy.
                real = token_mask.reshape(-1)
                count = int(real.sum())
                if bool(real[:count].all()):
                    return flat[:count].float()
                return x[token_mask].float()
            return flat.float()
        mod = self.module
        if isinstance(mod, nn.Conv2d):
            x4 = x
            kernel, dilation, stride, padding = mod.kernel_size, mod.dilation, mod.stride, self._padding()
        else:
            assert isinstance(mod, nn.Conv1d)  # self.conv: a Conv1d or a Conv2d
            x4 = x.unsqueeze(2)
            kernel, dilation, stride = (1, mod.kernel_size[0]), (1, mod.dilation[0]), (1, mod.stride[0])
            padding = (0, self._padding()[0])
        patches = F.unfold(x4.float(), kernel, dilation=dilation, padding=padding, stride=stride)
        cols = patches.transpose(1, 2).reshape(-1, patches.shape[1])  # c-major: (c, kh, kw)
        if self.channel_grouping:
            c = mod.in_channels
            cols = cols.reshape(-1, c, cols.shape[1] // c).transpose(1, 2).reshape(-1, cols.shape[1])
        return cols

    def _padding(self) -> tuple[int, ...]:
        mod = self.module
        assert isinstance(mod, (nn.Conv1d, nn.Conv2d))  # called for conv layers only
        if isinstance(mod.padding, str):
            if mod.padding == "valid":
                return tuple(0 for _ in mod.kernel_size)
            if any(k % 2 == 0 for k in mod.kernel_size):
                raise ValueError(f"{self.name}: padding='same' with an even kernel is not supported by the "
                                 "calibrated methods")
            return tuple(d * (k - 1) // 2 for k, d in zip(mod.kernel_size, mod.dilation))
        return tuple(mod.padding)



def _zero_forward(view: LayerInputs) -> Callable[..., torch.Tensor] | None:
    """A stand-in forward giving zeros of the layer's output shape: a plain ``nn.Linear`` or GPT-2
    ``Conv1D`` (others: None)."""
    module = view.module
    if "forward" in vars(module) or not (type(module) is nn.Linear or is_conv1d_transposed(module)):
        return None
    rows = view.view.matrix_shape[0]

    def forward(x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return x.new_zeros(*x.shape[:-1], rows)
    return forward


@contextlib.contextmanager
def _skipped(view: LayerInputs | None) -> Iterator[None]:
    """Within the block, the layer's forward hooks still run (its inputs are captured) but it
    computes zeros instead of its output."""
    forward = _zero_forward(view) if view is not None else None
    if view is None or forward is None:
        yield
        return
    vars(view.module)["forward"] = forward
    try:
        yield
    finally:
        del vars(view.module)["forward"]


class _AllPruned(Exception):
    """Raised by a hook once every selected layer is pruned: the rest of the calibration forward
    (later blocks' outputs, a language model's vocabulary-sized output layer) would be discarded."""


KeepFn = Callable[["LayerInputs", torch.Tensor, PruneSettings, "InputStats", dict[str, str]],
                  "tuple[torch.Tensor, torch.Tensor | None]"]
"""``keep(layer, weight, settings, input statistics, notes) -> (mask in the weight's layout, new weight or
None)``."""


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
        if not all(any(is_prunable(m) for m in child.modules()) for child in module):
            continue
        prefix = f"{name}." if name else ""
        blocks.extend((f"{prefix}{i}", child) for i, child in enumerate(module))
    return blocks


def sequential_prune(model: nn.Module, names: Sequence[str], config: PruneSettings, calibration: Calibration,
                     progress: ProgressFn | None, keep: KeepFn, stats_kind: str,
                     journal: LayerJournal | None = None) -> MethodOutput:
    """Wanda/SparseGPT over the model in one calibration forward.

    ``calibration_order="block"`` (the papers' reference code): at each transformer block, one
    extra forward of that block alone (previous blocks already pruned, this one still dense) collects
    the inputs of all its layers; they are pruned together, and the real forward then goes on
    through the pruned block. ``"layer"``: each layer is pruned when the forward reaches it, so a
    block's later layers see inputs from its already-pruned earlier ones. Layers outside every
    block (embeddings, heads) are pruned on arrival in both orders.

    The extra forward only needs the block's layer inputs, so the layer it calls last (GPT-2's
    ``mlp.c_proj``, a third of a block's multiply-adds) computes zeros there instead of its output
    once an earlier block of the same class has shown that no layer of the block runs after it
    (checked again on every block: if one does, that block's extra forward is run again in full).
    The forward stops after the last pruned layer, so the last block's pruned output and a language
    model's output layer are never computed.

    ``journal`` (optional) keeps each finished layer and gives back those an interrupted run of the same
    inputs finished: such a layer takes its stored mask and weights instead of being computed, and a
    block whose layers are all stored needs no extra forward. The forward itself runs through every
    layer, stored or not, so the later layers see the inputs of an uninterrupted run.
    """
    modules = dict(model.named_modules())
    channel = config.conv_grouping == "channel" and config.pattern == "nm"
    views = {modules[n]: LayerInputs(n, modules[n], channel) for n in names}
    tokens = token_mask(calibration)
    out = MethodOutput()
    total = len(names)
    order = config.calibration_order
    blocks: dict[nn.Module, list[str]] = {}
    block_names: dict[nn.Module, str] = {}
    if order == "block":
        for bname, block in transformer_blocks(model):
            inside = [n for n in names if n.startswith(bname + ".")]
            if inside:
                blocks[block], block_names[block] = inside, bname
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
    capturing: dict[str, InputStats] | None = None  # a block's layers -> their stats, during its extra forward
    in_block = False
    calls: list[str] = []  # the block's layers in the order its extra forward calls them
    skippable: dict[type, str] = {}  # block class -> the layer (relative name) its extra forward can skip

    def stored(view: LayerInputs) -> FinishedLayer | None:
        return journal.get(view.name, tuple(layer_weight(view.module).shape)) if journal is not None else None

    def prune(view: LayerInputs, stats: InputStats | None, done: FinishedLayer | None = None) -> None:
        if progress is not None:
            progress(0.9 * len(out.masks) / max(total, 1), f"{config.method}: {view.name}")
        weight = layer_weight(view.module)
        with torch.no_grad():
            if done is not None:  # finished by an interrupted run of these inputs
                mask, new = done.mask, done.weight
                if done.note:
                    out.notes[view.name] = done.note
            else:
                assert stats is not None
                mask, new = keep(view, weight, config, stats, out.notes)
                if journal is not None:
                    journal.put(view.name, mask, new, out.notes.get(view.name, ""))
            if new is not None:
                weight.copy_(new.to(weight.dtype))
            weight.mul_(mask.to(weight.dtype))
        out.masks[view.name] = mask
        if len(out.masks) == total:
            raise _AllPruned

    def layer_hook(module: nn.Module, args: tuple[object, ...]) -> None:
        view = views.get(module)
        if view is None or view.name in out.masks or not args or not isinstance(args[0], torch.Tensor):
            return
        x = args[0]
        samples = x.shape[0] if x.dim() >= 2 else 1  # sequences, images, or rows of a 2-D batch
        if capturing is not None:
            if view.name in capturing:
                capturing[view.name].add(view.columns(x, tokens), samples)
                calls.append(view.name)
            return
        done = stored(view)
        if done is not None:
            prune(view, None, done)
            return
        X = view.columns(x, tokens)
        stats = InputStats(stats_kind)
        stats.add(X, samples)
        prune(view, stats)

    def block_hook(block: nn.Module, args: tuple[object, ...], kwargs: dict[str, object]) -> None:
        nonlocal capturing, in_block
        if in_block:
            return None
        todo = [n for n in blocks[block] if n not in out.masks]
        if not todo:
            return None
        finished = {n: stored(views[modules[n]]) for n in todo}
        if all(f is not None for f in finished.values()):
            # Every layer of the block was finished by an interrupted run: no extra forward needed.
            for n in todo:
                prune(views[modules[n]], None, finished[n])
            return None
        bname = block_names[block]
        rel = skippable.get(type(block))
        skip = modules.get(f"{bname}.{rel}") if rel is not None and f"{bname}.{rel}" in todo else None
        capture: dict[str, InputStats] = {}
        for attempt in (skip, None):
            capture = {n: InputStats(stats_kind) for n in todo}
            calls.clear()
            capturing, in_block = capture, True
            try:
                with _skipped(views[attempt] if attempt is not None else None):
                    block(*args, **kwargs)
            finally:
                capturing, in_block = None, False
            if attempt is None:
                break
            if calls.count(views[attempt].name) == 1 and calls[-1] == views[attempt].name:
                break  # nothing ran after the skipped layer: every input is what a full forward gives
            skippable.pop(type(block), None)  # it did: capture again without skipping
        if skip is None and type(block) not in skippable and calls and calls.count(calls[-1]) == 1:
            last = views[modules[calls[-1]]]
            if _zero_forward(last) is not None:
                skippable[type(block)] = calls[-1][len(bname) + 1:]
        for n in todo:
            if finished[n] is not None:
                prune(views[modules[n]], None, finished[n])
            elif capture[n].total is not None:
                prune(views[modules[n]], capture[n])
        return None

    handles = [m.register_forward_pre_hook(layer_hook) for m in views]
    handles += [b.register_forward_pre_hook(block_hook, with_kwargs=True) for b in blocks]
    try:
        with torch.no_grad():
            run_model(model, calibration)
    except _AllPruned:
        pass
    finally:
        for h in handles:
            h.remove()
    # A layer the forward never calls has no inputs to calibrate on: it falls back to magnitude.
    for name in names:
        if name not in out.masks:
            out.notes[name] = "not reached by the calibration forward: magnitude scores used"
            out.scores[name] = layer_weight(modules[name]).detach()
    return out


def capture_input_stats(model: nn.Module, names: Sequence[str], calibration: Calibration,
                        kind: str = "hessian") -> dict[str, InputStats]:
    """Statistics of each named layer's inputs over one forward of the calibration batch.

    Forward pre-hooks are registered on ``model`` for that forward (and removed): pass a copy, never
    the shared model.

    Args:
        model: the module (dense, for OWL and the sensitivity proxy).
        names: prunable layers.
        calibration: a float tensor batch or a dict of token tensors (padding tokens are left out).
        kind: ``hessian`` (``X^T X``) or ``norms`` (squared L2 norm of each input feature); conv
            columns in ``in*kh*kw`` order.

    Returns:
        layer -> ``InputStats`` (``total`` is None for a layer the forward never called).
    """
    modules = dict(model.named_modules())
    views = {modules[n]: LayerInputs(n, modules[n], False) for n in names}
    stats = {n: InputStats(kind) for n in names}
    tokens = token_mask(calibration)

    def hook(module: nn.Module, args: tuple[object, ...]) -> None:
        if not args or not isinstance(args[0], torch.Tensor):
            return
        view, x = views[module], args[0]
        stats[view.name].add(view.columns(x, tokens), x.shape[0] if x.dim() >= 2 else 1)

    handles = [m.register_forward_pre_hook(hook) for m in views]
    try:
        with torch.no_grad():
            run_model(model, calibration)
    finally:
        for h in handles:
            h.remove()
    return stats

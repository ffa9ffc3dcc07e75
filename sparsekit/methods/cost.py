"""How long a sparsify will take, estimated before it starts from the model's own measured speed.

The app shows this next to the Apply button of a calibrated method on a large model, so a user
knows whether to wait. It counts floating-point work and converts it to seconds with the rate the
model's last quality pass reached (``seconds_per_token``: that pass runs the same layers on the
same machine, under the same load):

- the calibration forward: every calibration token through every prunable layer, twice in block
  order (one forward of each block collects its layers' inputs, one carries the pruned block's
  output on), once in layer order, or the method's own ``calibration_passes`` (Taylor: forward and
  backward, three);
- the method's per-layer work (``Method.layer_flops``; SparseGPT's Hessian, factor and updates),
  whose column-by-column part runs slower than the matmuls (``COLUMN_PASS_SLOWDOWN`` times their
  rate).

The page says what the calibration forward will run (``calibration_text``).

``benchmarks/bench_scale.py`` prints each estimate next to the time measured in the same run.
"""
from __future__ import annotations

from torch import nn

from ..layers import grouped_view, layer_weight, prunable_layers, tied_layers
from .base import get_method
from .types import Calibration, PruneSettings

COLUMN_PASS_SLOWDOWN = 7.0
"""Column-pass flops run this many times slower than the forward's matmuls. The pass is one compiled
kernel since issue #28 (40 before, when it was thousands of torch ops): measured against the GPT-2
small-size model's dense forward on 2 shared cores, the median of three alternated runs gave 6.9
(one outlier 22; ``benchmarks/bench_scale.py`` shows how well the estimate holds)."""


def forward_weights(module: nn.Module) -> int:
    """Weights a token meets in one forward: every Linear/Conv layer's, plus an output layer tied
    to the embeddings (a language model's vocabulary projection), which ``prunable_layers`` skips."""
    layers = prunable_layers(module)
    total = sum(int(layer_weight(m).numel()) for _, m in layers)
    get_out = getattr(module, "get_output_embeddings", None)
    out = get_out() if callable(get_out) else None
    weight = getattr(out, "weight", None)
    if weight is not None and all(layer_weight(m) is not weight for _, m in layers):
        total += int(weight.numel())
    return total


def calibration_tokens(calibration: Calibration) -> int:
    """Positions the calibration forward computes (padding included: it costs the same)."""
    ids = calibration["input_ids"] if isinstance(calibration, dict) else calibration
    shape = tuple(ids.shape)
    return int(shape[0] * shape[1]) if isinstance(calibration, dict) and len(shape) == 2 else int(shape[0])


def calibration_text(calibration: Calibration | None) -> str:
    """What the calibration forward runs, for the estimate shown before it: ``1,287 calibration tokens
    (11 rows)`` (padding left out), ``256 calibration images``; empty without calibration."""
    if calibration is None:
        return ""
    if isinstance(calibration, dict):
        ids = calibration["input_ids"]
        mask = calibration.get("attention_mask")
        tokens = int(mask.sum()) if mask is not None else int(ids.numel())
        rows = int(ids.shape[0])
        return f"{tokens:,} calibration tokens ({rows:,} row{'s' if rows != 1 else ''})"
    count = int(calibration.shape[0])
    return f"{count:,} calibration sample{'s' if count != 1 else ''}"


def estimate_seconds(module: nn.Module, config: PruneSettings, calibration: Calibration | None,
                     seconds_per_token: float) -> float:
    """Estimated seconds of ``sparsify(module, config)``.

    Args:
        module: the dense model.
        config: a ``SparsifyConfig``.
        calibration: the calibration inputs the method will use.
        seconds_per_token: seconds one token (one sample for an image model) takes through the
            whole dense model, measured on this machine (e.g. the last quality pass over its tokens).

    Returns:
        Seconds; the prune-and-copy work of uncalibrated methods counts as none (it is memory-bound
        and well under a second up to GPT-2 sizes).
    """
    if seconds_per_token <= 0:
        raise ValueError(f"seconds_per_token must be positive, got {seconds_per_token}")
    method = get_method(config.method)
    if not method.needs_calibration or config.pattern == "dense":
        return 0.0
    weights = forward_weights(module)
    layers = prunable_layers(module)
    tied = tied_layers(module, layers)
    layers = [(name, layer) for name, layer in layers if name not in tied]
    prunable = sum(int(layer_weight(m).numel()) for _, m in layers)
    rate = 2.0 * weights / seconds_per_token  # flops per second of the forward's matmuls
    tokens = calibration_tokens(calibration) if calibration is not None else 0
    passes = method.calibration_passes
    if passes is None:
        passes = 2.0 if config.calibration_order == "block" else 1.0
    # The calibration forward stops after the last pruned layer, so the output layer is not run.
    seconds = passes * 2.0 * prunable * tokens / rate
    if method.layer_flops is not None:
        flops = column = 0.0
        for _, layer in layers:
            rows, cols = grouped_view(layer, config.conv_grouping).matrix_shape
            matmul, column_pass = method.layer_flops(rows, cols, tokens)
            flops += matmul
            column += column_pass
        seconds += (flops + COLUMN_PASS_SLOWDOWN * column) / rate
    return seconds

"""SliceGPT (Ashkboos et al. 2024, arXiv 2401.15024): rotate the residual stream of a pre-LayerNorm transformer by
the principal directions of its calibration signals, then delete the smallest-variance directions.

What is done, in the order of the authors' code (microsoft/TransformerCompression, ``layernorm_fusion.py`` and
``rotate.py``), on a deep copy of the model:

1. **Norms become parameter-free RMSNorms.** Each norm's scale ``γ`` (and, for LayerNorm, its shift ``β``) is folded
   into the layers that read its output: ``W ← W·diag(γ)``, ``b ← b + W·β`` (the attention inputs, the MLP
   inputs, and the head; GPT-2's head gains a bias ``W_E·β_f``). A LayerNorm also subtracts each token's mean; the
   paper moves that into the layers that *write* the residual stream: the embeddings' rows and the output rows of
   each attention and MLP output layer are centred (``W ← W − mean over outputs``), so every token of the stream
   has mean zero and ``LayerNorm(x) = RMSNorm(x)`` exactly. GPT-2's head, tied to the token embedding, gets its
   own copy first (the two are rotated differently). Llama's RMSNorm subtracts nothing: only ``γ`` is folded.
   The norm that remains, ``SlicedRMSNorm``, divides by the *original* width (``x / sqrt(‖x‖²/D + ε)``) as the
   authors' ``RMSN`` does, so a sliced stream keeps its scale.
2. **Rotate and slice, block by block.** Each position of the residual stream (the input of block ``l``, the
   stream between its attention and its MLP, its output) gets its own orthogonal ``Q``: the eigenvectors,
   largest eigenvalue first, of ``Σ xᵀx`` (float64) over the calibration tokens (padding left out), computed on
   the model whose earlier positions are already rotated and sliced, exactly as ``rotate_and_slice`` does. (The
   authors add 1 % of the mean eigenvalue to the diagonal; that changes no eigenvector, so it is left out.)
   Writers of a position are multiplied by ``Qᵀ`` on the output side, readers by ``Q`` on the input side, and
   only the first ``d`` columns of ``Q`` are kept. Where consecutive positions have different rotations the
   residual connection carries the matrix ``Q_inᵀ·Q_out`` (``d × d``): GPT-2 and Llama blocks are turned into
   subclasses whose forward adds ``x·S`` instead of ``x`` (``attn_shortcut``, ``mlp_shortcut``); everything else
   runs through the model's own transformers code, now at width ``d``.
3. ``d = ⌊(1 − fraction)·D⌋`` everywhere, the last block's output and the head included (the authors' code has
   ``do_slice_head=False`` by default: ``slice_head=False`` keeps them at the full width ``D``, only rotated; Llama
   only, since transformers' GPT-2 reshapes the final stream to the embeddings' width).

At ``fraction = 0`` the result is the dense model rotated, equal to it up to float rounding. Post-LayerNorm models
(BERT, MiniLM) normalise the stream itself after each residual add, so no rotation of the stream passes through
their norms; they are refused, as are models without transformer blocks and architectures not listed here. The
digits ViT is pre-LN and handled the same way (``slicegpt_vit``: patch embedding, class token and position embedding
write the stream; calibration is a batch of images, every token counted). The weight operations live in
``slicegpt_ops``.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Callable

import torch
from torch import nn

from ..methods.calibration import check_calibration, token_mask, transformer_blocks
from ..models.base import LoadedModel
from ..models.digits_nets import DigitsViT
from ..progress import ProgressArg, ProgressFn, reporter
from .slicegpt_ops import (
    SlicedRMSNorm,
    StreamBlock,
    StreamParts,
    centre_stream_writer,
    centre_writer,
    fold_norm,
    pca,
    read,
    rotate_stream_writer,
    second_moment,
    write,
)
from .slicegpt_result import SliceResult, shape_rows
from .slicegpt_vit import make_sliced, vit_parts

__all__ = ["POST_LN_TYPES", "SUPPORTED_TYPES", "SlicedRMSNorm", "model_parts", "slice_model", "sliced_width",
           "to_sliced_structure"]

SUPPORTED_TYPES = ("gpt2", "llama")
"""``config.model_type`` values SliceGPT handles here."""
POST_LN_TYPES = ("bert", "roberta", "xlm-roberta", "distilbert", "electra", "albert", "mpnet", "camembert")
"""Encoder families that normalise after the residual add (post-LN)."""
def sliced_width(hidden: int, fraction: float) -> int:
    """The kept width ``⌊(1 − fraction)·hidden⌋`` (the authors' ``int((1 - sparsity) * hidden_size)``).

    Raises:
        ValueError: ``fraction`` is not a number in [0, 1), or it leaves no dimension of ``hidden``.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not math.isfinite(fraction):
        raise ValueError(f"the slicing fraction must be a number in [0, 1), got {fraction!r}")
    if not 0 <= fraction < 1:
        raise ValueError(f"the slicing fraction must be in [0, 1) (the share of the residual width deleted), "
                         f"got {fraction}")
    d = int(math.floor((1 - fraction) * hidden + 1e-9))
    if d < 1:
        raise ValueError(f"slicing {fraction:.4g} of a residual width of {hidden} leaves no dimension "
                         f"(⌊(1 − {fraction:.4g})·{hidden}⌋ = 0); use a fraction below {1 - 1 / hidden:.4g}")
    return d


# --------------------------------------------------------------------------------------------------
# The blocks' forward with shortcut matrices


def _shortcut(x: torch.Tensor, matrix: torch.Tensor | None) -> torch.Tensor:
    return x if matrix is None else x @ matrix


def _gpt2_forward(self: Any, hidden_states: torch.Tensor, past_key_values: Any = None, attention_mask: Any = None,
                  encoder_hidden_states: Any = None, encoder_attention_mask: Any = None, use_cache: Any = False,
                  **kwargs: Any) -> torch.Tensor:
    if encoder_hidden_states is not None:
        raise ValueError("a sliced GPT-2 block has no cross-attention")
    attn_output, _ = self.attn(self.ln_1(hidden_states), past_key_values=past_key_values,
                               attention_mask=attention_mask, use_cache=use_cache, **kwargs)
    hidden = _shortcut(hidden_states, self.attn_shortcut) + attn_output
    return _shortcut(hidden, self.mlp_shortcut) + self.mlp(self.ln_2(hidden))


def _llama_forward(self: Any, hidden_states: torch.Tensor, attention_mask: Any = None, position_ids: Any = None,
                   past_key_values: Any = None, use_cache: Any = False, position_embeddings: Any = None,
                   **kwargs: Any) -> torch.Tensor:
    attn_output, _ = self.self_attn(hidden_states=self.input_layernorm(hidden_states), attention_mask=attention_mask,
                                    position_ids=position_ids, past_key_values=past_key_values, use_cache=use_cache,
                                    position_embeddings=position_embeddings, **kwargs)
    hidden = _shortcut(hidden_states, self.attn_shortcut) + attn_output
    return _shortcut(hidden, self.mlp_shortcut) + self.mlp(self.post_attention_layernorm(hidden))


_FORWARDS: dict[str, Callable[..., torch.Tensor]] = {"gpt2": _gpt2_forward, "llama": _llama_forward}
_SLICED_CLASSES: dict[type, type] = {}


def _sliced_class(base: type, arch: str) -> type:
    """A subclass of the transformers block class whose residual adds go through the shortcut matrices (a
    subclass, so that transformers still recognises the block, e.g. for ``output_hidden_states``)."""
    if base not in _SLICED_CLASSES:
        _SLICED_CLASSES[base] = type(f"Sliced{base.__name__}", (base,),
                                     {"forward": _FORWARDS[arch], "__module__": __name__,
                                      "__doc__": f"{base.__name__} with SliceGPT shortcut matrices."})
    return _SLICED_CLASSES[base]


# --------------------------------------------------------------------------------------------------
# Architectures


def _refusal(module: nn.Module) -> str | None:
    config = getattr(module, "config", None)
    model_type = getattr(config, "model_type", None)
    name = type(module).__name__
    if any(isinstance(m, SlicedRMSNorm) for m in module.modules()):
        return f"{name} is already sliced (its norms are SlicedRMSNorm); slice the dense model instead"
    if not transformer_blocks(module):
        return (f"SliceGPT needs a transformer (a list of repeated blocks on a residual stream); {name} has no "
                "transformer blocks")
    post_ln = model_type in POST_LN_TYPES or any(
        isinstance(m, nn.LayerNorm) and ".output." in f".{n}." for n, m in module.named_modules())
    if post_ln:
        return (f"SliceGPT needs a pre-LayerNorm transformer; {name} ({model_type or 'post-LN'}) normalises the "
                "residual stream after each residual add (post-LN), so the stream passes through a LayerNorm that "
                "an orthogonal rotation of it cannot pass through, and its principal directions cannot be sliced")
    if isinstance(module, DigitsViT):
        return None
    if model_type not in SUPPORTED_TYPES:
        return (f"SliceGPT is implemented here for GPT-2 and Llama causal LMs (model_type {SUPPORTED_TYPES}) and "
                f"the digits ViT; {name} has model_type {model_type!r}")
    if getattr(module, "lm_head", None) is None:
        return f"SliceGPT needs the causal LM with its head (a *ForCausalLM model); {name} has no lm_head"
    if getattr(config, "add_cross_attention", False):
        return "SliceGPT here handles decoder-only GPT-2; this one has cross-attention"
    return None


def model_parts(module: Any) -> StreamParts:
    """The stream's writers, the blocks, the final norm and the head of a model ``slice_model`` accepts (or of a
    sliced one: the same attributes)."""
    if isinstance(module, DigitsViT):
        return vit_parts(module)
    width = int(module.config.hidden_size)
    if module.config.model_type == "gpt2":
        t = module.transformer
        blocks = [StreamBlock(b, ("ln_1", "ln_2"), [b.attn.c_attn], b.attn.c_proj, [b.mlp.c_fc], b.mlp.c_proj)
                  for b in t.h]
        return StreamParts("gpt2", [t.wte, t.wpe], blocks, t, "ln_f", module.lm_head, float(t.ln_f.eps), width)
    m = module.model
    blocks = [StreamBlock(b, ("input_layernorm", "post_attention_layernorm"),
                          [b.self_attn.q_proj, b.self_attn.k_proj, b.self_attn.v_proj], b.self_attn.o_proj,
                          [b.mlp.gate_proj, b.mlp.up_proj], b.mlp.down_proj) for b in m.layers]
    eps = float(getattr(m.norm, "variance_epsilon", getattr(m.norm, "eps", 1e-6)))
    return StreamParts("llama", [m.embed_tokens], blocks, m, "norm", module.lm_head, eps, width)


def to_sliced_structure(parts: StreamParts, norm_widths: list[int] | None = None) -> None:
    """Replace every norm by a ``SlicedRMSNorm`` (width ``norm_widths[i]``, default the full width; the blocks'
    two norms in order, then the final norm) and every block's class by its sliced subclass, with no shortcut
    matrices yet. Changes no weight."""
    width = parts.width
    widths = list(norm_widths) if norm_widths is not None else [width] * (2 * len(parts.blocks) + 1)
    for i, blk in enumerate(parts.blocks):
        for j, attr in enumerate(blk.norms):
            setattr(blk.module, attr, SlicedRMSNorm(widths[2 * i + j], width, parts.eps))
        if parts.arch == "vit":
            make_sliced(blk.module)
            continue
        blk.module.__class__ = _sliced_class(type(blk.module), parts.arch)
        blk.module.register_parameter("attn_shortcut", None)
        blk.module.register_parameter("mlp_shortcut", None)
    setattr(parts.final_owner, parts.final_name, SlicedRMSNorm(widths[-1], width, parts.eps))


def _fold_norms(parts: StreamParts) -> None:
    """Step 1 of the module docstring (the model's output is unchanged)."""
    final = getattr(parts.final_owner, parts.final_name)
    parts.head.weight = nn.Parameter(parts.head.weight.detach().clone())  # untie from the token embedding
    layernorm = parts.arch in ("gpt2", "vit")
    for blk in parts.blocks:
        fold_norm(getattr(blk.module, blk.norms[0]), blk.attn_in)
        fold_norm(getattr(blk.module, blk.norms[1]), blk.mlp_in)
        if layernorm:
            centre_writer(blk.attn_out)
            centre_writer(blk.mlp_out)
    fold_norm(final, [parts.head])
    if layernorm:
        for w in parts.writers:
            centre_stream_writer(w)
    to_sliced_structure(parts)


def _rotate_and_slice(model: nn.Module, parts: StreamParts, calibration: Any, d: int, slice_head: bool,
                      report: ProgressFn | None) -> list[tuple[str, float]]:
    """Step 2 of the module docstring; returns (position, share of the second moment kept) per position."""
    kept: list[tuple[str, float]] = []
    steps = 1 + 2 * len(parts.blocks)
    dtype = parts.head.weight.dtype

    def principal(module: nn.Module, output: bool, where: str, keep: int) -> torch.Tensor:
        if report is not None:
            report(len(kept) / steps, f"PCA of {where}")
        q, share = pca(second_moment(model, calibration, module, output), keep)
        kept.append((where, share))
        return q

    first = parts.blocks[0].module
    q = principal(first, False, "block 0 input", d)[:, :d]
    for w in parts.writers:
        rotate_stream_writer(w, q)
    for i, blk in enumerate(parts.blocks):
        last = i == len(parts.blocks) - 1
        m = blk.module
        getattr(m, blk.norms[0]).width = d
        read(blk.attn_in, q)
        m.attn_shortcut = nn.Parameter(q.T.to(dtype))  # d × D: back to the unrotated stream for now
        q_mid = principal(getattr(m, blk.norms[1]), False, f"block {i} between attention and MLP", d)[:, :d]
        m.attn_shortcut = nn.Parameter((q.T @ q_mid).to(dtype))
        write(blk.attn_out, q_mid)
        getattr(m, blk.norms[1]).width = d
        read(blk.mlp_in, q_mid)
        m.mlp_shortcut = nn.Parameter(q_mid.T.to(dtype))
        d_out = parts.width if last and not slice_head else d
        q_out = principal(m, True, f"block {i} output", d_out)[:, :d_out]
        m.mlp_shortcut = nn.Parameter((q_mid.T @ q_out).to(dtype))
        write(blk.mlp_out, q_out)
        q = q_out
    read([parts.head], q)
    getattr(parts.final_owner, parts.final_name).width = q.shape[1]
    if report is not None:
        report(1.0, "done")
    return kept


def slice_model(loaded: LoadedModel | nn.Module, fraction: float, calibration: Any = None, progress: ProgressArg = True,
                *, slice_head: bool = True) -> SliceResult:
    """SliceGPT: a smaller dense copy of a pre-LN transformer whose residual stream keeps its ``1 − fraction``
    largest principal directions (see the module docstring). The given model is never modified.

    Args:
        loaded: a ``LoadedModel`` (GPT-2 or Llama ``hf:`` directory, ``lm:small``, ``digits:vit``) or its module.
        fraction: share of the residual width deleted, in [0, 1); 0 rotates without slicing.
        calibration: what gives the rotations: token tensors (``input_ids``, ``attention_mask``) for a language
            model, a float image batch ``[n, 1, 8, 8]`` for the digits ViT (default: ``loaded.calibration``).
        progress: True (a ``tqdm.auto`` bar after 2 s), False, or a ``progress(fraction, message)`` callback.
        slice_head: slice the last block's output and the head too (default; False, the authors' default
            ``do_slice_head=False``, keeps them at the full width; not for GPT-2).

    Returns:
        A ``SliceResult``: the sliced module, each layer's weight shape before and after, parameter counts.

    Raises:
        ValueError: a fraction outside [0, 1) or one that leaves no dimension, no or the wrong kind of calibration
            data, or a model SliceGPT does not apply to (post-LN, no transformer blocks, another architecture),
            saying why.
    """
    source = loaded.module if isinstance(loaded, LoadedModel) else loaded
    if not isinstance(source, nn.Module):
        raise ValueError(f"slice_model takes a LoadedModel or an nn.Module, got {type(loaded).__name__}")
    reason = _refusal(source)
    if reason is not None:
        raise ValueError(reason)
    vit = isinstance(source, DigitsViT)
    net: Any = source  # a transformers model or the ViT: read their sizes untyped
    if not slice_head and not vit and net.config.model_type == "gpt2":
        raise ValueError("slice_head=False needs Llama (or the digits ViT): transformers' GPT-2 reshapes the final "
                         "stream to the embeddings' width, so a sliced GPT-2 slices its head too (slice_head=True)")
    width = int(net.pos_embed.shape[-1]) if vit else int(net.config.hidden_size)
    d = sliced_width(width, fraction)
    if calibration is None and isinstance(loaded, LoadedModel):
        calibration = loaded.calibration
    check_calibration(calibration, "slicegpt")
    if vit and not isinstance(calibration, torch.Tensor):
        raise ValueError("slicegpt calibrates the digits ViT on images (a float tensor [n, 1, 8, 8]), not on tokens")
    if not vit and not isinstance(calibration, dict):
        raise ValueError("slicegpt calibrates on token tensors (a dict with input_ids), not on a float tensor")
    model: Any = copy.deepcopy(source).eval()
    if not vit:
        model.config.tie_word_embeddings = False
    parts = model_parts(model)
    with reporter(progress, "slicegpt") as report, torch.no_grad():
        _fold_norms(parts)
        kept = _rotate_and_slice(model, parts, calibration, d, slice_head, report)
    tokens = token_mask(calibration) if isinstance(calibration, dict) else None
    n_tokens = (int(tokens.sum()) if tokens is not None else int(calibration["input_ids"].numel())
                if isinstance(calibration, dict) else int(calibration.shape[0]) * _vit_tokens(source))
    return SliceResult(
        module=model, fraction=float(fraction), width=width, kept_width=d, slice_head=slice_head,
        architecture=parts.arch, layers=shape_rows(source, model),
        params_before=sum(p.numel() for p in source.parameters()),
        params_after=sum(p.numel() for p in model.parameters()),
        variance_kept=kept, calibration_tokens=n_tokens,
        base_spec=loaded.spec if isinstance(loaded, LoadedModel) else "",
    )


def _vit_tokens(vit: Any) -> int:
    return int(vit.pos_embed.shape[1])

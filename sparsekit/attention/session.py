"""The hooks inside a model's attention, shared by ``capture`` and ``apply``: a ``Session`` that
sees (and may change) every attention call of a forward, and the private copy of the model those
calls run in.

The loaded model is shared between browser sessions, so it is never touched: every capture (and
every sparse run in ``apply``) works on a private structural copy whose modules are new objects
but whose parameter tensors are the shared ones (no weights are copied, about 5 ms for MiniLM).
Hugging Face models route attention through a function registered with transformers'
``AttentionInterface``; the digits ViT's own ``Attention`` module is recognised directly.

Which session is active is held in a ``ContextVar``, so concurrent Streamlit sessions (threads)
never see each other's hooks.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Iterator, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.base import LoadedModel
from ..models.digits_nets import Attention as DigitsAttention

if TYPE_CHECKING:
    from transformers import PretrainedConfig

ATTN_IMPLEMENTATION = "sparsekit_attention"
"""The name the capturing attention function is registered under in transformers."""

_ACTIVE: ContextVar["Session | None"] = ContextVar("sparsekit_attention_session", default=None)


# ---------------------------------------------------------------------------------------------
# Sessions: what happens inside each attention call


class Session:
    """Receives every attention call of a forward pass (subclassed by capture and by ``apply``).

    Layers are numbered in the order their attention first runs, which is the model's order.
    """

    def __init__(self) -> None:
        self._layers: dict[int, int] = {}

    def layer(self, module: nn.Module) -> int:
        """The layer index of an attention module (assigned on its first call)."""
        return self._layers.setdefault(id(module), len(self._layers))

    @property
    def n_layers(self) -> int:
        """Attention layers seen so far."""
        return len(self._layers)

    def before_softmax(self, layer: int, scores: Tensor, query: Tensor, key: Tensor,
                       allowed: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """May change the scores ``[b, h, q, k]``; may return which query rows keep any key
        (``[b, h, q]``; rows without one output zeros, as in FlexAttention)."""
        return scores, None

    def after_softmax(self, layer: int, scores: Tensor, probs: Tensor, query: Tensor, key: Tensor,
                      value: Tensor, allowed: Tensor | None) -> None:
        """Sees the final probabilities."""


@contextlib.contextmanager
def active(session: Session) -> Iterator[Session]:
    """Make ``session`` receive the attention calls of forwards run inside the block (this thread
    or task only).

    Args:
        session: the receiver.

    Returns:
        A context manager yielding the session.
    """
    token = _ACTIVE.set(session)
    try:
        yield session
    finally:
        _ACTIVE.reset(token)


def _attention_forward(module: nn.Module, query: Tensor, key: Tensor, value: Tensor,
                       attention_mask: Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                       **kwargs: Any) -> tuple[Tensor, Tensor]:
    # The eager computation of transformers, with the session called around the softmax.
    if kwargs.get("s_aux") is not None:
        raise ValueError(
            "this model uses learned attention sinks (s_aux), which sparsekit's attention capture does not support"
        )
    session = _ACTIVE.get()
    n_rep = query.shape[1] // key.shape[1]
    if n_rep > 1:  # grouped-query attention: K/V head g serves query heads g*n_rep .. (g+1)*n_rep-1
        key = key.repeat_interleave(n_rep, dim=1)
        value = value.repeat_interleave(n_rep, dim=1)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    softcap = kwargs.get("softcap")
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    allowed = None
    if attention_mask is not None:
        mask = attention_mask[:, :, :, : key.shape[-2]]
        if mask.dtype == torch.bool:
            allowed = mask
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + mask
            allowed = mask > torch.finfo(mask.dtype).min / 2
    keep = None
    layer = -1
    if session is not None:
        layer = session.layer(module)
        scores, keep = session.before_softmax(layer, scores, query, key, allowed)
    probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if keep is not None:
        probs = probs * keep.unsqueeze(-1).to(probs.dtype)
    if session is not None:
        session.after_softmax(layer, scores, probs, query, key, value, allowed)
    probs = F.dropout(probs, p=dropout, training=module.training)
    out = torch.matmul(probs, value).transpose(1, 2).contiguous()
    return out, probs


_REGISTERED = False


def _register() -> None:
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTN_IMPLEMENTATION, _attention_forward)
    # Without a mask builder under the same name transformers would silently drop padding masks.
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, eager_mask)
    _REGISTERED = True


# ---------------------------------------------------------------------------------------------
# Private copies


def _digits_attention(module: nn.Module) -> list[tuple[str, DigitsAttention]]:
    return [(n, m) for n, m in module.named_modules() if isinstance(m, DigitsAttention)]


def _is_hf(module: nn.Module) -> bool:
    return hasattr(module, "config") and hasattr(module.config, "_attn_implementation")


def attention_support(loaded: LoadedModel) -> str | None:
    """Why attention cannot be captured from a model, or None when it can.

    Args:
        loaded: the model.

    Returns:
        None, or a sentence saying why not (no attention layers, or an architecture whose
        attention does not go through transformers' attention interface is found at capture).
    """
    if _digits_attention(loaded.module):
        return None
    if _is_hf(loaded.module) and loaded.kind in ("encoder", "causal-lm"):
        return None
    return f"{loaded.name} has no attention layers whose probabilities sparsekit can read"


def private_copy(loaded: LoadedModel) -> nn.Module:
    """A structural copy of ``loaded.module`` sharing its parameter and buffer tensors, with the
    capturing attention selected (Hugging Face models). Safe to hook and to reconfigure.

    Args:
        loaded: the model (not modified).

    Returns:
        The copy, in eval mode.
    """
    reason = attention_support(loaded)
    if reason:
        raise ValueError(reason)
    module = loaded.module
    memo = {id(t): t for t in itertools.chain(module.parameters(), module.buffers())}
    clone = copy.deepcopy(module, memo)
    if _is_hf(clone):
        _register()
        # A plain attribute of a Hugging Face model (nn.Module's stubs type it as Tensor | Module).
        cast("PretrainedConfig", clone.config)._attn_implementation = ATTN_IMPLEMENTATION
    return clone.eval()

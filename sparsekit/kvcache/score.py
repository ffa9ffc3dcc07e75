"""What the cache loop reads inside the model's attention: the queries and attention of the most recent
steps (Mustafar's output-aware scores) and each head's attention output (the error against dense).

**Output-aware scores** (Mustafar's "Opa", after the authors' ``llama_mustafar_Kt_Opa_*`` /
``*_Vt_Opa`` code). When a token ``t`` leaves the dense window, with ``W = max(1, residual_length)``:

- key entry ``K[t, c]``: ``|K[t, c]| * sum_{i in last W queries} sum_{h in group} |q_{i,h}[c]|``;
- value entry ``V[t, c]``: ``|V[t, c]| * sum_{i in last W queries} sum_{h in group} a_{i,h}(t)``,

where "last W queries" are the queries of the ``W`` most recent positions at the step the token is
pruned (this step's included: in the prefill the last ``W`` prompt positions, as the authors do; in a
decode step positions ``t+1 .. t+W``, where the authors accumulate ``t .. t+W-1``, one step earlier),
``group`` the query heads that share the key/value head (one head without grouped-query attention),
``q`` the query as the attention sees it (after RoPE for LLaMA) and ``a_{i,h}(t)`` the softmax weight query
``i`` of head ``h`` gives token ``t``. The authors divide by the window length; a positive factor changes
no ranking. Per token the value weight is one number per vector, so the per-token value mask equals the
magnitude mask (unless the weight is 0); it matters per channel.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..attention.session import Session

__all__ = ["KVRecorder", "group_sum", "n_rep_of"]


def group_sum(x: Tensor, n_rep: int) -> Tensor:
    """Sum ``[b, heads, ...]`` over the ``n_rep`` query heads that share each key/value head
    (-> ``[b, heads / n_rep, ...]``)."""
    if n_rep == 1:
        return x
    b, h = x.shape[:2]
    return x.reshape(b, h // n_rep, n_rep, *x.shape[2:]).sum(dim=2)


class KVRecorder(Session):
    """Receives every attention call of the cache loop's forwards.

    Keeps, per layer, ``|q|`` and the attention probabilities of the ``window`` most recent query positions
    (summed over the query heads of each key/value head), and with ``keep_outputs`` each head's attention
    output ``softmax(q K^T / sqrt(d)) V`` of every call, in position order.
    """

    def __init__(self, window: int, n_rep: int = 1, keep_outputs: bool = False) -> None:
        super().__init__()
        self.window = max(1, int(window))
        self.n_rep = n_rep
        self.keep_outputs = keep_outputs
        self.queries: dict[int, Tensor] = {}
        """layer -> ``[b, kv_heads, <= window, D]`` ``|q|`` summed over each group, oldest first."""
        self.attention: dict[int, list[Tensor]] = {}
        """layer -> the last ``window`` probability rows, each ``[b, kv_heads, keys]`` summed over each group."""
        self.outputs: dict[int, list[Tensor]] = {}
        """layer -> per call ``[b, heads, queries, D]`` attention outputs (``keep_outputs`` only)."""

    def after_softmax(self, layer: int, scores: Tensor, probs: Tensor, query: Tensor, key: Tensor,
                      value: Tensor, allowed: Tensor | None) -> None:
        q = group_sum(query.detach().abs().float(), self.n_rep)[..., -self.window:, :]
        old = self.queries.get(layer)
        self.queries[layer] = q if old is None else torch.cat([old, q], dim=-2)[..., -self.window:, :]
        rows = group_sum(probs.detach().float(), self.n_rep)[..., -self.window:, :]
        kept = self.attention.setdefault(layer, [])
        kept.extend(rows.unbind(dim=-2))
        del kept[: max(0, len(kept) - self.window)]
        if self.keep_outputs:
            self.outputs.setdefault(layer, []).append(torch.matmul(probs.float(), value.float()).detach())

    def key_weight(self, layer: int) -> Tensor:
        """``[b, kv_heads, 1, D]``: ``|q|`` summed over the last ``window`` queries and each group."""
        return self.queries[layer].sum(dim=-2, keepdim=True)

    def value_weight(self, layer: int, tokens: int) -> Tensor:
        """``[b, kv_heads, tokens, 1]``: the attention each of the first ``tokens`` cached tokens received from
        the last ``window`` queries (summed over each group); a query that came before a token gives it 0."""
        rows = self.attention[layer]
        total = rows[0].new_zeros(*rows[0].shape[:-1], tokens)
        for row in rows:
            n = min(tokens, row.shape[-1])
            total[..., :n] += row[..., :n]
        return total.unsqueeze(-1)

    def head_outputs(self, layer: int) -> Tensor:
        """``[b, heads, positions, D]``: the recorded attention outputs of a layer, in call order."""
        return torch.cat(self.outputs[layer], dim=-2)

    @property
    def recorded_layers(self) -> int:
        return len(self.outputs)


def n_rep_of(config: Any) -> int:
    """Query heads per key/value head (1 without grouped-query attention)."""
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None) or 1
    kv = getattr(config, "num_key_value_heads", None) or heads
    return max(1, int(heads) // int(kv))

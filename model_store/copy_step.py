"""gru-copy's serving step, one token a row, in as few operations as it can be.

The engine steps many sequences by one word each: `CopyGRU.advance_state` on (B, 1) ids, then
`CopyGRU.head_state`. Written with the model's modules, that step is some 40 small operations
for 64 rows, most of their time spent in Python (module calls, shape checks) rather than in
arithmetic. Here the same operations, on the same shapes in the same order, are plain tensor
functions compiled once by TorchScript, so they return the same bits as the modules' path
(tests/model_store/test_copy_step.py holds them equal) at a fraction of its cost. What they
leave out: `nn.GRU` on one position is its cell (`torch.gru_cell`, as aten's own loop calls
it), and the batch norm of eval mode is `torch.batch_norm` without the module's checks.
Measured in docs/benchmarks.md ("Serving gru-copy: the model's step").
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

Parts = tuple[Tensor, Tensor, Tensor, Tensor]  # a state's h, keys, ids and seen


def advance_one(
    x: Tensor,
    h: Tensor,
    keys: Tensor,
    ids: Tensor,
    seen: Tensor,
    embedding: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor,
    b_hh: Tensor,
    key_w: Tensor,
    key_b: Tensor,
    copy_start: bool,
) -> Parts:
    """A single-layer gru-copy's state (h (B, 1, H), keys (B, K, D), ids (B, K), seen (B, 1))
    after one id a row, x (B, 1): the new h, keys, ids and seen."""
    new = torch.gru_cell(F.embedding(x[:, 0], embedding), h[:, 0], w_ih, w_hh, b_ih, b_hh)
    pending = F.linear(h[:, 0], key_w, key_b).unsqueeze(1)  # (B, 1, D): the last position's key
    first = x if copy_start else torch.where(seen, x, -1)
    keys = torch.cat([keys[:, 1:], pending], 1)
    ids = torch.cat([ids[:, 1:], first], 1)
    return new.unsqueeze(1), keys, ids, torch.ones_like(seen)


def copy_head(
    h: Tensor,
    keys: Tensor,
    ids: Tensor,
    query_w: Tensor,
    query_b: Tensor,
    sentinel_w: Tensor,
    sentinel_b: Tensor,
    embedding: Tensor,
    value_w: Tensor | None,
    bn_w: Tensor,
    bn_b: Tensor,
    bn_mean: Tensor,
    bn_var: Tensor,
    eps: float,
    out_w: Tensor,
    out_b: Tensor,
) -> Tensor:
    """Next-token log-probabilities (B, V) of outputs h (B, H) over a history of keys (B, K, D)
    and ids (B, K) (-1: empty): `CopyGRU._mix` at one position, with its batch norm in eval mode."""
    q = F.linear(h, query_w, query_b).unsqueeze(1)  # (B, 1, D)
    raw = (q @ keys.transpose(1, 2) / math.sqrt(keys.shape[2])).squeeze(1)  # (B, K)
    blocked = ids < 0
    scores = raw.masked_fill(blocked, float("-inf"))
    attn = torch.log_softmax(torch.cat([scores, F.linear(h, sentinel_w, sentinel_b)], 1), 1)
    safe = ids.clamp_min(0)
    copy = torch.zeros(h.shape[0], embedding.shape[0], dtype=h.dtype, device=h.device)
    copy.scatter_add_(1, safe, attn[:, :-1].exp())  # blocked entries add exp(-inf) = 0
    feature = h
    if value_w is not None:
        offer = torch.softmax(raw.masked_fill(blocked, -1e30), 1).masked_fill(blocked, 0.0)
        offered = (offer.unsqueeze(1) @ F.embedding(safe, embedding)).squeeze(1)  # (B, H)
        feature = h + F.linear(offered, value_w)
    normed = torch.batch_norm(feature, bn_w, bn_b, bn_mean, bn_var, False, 0.0, eps, False)
    vocab = torch.log_softmax(F.linear(normed, out_w, out_b), 1) + attn[:, -1:]
    return torch.logaddexp(vocab, torch.log(copy.clamp_min(1e-30)))


@cache
def compiled() -> tuple[Callable[..., Parts], Callable[..., Tensor]]:
    """`advance_one` and `copy_head` compiled by TorchScript (once a process, on first use)."""
    with warnings.catch_warnings():  # deprecated, yet the fastest here: see the module's doc
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(advance_one), torch.jit.script(copy_head)


def fast_advance(model: Any, x: Tensor, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """`model.advance_state(x, state)` of a single-layer CopyGRU (not imported here: its module
    imports this one) for (B, 1) ids x."""
    rnn, key = model.rnn, model.key
    h, keys, ids, seen = compiled()[0](
        x, state["h"], state["keys"], state["ids"], state["seen"], model.i_h.weight,
        rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0, key.weight,
        key.bias, model.config.copy_start,
    )  # fmt: skip
    return {"h": h, "keys": keys, "ids": ids, "seen": seen}


def fast_head(model: Any, state: dict[str, Tensor]) -> Tensor:
    """`model.head_state(state)` of a CopyGRU whose batch norm is in eval mode."""
    bn, value = model.bn, model.value
    return compiled()[1](
        state["h"][:, -1], state["keys"], state["ids"], model.query.weight, model.query.bias,
        model.sentinel.weight, model.sentinel.bias, model.i_h.weight,
        None if value is None else value.weight, bn.weight, bn.bias, bn.running_mean,
        bn.running_var, bn.eps, model.h_o.weight, model.h_o.bias,
    )  # fmt: skip

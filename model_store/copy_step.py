"""gru-copy's serving step, one word a row, in as few operations as it can be.

The engine steps many sequences by one word each: `CopyGRU.advance_state` on (B, 1) ids, then
`CopyGRU.head_state`. Written with the model's modules that step is some 40 small operations,
and at 64 rows most of their time is Python (module calls, checks), not arithmetic. Here it is
two TorchScript functions, in one of two forms:

- *exact* (`advance_exact`, `head_exact`): the modules' own operations on the same shapes
  (nn.GRU at one position is torch.gru_cell, the eval batch norm torch.batch_norm), so the same
  bits as the modules;
- *tabled* (`advance_tabled`, `head_tabled`), for batches of TABLED_ROWS rows or more: a dozen
  operations each over tables derived from the weights (`tables`, rebuilt when a weight
  changes): each word's GRU input gates E W_ih^T + b_ih, a row lookup instead of a product;
  the hidden gates and the last position's key in one product (both read the old h); tanh as
  2 sigmoid(2x) - 1 (torch.tanh costs five sigmoids here); in the head, one product of h for
  the scaled query, the sentinel's score and h's logits (the eval batch norm folded into
  h_o), the copy weights and the offer in one softmax, both scattered onto the vocabulary at
  once, the offer's logits through E W_v^T W_o^T (V, V) instead of a (B, K, H) gather and two
  products, and the mixture in probability space. The same function up to float rounding,
  which moves an answer's probabilities by up to ~1e-5 relative: as much as batching itself
  does (the modules' answer for a row alone and in a batch of 64 differ that much, their
  products taking other kernels).

Small batches (a lone request, a quiet server) take a third form where it is built: the *C
step* (model_store/_copy_kernel.c, built by setup.py), the modules' arithmetic row by row in
one call, summed in double and rounded to float32 once, with what depends on an id alone
(the input gates, the offered word's and the next word's maps) tabled in double once: a
one-row step in about 0.04 ms where the exact form takes 0.48, nearer the float64 value than
the modules' float32, and the same bits for a row whatever batch it is in. Without a C
compiler the exact form serves them: the modules' to the bit.
tests/model_store/test_copy_step.py holds every form to the modules' (and the C step to
float64); tests/app/test_golden.py's recorded answers are the C step's. Measured in
docs/benchmarks.md ("Serving gru-copy: the model's step").
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

try:  # the step in C (setup.py builds it where a C compiler is found)
    import model_store._copy_kernel as _copy_kernel
except ImportError:  # pragma: no cover - a build without a compiler: the torch forms serve
    _copy_kernel = None

Parts = tuple[Tensor, Tensor, Tensor, Tensor]  # a state's h, keys, ids and seen
# Whether the C step is built into this install (setup.py), and used (`kernel_model`).
KERNEL = _copy_kernel is not None
# Batches of this many rows or more take the tabled step, smaller ones the C step (or, without
# it, the exact one). The C step costs about 12 us a row here (H = 96), the tabled one about
# 0.26-0.36 ms a batch of 8 to 64 rows: they cross near 24 (measured in process: 0.28 against
# 0.28 ms at 24 rows, 0.38 against 0.30 at 32).
TABLED_ROWS = 24
# The engine's pass in the pool (`step_in_pool`) for batches below this many rows: it also
# spares the gather, the scatter, the softmax and the sort of the torch pass, so it pays
# further (the engine's whole pass in process: 0.31 against 0.53 ms at 24 rows, 0.58-0.70
# against 0.76-0.94 at 48, 0.79 against 0.78-0.80 at 64, 0.99 against 0.92 at 80).
POOL_ROWS = 64


def advance_tabled(
    x: Tensor,
    h: Tensor,
    keys: Tensor,
    ids: Tensor,
    seen: Tensor,
    gates_in: Tensor,
    hidden_key_w: Tensor,
    hidden_key_b: Tensor,
    copy_start: bool,
) -> Parts:
    """A single-layer gru-copy's state (h (B, 1, H), keys (B, K, D), ids (B, K), seen (B, 1))
    after one id a row, x (B, 1): the new h, keys, ids and seen. `gates_in` (V, 3H) is each
    word's input gates; `hidden_key_*` the hidden gates' weights and the key's, stacked; the
    new gate's rows of both doubled."""
    h0 = h.select(1, 0)
    n2, n3 = gates_in.shape[1] * 2 // 3, gates_in.shape[1]
    gates = F.embedding(x.select(1, 0), gates_in)  # (B, 3H): reset, update, 2 * new's input part
    hk = F.linear(h0, hidden_key_w, hidden_key_b)  # (B, 3H + D): the same of h, then the key
    reset_update = torch.sigmoid(gates.narrow(1, 0, n2) + hk.narrow(1, 0, n2))
    # tanh(a) as 2 * sigmoid(2a) - 1, the new gate's parts doubled in the tables (exactly: a
    # power of two): on this CPU torch.tanh costs 5x a sigmoid (27 us for 64 rows)
    h_n = hk.narrow(1, n2, n3 - n2)
    new = torch.sigmoid(gates.narrow(1, n2, n3 - n2) + h_n * reset_update.narrow(1, 0, n2 // 2))
    new = new.mul_(2.0).sub_(1.0)
    update = reset_update.narrow(1, n2 // 2, n2 // 2)
    new = (h0 - new).mul_(update).add_(new)  # aten: (h - new) * update + new
    first = x if copy_start else torch.where(seen, x, -1)
    k, d = keys.shape[1], keys.shape[2]  # narrow(): one view op where [:, a:] takes two
    keys = torch.cat([keys.narrow(1, 1, k - 1), hk.narrow(1, n3, d).unsqueeze(1)], 1)
    ids = torch.cat([ids.narrow(1, 1, k - 1), first], 1)
    return new.unsqueeze(1), keys, ids, torch.ones_like(seen)


def head_tabled(
    h: Tensor,
    keys: Tensor,
    ids: Tensor,
    of_h_w: Tensor,
    of_h_b: Tensor,
    no_sentinel: Tensor,
    offered_out: Tensor | None,
    after_out: Tensor | None,
) -> Tensor:
    """Next-token log-probabilities (B, V) of outputs h (B, H) over a history of keys (B, K, D)
    and ids (B, K) (-1: empty): `CopyGRU._mix` at one position. `of_h_*` give what reads h
    alone: the scaled query, the sentinel's score and the output layer's logits of h (through
    the folded batch norm); `offered_out` (V, V) what each offered word adds to the logits
    (None: the head reads no offer); `after_out`, with the lookahead, what the offered words
    and the words after them add, stacked ((2 (V + 1), V): offered_out, a zero row, the same
    through the lookahead's weights, a zero row), so both come from one scatter and one
    product (None: no lookahead); `no_sentinel` (2, K + 1) is 0 but -inf at [1, K]."""
    d, k = keys.shape[2], keys.shape[1]
    v = of_h_w.shape[0] - d - 1
    of_h = F.linear(h, of_h_w, of_h_b)  # (B, D + 1 + V)
    raw = torch.bmm(of_h.narrow(1, 0, d).unsqueeze(1), keys.transpose(1, 2)).squeeze(1)
    raw.masked_fill_(ids < 0, -1e30)  # as -inf beside the finite sentinel: exp() is 0
    scores = torch.cat([raw, of_h.narrow(1, d, 1)], 1)  # (B, K + 1)
    index = torch.remainder(ids, v + 1)  # an empty entry (-1) lands past the vocabulary
    if offered_out is None:
        weights = torch.softmax(scores, 1)
        copy = torch.zeros(h.shape[0], v + 1, dtype=h.dtype, device=h.device)
        copy = copy.scatter_add_(1, index, weights.narrow(1, 0, k)).narrow(1, 0, v)
        logits = of_h.narrow(1, d + 1, v)
    elif after_out is None:  # the copy path's weights, and the offer: without the sentinel
        both = torch.softmax(scores.unsqueeze(1) + no_sentinel, 2)  # (B, 2, K + 1)
        weights = both.select(1, 0)
        mass = torch.zeros(h.shape[0], 2, v + 1, dtype=h.dtype, device=h.device)
        mass.scatter_add_(2, index.unsqueeze(1).expand(-1, 2, -1), both.narrow(2, 0, k))
        copy = mass.select(1, 0).narrow(1, 0, v)
        offer = mass.select(1, 1).narrow(1, 0, v)
        logits = torch.addmm(of_h.narrow(1, d + 1, v), offer, offered_out)
    else:  # and the offer's weights onto the word after each entry: the next entry's id,
        # so entry c's weight goes where entry c + 1 lands (none after the newest; an empty
        # entry's lands past the vocabulary, as its own does)
        both = torch.softmax(scores.unsqueeze(1) + no_sentinel, 2)  # (B, 2, K + 1)
        weights = both.select(1, 0)
        onto = F.pad(both.narrow(1, 1, 1).narrow(2, 0, k - 1), (1, 0))  # (B, 1, K)
        mass = torch.zeros(h.shape[0], 3, v + 1, dtype=h.dtype, device=h.device)
        where = index.unsqueeze(1).expand(-1, 3, -1)
        mass.scatter_add_(2, where, torch.cat([both.narrow(2, 0, k), onto], 1))
        copy = mass.select(1, 0).narrow(1, 0, v)
        offers = mass.narrow(1, 1, 2).reshape(h.shape[0], 2 * (v + 1))  # a view: no copy
        logits = torch.addmm(of_h.narrow(1, d + 1, v), offers, after_out)
    # p = gate * p_vocab + the copied mass, floored as the modules do
    p = torch.addcmul(copy.clamp_min(1e-30), torch.softmax(logits, 1), weights.narrow(1, k, 1))
    return p.log()


def advance_exact(
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
    """`advance_tabled` with the modules' own operations (torch.gru_cell is what nn.GRU runs
    at each position): the same bits as the modules."""
    new = torch.gru_cell(F.embedding(x[:, 0], embedding), h[:, 0], w_ih, w_hh, b_ih, b_hh)
    pending = F.linear(h[:, 0], key_w, key_b).unsqueeze(1)  # (B, 1, D): the last position's key
    first = x if copy_start else torch.where(seen, x, -1)
    keys = torch.cat([keys[:, 1:], pending], 1)
    ids = torch.cat([ids[:, 1:], first], 1)
    return new.unsqueeze(1), keys, ids, torch.ones_like(seen)


def head_exact(
    h: Tensor,
    keys: Tensor,
    ids: Tensor,
    query_w: Tensor,
    query_b: Tensor,
    sentinel_w: Tensor,
    sentinel_b: Tensor,
    embedding: Tensor,
    value_w: Tensor | None,
    after_w: Tensor | None,
    bn_w: Tensor,
    bn_b: Tensor,
    bn_mean: Tensor,
    bn_var: Tensor,
    eps: float,
    out_w: Tensor,
    out_b: Tensor,
) -> Tensor:
    """`head_tabled` with the modules' own operations: the same bits as the modules."""
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
        if after_w is not None:  # the word after each entry: the next entry's (none: -1)
            after = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -1)], 1)
            known = offer.masked_fill(after < 0, 0.0).unsqueeze(1)
            seen = (known @ F.embedding(after.clamp_min(0), embedding)).squeeze(1)  # (B, H)
            feature = feature + F.linear(seen, after_w)
    normed = torch.batch_norm(feature, bn_w, bn_b, bn_mean, bn_var, False, 0.0, eps, False)
    vocab = torch.log_softmax(F.linear(normed, out_w, out_b), 1) + attn[:, -1:]
    return torch.logaddexp(vocab, torch.log(copy.clamp_min(1e-30)))


@cache
def compiled() -> dict[str, Callable[..., Any]]:
    """The four functions above compiled by TorchScript (once a process, on first use)."""
    with warnings.catch_warnings():  # deprecated, yet the fastest here: see the module's doc
        warnings.simplefilter("ignore", DeprecationWarning)
        return {
            f.__name__: torch.jit.script(f)
            for f in (advance_tabled, head_tabled, advance_exact, head_exact)
        }


def tables(model: Any, part: str) -> tuple[Tensor | None, ...] | None:
    """The tables of `part` ("advance" or "head") of a CopyGRU (not imported here: its module
    imports this one), kept on the model until one of the weights they come from changes in
    place (a tensor's version counts those: an optimizer step, load_state_dict) or moves. A
    weight replaced by another tensor object is not seen (nothing here does that). None for
    weights made under torch.inference_mode, which keep no version."""
    kept = model.__dict__.setdefault("_step_tables", {})
    if part in kept:
        sources, stamp, made = kept[part]
        if stamp == tuple([t._version for t in sources]):
            return made
    rnn, key, bn, value = model.rnn, model.key, model.bn, model.value
    if part == "advance":
        sources = [model.i_h.weight, rnn.weight_ih_l0, rnn.bias_ih_l0, rnn.weight_hh_l0]
        sources += [rnn.bias_hh_l0, key.weight, key.bias]
    else:
        sources = [model.query.weight, model.query.bias, model.sentinel.weight]
        sources += [model.sentinel.bias, model.i_h.weight, bn.weight, bn.bias, bn.running_mean]
        sources += [bn.running_var, model.h_o.weight, model.h_o.bias]
        sources += [] if value is None else [value.weight]
        sources += [] if model.after is None else [model.after.weight]
    if any(t.is_inference() for t in sources):  # no version to tell a change by: no tables
        return None
    stamp = tuple([t._version for t in sources])
    with torch.no_grad():
        if part == "advance":
            double = rnn.bias_hh_l0.new_ones(rnn.bias_hh_l0.shape[0], 1)
            double[2 * double.shape[0] // 3 :] = 2.0  # the new gate's rows
            w_ih, b_ih = rnn.weight_ih_l0 * double, rnn.bias_ih_l0 * double[:, 0]
            made = (
                F.linear(model.i_h.weight, w_ih, b_ih),
                torch.cat([rnn.weight_hh_l0 * double, key.weight]),
                torch.cat([rnn.bias_hh_l0 * double[:, 0], key.bias]),
            )
        else:
            root = math.sqrt(model.config.key_size)
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            out_w = model.h_o.weight * scale  # the batch norm folded into h_o
            out_b = model.h_o.bias + model.h_o.weight @ (bn.bias - bn.running_mean * scale)
            k = model.config.copy_window
            no_sentinel = out_b.new_zeros(2, k + 1)
            no_sentinel[1, k] = float("-inf")
            offered = None if value is None else model.i_h.weight @ value.weight.t() @ out_w.t()
            made = (
                torch.cat([model.query.weight / root, model.sentinel.weight, out_w]),
                torch.cat([model.query.bias / root, model.sentinel.bias, out_b]),
                no_sentinel,
                offered,
                # (a lookahead comes with the value map: models.CopyGRU makes it only then)
                None if model.after is None or offered is None else stacked(model, offered, out_w),
            )
    kept[part] = (sources, stamp, made)
    return made


def stacked(model: Any, offered: Tensor, out_w: Tensor) -> Tensor:
    """head_tabled's `after_out`: `offered` (what an offered word adds to the logits, through
    the value map), a zero row (the scatter's place past the vocabulary), the same for the word
    after an offered one (through the lookahead's map), a zero row."""
    zero = out_w.new_zeros(1, out_w.shape[0])
    after = model.i_h.weight @ model.after.weight.t() @ out_w.t()
    return torch.cat([offered, zero, after, zero])


def kernel_model(model: Any) -> tuple[Any, ...] | None:
    """A single-layer CopyGRU as the C step reads it: its sizes and flags, its weights'
    addresses and its tables' (model_store/_copy_kernel.c's `read_model`), kept on the model
    until it moves (`CopyGRU._apply`); None when the C step cannot serve it: not built,
    `kernel_step` off, or weights not contiguous float32 on the CPU. The weights' values are
    read at every step, and the tables (what depends on an id alone, `make_tables`) made again
    when a weight they come from changes in place (an optimizer step, load_state_dict: its
    version moves), so a change is seen at once. Weights made under torch.inference_mode keep
    no version: the C step then computes every row without tables."""
    if not model.kernel_step:
        return None
    kept = model.__dict__.get("_kernel_model", False)
    if kept is not False:
        if (tabled := model.__dict__.get("_kernel_tables")) is not None:
            sources, stamp, buffers = tabled
            if stamp != tuple([t._version for t in sources]):  # a weight changed: make again
                _make_tables(kept[:-3], model, sources, buffers)
        return kept
    rnn, key, bn, value, after, c = (
        model.rnn,
        model.key,
        model.bn,
        model.value,
        model.after,
        model.config,
    )
    weights = [model.i_h.weight, rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0]
    weights += [rnn.bias_hh_l0, key.weight, key.bias, model.query.weight, model.query.bias]
    weights += [model.sentinel.weight, model.sentinel.bias]
    weights += [None if value is None else value.weight, None if after is None else after.weight]
    weights += [bn.weight, bn.bias, bn.running_mean, bn.running_var, model.h_o.weight]
    weights += [model.h_o.bias]
    usable = (
        _copy_kernel is not None
        and c.n_layers == 1
        and all(
            t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous()
            for t in weights
            if t is not None
        )
    )
    made = None
    if usable:
        sizes = (c.hidden, c.copy_window, c.key_size, c.vocab_size, c.copy_start, bn.eps)
        made = (*sizes, *(None if t is None else t.data_ptr() for t in weights))
        # the tensors held, so the addresses stay valid whatever is done to the model
        model.__dict__["_kernel_tensors"] = weights
        sources = [model.i_h.weight, rnn.weight_ih_l0, rnn.bias_ih_l0]
        sources += [t.weight for t in (value, after) if t is not None]
        if any(t.is_inference() for t in sources):  # no version to tell a change by
            made += (None, None, None)
        else:
            v, h = c.vocab_size, c.hidden
            buffers = [torch.empty(v, 3 * h, dtype=torch.float64)]
            buffers += [
                None if t is None else torch.empty(v, h, dtype=torch.float64)
                for t in (value, after)
            ]
            _make_tables(made, model, sources, buffers)
            made += tuple(None if t is None else t.data_ptr() for t in buffers)
    model.__dict__["_kernel_model"] = made
    return made


def _make_tables(
    weights: tuple[Any, ...], model: Any, sources: list[Tensor], buffers: list[Tensor | None]
) -> None:
    """Fill the C step's tables (`buffers`) from the weights as they are now (`weights`: the
    model's sizes and weights' addresses, without its tables'), and keep them on the model
    with the weights' versions."""
    assert _copy_kernel is not None
    addresses = (None if t is None else t.data_ptr() for t in buffers)
    _copy_kernel.make_tables(*weights, None, None, None, *addresses)
    model.__dict__["_kernel_tables"] = (sources, tuple([t._version for t in sources]), buffers)


def kernel_fits(model: Any, x: Tensor | None, state: dict[str, Tensor]) -> bool:
    """Whether the C step reads these tensors as they are laid out: on the CPU, the dtypes and
    shapes of CopyGRU.state_spec for B rows (and B int64 ids x, (B, 1)); the C step itself
    checks that the ids are in the vocabulary. Anything else takes the torch forms, which
    raise where the shapes are wrong."""
    h, keys, ids, seen = state["h"], state["keys"], state["ids"], state["seen"]
    c = model.config
    rows = h.shape[0]
    return (
        h.is_cpu  # (not `.device.type`: a device object made each time, 4x the cost)
        and keys.is_cpu
        and ids.is_cpu
        and seen.is_cpu
        and h.dtype == keys.dtype == torch.float32
        and ids.dtype == torch.int64
        and seen.dtype == torch.bool
        and h.shape == (rows, 1, c.hidden)
        and keys.shape == (rows, c.copy_window, c.key_size)
        and ids.shape == (rows, c.copy_window)
        and seen.shape == (rows, 1)
        and (x is None or (x.dtype == torch.int64 and x.is_cpu and x.shape == (rows, 1)))
    )


def step_in_pool(
    model: Any,
    pool: dict[str, Tensor],
    slots: list[int],
    x: list[int],
    top: list[int],
    banned: bytes,
) -> list[list[tuple[int, float]]] | None:
    """The engine's pass for rows that each feed one id and want their likeliest words, in
    one C call: row `slots[b]` of the pool's parts (each (capacity, *shape), contiguous)
    advanced by `x[b]` in place, and its `top[b]` likeliest words (id, prob): the next-word
    distribution without the ids where `banned` (a byte a word) is 1, renormalized, a tie to
    the higher id, words of probability 0 left out (app.engine's `top_rows`). None when the C
    step cannot serve (not built, the model or the pool not its layout: nothing is done); an
    IndexError or ValueError before any row is written for an id or a slot out of range."""
    made = kernel_model(model) if len(slots) < POOL_ROWS else None
    if made is None or not kernel_fits(model, None, pool):
        return None
    h, keys, ids, seen = pool["h"], pool["keys"], pool["ids"], pool["seen"]
    if not (h.is_contiguous() and keys.is_contiguous() and ids.is_contiguous()):
        return None
    if not seen.is_contiguous():
        return None
    rows: list[list[tuple[int, float]]] = _copy_kernel.step_pool(
        *made, h.shape[0], slots, x, top, banned, h.data_ptr(), keys.data_ptr(),
        ids.data_ptr(), seen.data_ptr(),
    )  # fmt: skip
    return rows


def fast_advance(model: Any, x: Tensor, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """`model.advance_state(x, state)` of a single-layer CopyGRU for (B, 1) ids x."""
    rows = x.shape[0]
    kernel = kernel_model(model) if rows < TABLED_ROWS else None
    if kernel is not None and kernel_fits(model, x, state):
        parts = (x, state["h"], state["keys"], state["ids"], state["seen"])
        x, h, keys, ids, seen = (t.contiguous() for t in parts)
        new_h, new_keys = torch.empty_like(h), torch.empty_like(keys)
        new_ids = torch.empty_like(ids)
        _copy_kernel.advance(
            *kernel, rows, x.data_ptr(), h.data_ptr(), keys.data_ptr(), ids.data_ptr(),
            seen.data_ptr(), new_h.data_ptr(), new_keys.data_ptr(), new_ids.data_ptr(),
        )  # fmt: skip
        return {"h": new_h, "keys": new_keys, "ids": new_ids, "seen": torch.ones_like(seen)}
    made = tables(model, "advance") if rows >= TABLED_ROWS else None
    if made is not None:
        rest = (*made, model.config.copy_start)
        advance = compiled()["advance_tabled"]
    else:
        rnn, key = model.rnn, model.key
        rest = (model.i_h.weight, rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0)
        rest += (rnn.bias_hh_l0, key.weight, key.bias, model.config.copy_start)
        advance = compiled()["advance_exact"]
    h, keys, ids, seen = advance(x, state["h"], state["keys"], state["ids"], state["seen"], *rest)
    return {"h": h, "keys": keys, "ids": ids, "seen": seen}


def fast_head(model: Any, state: dict[str, Tensor]) -> Tensor:
    """`model.head_state(state)` of a CopyGRU whose batch norm is in eval mode."""
    h, keys, ids = state["h"][:, -1], state["keys"], state["ids"]
    kernel = kernel_model(model) if h.shape[0] < TABLED_ROWS else None
    if kernel is not None and kernel_fits(model, None, state):
        h, keys, ids = h.contiguous(), keys.contiguous(), ids.contiguous()
        out = h.new_empty(h.shape[0], model.config.vocab_size)
        pointers = (h.data_ptr(), keys.data_ptr(), ids.data_ptr(), out.data_ptr())
        _copy_kernel.head(*kernel, h.shape[0], *pointers)
        return out
    made = tables(model, "head") if h.shape[0] >= TABLED_ROWS else None
    if made is not None:
        return compiled()["head_tabled"](h, keys, ids, *made)
    bn, value, after = model.bn, model.value, model.after
    return compiled()["head_exact"](
        h, keys, ids, model.query.weight, model.query.bias, model.sentinel.weight,
        model.sentinel.bias, model.i_h.weight, None if value is None else value.weight,
        None if after is None else after.weight, bn.weight, bn.bias, bn.running_mean,
        bn.running_var, bn.eps, model.h_o.weight, model.h_o.bias,
    )  # fmt: skip

"""The GRU language models of the Human Numbers lesson (Model5, Model6, Model7) and beyond.

Every model maps token ids and an explicit state to logits and the new state:
`forward(x, state) -> (logits, state)` with x (B, T) long, logits (B, T, V) and the state a dict
of named tensors, each (B, *shape) as the model's `state_spec` declares. No state is kept inside
the module, so one model serves any number of sessions. The seed models' state is their hidden
state alone, {"h": (B, L, H)}; `CopyGRU` adds the history its copy path reads.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from model_store.copy_step import POOL_ROWS, fast_advance, fast_head, step_in_pool

State = dict[str, Tensor]  # named tensors, each (B, *StateSpec.shape)


@dataclass(frozen=True)
class StateSpec:
    """One part of a sequence's state: its shape (without the batch) and dtype."""

    shape: tuple[int, ...]
    dtype: torch.dtype


@dataclass(frozen=True)
class ModelConfig:
    variant: str = "gru"  # one of VARIANTS
    vocab_size: int = 40  # fastai's vocabulary for Human Numbers, padded to a multiple of 8
    hidden: int = 56  # nh of the lesson
    n_layers: int = 1  # the seed variants are single-layer
    copy_window: int = 16  # gru-copy: K, the past positions it can copy from (a number is <= 7)
    key_size: int = 16  # gru-copy: size of its attention's queries and keys
    # gru-copy: the vocabulary head also reads the embedding of the word the copy path offers
    # (its attention over the history, without the sentinel), so it can say "the word after
    # that one" where copying is wrong (a carry).
    copy_value: bool = False
    # gru-copy: the first word fed to the zero state can be copied too (the zero state's key
    # offers it), so a text of one number (`one,`) is counted on from its own first word.
    # Without it the first word is never in the history: only the words after it are.
    copy_start: bool = False
    # gru-copy (with copy_value): the head also reads the embedding of the word that followed
    # the offered one in the history (`nine` then `thousand`, or `nine` then `hundred`), so the
    # answer at a carry can depend on the unit it carries: 999 -> one thousand, 9,999 -> ten
    # thousand (round 7's candidate H, docs/benchmarks.md).
    copy_lookahead: bool = False

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class BatchNorm1dFlat(nn.BatchNorm1d):
    """fastai's BatchNorm1dFlat: batch norm over the last dimension of a (B, T, H) tensor."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            return super().forward(x)
        *f, last = x.shape
        return super().forward(x.contiguous().view(-1, last)).view(*f, last)


class GRUCell(nn.Module):
    """The seed's hand-written GRU cell: `i2h` and `h2h` give the reset, update and new gates."""

    def __init__(self, ni: int, nh: int):
        super().__init__()
        self.ni, self.nh = ni, nh
        self.i2h = nn.Linear(ni, 3 * nh)
        self.h2h = nn.Linear(nh, 3 * nh)

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        i_r, i_u, i_n = self.i2h(x).chunk(3, 1)  # (B, H) each
        h_r, h_u, h_n = self.h2h(h).chunk(3, 1)
        reset = torch.sigmoid(i_r + h_r)
        update = torch.sigmoid(i_u + h_u)
        new = torch.tanh(i_n + reset * h_n)
        return update * h + (1 - update) * new


class HumanNumbersLM(nn.Module, ABC):
    """Shared parts: embedding `i_h`, a recurrent core, `bn`, output `h_o`; and the one API
    every model has: `forward` over a window (training), `advance_state` and `head_state` on
    a sequence's whole state (serving), from `init_state`."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.i_h = nn.Embedding(config.vocab_size, config.hidden)
        self.bn = BatchNorm1dFlat(config.hidden)
        self.h_o = nn.Linear(config.hidden, config.vocab_size)

    @property
    def state_shape(self) -> tuple[int, int]:
        """Shape of one sequence's hidden state (L, H)."""
        return (self.config.n_layers, self.config.hidden)

    @property
    def state_spec(self) -> dict[str, StateSpec]:
        """The parts of one sequence's state; all zeros is the state before any token."""
        return {"h": StateSpec(self.state_shape, torch.float32)}

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """The zero state of `batch_size` sequences."""
        return {
            name: torch.zeros(batch_size, *spec.shape, dtype=spec.dtype, device=device)
            for name, spec in self.state_spec.items()
        }

    @abstractmethod
    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """(B, T) ids read from `state` (the zero state if None): the logits (B, T, V) at every
        position and the new state."""

    @abstractmethod
    def advance_state(self, x: Tensor, state: State, lengths: Tensor | None = None) -> State:
        """Feed (B, T) ids into a (B, ...) state and return the new state.

        With `lengths` (B,), row b reads only its first lengths[b] >= 1 ids: the rest is padding
        and leaves its state alone. This is how the service steps many sessions in one batch.
        """

    def head_state(self, state: State) -> Tensor:
        """Next-token logits (B, V) of a state.

        The output of a GRU at a position is its top layer's state, so the state alone gives
        the next-token distribution: nothing else needs keeping between calls.
        """
        return self.h_o(self.bn(state["h"][:, -1]))

    # The most rows, plus one, `step_in_pool` may serve (0: it serves none).
    pool_rows = 0

    def step_in_pool(
        self, pool: State, slots: list[int], x: list[int], top: list[int], banned: bytes
    ) -> list[list[tuple[int, float]]] | None:
        """A serving engine's pass for rows that each feed one id and want their likeliest
        words, done in place in its pool of states (each part (capacity, *shape)): row
        `slots[b]` advanced by `x[b]`, then its `top[b]` likeliest words (id, prob) without the
        ids where `banned` (a byte a word) is 1, renormalized, likeliest first, a tie to the
        higher id, words of probability 0 left out. None where a model has no such pass (the
        engine then gathers, advances, heads and scatters); nothing is changed then."""
        return None


class SeedLM(HumanNumbersLM):
    """The seed notebook's models, whose state is their hidden state alone: {"h": (B, L, H)}."""

    @abstractmethod
    def recur(self, emb: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, H) embeddings and (B, L, H) state -> (B, T, H) outputs and the new state."""

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        h = self.init_state(x.shape[0], x.device)["h"] if state is None else state["h"]
        out, h = self.recur(self.i_h(x), h)
        return self.h_o(self.bn(out)), {"h": h}


class Model5(SeedLM):
    """`nn.GRU` over the whole window."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.rnn = nn.GRU(config.hidden, config.hidden, config.n_layers, batch_first=True)

    def recur(self, emb: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        out, h_n = self.rnn(emb, h.transpose(0, 1).contiguous())  # nn.GRU wants (L, B, H)
        return out, h_n.transpose(0, 1)

    def advance_state(self, x: Tensor, state: State, lengths: Tensor | None = None) -> State:
        emb = self.i_h(x)
        h0 = state["h"].transpose(0, 1).contiguous()
        if lengths is None or bool((lengths == x.shape[1]).all()):
            return {"h": self.rnn(emb, h0)[1].transpose(0, 1)}
        packed = nn.utils.rnn.pack_padded_sequence(
            emb, lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        return {"h": self.rnn(packed, h0)[1].transpose(0, 1)}  # h_n comes back in rows' order


class CellLoopLM(SeedLM):
    """A GRU cell stepped over the window in a Python loop; subclasses pick the cell."""

    cell_type: type[nn.Module]

    def __init__(self, config: ModelConfig):
        assert config.n_layers == 1, f"{type(self).__name__} is single-layer"
        super().__init__(config)
        self.rnn = self.cell_type(config.hidden, config.hidden)

    def recur(self, emb: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        h1 = h[:, 0]  # (B, H)
        outs = []
        for t in range(emb.shape[1]):
            h1 = self.rnn(emb[:, t], h1)
            outs.append(h1)
        return torch.stack(outs, dim=1), h1.unsqueeze(1)

    def advance_state(self, x: Tensor, state: State, lengths: Tensor | None = None) -> State:
        emb = self.i_h(x)
        h1 = state["h"][:, 0]
        for t in range(x.shape[1]):
            new = self.rnn(emb[:, t], h1)
            h1 = new if lengths is None else torch.where((lengths > t).unsqueeze(1), new, h1)
        return {"h": h1.unsqueeze(1)}


class Model6(CellLoopLM):
    """`nn.GRUCell` stepped in a Python loop."""

    cell_type = nn.GRUCell


class Model7(CellLoopLM):
    """The hand-written GRU cell stepped in a Python loop."""

    cell_type = GRUCell


class CopyGRU(HumanNumbersLM):
    """A GRU language model with a pointer-sentinel copy path over its last K positions.

    At each position t the model mixes its vocabulary distribution with a distribution over the
    ids that followed its last K positions (Merity et al. 2016, "Pointer Sentinel Mixture
    Models"; Grave et al. 2016, a continuous cache): attention between a query of the current
    output and keys of those outputs, with a sentinel score competing in the same softmax,
    whose weight is the share given to the vocabulary. After a "," it attends to the previous
    "," and copies the word that followed it: the thousands word, which a plain GRU trained on
    1..7,999 cannot produce for 8,001..9,999. The output is log-probabilities.

    With `copy_value` the vocabulary head also reads the embedding of the word the copy path
    offers (its attention over the history without the sentinel, mixing the entries' word
    embeddings): where copying is wrong, at a carry, the head can give "the word after the
    offered one", a relation it learns from every units carry, so the thousands carry into a
    word never seen as a thousands word (8,999 -> 9,000) comes out right.

    The state carries that history: `keys` (K, D) and `ids` (K,) of the last K positions whose
    following id is known (newest last, id -1 for an empty entry), and `seen`, whether any
    token was fed. The key of the last position waits for the next id; it is a function of
    `h`, so it is not stored. Feeding a text in any number of pieces gives the same state.
    """

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        h, d = config.hidden, config.key_size
        self.rnn = nn.GRU(h, h, config.n_layers, batch_first=True)
        self.query = nn.Linear(h, d)
        self.key = nn.Linear(h, d)
        self.sentinel = nn.Linear(h, 1)  # the score of "use the vocabulary"
        self.value = nn.Linear(h, h, bias=False) if config.copy_value else None
        lookahead = config.copy_value and config.copy_lookahead
        self.after = nn.Linear(h, h, bias=False) if lookahead else None

    # Without autograd, a one-word step (advance_state on (B, 1) ids, head_state in eval mode)
    # runs model_store.copy_step: the same function, a fraction of the time; False: the modules.
    fast_step = True
    # ... and in C (model_store/_copy_kernel.c) where it is built and the model is float32 on the
    # CPU: every batch size, summed in double; False: the TorchScript forms.
    kernel_step = True
    pool_rows = POOL_ROWS

    def _fast(self) -> bool:
        return self.fast_step and not torch.is_grad_enabled()

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        self.__dict__.pop("_step_tables", None)  # .to(), .float(): copy_step's tables go stale
        self.__dict__.pop("_kernel_model", None)  # and the C step's addresses
        self.__dict__.pop("_kernel_tensors", None)
        self.__dict__.pop("_kernel_tables", None)
        return super()._apply(fn, recurse)

    @property
    def state_spec(self) -> dict[str, StateSpec]:
        k, d = self.config.copy_window, self.config.key_size
        return {
            "h": StateSpec(self.state_shape, torch.float32),
            "keys": StateSpec((k, d), torch.float32),
            "ids": StateSpec((k,), torch.int64),
            "seen": StateSpec((1,), torch.bool),
        }

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        state = super().init_state(batch_size, device)
        state["ids"].fill_(-1)  # no history yet
        return state

    def _recur(self, x: Tensor, h: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
        """(B, T) ids -> (B, T, H) outputs and (B, L, H) state (rows read lengths[b] ids)."""
        emb = self.i_h(x)
        h0 = h.transpose(0, 1).contiguous()
        if lengths is None:
            out, h_n = self.rnn(emb, h0)
        else:
            packed = nn.utils.rnn.pack_padded_sequence(
                emb, lengths.cpu(), batch_first=True, enforce_sorted=False
            )
            out_p, h_n = self.rnn(packed, h0)
            out = nn.utils.rnn.pad_packed_sequence(
                out_p, batch_first=True, total_length=x.shape[1]
            )[0]
        return out, h_n.transpose(0, 1)

    def _history(self, x: Tensor, out: Tensor, state: State) -> tuple[Tensor, Tensor]:
        """The state's K entries, then the pending key of its last position (followed by
        x[:, 0]), then the keys of the window's positions but the last (position j followed by
        x[:, j+1]): keys (B, K+T, D) and ids (B, K+T), -1 where nothing is known."""
        pending = self.key(state["h"][:, -1]).unsqueeze(1)  # (B, 1, D)
        first = x[:, :1] if self.config.copy_start else torch.where(state["seen"], x[:, :1], -1)
        if x.shape[1] == 1:  # a serving step: no window keys (skips a Linear on nothing)
            return torch.cat([state["keys"], pending], 1), torch.cat([state["ids"], first], 1)
        keys = torch.cat([state["keys"], pending, self.key(out[:, :-1])], dim=1)
        ids = torch.cat([state["ids"], first, x[:, 1:]], dim=1)
        return keys, ids

    def _keep(self, keys: Tensor, ids: Tensor, n: Tensor | None, h: Tensor) -> State:
        """The new state of rows that read n[b] ids (all of them: None): the K entries before
        the pending one."""
        k = self.config.copy_window
        if n is None:  # every row read the whole window: a slice, no gather
            t = keys.shape[1] - k
            keys, ids = keys[:, t:], ids[:, t:]
        else:
            index = n.to(ids.device).unsqueeze(1) + torch.arange(k, device=ids.device)  # (B, K)
            keys = keys.gather(1, index.unsqueeze(2).expand(-1, -1, keys.shape[2]))
            ids = ids.gather(1, index)
        seen = torch.ones(h.shape[0], 1, dtype=torch.bool, device=h.device)
        return {"h": h, "keys": keys, "ids": ids, "seen": seen}

    def _mix(self, out: Tensor, keys: Tensor, ids: Tensor, blocked: Tensor) -> Tensor:
        """Log-probabilities (B, T, V) of (B, T, H) outputs over a (B, C, D) history whose
        entry c position t may not copy where blocked[b, t, c]."""
        q = self.query(out)  # (B, T, D)
        raw = q @ keys.transpose(1, 2) / math.sqrt(keys.shape[2])  # (B, T, C)
        scores = raw.masked_fill(blocked, float("-inf"))
        attn = torch.log_softmax(torch.cat([scores, self.sentinel(out)], dim=2), dim=2)
        index = ids.clamp_min(0).unsqueeze(1).expand(-1, out.shape[1], -1)  # (B, T, C)
        copy = out.new_zeros(*out.shape[:2], self.config.vocab_size)
        copy.scatter_add_(2, index, attn[..., :-1].exp())  # blocked entries add exp(-inf) = 0
        feature = out
        if self.value is not None:
            # The offered word: the history's attention without the sentinel (a finite mask,
            # so a position with nothing to copy is offered nothing: zeros, not NaN).
            offer = torch.softmax(raw.masked_fill(blocked, -1e30), dim=2).masked_fill(blocked, 0)
            offered = offer @ self.i_h(ids.clamp_min(0))  # (B, T, H)
            feature = out + self.value(offered)
            if self.after is not None:
                # The word after each entry's: the next entry's id, where this position has
                # read it (the next entry not blocked); nothing for the newest entry.
                after = torch.cat([ids[:, 1:], ids.new_full((ids.shape[0], 1), -1)], dim=1)
                unknown = torch.cat([blocked[..., 1:], blocked.new_ones(*blocked.shape[:2], 1)], 2)
                seen = offer.masked_fill(unknown, 0) @ self.i_h(after.clamp_min(0))
                feature = feature + self.after(seen)
        vocab = torch.log_softmax(self.h_o(self.bn(feature)), dim=2) + attn[..., -1:]
        # In probability space: p = gate * p_vocab + sum of the copied entries' weights. The
        # floor keeps log() finite (and its gradient zero) for words not in the history.
        return torch.logaddexp(vocab, torch.log(copy.clamp_min(1e-30)))

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        b, t = x.shape
        if state is None:
            state = self.init_state(b, x.device)
        out, h = self._recur(x, state["h"], None)
        keys, ids = self._history(x, out, state)
        # Position t may copy entries t+1 .. t+K: the K latest whose following id it has read.
        offset = (
            torch.arange(keys.shape[1], device=x.device) - torch.arange(t, device=x.device)[:, None]
        )
        band = (offset >= 1) & (offset <= self.config.copy_window)  # (T, C)
        blocked = ~band | (ids < 0).unsqueeze(1)
        logp = self._mix(out, keys, ids, blocked)
        return logp, self._keep(keys, ids, None, h)

    def advance_state(self, x: Tensor, state: State, lengths: Tensor | None = None) -> State:
        if lengths is not None and bool((lengths == x.shape[1]).all()):
            lengths = None
        if self._fast() and x.shape[1] == 1 and self.config.n_layers == 1:
            return fast_advance(self, x, state)
        out, h = self._recur(x, state["h"], lengths)
        keys, ids = self._history(x, out, state)
        return self._keep(keys, ids, lengths, h)

    def step_in_pool(
        self, pool: State, slots: list[int], x: list[int], top: list[int], banned: bytes
    ) -> list[list[tuple[int, float]]] | None:
        # the C step, where it serves (copy_step); whatever the grad mode: it writes the pool
        # through its addresses and records nothing, so the engine need not enter
        # inference_mode for it (2 us of a one-row pass of about 40)
        if self.fast_step and not self.training:
            return step_in_pool(self, pool, slots, x, top, banned)
        return None

    def head_state(self, state: State) -> Tensor:
        if self._fast() and not self.training:
            return fast_head(self, state)
        out = state["h"][:, -1:]  # (B, 1, H): the output of the last position
        ids = state["ids"]
        return self._mix(out, state["keys"], ids, (ids < 0).unsqueeze(1))[:, 0]


@dataclass(frozen=True)
class Variant:
    """A model users can train and serve, under the name they type for it."""

    model: type[HumanNumbersLM]
    about: str  # the architecture in a few words (the API's docs show it)
    seed: bool = False  # one of the seed notebook's three, trained with its recipe
    # Preferred as the service's default model when DEFAULT_MODEL is not set: the loaded
    # variant of the lowest rank is the default (None: never preferred).
    default_rank: int | None = None


# The one registry of variants: training, the CLI, the checkpoint checks, the service and
# the tests all read it. In training order: the seed notebook's three, then the rest.
VARIANTS: dict[str, Variant] = {
    "gru": Variant(Model5, "nn.GRU, the seed's Model5", seed=True, default_rank=1),
    "gru-cell": Variant(Model6, "nn.GRUCell stepped in a loop, Model6", seed=True),
    "gru-custom": Variant(Model7, "a hand-written GRU cell, Model7", seed=True),
    "gru-copy": Variant(
        CopyGRU, "nn.GRU with a copy path over its last K positions", default_rank=0
    ),
}
SEED_VARIANTS = tuple(name for name, v in VARIANTS.items() if v.seed)
# The variants preferred as the default model, most preferred first.
PREFERRED_DEFAULTS = tuple(
    name
    for _, name in sorted(
        (v.default_rank, name) for name, v in VARIANTS.items() if v.default_rank is not None
    )
)


def build_model(config: ModelConfig) -> HumanNumbersLM:
    if config.variant not in VARIANTS:
        raise ValueError(f"unknown variant {config.variant!r}; known: {', '.join(VARIANTS)}")
    return VARIANTS[config.variant].model(config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

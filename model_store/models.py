"""The GRU language models of the Human Numbers lesson (Model5, Model6, Model7).

Every model maps token ids and an explicit hidden state to logits and the new state:
`forward(x, h) -> (logits, h)` with x (B, T) long, h (B, L, H), logits (B, T, V). No state is
kept inside the module, so one model serves any number of sessions.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class ModelConfig:
    variant: str = "gru"  # one of VARIANTS
    vocab_size: int = 40  # fastai's vocabulary for Human Numbers, padded to a multiple of 8
    hidden: int = 56  # nh of the lesson
    n_layers: int = 1  # the seed variants are single-layer

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


class HumanNumbersLM(nn.Module):
    """Shared parts: embedding `i_h`, a recurrent core, `bn`, output `h_o`."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.i_h = nn.Embedding(config.vocab_size, config.hidden)
        self.bn = BatchNorm1dFlat(config.hidden)
        self.h_o = nn.Linear(config.hidden, config.vocab_size)

    def init_hidden(self, batch_size: int, device: torch.device | str | None = None) -> Tensor:
        """The zero state, (B, L, H)."""
        return torch.zeros(batch_size, self.config.n_layers, self.config.hidden, device=device)

    @property
    def state_shape(self) -> tuple[int, int]:
        """Shape of one sequence's hidden state (L, H)."""
        return (self.config.n_layers, self.config.hidden)

    def recur(self, emb: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, H) embeddings and (B, L, H) state -> (B, T, H) outputs and the new state."""
        raise NotImplementedError

    def advance(self, x: Tensor, h: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Feed (B, T) ids into (B, L, H) states and return the new states.

        With `lengths` (B,), row b reads only its first lengths[b] >= 1 ids: the rest is padding
        and leaves its state alone. This is how the service steps many sessions in one batch.
        """
        raise NotImplementedError

    def head(self, h: Tensor) -> Tensor:
        """Next-token logits (B, V) of (B, L, H) states.

        The output of a GRU at a position is its top layer's state, so the state alone gives
        the next-token distribution: nothing else needs keeping between calls.
        """
        return self.h_o(self.bn(h[:, -1]))

    def forward(self, x: Tensor, h: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if h is None:
            h = self.init_hidden(x.shape[0], x.device)
        out, h = self.recur(self.i_h(x), h)
        return self.h_o(self.bn(out)), h


class Model5(HumanNumbersLM):
    """`nn.GRU` over the whole window."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.rnn = nn.GRU(config.hidden, config.hidden, config.n_layers, batch_first=True)

    def recur(self, emb: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        out, h_n = self.rnn(emb, h.transpose(0, 1).contiguous())  # nn.GRU wants (L, B, H)
        return out, h_n.transpose(0, 1)

    def advance(self, x: Tensor, h: Tensor, lengths: Tensor | None = None) -> Tensor:
        emb = self.i_h(x)
        h0 = h.transpose(0, 1).contiguous()
        if lengths is None or bool((lengths == x.shape[1]).all()):
            return self.rnn(emb, h0)[1].transpose(0, 1)
        packed = nn.utils.rnn.pack_padded_sequence(
            emb, lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        return self.rnn(packed, h0)[1].transpose(0, 1)  # h_n comes back in the rows' order


class CellLoopLM(HumanNumbersLM):
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

    def advance(self, x: Tensor, h: Tensor, lengths: Tensor | None = None) -> Tensor:
        emb = self.i_h(x)
        h1 = h[:, 0]
        for t in range(x.shape[1]):
            new = self.rnn(emb[:, t], h1)
            h1 = new if lengths is None else torch.where((lengths > t).unsqueeze(1), new, h1)
        return h1.unsqueeze(1)


class Model6(CellLoopLM):
    """`nn.GRUCell` stepped in a Python loop."""

    cell_type = nn.GRUCell


class Model7(CellLoopLM):
    """The hand-written GRU cell stepped in a Python loop."""

    cell_type = GRUCell


# Variant names users type, and the seed notebook's model for each.
VARIANTS: dict[str, type[HumanNumbersLM]] = {
    "gru": Model5,
    "gru-cell": Model6,
    "gru-custom": Model7,
}


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when torch sees a GPU, else the CPU; asking for a missing GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for, but torch sees no CUDA device")
    return torch.device(name)


def build_model(config: ModelConfig) -> HumanNumbersLM:
    if config.variant not in VARIANTS:
        raise ValueError(f"unknown variant {config.variant!r}; known: {', '.join(VARIANTS)}")
    return VARIANTS[config.variant](config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def compile_cell(model: HumanNumbersLM, how: str) -> HumanNumbersLM:
    """Replace the hand-written cell of Model7 by a TorchScript (`script`) or torch.compile'd
    (`compile`) version, for inference; `eager` leaves it, and other models have no such
    cell. Weights must be loaded first: the state dict keys of a compiled module differ.
    On CPU, scripting is 10-25% faster per step and exact (benchmarks/cells.py); compile is
    not faster for a cell this small."""
    if how == "eager" or not isinstance(model, CellLoopLM) or not isinstance(model.rnn, GRUCell):
        return model
    if how == "script":
        with warnings.catch_warnings():  # deprecated, yet the fastest here: see above
            warnings.simplefilter("ignore", DeprecationWarning)
            model.rnn = torch.jit.script(model.rnn)
    elif how == "compile":
        model.rnn = torch.compile(model.rnn, dynamic=True)  # type: ignore[assignment]
    else:
        raise ValueError(f"unknown way to compile a cell: {how!r}")
    return model

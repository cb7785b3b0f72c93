"""What running a model needs beside the model: the device it runs on, the state a text starts
from, and a compiled cell (Model7's)."""

from __future__ import annotations

import warnings

import torch

from model_store.copy_step import TABLED_ROWS, _copy_kernel
from model_store.models import CellLoopLM, GRUCell, HumanNumbersLM, State


@torch.no_grad()
def start_state(model: HumanNumbersLM, bos: int, device: torch.device | str | None = None) -> State:
    """The state a text starts from, one row: the zero state after fastai's `xxbos` (id `bos`),
    which began every text the lesson's models were trained on. The service starts every
    sequence here (an implicit xxbos), so `one,` is read as the start of a count: measured in
    issue 16 (docs/benchmarks.md, sixth round), where it beat the bare zero state."""
    ids = torch.tensor([[bos]], dtype=torch.long, device=device)
    return model.advance_state(ids, model.init_state(1, device))


def next_probs(logits: torch.Tensor, banned: torch.Tensor, banned_bytes: bytes) -> torch.Tensor:
    """The next-word probabilities (B, V) of a head's logits or log-probabilities (B, V),
    without the words a user cannot type (`banned`: their ids; `banned_bytes`: a byte a word,
    1 for those): the softmax over the others. For the small batches whose head gru-copy's C
    step computes (below copy_step.TABLED_ROWS rows, on the CPU in float32), in C where it is
    built (model_store/_copy_kernel.c: in double, rounded once), the same function as
    gru-copy's pass in the pool (`CopyGRU.step_in_pool`), so a state's answer does not depend
    on which of the engine's passes computed it; else with torch (vectorized: 27 against 130
    us for 256 rows, where the tabled head's answers differ in their last digits anyway).
    `logits` may be written to."""
    if (
        _copy_kernel is not None
        and logits.shape[0] < TABLED_ROWS
        and logits.device.type == "cpu"
        and logits.dtype == torch.float32
        and len(banned_bytes) == logits.shape[1]
    ):
        logits = logits.contiguous()
        out = torch.empty_like(logits)
        rows, vocab = logits.shape
        _copy_kernel.softmax_masked(rows, vocab, logits.data_ptr(), banned_bytes, out.data_ptr())
        return out
    logits.index_fill_(1, banned, float("-inf"))
    return torch.softmax(logits.float(), dim=-1)


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when torch sees a GPU, else the CPU; asking for a missing GPU is an error.

    On CUDA, float32 stays float32: cuDNN's TensorFloat-32 (on by default in torch for cuDNN,
    which runs the GRUs) is turned off, as it is for matrix products by default. With it a
    step could round its inputs to 10 bits of mantissa (about 1e-3), so a GPU replica's
    probabilities and saved states could drift from a CPU replica's far beyond float32's
    rounding; and a step of these models is bound by kernel launches, not arithmetic
    (docs/benchmarks.md, "On a GPU"). tests/app/test_cuda.py checks the answers against the
    CPU's."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' asked for, but torch sees no CUDA device")
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    return torch.device(name)


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

"""gru-copy's fast serving step (model_store.copy_step) computes what the modules compute: on
random states of random models, fresh and long-fed, for every kind of gru-copy, a one-word
`advance_state` and `head_state` equal the modules' path (the reference, `fast_step = False`):
to the bit in its exact form (small batches), within float rounding in its tabled form (1e-5,
what batching itself moves an answer by); and each row of a batch equals that row alone."""

import pytest
import torch

from model_store import ModelConfig, build_model
from model_store.copy_step import TABLED_ROWS
from model_store.models import CopyGRU

KINDS = {  # (copy_value, copy_start, copy_lookahead)
    "plain": (False, False, False),
    "copy_value": (True, False, False),
    "copy_start": (True, True, False),
    "lookahead": (True, False, True),  # the recipe's (K, docs/benchmarks.md's eleventh round)
    "lookahead_start": (True, True, True),
}


def random_model(
    seed: int, copy_value: bool, copy_start: bool, copy_lookahead: bool = False
) -> CopyGRU:
    torch.manual_seed(seed)
    config = ModelConfig(
        "gru-copy", hidden=48, copy_window=8, key_size=16, copy_value=copy_value,
        copy_start=copy_start, copy_lookahead=copy_lookahead,
    )  # fmt: skip
    model = build_model(config).eval()
    with torch.no_grad():  # weights and statistics far from their initial values
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
        model.sentinel.bias.fill_(-1.0)  # a copy path that gets much of the mass
    assert isinstance(model, CopyGRU)
    return model


def random_state(model: CopyGRU, rows: int, seed: int) -> dict[str, torch.Tensor]:
    """Rows at the zero state, after one id, and after texts longer than the window."""
    g = torch.Generator().manual_seed(seed)
    state = model.init_state(rows)
    model.fast_step = False
    for row in range(rows):
        n = [0, 1, 3, 30][row % 4]
        if n:
            ids = torch.randint(0, model.config.vocab_size, (1, n), generator=g)
            fed = model.advance_state(ids, model.init_state(1))
            for name in state:
                state[name][row] = fed[name][0]
    model.fast_step = True
    return state


def step(model: CopyGRU, x: torch.Tensor, state: dict[str, torch.Tensor], fast: bool):
    model.fast_step = fast
    try:
        new = model.advance_state(x, state)
        return new, model.head_state(new)
    finally:
        model.fast_step = True


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rows", [1, 3, TABLED_ROWS - 1, TABLED_ROWS, 64])
def test_the_fast_step_computes_what_the_modules_compute(kind: str, rows: int) -> None:
    for seed in range(3):
        model = random_model(seed, *KINDS[kind])
        state = random_state(model, rows, seed)
        x = torch.randint(0, model.config.vocab_size, (rows, 1))
        with torch.inference_mode():
            ref_state, ref_logp = step(model, x, state, fast=False)
            new, logp = step(model, x, state, fast=True)
        assert new.keys() == ref_state.keys()
        for name, part in ref_state.items():
            assert new[name].dtype == part.dtype and new[name].shape == part.shape, name
            if rows < TABLED_ROWS:
                assert torch.equal(new[name], part), name
            torch.testing.assert_close(new[name], part, rtol=1e-5, atol=1e-5, msg=name)
        if rows < TABLED_ROWS:
            assert torch.equal(logp, ref_logp)
        torch.testing.assert_close(logp, ref_logp, rtol=1e-5, atol=1e-5)
        assert torch.isfinite(logp).all()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rows", [5, TABLED_ROWS + 4])
def test_each_row_of_a_fast_batch_equals_the_row_alone(kind: str, rows: int) -> None:
    model = random_model(7, *KINDS[kind])
    state = random_state(model, rows, 7)
    x = torch.randint(0, model.config.vocab_size, (rows, 1))
    with torch.inference_mode():
        new, logp = step(model, x, state, fast=True)
        for row in range(rows):
            alone = {name: part[row : row + 1] for name, part in state.items()}
            new_1, logp_1 = step(model, x[row : row + 1], alone, fast=True)
            torch.testing.assert_close(logp_1[0], logp[row], rtol=1e-5, atol=1e-5)
            for name, part in new_1.items():
                torch.testing.assert_close(part[0], new[name][row], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [4, TABLED_ROWS])
def test_the_fast_head_follows_the_weights(rows: int) -> None:
    """Nothing derived from the weights goes stale: change one, the answer changes with it."""
    model = random_model(3, True, False)
    state = random_state(model, rows, 3)
    with torch.inference_mode():
        before = model.head_state(state)
    with torch.no_grad():
        model.h_o.bias[5] += 3.0
        model.value.weight.mul_(2.0)  # type: ignore[union-attr]
    with torch.inference_mode():
        after = model.head_state(state)
        torch.testing.assert_close(after, model.head_state(state))
        model.fast_step = False
        torch.testing.assert_close(after, model.head_state(state), rtol=1e-5, atol=1e-5)
        model.fast_step = True
    assert not torch.allclose(before, after)


def test_weights_made_under_inference_mode_take_the_exact_step() -> None:
    """Inference tensors keep no version, so no table could tell a change: the exact form."""
    with torch.inference_mode():
        model = random_model(5, True, False)
        state = random_state(model, TABLED_ROWS, 5)
        x = torch.randint(0, model.config.vocab_size, (TABLED_ROWS, 1))
        new, logp = step(model, x, state, fast=True)
        ref_state, ref_logp = step(model, x, state, fast=False)
    assert torch.equal(logp, ref_logp)
    assert all(torch.equal(new[name], part) for name, part in ref_state.items())


def test_a_moved_model_rebuilds_its_tables() -> None:
    """.double() (as .to()) replaces the weights' data: the tables follow it."""
    model = random_model(6, True, False)
    state = random_state(model, TABLED_ROWS, 6)
    x = torch.randint(0, model.config.vocab_size, (TABLED_ROWS, 1))
    with torch.inference_mode():
        step(model, x, state, fast=True)  # tables made in float32
    model.double()
    state = {n: p.double() if p.is_floating_point() else p for n, p in state.items()}
    with torch.inference_mode():
        new, logp = step(model, x, state, fast=True)
        ref_state, ref_logp = step(model, x, state, fast=False)
    assert logp.dtype == torch.float64
    torch.testing.assert_close(logp, ref_logp, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(new["h"], ref_state["h"], rtol=1e-9, atol=1e-9)

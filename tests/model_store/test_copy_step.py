"""gru-copy's fast serving step (model_store.copy_step) computes what the modules compute: on
random states of random models, fresh and long-fed, for every kind of gru-copy, a one-word
`advance_state` and `head_state` equal the modules' path (the reference, `fast_step = False`).
Its TorchScript forms (`kernel_step = False`): to the bit in the exact form (small batches),
within float rounding in the tabled form (1e-5, what batching itself moves an answer by). Its C
form (the default where built): within float rounding of the modules, nearer than they are to
the same model in float64, and each row of a batch the same bits as that row alone."""

import copy

import pytest
import torch

from model_store import ModelConfig, build_model
from model_store.copy_step import KERNEL, TABLED_ROWS
from model_store.models import CopyGRU

FORMS = {"c": True, "torchscript": False}  # kernel_step

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


def step(
    model: CopyGRU, x: torch.Tensor, state: dict[str, torch.Tensor], fast: bool, c: bool = True
):
    model.fast_step, model.kernel_step = fast, c
    try:
        new = model.advance_state(x, state)
        return new, model.head_state(new)
    finally:
        model.fast_step = model.kernel_step = True


def test_the_c_step_is_built() -> None:
    """setup.py builds it wherever a C compiler is (CI: gcc); without it the service would
    serve the slower TorchScript forms, and the recorded answers (tests/app/test_golden.py)
    are the C step's."""
    assert KERNEL, "model_store._copy_kernel is not built: pip install -e . with a C compiler"


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rows", [1, 3, TABLED_ROWS - 1, TABLED_ROWS, 64])
def test_the_fast_step_computes_what_the_modules_compute(form: str, kind: str, rows: int) -> None:
    c = FORMS[form]
    for seed in range(3):
        model = random_model(seed, *KINDS[kind])
        state = random_state(model, rows, seed)
        x = torch.randint(0, model.config.vocab_size, (rows, 1))
        with torch.inference_mode():
            ref_state, ref_logp = step(model, x, state, fast=False)
            new, logp = step(model, x, state, fast=True, c=c)
        assert new.keys() == ref_state.keys()
        for name, part in ref_state.items():
            assert new[name].dtype == part.dtype and new[name].shape == part.shape, name
            if rows < TABLED_ROWS and not c:
                assert torch.equal(new[name], part), name
            torch.testing.assert_close(new[name], part, rtol=1e-5, atol=1e-5, msg=name)
        if rows < TABLED_ROWS and not c:
            assert torch.equal(logp, ref_logp)
        torch.testing.assert_close(logp, ref_logp, rtol=1e-5, atol=1e-5)
        assert torch.isfinite(logp).all()


@pytest.mark.parametrize("kind", KINDS)
def test_the_c_step_is_nearer_the_exact_value_than_float32_modules(kind: str) -> None:
    """Summed in double, rounded once: the C step's state and log-probabilities are nearer the
    same model run in float64 than the float32 modules are (their error, at least halved, on
    the largest difference over every row), and within a float32 rounding or two of it."""
    rows = TABLED_ROWS - 1  # the C step's batches
    for seed in range(3):
        model = random_model(seed, *KINDS[kind])
        state = random_state(model, rows, seed)
        x = torch.randint(0, model.config.vocab_size, (rows, 1))
        wide = copy.deepcopy(model).double()
        wide_state = {n: p.double() if p.is_floating_point() else p for n, p in state.items()}
        with torch.inference_mode():
            exact_state, exact = step(wide, x, wide_state, fast=False)
            mod_state, mod = step(model, x, state, fast=False)
            c_state, c = step(model, x, state, fast=True)
        for name in ("h", "keys"):
            c_err = (c_state[name].double() - exact_state[name]).abs().max().item()
            mod_err = (mod_state[name].double() - exact_state[name]).abs().max().item()
            assert c_err <= 2 * 2**-24 * exact_state[name].abs().max().item(), name
            assert c_err <= mod_err / 2 or mod_err == 0, (name, c_err, mod_err)
        c_err = (c.double() - exact).abs().max().item()
        assert c_err <= 4 * 2**-24 * exact.abs().max().item()
        assert c_err <= (mod.double() - exact).abs().max().item()


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rows", [5, TABLED_ROWS + 4])
def test_each_row_of_a_fast_batch_equals_the_row_alone(form: str, kind: str, rows: int) -> None:
    """The C step computes each row alone: the same bits in any batch it serves."""
    c = FORMS[form]
    model = random_model(7, *KINDS[kind])
    state = random_state(model, rows, 7)
    x = torch.randint(0, model.config.vocab_size, (rows, 1))
    with torch.inference_mode():
        new, logp = step(model, x, state, fast=True, c=c)
        for row in range(rows):
            alone = {name: part[row : row + 1] for name, part in state.items()}
            new_1, logp_1 = step(model, x[row : row + 1], alone, fast=True, c=c)
            if c and rows < TABLED_ROWS:
                assert torch.equal(logp_1[0], logp[row])
                assert all(torch.equal(part[0], new[name][row]) for name, part in new_1.items())
            torch.testing.assert_close(logp_1[0], logp[row], rtol=1e-5, atol=1e-5)
            for name, part in new_1.items():
                torch.testing.assert_close(part[0], new[name][row], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("rows", [4, TABLED_ROWS])
def test_the_fast_head_follows_the_weights(form: str, rows: int) -> None:
    """Nothing derived from the weights goes stale: change one, the answer changes with it."""
    model = random_model(3, True, False)
    model.kernel_step = FORMS[form]
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


def test_the_c_steps_tables_follow_the_weights() -> None:
    """The C step tables what depends on an id alone (the input gates, the offered word's and
    the next word's maps): change any weight they come from in place, and the next step is
    the modules' again, not the old tables'."""
    model = random_model(4, *KINDS["lookahead"])
    rows = 5
    state = random_state(model, rows, 4)
    x = torch.randint(0, model.config.vocab_size, (rows, 1))
    with torch.inference_mode():
        _, before_logp = step(model, x, state, fast=True)
    changes = {
        "i_h": lambda: model.i_h.weight.mul_(1.5),
        "w_ih": lambda: model.rnn.weight_ih_l0.add_(0.2),
        "b_ih": lambda: model.rnn.bias_ih_l0.sub_(0.5),
        "value": lambda: model.value.weight.mul_(-1.0),  # type: ignore[union-attr]
        "after": lambda: model.after.weight.mul_(2.0),  # type: ignore[union-attr]
    }
    for name, change in changes.items():
        with torch.no_grad():
            change()
        with torch.inference_mode():
            new, logp = step(model, x, state, fast=True)
            ref_state, ref_logp = step(model, x, state, fast=False)
        torch.testing.assert_close(logp, ref_logp, rtol=1e-5, atol=1e-5, msg=name)
        torch.testing.assert_close(new["h"], ref_state["h"], rtol=1e-5, atol=1e-5, msg=name)
        assert not torch.allclose(logp, before_logp), name
        before_logp = logp


def test_weights_made_under_inference_mode_take_the_exact_step() -> None:
    """Inference tensors keep no version, so no table could tell a change: the TorchScript
    step takes its exact form. (The C step reads the weights themselves: within rounding.)"""
    with torch.inference_mode():
        model = random_model(5, True, False)
        state = random_state(model, TABLED_ROWS, 5)
        x = torch.randint(0, model.config.vocab_size, (TABLED_ROWS, 1))
        new, logp = step(model, x, state, fast=True, c=False)
        ref_state, ref_logp = step(model, x, state, fast=False)
        _, c_logp = step(model, x, state, fast=True)
    assert torch.equal(logp, ref_logp)
    assert all(torch.equal(new[name], part) for name, part in ref_state.items())
    torch.testing.assert_close(c_logp, ref_logp, rtol=1e-5, atol=1e-5)


def test_a_moved_model_rebuilds_its_tables() -> None:
    """.double() (as .to()) replaces the weights' data: the tables follow it, and the C step
    (float32 only) gives way to the TorchScript forms."""
    model = random_model(6, True, False)
    state = random_state(model, TABLED_ROWS, 6)
    x = torch.randint(0, model.config.vocab_size, (TABLED_ROWS, 1))
    with torch.inference_mode():
        step(model, x, state, fast=True)  # the C step's addresses taken in float32
        step(model, x, state, fast=True, c=False)  # tables made in float32
    model.double()
    state = {n: p.double() if p.is_floating_point() else p for n, p in state.items()}
    with torch.inference_mode():
        new, logp = step(model, x, state, fast=True)
        ref_state, ref_logp = step(model, x, state, fast=False)
    assert logp.dtype == torch.float64
    torch.testing.assert_close(logp, ref_logp, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(new["h"], ref_state["h"], rtol=1e-9, atol=1e-9)


def test_the_c_step_refuses_an_id_outside_the_vocabulary() -> None:
    """As torch's embedding does: an error, never a read past the weights."""
    model = random_model(8, True, False, True)
    state = random_state(model, 3, 8)
    with torch.inference_mode():
        with pytest.raises(IndexError, match="999 is not in a vocabulary of 40"):
            model.advance_state(torch.tensor([[1], [2], [999]]), state)
        with pytest.raises(IndexError, match="-1 is not in a vocabulary of 40"):
            model.advance_state(torch.tensor([[1], [-1], [2]]), state)
        state["ids"][1, 2] = 77
        with pytest.raises(IndexError, match="77 is not in a vocabulary of 40"):
            model.head_state(state)


def test_next_probs_is_the_softmax_without_the_banned_words() -> None:
    """model_store.next_probs (the engine's one softmax, in C where built): within float32
    rounding of torch's softmax with the banned words at -inf, exactly 0 at those, rows of 1;
    another dtype (or device) through torch's softmax, in float32 as before."""
    from model_store import next_probs

    g = torch.Generator().manual_seed(3)
    logits = torch.randn(7, 40, generator=g) * 4
    logits[2, 5] = 30.0  # one word near 1, the rest tiny
    banned = torch.tensor([0, 1, 2, 39])
    banned_bytes = bytes(i in (0, 1, 2, 39) for i in range(40))
    want = torch.softmax(logits.index_fill(1, banned, float("-inf")), -1)
    got = next_probs(logits.clone(), banned, banned_bytes)
    assert got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=2e-6, atol=1e-9)
    assert (got[:, banned] == 0).all()
    torch.testing.assert_close(got.sum(-1), torch.ones(7), rtol=0, atol=1e-6)
    many = next_probs(logits.repeat(4, 1), banned, banned_bytes)  # 28 rows: torch's
    torch.testing.assert_close(many, want.repeat(4, 1), rtol=2e-6, atol=1e-9)
    wide = next_probs(logits.double(), banned, banned_bytes)  # not the C path
    assert wide.dtype == torch.float32
    torch.testing.assert_close(wide, want, rtol=2e-6, atol=1e-9)


def test_the_c_step_never_reads_past_a_state_of_the_wrong_shape() -> None:
    """Rows that do not match (3 ids for a state of 2 rows) or a part of another layout are
    never handed to the C step: the torch forms take them (and raise where torch does)."""
    from model_store.copy_step import kernel_fits

    model = random_model(9, True, False, True)
    state = random_state(model, 2, 9)
    x = torch.tensor([[1], [2]])
    assert kernel_fits(model, x, state)
    assert not kernel_fits(model, torch.tensor([[1], [2], [3]]), state)
    assert not kernel_fits(model, x, {**state, "keys": state["keys"][:1]})
    assert not kernel_fits(model, x, {**state, "ids": state["ids"][:, 1:]})
    assert not kernel_fits(model, x, {**state, "h": state["h"].double()})
    assert not kernel_fits(model, x.int(), state)
    with torch.inference_mode(), pytest.raises((RuntimeError, IndexError)):
        model.advance_state(torch.tensor([[1], [2], [3]]), state)


def test_the_pool_pass_serves_whatever_the_grad_mode() -> None:
    """The engine's pass in the pool writes through the pool's addresses and records nothing
    for autograd, so it serves with grad enabled too (the engine enters no inference_mode
    for it): the same words and states as under inference_mode, no graph on the pool."""
    model = random_model(8, *KINDS["lookahead"])
    capacity, slots, x, top = 8, [5, 0, 3], [4, 7, 2], [3, 5, 1]
    pools = []
    for grad in (True, False):
        with torch.no_grad():
            pool = random_state(model, capacity, 8)
        with torch.set_grad_enabled(grad):
            rows = model.step_in_pool(pool, slots, x, top, bytes(model.config.vocab_size))
        assert rows is not None
        assert all(not t.requires_grad and t.grad_fn is None for t in pool.values())
        pools.append((rows, pool))
    (rows_grad, pool_grad), (rows, pool) = pools
    assert rows_grad == rows
    assert all(torch.equal(pool_grad[name], part) for name, part in pool.items())

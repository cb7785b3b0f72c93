"""gru-copy: the copy path is causal, and its state behaves like the seed models' hidden state
(pieces == whole, a padded batch row == the row alone, nothing kept in the module); with and
without the head reading the offered word (`copy_value`), and with the zero state's first word
copyable (`copy_start`), and with the head reading the word after the offered one
(`copy_lookahead`)."""

import random

import pytest
import torch

from model_store import ModelConfig, build_model

K = 6  # a small window, so the texts below cross it many times


KINDS = [(False, False, {}), (True, False, {}), (True, True, {})]  # (value, start, more)
LOOKAHEAD = [(True, False, {"copy_lookahead": True}), (True, True, {"copy_lookahead": True})]


@pytest.fixture(
    params=KINDS + LOOKAHEAD,
    ids=["plain", "copy_value", "copy_start", "lookahead", "lookahead_start"],
    autouse=True,
)
def copy_value(request):
    """Every test runs on each kind of model: make_model reads this."""
    global COPY_VALUE, COPY_START, MORE
    COPY_VALUE, COPY_START, MORE = request.param
    return request.param[0]


COPY_VALUE = COPY_START = False
MORE: dict[str, bool] = {}  # copy_lookahead (docs/benchmarks.md, issue 16's rounds)


def make_model(seed: int = 0, copy_value: bool | None = None):
    torch.manual_seed(seed)
    config = ModelConfig(
        "gru-copy",
        hidden=32,
        copy_window=K,
        key_size=8,
        copy_value=COPY_VALUE if copy_value is None else copy_value,
        copy_start=COPY_START,
        **MORE,
    )
    model = build_model(config).eval()
    with torch.no_grad():  # real statistics for the norm layer, a sentinel that copies a lot
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
        model.sentinel.bias.fill_(-2.0)
    return model


def run_in_windows(model, x, size):
    """forward over x in windows of `size`, the state carried across: (B, T, V), state."""
    state, outs = None, []
    for start in range(0, x.shape[1], size):
        out, state = model(x[:, start : start + size], state)
        outs.append(out)
    return torch.cat(outs, dim=1), state


def test_outputs_are_log_probabilities_and_the_state_is_as_declared():
    model = make_model()
    x = torch.randint(0, 40, (3, 20))
    with torch.no_grad():
        logp, state = model(x)
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(3, 20))
    assert set(state) == set(model.state_spec)
    for name, spec in model.state_spec.items():
        assert state[name].shape == (3, *spec.shape) and state[name].dtype == spec.dtype, name
    assert model.state_spec["keys"].shape == (K, 8) and model.state_spec["ids"].shape == (K,)
    assert state["ids"][0].tolist() == x[0, 20 - K : 20].tolist()  # the K latest known ids
    zero = model.init_state(2)
    assert (zero["ids"] == -1).all() and not zero["seen"].any() and not zero["h"].any()


@pytest.mark.parametrize("window", [1, 4, 7, 30])
def test_later_ids_never_change_earlier_outputs(window):
    model = make_model(1)
    torch.manual_seed(2)
    x = torch.randint(0, 40, (2, 30))
    with torch.no_grad():
        base, _ = run_in_windows(model, x, window)
        for p in (1, 5, 6, 7, 13, 29):
            changed = x.clone()
            changed[:, p] = (changed[:, p] + 1 + torch.randint(0, 38, (2,))) % 40
            out, _ = run_in_windows(model, changed, window)
            # position t predicts x[t+1]: positions before p never see x[p] ...
            assert torch.equal(out[:, :p], base[:, :p]), f"x[{p}] leaked into earlier outputs"
            # ... and position p does (its own input), so the test can fail
            assert not torch.allclose(out[:, p], base[:, p])


def test_the_copy_path_copies_what_followed_a_matching_position():
    """Keys equal to the query and a sentinel that never wins: all mass on the copied id."""
    model = make_model(3)
    with torch.no_grad():
        model.key.weight.copy_(model.query.weight * 50)
        model.key.bias.copy_(model.query.bias * 50)
        model.sentinel.bias.fill_(-1e4)
        x = torch.tensor([[5, 17, 5]])  # at the second 5, the first 5 was followed by 17
        logp, _ = model(x)
    assert logp[0, 2].argmax().item() == 17
    if COPY_START:  # the first position can copy only the first word, offered by the zero key
        assert logp[0, 0].argmax().item() == 5
    else:
        assert logp[0, 0].exp().max() < 1  # the first position has nothing to copy: vocabulary


def test_pieces_equal_the_whole():
    model = make_model(4)
    rng = random.Random(0)
    torch.manual_seed(5)
    x = torch.randint(0, 40, (3, 41))
    with torch.no_grad():
        whole, whole_state = model(x)
        for _ in range(10):
            cuts = sorted(rng.sample(range(1, 41), rng.randint(1, 12)))
            state, outs = model.init_state(3), []
            adv = model.init_state(3)
            for a, b in zip([0, *cuts], [*cuts, 41], strict=True):
                out, state = model(x[:, a:b], state)
                outs.append(out)
                adv = model.advance_state(x[:, a:b], adv)
                torch.testing.assert_close(model.head_state(adv), out[:, -1], atol=1e-5, rtol=0)
            torch.testing.assert_close(torch.cat(outs, dim=1), whole, atol=1e-5, rtol=0)
            for name in whole_state:
                torch.testing.assert_close(state[name], whole_state[name], atol=1e-5, rtol=0)
                torch.testing.assert_close(adv[name], whole_state[name], atol=1e-5, rtol=0)


def test_padded_batch_row_equals_the_row_alone():
    model = make_model(6)
    torch.manual_seed(7)
    with torch.no_grad():
        _, start = model(torch.randint(0, 40, (4, 9)))  # a state with history in it
        start["seen"][1] = False  # and one row that has seen nothing
        start["ids"][1] = -1
        start["h"][1] = 0
        start["keys"][1] = 0
        rows = [torch.randint(0, 40, (n,)) for n in (7, 1, 4, 7)]
        x = torch.zeros(4, 7, dtype=torch.long)
        for i, r in enumerate(rows):
            x[i, : len(r)] = r
        lengths = torch.tensor([len(r) for r in rows])
        state = model.advance_state(x, start, lengths)
        logp = model.head_state(state)
        for i, r in enumerate(rows):
            alone = {name: part[i : i + 1] for name, part in start.items()}
            out, s_i = model(r.unsqueeze(0), alone)
            for name in s_i:
                torch.testing.assert_close(state[name][i : i + 1], s_i[name], atol=1e-5, rtol=0)
            torch.testing.assert_close(logp[i], out[0, -1], atol=1e-5, rtol=0)


def test_gradients_are_finite_where_nothing_can_be_copied():
    model = make_model(9).train()
    x = torch.randint(0, 40, (4, 12))
    logp, _ = model(x)
    loss = torch.nn.functional.nll_loss(logp[:, :-1].flatten(0, 1), x[:, 1:].flatten())
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_one_token_steps_equal_the_forward():
    """The serving step (one id a row; no lengths, or lengths that are all 1) is the training
    forward, one position at a time, across many turns of the window."""
    model = make_model(10)
    torch.manual_seed(11)
    x = torch.randint(0, 40, (3, 3 * K + 2))
    with torch.no_grad():
        whole, whole_state = model(x)
        state = model.init_state(3)
        for t in range(x.shape[1]):
            lengths = torch.ones(3, dtype=torch.long) if t % 2 else None
            state = model.advance_state(x[:, t : t + 1], state, lengths)
            torch.testing.assert_close(model.head_state(state), whole[:, t], atol=1e-6, rtol=0)
    for name, part in whole_state.items():
        torch.testing.assert_close(state[name], part, atol=1e-6, rtol=0)


@pytest.mark.parametrize("copy_value", KINDS, indirect=True)  # copy_value alone
def test_the_head_reads_the_word_the_copy_path_offers(copy_value):
    """With the value layer at zero the model is the plain one; otherwise the vocabulary part
    depends on the offered word: the same text, a different word in the history, a different
    vocabulary distribution even where the sentinel takes everything."""
    plain, valued = make_model(12, copy_value=False), make_model(12, copy_value=True)
    assert valued.value is not None and plain.value is None
    valued.load_state_dict({**plain.state_dict(), "value.weight": valued.value.weight})
    x = torch.randint(0, 40, (2, 15))
    with torch.no_grad():
        valued.value.weight.zero_()
        torch.testing.assert_close(valued(x)[0], plain(x)[0])
        valued.value.weight.normal_()
        assert not torch.allclose(valued(x)[0], plain(x)[0])
        plain.sentinel.bias.fill_(1e4)  # the copy path gets nothing: p is the vocabulary's
        valued.sentinel.bias.fill_(1e4)
        a, b = valued.head_state(valued(x)[1]), plain.head_state(plain(x)[1])
        assert not torch.allclose(a, b)


def test_copy_start_offers_the_first_word_of_a_fresh_state():
    """Without copy_start a fresh state's first word is never in the history (nothing was read
    before it); with it, the zero state's key offers it: the `ids` entry of the pending key."""
    torch.manual_seed(0)
    x = torch.tensor([[5, 9, 7]])
    for copy_start in (False, True):
        config = ModelConfig(
            "gru-copy", hidden=16, copy_window=K, key_size=4, copy_start=copy_start
        )
        model = build_model(config).eval()
        with torch.no_grad():
            _, state = model(x)
        assert state["ids"][0, -2:].tolist() == [9, 7]
        assert (5 in state["ids"][0].tolist()) == copy_start


@pytest.mark.parametrize("copy_value", LOOKAHEAD, indirect=True)
def test_copy_lookahead_at_zero_is_the_copy_value_model(copy_value):
    """copy_lookahead adds to the copy_value model: with its weights at zero it is that model
    exactly; otherwise the answer changes."""
    base, more = make_model(3), make_model(3)
    base.config = more.config.__class__(**{**more.config.to_dict(), **dict.fromkeys(MORE, False)})
    base.after = None
    x = torch.randint(0, 40, (2, 15))
    with torch.no_grad():
        more.after.weight.zero_()
        torch.testing.assert_close(more(x)[0], base(x)[0])
        more.after.weight.normal_()
        assert not torch.allclose(more(x)[0], base(x)[0])

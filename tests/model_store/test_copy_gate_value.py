"""gru-copy's `copy_gate_value` (issue 16's twenty-second round, candidate Z): the sentinel's
score reads the embedding of the word the copy path offers, s = w . h + b + u . e_offered.
Off, the model, its parameters, its checkpoint and its recipe are K's; on, the score depends on
the offered word, the new weights are trained, and every route runs the modules (copy_step's
forms and the C step compute the sentinel from h alone). The state's invariants with the flag on
(pieces == whole, the one-token step == the forward, padded rows) are the `gate_value` kind of
tests/model_store/test_copy_model.py."""

import json
from dataclasses import replace

import pytest
import torch

import model_store.models as models
from model_store import ModelConfig, build_model, load_checkpoint, save_checkpoint
from training.cli import build_parser, recipe_flags
from training.evaluation import breakdown, counting_misses, counts_on, greedy_words
from training.loop import RECIPES

K_MODEL = RECIPES["gru-copy"].model  # the default model's recipe, K
Z_MODEL = replace(K_MODEL, copy_gate_value=True)


def small(config: ModelConfig) -> ModelConfig:
    return replace(config, hidden=24, key_size=8, copy_window=6)


def make(config: ModelConfig, seed: int = 0) -> models.CopyGRU:
    torch.manual_seed(seed)
    model = build_model(config).eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model


def test_off_by_default_and_k_unchanged():
    """K's recipe and config do not hold the field; its model has K's parameters, and the flag
    on adds one (H,) weight, made last, so the same seed draws K's weights for the rest."""
    assert not K_MODEL.copy_gate_value and "copy_gate_value" not in K_MODEL.to_dict()
    assert "copy_gate_value" not in RECIPES["gru-copy"].to_dict()
    assert Z_MODEL.to_dict()["copy_gate_value"] is True
    assert RECIPES["gru-copy"].updated(copy_gate_value=True).to_dict()["copy_gate_value"] is True
    k, z = make(K_MODEL), make(Z_MODEL)
    assert k.gate_value is None and k.fast_step and k.kernel_step
    k_params, z_params = dict(k.named_parameters()), dict(z.named_parameters())
    assert set(z_params) - set(k_params) == {"gate_value.weight"}
    assert z_params["gate_value.weight"].shape == (1, K_MODEL.hidden)
    for name, p in k_params.items():
        assert torch.equal(p, z_params[name]), name


def test_checkpoints_keep_the_flag_only_when_on(tmp_path, data):
    for config in (K_MODEL, Z_MODEL):
        model = make(small(config))
        ref = save_checkpoint(tmp_path, "copy", model, data.vocab)
        meta = json.loads((ref.path / "meta.json").read_text())
        assert ("copy_gate_value" in meta["config"]) == config.copy_gate_value
        loaded = load_checkpoint(ref)
        assert loaded.model.config == model.config
        x = torch.randint(0, 40, (2, 11))
        with torch.no_grad():
            torch.testing.assert_close(loaded.model(x)[0], model(x)[0], rtol=0, atol=0)


def test_at_zero_it_is_k_and_otherwise_the_offered_word_moves_the_gate():
    """u = 0: K's outputs exactly. With the head's own reading of the offer (value, after) at
    zero, the only route from the offered word to the output that changes with u is the gate:
    a nonzero u changes the output, and changing a word in the history (what is offered)
    changes the sentinel's score by u . (e_offered - e_offered')."""
    k, z = make(small(K_MODEL), 1), make(small(Z_MODEL), 1)
    z.load_state_dict({**k.state_dict(), "gate_value.weight": z.gate_value.weight})
    x = torch.randint(0, 40, (2, 15))
    seen = []
    z.gate_value.register_forward_hook(lambda m, i, o: seen.append((i[0], o)))
    with torch.no_grad():
        z.gate_value.weight.zero_()
        torch.testing.assert_close(z(x)[0], k(x)[0], rtol=0, atol=0)
        for m in (z, k):
            m.value.weight.zero_()
            m.after.weight.zero_()
        z.gate_value.weight.normal_(0, 1.0)
        seen.clear()
        out_z = z(x)[0]
        assert not torch.allclose(out_z, k(x)[0], atol=1e-4)
        offered, score = seen[0]
        torch.testing.assert_close(score, offered @ z.gate_value.weight.T)
        y = x.clone()
        y[:, 3] = (y[:, 3] + 7) % 40  # another word in the history: another offer after it
        seen.clear()
        z(y)
        assert not torch.allclose(seen[0][1][:, 4:], score[:, 4:])


def test_the_likelihood_trains_the_new_weights():
    z = make(small(Z_MODEL), 2).train()
    x = torch.randint(0, 40, (4, 20))
    logp, _ = z(x)
    loss = torch.nn.functional.nll_loss(logp[:, :-1].flatten(0, 1), x[:, 1:].flatten())
    loss.backward()
    grad = z.gate_value.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.fixture
def no_fast_forms(monkeypatch):
    """copy_step's forms fail the test if a flag-on model reaches them."""

    def refuse(*args, **kwargs):
        raise AssertionError("a copy_gate_value model reached copy_step")

    for name in ("fast_advance", "fast_head", "step_in_pool"):
        monkeypatch.setattr(models, name, refuse)


def test_every_route_runs_the_modules(no_fast_forms):
    """No grad, eval mode, one-id steps (where K runs copy_step and the C step): the flag-on
    model runs its modules, and the step equals the forward; the engine's pass in the pool
    declines (the engine then runs advance_state and head_state)."""
    z = make(small(Z_MODEL), 3)
    assert not z._fast()
    x = torch.randint(0, 40, (3, 20))
    with torch.inference_mode():
        whole, whole_state = z(x)
        state = z.init_state(3)
        for t in range(x.shape[1]):
            state = z.advance_state(x[:, t : t + 1], state)
            torch.testing.assert_close(z.head_state(state), whole[:, t], atol=1e-6, rtol=0)
        for name, part in whole_state.items():
            torch.testing.assert_close(state[name], part, atol=1e-6, rtol=0)
        assert z.step_in_pool(whole_state, [0], [1], [3], bytes(40)) is None


def test_the_proxy_checks_run_the_modules(no_fast_forms, data):
    """benchmarks.training's evaluation and counting checks read a flag-on model through its
    forward: they run with copy_step's forms refused."""
    z = make(replace(Z_MODEL, vocab_size=len(data.vocab), hidden=24, key_size=8), 4)
    ids = data.ids("valid")[:400]
    assert 0 <= breakdown(z, data.vocab, ids).accuracy <= 1
    assert len(counts_on(z, data.vocab, [5, 17], 2, 3)) == 2
    assert len(greedy_words(z, data.vocab, "one , two ,", 3)) == 3
    counting_misses(z, data.vocab, words=2, trials=2, ranges=(("1..99", 1, 99),), carry=100)


def test_the_flag_on_the_command_lines():
    args = build_parser().parse_args(["train", "--variant", "gru-copy", "--copy-gate-value"])
    config = RECIPES["gru-copy"].updated(**recipe_flags(args))
    assert config.model == Z_MODEL
    args = build_parser().parse_args(["train", "--variant", "gru-copy"])
    assert RECIPES["gru-copy"].updated(**recipe_flags(args)).model == K_MODEL

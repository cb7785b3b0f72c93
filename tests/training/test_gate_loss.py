"""gate_loss (issue 16, sixteenth round): a loss on gru-copy's gate alone where the copy path's
own choice is right. Off in every recipe, and off it changes nothing a recipe trains."""

import json
import math
from dataclasses import replace

import pytest
import torch
from torch import Tensor

import training.loop as loop
from model_store import ModelConfig, build_model
from model_store.models import CopyGRU, CopyParts
from model_store.vocab import BOS
from training.cli import main
from training.loop import RECIPES, TrainConfig, gate_term, inside_number, train

NEG = float("-inf")


def short(recipe: TrainConfig, **changes) -> TrainConfig:
    return replace(recipe, epochs=1, max_steps=6, bs=16, bptt=10, device="cpu", **changes)


def quiet(config: TrainConfig, data):
    return train(config, data, progress=False, log=lambda _: None)


def weights_equal(a, b) -> bool:
    return all(
        torch.equal(x, y)
        for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True)
    )


def test_off_in_every_recipe_and_out_of_meta_json():
    for recipe in RECIPES.values():
        assert recipe.gate_loss == 0
        assert "gate_loss" not in recipe.to_dict()
    on = RECIPES["gru-copy"].updated(gate_loss=1.0)
    assert on.to_dict()["gate_loss"] == 1.0


def test_off_trains_the_recipes_weights(data, monkeypatch):
    """Off, the term is never computed, and the training is the recipe's."""
    base = quiet(short(RECIPES["gru-copy"]), data)

    def refuse(*_):
        raise AssertionError("the gate's loss computed with the option off")

    monkeypatch.setattr(loop, "gate_term", refuse)
    again = quiet(short(RECIPES["gru-copy"], gate_loss=0.0), data)
    assert weights_equal(base, again)


def test_on_changes_the_training_and_keeps_the_model(data):
    off = quiet(short(RECIPES["gru-copy"]), data)
    on = quiet(short(RECIPES["gru-copy"], gate_loss=1.0), data)
    assert not weights_equal(off, on)
    assert on.model.config == off.model.config  # a training option only: the same model


def parts(entries: list[float], sentinel: float, ids: list[int]) -> CopyParts:
    """One position's attention (log-weights normalised with the sentinel's) over entries."""
    scores = torch.tensor([*entries, sentinel])
    return CopyParts(torch.log_softmax(scores, 0).view(1, 1, -1), torch.tensor([ids]))


def test_zero_where_the_pointer_is_wrong_positive_where_right():
    # the pointer's own softmax: 0.8 on the entries of id 5, 0.2 on id 7; the gate g = 0.9
    entries = [math.log(0.5), math.log(0.3), math.log(0.2)]
    p = parts([e + math.log(0.1) for e in entries], math.log(0.9), [5, 5, 7])
    right = gate_term(p, torch.tensor([[5]]))
    assert right.item() == pytest.approx(-math.log(1 - 0.9), rel=1e-5)  # -log(1 - g)
    assert gate_term(p, torch.tensor([[7]])).item() == 0  # 0.2 on the target: wrong
    assert gate_term(p, torch.tensor([[9]])).item() == 0  # the target not in the history
    # exactly half on the target is not "more than half"
    half = parts([math.log(0.5), math.log(0.5)], 0.0, [5, 7])
    assert gate_term(half, torch.tensor([[5]])).item() == 0


def test_the_mean_is_over_every_position_and_nothing_to_copy_is_no_nan():
    # (1, 3, 3): a right position, a wrong one, and one that may copy nothing (g = 1)
    attn = torch.tensor(
        [[[math.log(0.45), math.log(0.05), math.log(0.5)], [0.0, NEG, NEG], [NEG, NEG, 0.0]]]
    )
    attn[0, 1] = torch.log_softmax(torch.tensor([0.0, 3.0, 1.0]), 0)
    attn.requires_grad_(True)
    p = CopyParts(attn, torch.tensor([[4, 6]]))
    term = gate_term(p, torch.tensor([[4, 4, 4]]))
    assert term.item() == pytest.approx(-math.log(0.5) / 3, rel=1e-5)
    term.backward()
    assert torch.isfinite(attn.grad).all()
    assert attn.grad[0, 1:].abs().sum() == 0  # only the right position is trained


def test_its_gradient_reaches_the_sentinel_and_not_the_vocabulary(data):
    torch.manual_seed(0)
    model = build_model(replace(RECIPES["gru-copy"].model, vocab_size=len(data.vocab)))
    assert isinstance(model, CopyGRU)
    ids = torch.tensor([data.ids("train")[:41]])
    x, y = ids[:, :-1], ids[:, 1:]
    logp, _, p = model.forward_copy(x)
    assert torch.equal(logp, model(x)[0])  # forward_copy is forward and what it did
    term = gate_term(p, y)
    assert term.item() > 0
    term.backward()
    assert model.sentinel.weight.grad is not None and model.sentinel.weight.grad.abs().sum() > 0
    assert model.sentinel.bias.grad.abs().sum() > 0
    assert model.h_o.weight.grad is None  # the vocabulary's head: nothing from the gate's loss


def test_the_option_is_checked(tmp_path, capsys):
    with pytest.raises(ValueError, match="0 \\(off\\) or more"):
        RECIPES["gru-copy"].updated(gate_loss=-0.1)
    with pytest.raises(ValueError, match="no copy gate"):
        TrainConfig(ModelConfig("gru"), gate_loss=1.0)
    assert TrainConfig(ModelConfig("gru"), gate_loss=0.0).gate_loss == 0
    args = ["train", "--variant", "gru-copy", "--store", str(tmp_path)]
    with pytest.raises(SystemExit):
        main([*args, "--gate-loss", "-1"])
    assert "must be 0 or more" in capsys.readouterr().err
    assert main(["train", "--variant", "gru", "--store", str(tmp_path), "--gate-loss", "1"]) == 2
    assert "no copy gate" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


# gate_loss_inside (issue 16, eighteenth round): the same term only at positions whose input is
# not the separator "," nor xxbos (those that predict a word inside a number).


def test_inside_off_in_every_recipe_and_out_of_meta_json():
    for recipe in RECIPES.values():
        assert recipe.gate_loss_inside is False
        assert "gate_loss_inside" not in recipe.to_dict()
    on = RECIPES["gru-copy"].updated(gate_loss=1.0, gate_loss_inside=True)
    assert on.to_dict()["gate_loss_inside"] is True
    assert "gate_loss_inside" not in RECIPES["gru-copy"].updated(gate_loss=1.0).to_dict()


def test_inside_masks_the_separator_and_xxbos_even_where_the_pointer_is_right(data):
    vocab = data.vocab
    comma, bos = vocab.stoi[","], vocab.stoi[BOS]
    ten, thousand = vocab.stoi["ten"], vocab.stoi["thousand"]
    x = torch.tensor([[comma, ten, bos, thousand]])
    assert inside_number(x, vocab).tolist() == [[False, True, False, True]]
    # every position: the pointer 0.8 on the target (id 5), g = 0.9 -> S's term -log(0.1)
    entries = [math.log(0.5 * 0.1), math.log(0.3 * 0.1), math.log(0.2 * 0.1)]
    one = torch.log_softmax(torch.tensor([*entries, math.log(0.9)]), 0)
    p = CopyParts(one.expand(1, 4, 4).clone(), torch.tensor([[5, 5, 7]]))
    y = torch.tensor([[5, 5, 5, 5]])
    s = gate_term(p, y)
    assert s.item() == pytest.approx(-math.log(0.1), rel=1e-5)  # right at all 4 positions
    v = gate_term(p, y, inside_number(x, vocab))
    # S's value at the two inside positions, 0 at "," and xxbos; the mean over all 4
    assert v.item() == pytest.approx(-math.log(0.1) * 2 / 4, rel=1e-5)
    assert torch.equal(gate_term(p, y, None), s)  # off: S's term exactly
    every = torch.ones(1, 4, dtype=torch.bool)
    assert torch.equal(gate_term(p, y, every), s)
    # the gradient: nothing at the masked positions
    attn = p.attn.clone().requires_grad_(True)
    gate_term(CopyParts(attn, p.ids), y, inside_number(x, vocab)).backward()
    assert attn.grad[0, [0, 2]].abs().sum() == 0
    assert attn.grad[0, [1, 3]].abs().sum() > 0


def test_inside_off_trains_s_and_on_masks_every_step(data, monkeypatch):
    s = quiet(short(RECIPES["gru-copy"], gate_loss=1.0), data)

    def refuse(*_):
        raise AssertionError("the positions' mask computed with the option off")

    with monkeypatch.context() as m:
        m.setattr(loop, "inside_number", refuse)
        again = quiet(short(RECIPES["gru-copy"], gate_loss=1.0, gate_loss_inside=False), data)
    assert weights_equal(s, again)  # off: S's training exactly
    seen = []
    term = loop.gate_term

    def recording(parts, y, inside=None, detach=False, sentinel=None, bound=0.0):
        seen.append(inside)
        return term(parts, y, inside, detach, sentinel, bound)

    with monkeypatch.context() as m:
        m.setattr(loop, "gate_term", recording)
        v = quiet(short(RECIPES["gru-copy"], gate_loss=1.0, gate_loss_inside=True), data)
    # on: every step's term gets the mask, and the mask drops the data's separators
    assert len(seen) == 6 and all(mask is not None for mask in seen)
    assert all(not bool(mask.all()) and bool(mask.any()) for mask in seen)
    k = quiet(short(RECIPES["gru-copy"]), data)
    assert not weights_equal(k, v)  # it trains (a few steps at the start: S's weights or near)
    assert v.model.config == s.model.config


def test_inside_is_checked(tmp_path, capsys):
    with pytest.raises(ValueError, match="needs gate_loss above 0"):
        RECIPES["gru-copy"].updated(gate_loss_inside=True)
    with pytest.raises(ValueError, match="no copy gate"):
        TrainConfig(ModelConfig("gru"), gate_loss=1.0, gate_loss_inside=True)
    args = ["train", "--variant", "gru-copy", "--store", str(tmp_path)]
    assert main([*args, "--gate-loss-inside"]) == 2
    assert "needs gate_loss above 0" in capsys.readouterr().err
    assert (
        main(
            [
                "train",
                "--variant",
                "gru",
                "--store",
                str(tmp_path),
                "--gate-loss",
                "1",
                "--gate-loss-inside",
            ]
        )
        == 2
    )
    assert "no copy gate" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


# gate_loss_detach (issue 16, seventeenth round): the same term with the history's scores
# detached in it, so that it trains the sentinel's score alone.


def test_detach_off_in_every_recipe_and_out_of_meta_json():
    for recipe in RECIPES.values():
        assert recipe.gate_loss_detach is False
        assert "gate_loss_detach" not in recipe.to_dict()
    on = RECIPES["gru-copy"].updated(gate_loss=1.0, gate_loss_detach=True)
    assert on.to_dict()["gate_loss_detach"] is True
    assert "gate_loss_detach" not in RECIPES["gru-copy"].updated(gate_loss=1.0).to_dict()


def test_detach_is_the_same_value_and_off_is_the_round_16_term():
    entries = [math.log(0.5), math.log(0.3), math.log(0.2)]
    raw = torch.tensor([[[*[e + math.log(0.1) for e in entries], math.log(0.9)]]]) + 1.7
    p = CopyParts(torch.log_softmax(raw, 2), torch.tensor([[5, 5, 7]]), raw)
    y = torch.tensor([[5]])
    assert gate_term(p, y, detach=True).item() == pytest.approx(-math.log(1 - 0.9), rel=1e-5)
    assert torch.equal(gate_term(p, y, detach=False), gate_term(p, y))
    assert gate_term(p, torch.tensor([[7]]), detach=True).item() == 0  # wrong: nothing
    # a large sentinel score (g near 1) stays finite
    big = raw.clone()
    big[0, 0, -1] = 200.0
    far = gate_term(CopyParts(torch.log_softmax(big, 2), p.ids, big), y, detach=True)
    assert math.isfinite(far.item()) and far.item() == pytest.approx(200 - 1.7 + math.log(10))


def test_detach_with_nothing_to_copy_is_no_nan():
    # (1, 3, 3): a right position, a wrong one, and one that may copy nothing
    scores = torch.tensor(
        [[[0.2, -2.0, 0.3], [0.0, 3.0, 1.0], [NEG, NEG, 0.5]]], requires_grad=True
    )
    p = CopyParts(torch.log_softmax(scores, 2), torch.tensor([[4, 6]]), scores)
    term = gate_term(p, torch.tensor([[4, 4, 4]]), detach=True)
    assert term.item() == pytest.approx(-p.attn[0, 0, :2].logsumexp(0).item() / 3, rel=1e-5)
    term.backward()
    assert torch.isfinite(scores.grad).all()
    assert scores.grad[0, 0, :2].abs().sum() == 0  # the history's scores: nothing
    assert scores.grad[0, 0, 2] > 0  # the sentinel's: pushed down
    assert scores.grad[0, 1:].abs().sum() == 0


def grads(model: CopyGRU, data, detach: bool) -> dict[str, Tensor | None]:
    ids = torch.tensor([data.ids("train")[:41]])
    x, y = ids[:, :-1], ids[:, 1:]
    model.zero_grad(set_to_none=True)
    _, _, p = model.forward_copy(x)
    term = gate_term(p, y, detach=detach)
    assert term.item() > 0
    term.backward()
    return {name: w.grad for name, w in model.named_parameters()}


def nonzero(grad: Tensor | None) -> bool:
    return grad is not None and grad.abs().sum().item() > 0


def test_detach_reaches_the_sentinel_and_not_the_query_and_key_maps(data):
    torch.manual_seed(0)
    model = build_model(replace(RECIPES["gru-copy"].model, vocab_size=len(data.vocab)))
    assert isinstance(model, CopyGRU)
    s = grads(model, data, detach=False)  # round 16's S: the normaliser reaches both maps
    assert nonzero(s["sentinel.weight"]) and nonzero(s["sentinel.bias"])
    for name in ("query.weight", "query.bias", "key.weight"):
        assert nonzero(s[name]), name
    u = grads(model, data, detach=True)
    assert nonzero(u["sentinel.weight"]) and nonzero(u["sentinel.bias"])
    assert nonzero(u["rnn.weight_hh_l0"])  # what feeds the sentinel's score
    for name in ("query.weight", "query.bias", "key.weight", "key.bias", "h_o.weight"):
        assert not nonzero(u[name]), name


def test_detach_changes_the_training_and_keeps_the_model(data):
    s = quiet(short(RECIPES["gru-copy"], gate_loss=1.0), data)
    u = quiet(short(RECIPES["gru-copy"], gate_loss=1.0, gate_loss_detach=True), data)
    assert not weights_equal(s, u)
    assert u.model.config == s.model.config


def test_detach_is_checked(tmp_path, capsys):
    with pytest.raises(ValueError, match="needs gate_loss above 0"):
        RECIPES["gru-copy"].updated(gate_loss_detach=True)
    args = ["train", "--variant", "gru-copy", "--store", str(tmp_path)]
    assert main([*args, "--gate-loss-detach"]) == 2
    assert "needs gate_loss above 0" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


# gate_loss_detach and gate_loss_inside together (issue 16, nineteenth round, candidate W): the
# seventeenth round's detached term only at the eighteenth round's positions.


def test_both_on_out_of_meta_json_only_at_their_defaults():
    both = RECIPES["gru-copy"].updated(gate_loss=1.0, gate_loss_detach=True, gate_loss_inside=True)
    assert both.to_dict()["gate_loss_detach"] is True
    assert both.to_dict()["gate_loss_inside"] is True
    for recipe in RECIPES.values():
        assert not {"gate_loss", "gate_loss_detach", "gate_loss_inside"} & set(recipe.to_dict())


def test_both_masks_the_separator_and_xxbos_with_the_detached_value(data):
    vocab = data.vocab
    comma, bos = vocab.stoi[","], vocab.stoi[BOS]
    ten, thousand = vocab.stoi["ten"], vocab.stoi["thousand"]
    x = torch.tensor([[comma, ten, bos, thousand]])
    inside = inside_number(x, vocab)
    # every position: the pointer 0.8 on the target (id 5), g = 0.9; scores shifted by 1.7
    entries = [math.log(0.5 * 0.1), math.log(0.3 * 0.1), math.log(0.2 * 0.1)]
    raw = torch.tensor([*entries, math.log(0.9)]) + 1.7
    scores = raw.expand(1, 4, 4).clone().requires_grad_(True)
    p = CopyParts(torch.log_softmax(scores, 2), torch.tensor([[5, 5, 7]]), scores)
    y = torch.tensor([[5, 5, 5, 5]])
    u = gate_term(p, y, detach=True)  # U: right at all 4 positions
    assert u.item() == pytest.approx(-math.log(0.1), rel=1e-5)
    w = gate_term(p, y, inside, detach=True)
    # U's value at the two inside positions, 0 at "," and xxbos; the mean over all 4
    assert w.item() == pytest.approx(-math.log(0.1) * 2 / 4, rel=1e-5)
    every = torch.ones(1, 4, dtype=torch.bool)
    assert torch.equal(gate_term(p, y, every, detach=True), u)
    # the gradient: the sentinel's score at the inside positions only, never the history's
    w.backward()
    assert scores.grad[0, [0, 2]].abs().sum() == 0
    assert (scores.grad[0, [1, 3], -1] > 0).all()
    assert scores.grad[0, :, :-1].abs().sum() == 0


def test_both_reach_the_sentinel_and_not_the_query_and_key_maps(data):
    torch.manual_seed(0)
    model = build_model(replace(RECIPES["gru-copy"].model, vocab_size=len(data.vocab)))
    assert isinstance(model, CopyGRU)
    ids = torch.tensor([data.ids("train")[:41]])
    x, y = ids[:, :-1], ids[:, 1:]
    inside = inside_number(x, data.vocab)
    assert bool(inside.any()) and not bool(inside.all())
    _, _, p = model.forward_copy(x)
    w = gate_term(p, y, inside, detach=True)
    u = gate_term(p, y, detach=True)
    assert 0 < w.item() <= u.item()  # never more than U: the separators add nothing
    w.backward()
    g = {name: t.grad for name, t in model.named_parameters()}
    assert nonzero(g["sentinel.weight"]) and nonzero(g["sentinel.bias"])
    assert nonzero(g["rnn.weight_hh_l0"])  # what feeds the sentinel's score
    for name in ("query.weight", "query.bias", "key.weight", "key.bias", "h_o.weight"):
        assert not nonzero(g[name]), name


def test_both_pass_the_mask_and_detach_every_step(data, monkeypatch):
    seen = []
    term = loop.gate_term

    def recording(parts, y, inside=None, detach=False, sentinel=None, bound=0.0):
        seen.append((inside, detach))
        return term(parts, y, inside, detach, sentinel, bound)

    on = dict(gate_loss=1.0, gate_loss_detach=True, gate_loss_inside=True)
    with monkeypatch.context() as m:
        m.setattr(loop, "gate_term", recording)
        w = quiet(short(RECIPES["gru-copy"], **on), data)
    assert len(seen) == 6
    assert all(mask is not None and not bool(mask.all()) and detach for mask, detach in seen)
    k = quiet(short(RECIPES["gru-copy"]), data)
    v = quiet(short(RECIPES["gru-copy"], gate_loss=1.0, gate_loss_inside=True), data)
    # it trains, and not as V (a few steps at the start: U's weights or near, as V's are S's)
    assert not weights_equal(w, k) and not weights_equal(w, v)
    assert w.model.config == k.model.config


def test_both_from_the_command_line(tmp_path, capsys):
    args = ["train", "--variant", "gru-copy", "--store", str(tmp_path)]
    assert main([*args, "--gate-loss-detach", "--gate-loss-inside"]) == 2
    assert "needs gate_loss above 0" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


# gate_loss_sentinel_only (issue 16, twentieth round, candidate X): W's term with the state the
# sentinel's score reads detached too, so that it trains the sentinel's own weights alone.

W = dict(gate_loss=1.0, gate_loss_detach=True, gate_loss_inside=True)
X = dict(W, gate_loss_sentinel_only=True)


def test_sentinel_only_off_in_every_recipe_and_out_of_meta_json():
    for recipe in RECIPES.values():
        assert recipe.gate_loss_sentinel_only is False
        assert "gate_loss_sentinel_only" not in recipe.to_dict()
    assert RECIPES["gru-copy"].updated(**X).to_dict()["gate_loss_sentinel_only"] is True
    assert "gate_loss_sentinel_only" not in RECIPES["gru-copy"].updated(**W).to_dict()


def test_sentinel_only_is_checked(tmp_path, capsys):
    for without in (dict(gate_loss=1.0), dict(gate_loss=1.0, gate_loss_inside=True), {}):
        with pytest.raises(ValueError, match="needs gate_loss_detach on"):
            RECIPES["gru-copy"].updated(gate_loss_sentinel_only=True, **without)
    args = ["train", "--variant", "gru-copy", "--store", str(tmp_path)]
    assert main([*args, "--gate-loss", "1", "--gate-loss-sentinel-only"]) == 2
    assert "needs gate_loss_detach on" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
    p = parts([0.0, 1.0], 0.5, [5, 7])
    with pytest.raises(ValueError, match="needs detach=True"):
        gate_term(p, torch.tensor([[7]]), sentinel=torch.nn.Linear(3, 1))
    with pytest.raises(ValueError, match="outputs"):  # parts without the outputs
        gate_term(CopyParts(p.attn, p.ids, p.attn), torch.tensor([[7]]), None, True, p.attn)


def x_and_w(data) -> tuple[CopyGRU, Tensor, Tensor, Tensor]:
    torch.manual_seed(0)
    model = build_model(replace(RECIPES["gru-copy"].model, vocab_size=len(data.vocab)))
    assert isinstance(model, CopyGRU)
    ids = torch.tensor([data.ids("train")[:81]])
    x, y = ids[:, :-1], ids[:, 1:]
    return model, x, y, inside_number(x, data.vocab)


def term_grads(model: CopyGRU, x, y, inside, sentinel) -> tuple[float, dict[str, Tensor | None]]:
    model.zero_grad(set_to_none=True)
    _, _, p = model.forward_copy(x)
    assert torch.equal(p.out, model._recur(x, model.init_state(1)["h"], None)[0])
    term = gate_term(p, y, inside, True, sentinel)
    term.backward()
    return term.item(), {name: w.grad for name, w in model.named_parameters()}


def test_sentinel_only_is_ws_value_and_reaches_the_sentinels_own_weights_alone(data):
    model, x, y, inside = x_and_w(data)
    w_value, w = term_grads(model, x, y, inside, None)
    x_value, g = term_grads(model, x, y, inside, model.sentinel)
    assert x_value > 0 and x_value == pytest.approx(w_value, rel=1e-6)  # W's value
    # W's term reaches the GRU and the embedding that feed the sentinel's score; X's does not
    for name in ("rnn.weight_hh_l0", "rnn.weight_ih_l0", "rnn.bias_hh_l0", "i_h.weight"):
        assert nonzero(w[name]), name
    assert {name for name, grad in g.items() if nonzero(grad)} == {
        "sentinel.weight",
        "sentinel.bias",
    }
    # on the sentinel's own weights the two are the same gradient (the same direct path)
    assert torch.allclose(g["sentinel.weight"], w["sentinel.weight"], rtol=1e-5, atol=1e-8)
    assert torch.allclose(g["sentinel.bias"], w["sentinel.bias"], rtol=1e-5, atol=1e-8)
    assert g["sentinel.bias"].item() > 0  # it lowers the sentinel's score: trusts the copy


def test_sentinel_only_with_the_likelihood_leaves_every_other_gradient_ks(data):
    """With the likelihood, as the training sums them: every weight but the sentinel's gets
    exactly the likelihood's gradient (K's), where W's term adds to the GRU's."""
    model, x, y, inside = x_and_w(data)

    def total(sentinel, on: bool) -> dict[str, Tensor]:
        model.zero_grad(set_to_none=True)
        logp, _, p = model.forward_copy(x)
        loss = torch.nn.functional.cross_entropy(logp.flatten(0, 1), y.flatten())
        if on:
            loss = loss + gate_term(p, y, inside, True, sentinel)
        loss.backward()
        return {name: w.grad.clone() for name, w in model.named_parameters()}

    k, w, xg = total(None, False), total(None, True), total(model.sentinel, True)
    for name in k:
        if name.startswith("sentinel."):
            assert not torch.equal(xg[name], k[name]), name
        else:
            assert torch.equal(xg[name], k[name]), name
    assert not torch.equal(w["rnn.weight_hh_l0"], k["rnn.weight_hh_l0"])


def test_sentinel_only_hands_the_optimizer_ks_gradient_but_the_sentinels(data, monkeypatch):
    """The training from the same start: X's weights are K's until its term is first above 0,
    and at that step the gradient X hands AdamW is K's on every weight but the sentinel's,
    where W's (the same term's value there) differs on the GRU. Every step passes the sentinel
    with the mask and detach."""
    terms, handed = [], []
    term = loop.gate_term
    step = torch.optim.AdamW.step

    def recording(parts, y, inside=None, detach=False, sentinel=None, bound=0.0):
        assert inside is not None and detach
        value = term(parts, y, inside, detach, sentinel, bound)
        terms.append((value.item(), sentinel))
        return value

    def recording_step(opt, *args, **kwargs):
        params = [p for group in opt.param_groups for p in group["params"]]
        handed.append({id(p): p.grad.clone() for p in params if p.grad is not None})
        return step(opt, *args, **kwargs)

    def steps(**changes) -> tuple[list[dict[str, Tensor]], list[float], list]:
        handed.clear(), terms.clear()
        result = quiet(short(RECIPES["gru-copy"], **changes), data)
        names = {id(w): n for n, w in result.model.named_parameters()}
        grads = [{names[i]: g for i, g in one.items()} for one in handed]
        return grads, [v for v, _ in terms], [s is result.model.sentinel for _, s in terms]

    with monkeypatch.context() as m:
        m.setattr(torch.optim.AdamW, "step", recording_step)
        k, _, _ = steps()
        m.setattr(loop, "gate_term", recording)
        w, w_terms, _ = steps(**W)
        x, x_terms, passed = steps(**X)
    assert len(k) == len(w) == len(x) == len(x_terms) == 6 and all(passed)
    j = next(i for i, v in enumerate(x_terms) if v > 0)  # the first step the term trains
    assert x_terms[: j + 1] == w_terms[: j + 1]  # the same weights until then: the same term
    for i in range(j):
        assert all(torch.equal(x[i][n], k[i][n]) for n in k[i])
    assert "sentinel.bias" in k[j] and "rnn.weight_hh_l0" in k[j] and set(x[j]) == set(k[j])
    for name in k[j]:
        if name.startswith("sentinel."):
            assert not torch.equal(x[j][name], k[j][name]), name
            assert torch.allclose(x[j][name], w[j][name], rtol=1e-5, atol=1e-8), name
        else:
            assert torch.equal(x[j][name], k[j][name]), name
    assert not torch.equal(w[j]["rnn.weight_hh_l0"], k[j]["rnn.weight_hh_l0"])


def test_sentinel_only_trains_and_keeps_the_model(data, monkeypatch):
    seen = []
    term = loop.gate_term

    def recording(parts, y, inside=None, detach=False, sentinel=None, bound=0.0):
        seen.append(sentinel)
        return term(parts, y, inside, detach, sentinel, bound)

    with monkeypatch.context() as m:
        m.setattr(loop, "gate_term", recording)
        xr = quiet(short(RECIPES["gru-copy"], **X), data)
    assert len(seen) == 6 and all(s is xr.model.sentinel for s in seen)
    k = quiet(short(RECIPES["gru-copy"]), data)
    w = quiet(short(RECIPES["gru-copy"], **W), data)
    assert not weights_equal(xr, k) and not weights_equal(xr, w)
    assert xr.model.config == k.model.config  # a training option only: the same model


def test_sentinel_only_from_the_command_line(tmp_path):
    store = tmp_path / "store"
    args = ["train", "--variant", "gru-copy", "--store", str(store), "--epochs", "1"]
    args += ["--max-steps", "2", "--no-progress"]
    flags = ["--gate-loss", "1", "--gate-loss-detach", "--gate-loss-inside"]
    assert main([*args, *flags, "--gate-loss-sentinel-only"]) == 0
    (meta,) = store.glob("*/*/meta.json")
    recipe = json.loads(meta.read_text())["recipe"]
    assert recipe["gate_loss_sentinel_only"] is True and recipe["gate_loss_detach"] is True


# gate_loss_bound (issue 16, twenty-first round): the term a hinge, 0 (and no gradient) where
# the gate g <= the bound, -log(1 - g) + log(1 - bound) above it.

Y = dict(X, gate_loss_bound=0.5)
HALF = math.log(0.5)


def test_bound_off_in_every_recipe_and_out_of_meta_json():
    for recipe in RECIPES.values():
        assert recipe.gate_loss_bound == 0
        assert "gate_loss_bound" not in recipe.to_dict()
    assert RECIPES["gru-copy"].updated(**Y).to_dict()["gate_loss_bound"] == 0.5
    assert "gate_loss_bound" not in RECIPES["gru-copy"].updated(**X).to_dict()


def test_bound_is_checked(tmp_path, capsys):
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="in \\[0, 1\\)"):
            RECIPES["gru-copy"].updated(gate_loss=1.0, gate_loss_bound=bad)
    with pytest.raises(ValueError, match="needs gate_loss above 0"):
        RECIPES["gru-copy"].updated(gate_loss_bound=0.5)
    assert RECIPES["gru-copy"].updated(gate_loss=1.0, gate_loss_bound=0.5).gate_loss_bound == 0.5
    args = ["train", "--variant", "gru-copy", "--store", str(tmp_path)]
    assert main([*args, "--gate-loss-bound", "0.5"]) == 2
    assert "needs gate_loss above 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--gate-loss", "1", "--gate-loss-bound", "-1"])
    assert "must be 0 or more" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def window(gates: list[float], right: list[bool]) -> tuple[Tensor, Tensor, Tensor]:
    """(1, T, 3) scores with a leaf for the gradient: at each position two history entries
    (ids 5 and 7, the pointer's own offer 0.9 on id 5) and a sentinel whose share is the gate;
    the target 5 where the pointer is right, 7 where not. Returns scores, ids, y."""
    rows = []
    for g in gates:
        copy = math.log(1 - g)
        rows.append([copy + math.log(0.9), copy + math.log(0.1), math.log(g)])
    scores = torch.tensor([rows], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[5 if r else 7 for r in right]])
    return scores, torch.tensor([[5, 7]]), y


def routes(scores: Tensor, ids: Tensor):
    """The three ways the term is computed (S's, U's and X's), each as a function of the
    parts and y with a bound; X's sentinel a Linear that reads the scores' last column."""
    attn = torch.log_softmax(scores, 2)
    sentinel = torch.nn.Linear(1, 1).double()
    with torch.no_grad():
        sentinel.weight.fill_(1.0), sentinel.bias.zero_()
    out = scores[..., -1:]  # the sentinel's input: its score itself (weight 1, bias 0)
    return {
        "S": lambda y, b: gate_term(CopyParts(attn, ids, scores), y, bound=b),
        "U": lambda y, b: gate_term(CopyParts(attn, ids, scores), y, None, True, None, b),
        "X": lambda y, b: gate_term(CopyParts(attn, ids, scores, out), y, None, True, sentinel, b),
    }, sentinel


@pytest.mark.parametrize("route", ["S", "U", "X"])
def test_bound_is_zero_with_no_gradient_where_the_gate_is_under_it(route):
    for g in (0.01, 0.3, 0.5):  # at or under the bound, the pointer right
        scores, ids, y = window([g], [True])
        terms, sentinel = routes(scores, ids)
        unbounded = terms[route](y, 0.0)
        assert unbounded.item() == pytest.approx(-math.log(1 - g), rel=1e-9)  # it would push
        term = terms[route](y, 0.5)
        assert term.item() == 0, g
        scores.grad = None
        term.backward()
        for grad in (scores.grad, sentinel.weight.grad, sentinel.bias.grad):
            assert grad is None or grad.abs().sum() == 0, g


@pytest.mark.parametrize("route", ["S", "U", "X"])
def test_bound_above_it_is_the_unbounded_gradient_and_the_value_less_log_two(route):
    # four positions: under the bound and right, over it and right (twice), over it and wrong
    gates, right = [0.2, 0.9, 0.6, 0.95], [True, True, True, False]

    def grads(bound: float, keep: list[bool]) -> tuple[float, list[Tensor]]:
        scores, ids, y = window(gates, [r and k for r, k in zip(right, keep, strict=True)])
        terms, sentinel = routes(scores, ids)
        term = terms[route](y, bound)
        term.backward()
        found = [scores.grad, sentinel.weight.grad, sentinel.bias.grad]
        return term.item(), [torch.zeros(1) if g is None else g for g in found]

    value, bounded = grads(0.5, [True] * 4)
    # the hinge: -log(1 - g) + log(0.5) at the two over the bound, the mean over all four
    want = (-math.log(0.1) + HALF - math.log(0.4) + HALF) / 4
    assert value == pytest.approx(want, rel=1e-9)
    # its gradient is the unbounded term's over the positions above the bound alone
    _, above = grads(0.0, [False, True, True, True])
    _, every = grads(0.0, [True] * 4)
    for b, a in zip(bounded, above, strict=True):
        assert torch.allclose(b, a, rtol=1e-12, atol=1e-15)
    # the unbounded one pushes at g = 0.2 too: a different gradient
    assert not all(torch.allclose(b, e) for b, e in zip(bounded, every, strict=True))
    if route != "X":  # the scores' gradient: nothing at the position under the bound
        assert bounded[0][0, 0].abs().sum() == 0 and every[0][0, 0].abs().sum() > 0
        assert bounded[0][0, 1].abs().sum() > 0


def test_bound_on_a_model_trains_the_sentinel_alone_over_the_bounds_positions(data):
    """X's route with the bound on a model: the hinge over the right, inside positions whose g
    is above 0.5 (g read from the attention), the sentinel's own weights alone trained, and a
    gradient there that is X's restricted to those positions."""
    model, x, y, inside = x_and_w(data)
    with torch.no_grad():  # the sentinel's bias moved so that the gates lie about 0.5
        _, _, p = model.forward_copy(x)
        logit = p.scores[..., -1] - torch.logsumexp(p.scores[..., :-1], 2)  # log(g / (1 - g))
        model.sentinel.bias -= logit[inside & torch.isfinite(logit)].median()
    model.zero_grad(set_to_none=True)
    _, _, p = model.forward_copy(x)
    bounded = gate_term(p, y, inside, True, model.sentinel, 0.5)
    unbounded = gate_term(p, y, inside, True, model.sentinel)
    with torch.no_grad():
        g = p.attn[..., -1].exp()
        entries = p.attn[..., :-1]
        offer = (entries - torch.logsumexp(entries, 2, keepdim=True)).exp()
        right = (offer * (p.ids.unsqueeze(1) == y.unsqueeze(2))).sum(2) > 0.5
        right &= inside
        over = right & (g > 0.5)
    assert over.any() and (right & ~over).any()  # both sides of the bound in this window
    want = ((-torch.log1p(-g[over]) + HALF).sum() / g.numel()).item()
    assert bounded.item() == pytest.approx(want, rel=1e-4)
    assert 0 < bounded.item() < unbounded.item()
    bounded.backward()
    grads = {n: w.grad for n, w in model.named_parameters()}
    assert {n for n, grad in grads.items() if nonzero(grad)} == {"sentinel.weight", "sentinel.bias"}
    # the same gradient as X's term over the positions above the bound alone
    only = CopyParts(p.attn.detach(), p.ids, p.scores.detach(), p.out.detach())
    sentinel = torch.nn.Linear(model.sentinel.in_features, 1)
    sentinel.load_state_dict(model.sentinel.state_dict())
    gate_term(only, y, over, True, sentinel).backward()
    assert torch.allclose(grads["sentinel.weight"], sentinel.weight.grad, rtol=1e-4, atol=1e-7)
    assert torch.allclose(grads["sentinel.bias"], sentinel.bias.grad, rtol=1e-4, atol=1e-7)


def test_bound_is_passed_every_step_and_zero_is_ks_training(data, monkeypatch):
    """Every step passes the bound with X's mask, detach and sentinel. In the short training an
    untrained model's gates are low (about 1 / 17 over 16 entries), so Y's term (bound 0.5) is 0
    at every step and its training is K's bit for bit, not X's; a bound under some of them
    (0.02) trains other weights than K, and keeps the model."""
    seen, values = [], []
    term = loop.gate_term

    def recording(parts, y, inside=None, detach=False, sentinel=None, bound=0.0):
        seen.append((inside is not None, detach, sentinel, bound))
        value = term(parts, y, inside, detach, sentinel, bound)
        values.append(value.item())
        return value

    with monkeypatch.context() as m:
        m.setattr(loop, "gate_term", recording)
        yr = quiet(short(RECIPES["gru-copy"], **Y), data)
        assert seen == [(True, True, yr.model.sentinel, 0.5)] * 6 and values == [0.0] * 6
        seen.clear(), values.clear()
        low = quiet(short(RECIPES["gru-copy"], **dict(Y, gate_loss_bound=0.02)), data)
        assert seen == [(True, True, low.model.sentinel, 0.02)] * 6 and max(values) > 0
    k = quiet(short(RECIPES["gru-copy"]), data)
    xr = quiet(short(RECIPES["gru-copy"], **X), data)
    assert weights_equal(yr, k)  # a term that is 0 adds nothing: K's training
    assert not weights_equal(yr, xr)  # where X's unbounded term trained
    assert not weights_equal(low, k)
    assert low.model.config == k.model.config  # a training option only: the same model


def test_bound_from_the_command_line(tmp_path):
    store = tmp_path / "store"
    args = ["train", "--variant", "gru-copy", "--store", str(store), "--epochs", "1"]
    args += ["--max-steps", "2", "--no-progress", "--gate-loss", "1", "--gate-loss-detach"]
    args += ["--gate-loss-inside", "--gate-loss-sentinel-only"]
    assert main([*args, "--gate-loss-bound", "0.5"]) == 0
    (meta,) = store.glob("*/*/meta.json")
    recipe = json.loads(meta.read_text())["recipe"]
    assert recipe["gate_loss_bound"] == 0.5 and recipe["gate_loss_sentinel_only"] is True

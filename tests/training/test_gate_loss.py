"""gate_loss (issue 16, sixteenth round): a loss on gru-copy's gate alone where the copy path's
own choice is right. Off in every recipe, and off it changes nothing a recipe trains."""

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

    def recording(parts, y, inside=None, detach=False):
        seen.append(inside)
        return term(parts, y, inside, detach)

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

    def recording(parts, y, inside=None, detach=False):
        seen.append((inside, detach))
        return term(parts, y, inside, detach)

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

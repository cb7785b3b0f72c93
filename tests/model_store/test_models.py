import pytest
import torch
from torch import nn

from model_store import PREFERRED_DEFAULTS, SEED_VARIANTS, VARIANTS, ModelConfig, build_model
from model_store.models import CopyGRU, GRUCell, Model5, Model6, Model7


def test_hand_written_cell_equals_grucell():
    torch.manual_seed(0)
    ref = nn.GRUCell(56, 56)
    mine = GRUCell(56, 56)
    with torch.no_grad():  # nn.GRUCell stacks its gates as (reset, update, new), like i2h/h2h
        mine.i2h.weight.copy_(ref.weight_ih)
        mine.i2h.bias.copy_(ref.bias_ih)
        mine.h2h.weight.copy_(ref.weight_hh)
        mine.h2h.bias.copy_(ref.bias_hh)
    x, h = torch.randn(8, 56), torch.randn(8, 56)
    torch.testing.assert_close(mine(x, h), ref(x, h), atol=1e-5, rtol=0)
    for _ in range(20):  # and over a sequence, where errors would compound
        h = mine(x, h)
        h_ref = ref(x, h)
    torch.testing.assert_close(mine(x, h), h_ref, atol=1e-5, rtol=0)


def test_gru_and_grucell_models_agree_with_the_same_weights():
    torch.manual_seed(0)
    m5 = build_model(ModelConfig("gru")).eval()
    m6 = build_model(ModelConfig("gru-cell")).eval()
    state = {k.replace("_l0", ""): v for k, v in m5.state_dict().items()}
    m6.load_state_dict(state)
    x = torch.randint(0, 40, (3, 25))
    torch.testing.assert_close(m5(x)[0], m6(x)[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", SEED_VARIANTS)
def test_token_by_token_equals_the_whole_window(variant):
    torch.manual_seed(1)
    model = build_model(ModelConfig(variant)).eval()
    with torch.no_grad():  # give the norm layer real statistics, not the identity
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    x = torch.randint(0, 40, (4, 30))
    h0 = {"h": torch.randn(4, 1, 56)}
    with torch.no_grad():
        logits, h = model(x, h0)
        step_h, step_logits = h0, []
        for t in range(x.shape[1]):
            out, step_h = model(x[:, t : t + 1], step_h)
            step_logits.append(out)
    assert logits.shape == (4, 30, 40) and h["h"].shape == (4, 1, 56)
    torch.testing.assert_close(torch.cat(step_logits, dim=1), logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(step_h, h, atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_keeps_no_state(variant):
    model = build_model(ModelConfig(variant)).eval()
    x = torch.randint(0, 40, (2, 5))
    with torch.no_grad():
        a, _ = model(x)
        model(torch.randint(0, 40, (2, 7)))
        b, _ = model(x)
    assert torch.equal(a, b)
    assert not any(name.startswith("h") and not name.startswith("h_o") for name in vars(model))


def test_the_variant_registry():
    """One registry: the names users type, in training order, the seed notebook's model for
    each, the three trained with the seed recipe, and the default model's order of preference."""
    assert {name: v.model for name, v in VARIANTS.items()} == {
        "gru": Model5,
        "gru-cell": Model6,
        "gru-custom": Model7,
        "gru-copy": CopyGRU,
    }
    assert list(VARIANTS) == ["gru", "gru-cell", "gru-custom", "gru-copy"]
    assert SEED_VARIANTS == ("gru", "gru-cell", "gru-custom")
    assert PREFERRED_DEFAULTS == ("gru-copy", "gru")
    for name, v in VARIANTS.items():
        assert type(build_model(ModelConfig(name))) is v.model and v.about


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="unknown variant 'lstm'"):
        build_model(ModelConfig("lstm"))


@pytest.mark.parametrize("variant", SEED_VARIANTS)
def test_advance_with_padding_equals_each_row_alone(variant):
    """The service's batched step: rows of different lengths, padded, give each row's state."""
    torch.manual_seed(2)
    model = build_model(ModelConfig(variant)).eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    rows = [torch.randint(0, 40, (n,)) for n in (7, 1, 4, 7)]
    h0 = torch.randn(4, 1, 56)
    x = torch.zeros(4, 7, dtype=torch.long)
    for i, r in enumerate(rows):
        x[i, : len(r)] = r
    lengths = torch.tensor([len(r) for r in rows])
    with torch.no_grad():
        state = model.advance_state(x, {"h": h0}, lengths)
        h, logits = state["h"], model.head_state(state)
        for i, r in enumerate(rows):
            out, h_i = model(r.unsqueeze(0), {"h": h0[i : i + 1]})
            torch.testing.assert_close(h[i : i + 1], h_i["h"], atol=1e-5, rtol=0)
            torch.testing.assert_close(logits[i], out[0, -1], atol=1e-5, rtol=0)
        torch.testing.assert_close(
            model.advance_state(x, {"h": h0})["h"], model(x, {"h": h0})[1]["h"], atol=1e-5, rtol=0
        )


def test_scripted_cell_is_exact():
    from model_store import compile_cell

    torch.manual_seed(3)
    eager = build_model(ModelConfig("gru-custom")).eval()
    scripted = build_model(ModelConfig("gru-custom")).eval()
    scripted.load_state_dict(eager.state_dict())
    compile_cell(scripted, "script")
    assert isinstance(scripted.rnn, torch.jit.ScriptModule)
    x, h = torch.randint(0, 40, (5, 12)), torch.randn(5, 1, 56)
    lengths = torch.tensor([12, 3, 7, 1, 12])
    with torch.no_grad():
        torch.testing.assert_close(
            scripted.advance_state(x, {"h": h}, lengths)["h"],
            eager.advance_state(x, {"h": h}, lengths)["h"],
            atol=1e-5,
            rtol=0,
        )
    other = build_model(ModelConfig("gru-cell"))
    assert compile_cell(other, "script").rnn.__class__ is torch.nn.GRUCell  # only Model7's cell
    with pytest.raises(ValueError, match="unknown way"):
        compile_cell(build_model(ModelConfig("gru-custom")), "fast")

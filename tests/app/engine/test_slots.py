import pytest
import torch

from app.engine.slots import SlotPool, describe, from_bytes, to_bytes
from model_store import ModelConfig, StateSpec, build_model

SPEC = {"h": StateSpec((1, 4), torch.float32)}
PARTS = {
    "h": StateSpec((1, 3), torch.float32),
    "ids": StateSpec((2,), torch.int64),
    "seen": StateSpec((1,), torch.bool),
}


def test_alloc_free_reuse_and_growth():
    pool = SlotPool(SPEC, torch.device("cpu"), chunk=2)
    a, b = pool.alloc(), pool.alloc()
    assert (a, b) == (0, 1) and pool.capacity == 2 and pool.in_use == 2
    pool.write(a, {"h": torch.ones(1, 4)})
    c = pool.alloc()  # full: grows by a chunk, keeping the rows it had
    assert c == 2 and pool.capacity == 4
    assert torch.equal(pool.read(a)["h"], torch.ones(1, 4))
    pool.free(a)
    assert pool.in_use == 2
    again = pool.alloc()
    assert again == a and torch.equal(pool.read(again)["h"], torch.zeros(1, 4))  # zero on reuse


def test_freed_rows_are_reset_together_before_the_next_gather():
    pool = SlotPool(SPEC, torch.device("cpu"), chunk=4)
    rows = [pool.alloc() for _ in range(4)]
    for r in rows:
        pool.write(r, {"h": torch.full((1, 4), float(r + 1))})
    pool.free(rows[0])
    pool.free(rows[2])
    pool.zero(rows[3])
    # nothing was copied yet: the rows still hold their values, but read as the zero state
    assert pool.parts["h"][rows[0], 0, 0] == 1 and pool.parts["h"][rows[3], 0, 0] == 4
    assert torch.equal(pool.read(rows[3])["h"], torch.zeros(1, 4))
    reused = pool.alloc()  # rows[2], still pending
    pool.write(rows[3], {"h": torch.full((1, 4), 9.0)})  # a write after a reset is kept
    got = pool.gather(torch.tensor(rows))
    assert got["h"][:, 0, 0].tolist() == [0.0, 2.0, 0.0, 9.0]
    assert reused == rows[2] and torch.equal(pool.read(reused)["h"], torch.zeros(1, 4))
    assert pool.parts["h"][rows[0]].eq(0).all()  # reset in the batched flush, though free


def test_read_is_a_copy():
    pool = SlotPool(SPEC, torch.device("cpu"))
    s = pool.alloc()
    view = pool.read(s)["h"]
    view += 1
    assert torch.equal(pool.read(s)["h"], torch.zeros(1, 4))


def test_parts_keep_their_dtypes_and_the_models_zero_state():
    model = build_model(ModelConfig("gru-copy", hidden=8, copy_window=3, key_size=2))
    pool = SlotPool(model.state_spec, torch.device("cpu"), zero=model.init_state(1), chunk=2)
    slots = [pool.alloc() for _ in range(3)]  # grows once
    for name, spec in model.state_spec.items():
        assert pool.parts[name].dtype == spec.dtype and pool.parts[name].shape[1:] == spec.shape
    got = pool.gather(torch.tensor(slots))  # new rows are written (reset) only now
    assert (got["ids"] == -1).all()  # the model's zero state: no history, not zeros
    assert (pool.parts["ids"][slots] == -1).all()
    state = {
        "h": torch.randn(1, 8),
        "keys": torch.randn(3, 2),
        "ids": torch.tensor([4, 5, 6]),
        "seen": torch.tensor([True]),
    }
    pool.write(slots[1], state)
    got = pool.gather(torch.tensor([slots[1], slots[0]]))
    assert torch.equal(got["ids"][0], state["ids"]) and (got["ids"][1] == -1).all()
    pool.zero(slots[1])
    assert (pool.read(slots[1])["ids"] == -1).all() and not pool.read(slots[1])["seen"].any()
    with pytest.raises(AssertionError, match="parts"):
        pool.write(slots[0], {"h": torch.zeros(1, 8)})


def test_bytes_round_trip_and_layout():
    state = {
        "h": torch.randn(1, 3),
        "ids": torch.tensor([7, -1]),
        "seen": torch.tensor([True]),
    }
    data = to_bytes(state, PARTS)
    assert len(data) == 3 * 4 + 2 * 8 + 1
    back = from_bytes(data, PARTS)
    for name in PARTS:
        assert torch.equal(back[name], state[name]) and back[name].dtype == state[name].dtype
    with pytest.raises(ValueError, match="28 bytes of state, the layout needs 29"):
        from_bytes(data[:-1], PARTS)
    assert describe(SPEC) == ("float32", "1,4")  # the seed models' stored format is unchanged
    assert describe(PARTS) == ("parts", "h:float32:1,3;ids:int64:2;seen:bool:1")


def test_growing_keeps_every_row_and_hands_out_each_row_once():
    model = build_model(ModelConfig("gru", hidden=4))
    pool = SlotPool(model.state_spec, torch.device("cpu"), zero=model.init_state(1), chunk=2)
    slots, written = [], {}
    for i in range(40):  # grows by half (2 at least) several times, with rows written between
        slot = pool.alloc()
        slots.append(slot)
        written[slot] = torch.full((1, 4), float(i))
        pool.write(slot, {"h": written[slot]})
    assert sorted(slots) == list(range(40)) and pool.capacity < 80
    got = pool.gather(torch.tensor(slots))["h"]
    assert all(torch.equal(got[i], written[s]) for i, s in enumerate(slots))
    pool.free(slots[5])
    again = pool.alloc()
    assert again == slots[5] and torch.equal(pool.read(again)["h"], torch.zeros(1, 4))

import torch

from app.engine.slots import SlotPool


def test_alloc_free_reuse_and_growth():
    pool = SlotPool((1, 4), torch.device("cpu"), chunk=2)
    a, b = pool.alloc(), pool.alloc()
    assert (a, b) == (0, 1) and pool.capacity == 2 and pool.in_use == 2
    pool.write(a, torch.ones(1, 4))
    c = pool.alloc()  # full: grows by a chunk, keeping the rows it had
    assert c == 2 and pool.capacity == 4
    assert torch.equal(pool.read(a), torch.ones(1, 4))
    pool.free(a)
    assert pool.in_use == 2
    again = pool.alloc()
    assert again == a and torch.equal(pool.read(again), torch.zeros(1, 4))  # zeroed on reuse


def test_read_is_a_copy():
    pool = SlotPool((1, 3), torch.device("cpu"))
    s = pool.alloc()
    view = pool.read(s)
    view += 1
    assert torch.equal(pool.read(s), torch.zeros(1, 3))

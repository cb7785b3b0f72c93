import itertools

import pytest

from training.schedule import OneCycle


def test_one_cycle_shape():
    s = OneCycle(lr_max=1e-2, total_steps=100)
    lrs, moms = zip(*(s.at(i) for i in range(100)), strict=True)
    assert lrs[0] == pytest.approx(1e-2 / 25)
    assert moms[0] == pytest.approx(0.95)
    peak = max(range(100), key=lambda i: lrs[i])
    assert peak == 30 and lrs[peak] == pytest.approx(1e-2)
    assert moms[30] == pytest.approx(0.85) and min(moms) == pytest.approx(0.85)
    assert all(a <= b for a, b in itertools.pairwise(lrs[:31]))  # warm-up rises
    assert all(a >= b for a, b in itertools.pairwise(lrs[30:]))  # then falls
    assert lrs[-1] < 1e-2 / 1000
    assert moms[-1] == pytest.approx(0.95, abs=1e-3)

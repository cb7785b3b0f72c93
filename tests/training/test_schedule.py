import itertools

import pytest
import torch

from training.loop import one_cycle


def lrs_and_moms(total: int) -> tuple[list[float], list[float]]:
    """The lr and Adam's beta1 of each of `total` steps of the loop's schedule."""
    opt = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], betas=(0.9, 0.99))
    schedule = one_cycle(opt, 1e-2, total)
    lrs, moms = [], []
    for _ in range(total):
        group = opt.param_groups[0]
        lrs.append(group["lr"])
        moms.append(group["betas"][0])
        assert group["betas"][1] == 0.99  # beta2 is left alone
        opt.step()
        schedule.step()
    return lrs, moms


def test_one_cycle_shape():
    lrs, moms = lrs_and_moms(100)
    assert lrs[0] == pytest.approx(1e-2 / 25)
    assert moms[0] == pytest.approx(0.95)
    peak = max(range(100), key=lambda i: lrs[i])
    assert peak == 29 and lrs[peak] == pytest.approx(1e-2)  # OneCycleLR: step 30% of 100, less 1
    assert moms[29] == pytest.approx(0.85) and min(moms) == pytest.approx(0.85)
    assert all(a <= b for a, b in itertools.pairwise(lrs[:30]))  # warm-up rises
    assert all(a >= b for a, b in itertools.pairwise(lrs[29:]))  # then falls
    assert lrs[-1] < 1e-2 / 1000
    assert lrs[-1] == pytest.approx(1e-2 / 25e4)  # fastai v1's final lr: lr_max / (25 * 1e4)
    assert moms[-1] == pytest.approx(0.95, abs=1e-3)

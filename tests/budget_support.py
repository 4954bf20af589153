"""Helpers for the budget-table tests (imported as `budget_support`): a supernet whose table is filled by real BN
calibration on random images, and the `filled` and `x` fixtures (one filled model per test module)."""
import pytest
import timm
import torch
from torch.utils.data import DataLoader, TensorDataset

import timm_pss
from support import outputs_per_budget

NAME = 'pss_mobilenetv2'


def random_image_loader(seed=0, n=16, size=128):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=g) * 1.5 + 0.3
    return DataLoader(TensorDataset(images, torch.zeros(n, dtype=torch.long)), batch_size=8, shuffle=False)


def spread_subnets(space, count):
    f_min, f_max = space.flops(space.min_subnet()), space.flops(space.max_subnet())
    step = (f_max - f_min) / (count - 1)
    middle = [space.sample(rng=i, flops_range=(f_min + i * step, f_min + (i + 1) * step)) for i in range(1, count - 1)]
    return [space.min_subnet()] + middle + [space.max_subnet()]


def filled_supernet(count=4, name=NAME, seed=0):
    torch.manual_seed(seed)
    model = timm.create_model(name, num_classes=10).eval()
    subnets = spread_subnets(model.space, count)
    timm_pss.fill_budget_table(model, subnets, random_image_loader(), num_batches=2,
                               metrics=[{'top1': 50.0 + i, 'score': -1.0 / (i + 1)} for i in range(count)])
    return model


@pytest.fixture(scope='module')
def filled():
    return filled_supernet()


@pytest.fixture(scope='module')
def x():
    return torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(1))


def assert_same_model(a, b, x):
    assert a.budget_table == b.budget_table
    for ya, yb in zip(outputs_per_budget(a, x), outputs_per_budget(b, x)):
        torch.testing.assert_close(ya, yb, rtol=0, atol=0)

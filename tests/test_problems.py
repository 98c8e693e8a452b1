"""The built-in problems against the computed values of problems.md §1–§3."""

import math

import pytest
import torch

from mtlsolve.problems import TOY_FRONT_X2, fonseca, fonseca_convex, linear_regression_data, toy

TOY_VALUES = [
    ((-8.5, 7.5), (6.5524, 7.9008)),
    ((0.0, 0.0), (0.0, 0.0)),
    ((9.0, 9.0), (7.9439, 6.6915)),
    ((-7.5, -0.5), (0.3888, -4.7545)),
    ((9.0, -1.0), (-8.8311, 2.8143)),
    ((-8.5, -5.0), (4.0599, -19.4215)),
]


@pytest.mark.parametrize("x, f", TOY_VALUES)
def test_toy_values(x, f):
    assert toy(torch.tensor(x, dtype=torch.float64)).tolist() == pytest.approx(f, abs=1e-4)


def test_toy_batched_and_scaled():
    x = torch.tensor([p for p, _ in TOY_VALUES], dtype=torch.float64)
    f = toy(x)
    assert f.shape == (6, 2)
    assert torch.allclose(toy(x, "nash"), f * torch.tensor([0.1, 1.0], dtype=torch.float64))
    assert torch.allclose(toy(x, "samsung"), f * 0.5)


@pytest.mark.parametrize("w, x", [(0.5, (0.0, -8.3551)), (0.9, (5.6, -8.4071)), (0.3, (-2.8, -8.3686))])
def test_toy_weighted_sum_minimisers(w, x):
    point = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    f = toy(point)
    (grad,) = torch.autograd.grad(w * f[0] + (1 - w) * f[1], point)
    assert grad.abs().max() < 2e-3  # stationary to the 4 printed digits
    assert abs(x[1] - TOY_FRONT_X2) < 0.1


def test_fonseca_fronts():
    n = 10
    for s in (-1.0, -0.3, 0.0, 0.6, 1.0):
        x = torch.full((n,), s / math.sqrt(n), dtype=torch.float64)
        f1, f2 = fonseca(x).tolist()
        assert (f1, f2) == pytest.approx((1 - math.exp(-((s - 1) ** 2)), 1 - math.exp(-((s + 1) ** 2))))
        c1, c2 = fonseca_convex(x).tolist()
        assert math.sqrt(c1) + math.sqrt(c2) == pytest.approx(1.0)


def test_linear_regression_gramian_is_diagonal():
    X, Y = linear_regression_data(tasks=6, samples=50, features=4, seed=1)
    model = torch.nn.Linear(4, 6)
    losses = ((Y - model(X)) ** 2).mean(0)
    params = list(model.parameters())
    rows = [torch.cat([g.flatten() for g in torch.autograd.grad(l, params, retain_graph=True)]) for l in losses]
    G = torch.stack(rows)
    K = G @ G.T
    assert torch.count_nonzero(K - torch.diag(torch.diag(K))) == 0

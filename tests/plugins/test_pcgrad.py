"""PCGrad (docs/methods.md#pcgrad, worked vectors): Gramian-form kernel against a transcription on G."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import mtlsolve
from mtlsolve.kernels.pcgrad import pcgrad_coefficients, random_orders
from mtlsolve.plugins.gramian.pcgrad import PCGrad

O = [[1.0, 0.0], [0.0, 2.0]]
C = [[1.0, 0.0], [-1.0, 1.0]]
N = [[1.0, 0.0], [1.0, 1.0]]
J1 = [[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]]


def pcgrad_on_matrix(G: np.ndarray, orders: np.ndarray) -> np.ndarray:
    """Algorithm 1 of Yu et al. written directly on the rows of G: the list of g_i^PC."""
    out = G.copy()
    for i in range(len(G)):
        for j in orders[i]:
            dot = out[i] @ G[j]
            if dot < 0:
                out[i] = out[i] - dot / (G[j] @ G[j]) * G[j]
    return out


def random_system(rng: np.random.Generator, m: int, n: int) -> np.ndarray:
    # a shared component of random sign gives a mix of conflicting and aligned pairs
    return rng.standard_normal((m, n)) + rng.standard_normal(n) * rng.choice([-1.0, 1.0], size=(m, 1))


@pytest.mark.parametrize(
    ("G", "expected"),
    [(O, (1, 2)), (C, (0.5, 1.5)), (N, (2, 1)), (J1, (0.5848, 3.80117, 3.80117))],
    ids=["O", "C", "N", "J1"],
)
def test_worked_vectors(G, expected):
    for seed in range(3):
        d = PCGrad(seed=seed)(np.array(G)).direction
        np.testing.assert_allclose(d, expected, atol=5e-6)
        d_mean = PCGrad(seed=seed, reduction="mean")(np.array(G)).direction
        np.testing.assert_allclose(d_mean, np.array(expected) / 2, atol=5e-6)


def test_non_conflicting_is_the_sum():
    r = PCGrad(seed=0)(np.array(N))
    assert r.diagnostics["projections"] == 0
    np.testing.assert_array_equal(r.weights, [1.0, 1.0])


@pytest.mark.parametrize(("m", "n"), [(2, 5), (3, 7), (5, 3), (8, 20), (12, 6)])
def test_kernel_matches_transcription_on_matrix(m, n):
    rng = np.random.default_rng(m * 100 + n)
    for _ in range(20):
        G = random_system(rng, m, n)
        G[rng.integers(m)] *= rng.choice([0.0, 1.0, 1e-3])  # zero and tiny rows too
        orders = random_orders(rng, m)
        coefficients, projections = pcgrad_coefficients(G @ G.T, orders)
        expected = pcgrad_on_matrix(G, orders)
        np.testing.assert_allclose(coefficients @ G, expected, rtol=1e-10, atol=1e-10 * np.abs(G).max())
        assert 0 <= projections <= m * (m - 1)


def test_solver_direction_follows_its_reported_orders():
    rng = np.random.default_rng(1)
    solver = PCGrad(seed=3)
    for m in (3, 4, 6):
        G = random_system(rng, m, 9)
        r = solver(G)
        expected = pcgrad_on_matrix(G, r.diagnostics["orders"]).sum(axis=0)
        np.testing.assert_allclose(r.direction, expected, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(r.direction, G.T @ r.weights, rtol=1e-12, atol=1e-12)


def test_random_orders_are_uniform_permutations_of_the_other_tasks():
    gen = np.random.default_rng(0)
    m = 4
    seen = {i: set() for i in range(m)}
    for _ in range(300):
        orders = random_orders(gen, m)
        assert orders.shape == (m, m - 1) and orders.dtype == np.int64
        for i in range(m):
            assert sorted(orders[i]) == [j for j in range(m) if j != i]
            seen[i].add(tuple(orders[i]))
    assert all(len(s) == 6 for s in seen.values())  # all (m-1)! orders occur
    assert random_orders(gen, 1).shape == (1, 0)


def test_two_tasks_order_independent_and_projected_pair_not_conflicting():
    rng = np.random.default_rng(2)
    for _ in range(200):
        G = random_system(rng, 2, 4)
        K = G @ G.T
        d = [PCGrad(seed=s)(G).direction for s in range(3)]
        np.testing.assert_allclose(d[1], d[0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(d[2], d[0], rtol=1e-12, atol=1e-12)
        coefficients, _ = pcgrad_coefficients(K, np.array([[1], [0]]))
        cross = coefficients @ K  # (i, j): g_i^PC · g_j
        scale = np.sqrt(K[0, 0] * K[1, 1])
        assert cross[0, 1] >= -1e-12 * scale and cross[1, 0] >= -1e-12 * scale


def test_seed_reproducibility_and_state_round_trip():
    rng = np.random.default_rng(3)
    systems = [random_system(rng, 6, 10) for _ in range(6)]
    a, b = PCGrad(seed=11), PCGrad(seed=11)
    first = [a(G).direction for G in systems]
    np.testing.assert_array_equal(first, [b(G).direction for G in systems])
    other = [PCGrad(seed=12)(G).direction for G in systems]
    assert any(not np.allclose(x, y) for x, y in zip(first, other))
    # checkpoint mid-run: the continuation is identical
    c = PCGrad(seed=11)
    for G in systems[:3]:
        c(G)
    state = c.state_dict()
    tail = [c(G).direction for G in systems[3:]]
    d = PCGrad(seed=11)
    d.load_state_dict(state)
    np.testing.assert_array_equal(tail, [d(G).direction for G in systems[3:]])
    np.testing.assert_array_equal(tail, first[3:])


def test_zero_gradients_are_finite():
    assert np.all(PCGrad(seed=0)(np.zeros((4, 3))).direction == 0)
    G = np.array([[1.0, 0.0], [0.0, 0.0], [-1.0, 1.0]])
    r = PCGrad(seed=0)(G)
    assert np.isfinite(r.weights).all()
    np.testing.assert_allclose(r.direction, [0.5, 1.5], atol=1e-12)


def test_positive_homogeneous_with_the_same_orders():
    rng = np.random.default_rng(4)
    G = random_system(rng, 5, 7)
    np.testing.assert_allclose(PCGrad(seed=5)(3.5 * G).direction, 3.5 * PCGrad(seed=5)(G).direction, rtol=1e-12)


def test_log_transform_projects_the_log_gradients():
    rng = np.random.default_rng(5)
    G = random_system(rng, 4, 6)
    L = rng.uniform(0.5, 3.0, 4)
    d_log = PCGrad(seed=7, loss_transform="log")(G, losses=L).direction
    expected = pcgrad_on_matrix(G / L[:, None], PCGrad(seed=7)(G).diagnostics["orders"]).sum(axis=0)
    np.testing.assert_allclose(d_log, expected, rtol=1e-10)


@pytest.mark.parametrize(("backend", "dtype"), list(itertools.product(["numpy", "torch"], ["float32", "float64"])))
def test_backends_and_dtypes_agree(backend, dtype):
    rng = np.random.default_rng(6)
    G = random_system(rng, 5, 8)
    reference = PCGrad(seed=9)(G).direction
    X = G.astype(dtype) if backend == "numpy" else torch.tensor(G, dtype=getattr(torch, dtype))
    d = PCGrad(seed=9)(X).direction
    assert type(d) is type(X) and d.dtype == X.dtype
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(np.asarray(d, dtype=np.float64), reference, rtol=tol, atol=tol)


def test_registry_names_and_validation():
    solver = mtlsolve.get("gradient-surgery", seed=1)
    assert isinstance(solver, PCGrad) and solver.reduction == "sum"
    assert isinstance(mtlsolve.get("PCGrad"), PCGrad)
    with pytest.raises(mtlsolve.InvalidConfigError):
        mtlsolve.get("pcgrad", reduction="max")

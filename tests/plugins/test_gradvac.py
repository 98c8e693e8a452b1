"""GradVac (docs/methods.md#gradvac, worked vectors): Gramian-form kernel against a transcription
on G and against torchjd 0.18.0 ``GradVacWeighting`` under the same visiting orders."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torchjd.aggregation import GradVacWeighting

import mtlsolve
from mtlsolve.kernels.gradvac import gradvac_coefficients
from mtlsolve.kernels.pcgrad import random_orders
from mtlsolve.plugins.gramian.gradvac import GradVac

O = [[1.0, 0.0], [0.0, 2.0]]
C = [[1.0, 0.0], [-1.0, 1.0]]
N = [[1.0, 0.0], [1.0, 1.0]]
J1 = [[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]]


def gradvac_on_matrix(G, orders, targets, beta, conflict_only=False):
    """LibMTL's loop (group_type 0) written on the rows of G: the g_i^PC and the updated targets."""
    targets = targets.copy()
    out = G.copy()
    for i in range(len(G)):
        for j in orders[i]:
            ni, nj = np.linalg.norm(out[i]), np.linalg.norm(G[j])
            phi = out[i] @ G[j] / (ni * nj) if ni > 0 and nj > 0 else 0.0
            hat = targets[i, j]
            if phi < hat:
                if ni > 0 and nj > 0:
                    coef = ni * (hat * np.sqrt(1 - phi**2) - phi * np.sqrt(1 - hat**2)) / (nj * np.sqrt(1 - hat**2))
                    out[i] = out[i] + coef * G[j]
                targets[i, j] = (1 - beta) * hat + beta * phi
            elif not conflict_only:
                targets[i, j] = (1 - beta) * hat + beta * phi
    return out, targets


def random_system(rng, m, n):
    return rng.standard_normal((m, n)) + rng.standard_normal(n) * rng.choice([-1.0, 1.0], size=(m, 1))


@pytest.mark.parametrize(
    ("G", "expected"),
    [(O, (1, 2)), (C, (0.5, 1.5)), (N, (2, 1)), (J1, (0.5848, 3.80117, 3.80117))],
    ids=["O", "C", "N", "J1"],
)
def test_first_call_matches_the_pcgrad_worked_vectors(G, expected):
    for seed in range(3):
        np.testing.assert_allclose(GradVac(seed=seed)(np.array(G)).direction, expected, atol=5e-6)
        d_mean = GradVac(seed=seed, reduction="mean")(np.array(G)).direction
        np.testing.assert_allclose(d_mean, np.array(expected) / 2, atol=5e-6)


@pytest.mark.parametrize("ema_update", ["every_step", "conflict_only"])
@pytest.mark.parametrize(("m", "n"), [(2, 4), (3, 5), (5, 3), (7, 12)])
def test_kernel_matches_transcription_over_steps(m, n, ema_update):
    rng = np.random.default_rng(m * 10 + n)
    targets = np.zeros((m, m))
    conflict_only = ema_update == "conflict_only"
    for _ in range(6):
        G = random_system(rng, m, n)
        orders = random_orders(rng, m)
        expected, expected_targets = gradvac_on_matrix(G, orders, targets, 0.5, conflict_only)
        C, adjustments = gradvac_coefficients(G @ G.T, orders, targets, 0.5, conflict_only)
        np.testing.assert_allclose(C @ G, expected, rtol=1e-9, atol=1e-9 * np.abs(G).max())
        np.testing.assert_allclose(targets, expected_targets, rtol=1e-9, atol=1e-12)
        assert 0 <= adjustments <= m * (m - 1)


def test_after_an_adjustment_the_cosine_equals_the_target():
    rng = np.random.default_rng(1)
    checked = 0
    for _ in range(50):
        solver = GradVac(seed=0, beta=0.7)
        solver(random_system(rng, 2, 6))  # makes non-zero targets
        before = solver.state_dict()["targets"].numpy()  # a CPU tensor in the state dict
        G = random_system(rng, 2, 6)
        r = solver(G)
        # m = 2: g_i^PC = g_i + c_i g_j, and d = Σ g_i^PC = Gᵀw gives c_0 = w_1 − 1, c_1 = w_0 − 1
        w = r.weights
        pc = np.array([G[0] + (w[1] - 1) * G[1], G[1] + (w[0] - 1) * G[0]])
        for i, j in ((0, 1), (1, 0)):
            phi = G[i] @ G[j] / np.linalg.norm(G[i]) / np.linalg.norm(G[j])
            cos_after = pc[i] @ G[j] / np.linalg.norm(pc[i]) / np.linalg.norm(G[j])
            if phi < before[i, j]:
                np.testing.assert_allclose(cos_after, before[i, j], atol=1e-12)
                checked += 1
            else:
                np.testing.assert_allclose(pc[i], G[i], atol=1e-12)
    assert checked > 10


def test_targets_follow_the_ema_in_both_modes():
    G = np.array(N)  # cos = 1/√2 > 0 = φ̂: no adjustment
    phi = 1 / np.sqrt(2)
    every = GradVac(seed=0, beta=0.5)
    r = every(G)
    np.testing.assert_allclose(r.diagnostics["targets"], [[0, 0.5 * phi], [0.5 * phi, 0]], atol=1e-15)
    assert r.diagnostics["adjustments"] == 0
    r = every(G)  # now φ = cos > φ̂ still, EMA moves on: 0.75 φ
    np.testing.assert_allclose(r.diagnostics["targets"], [[0, 0.75 * phi], [0.75 * phi, 0]], atol=1e-15)
    lazy = GradVac(seed=0, beta=0.5, ema_update="conflict_only")
    np.testing.assert_array_equal(lazy(G).diagnostics["targets"], 0.0)
    # a conflict (C: cos = −1/√2 < 0) updates the target in both modes
    r = lazy(np.array(C))
    np.testing.assert_allclose(r.diagnostics["targets"], [[0, -0.5 * phi], [-0.5 * phi, 0]], atol=1e-15)


def test_solver_follows_its_reported_orders_and_state():
    rng = np.random.default_rng(2)
    solver = GradVac(seed=4)
    targets = np.zeros((5, 5))
    for _ in range(4):
        G = random_system(rng, 5, 8)
        r = solver(G)
        expected, targets = gradvac_on_matrix(G, r.diagnostics["orders"], targets, 0.5)
        np.testing.assert_allclose(r.direction, expected.sum(axis=0), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(r.diagnostics["targets"], targets, atol=1e-12)


def torch_orders(seed: int, m: int, calls: int) -> list[np.ndarray]:
    """The visiting orders torchjd's GradVacWeighting draws after torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    out = []
    for _ in range(calls):
        rows = []
        for i in range(m):
            others = [j for j in range(m) if j != i]
            rows.append([others[k] for k in torch.randperm(m - 1).tolist()])
        out.append(np.array(rows, dtype=np.int64).reshape(m, m - 1))
    return out


@pytest.mark.parametrize("eps", [0.0, 1e-8])
@pytest.mark.parametrize(("m", "n"), [(2, 3), (4, 6), (6, 4)])
def test_matches_torchjd_under_the_same_orders(m, n, eps):
    rng = np.random.default_rng(m + 7 * n)
    systems = [random_system(rng, m, n) for _ in range(5)]
    reference = GradVacWeighting(beta=0.5, eps=eps)
    torch.manual_seed(123)
    expected = [reference(torch.tensor(G @ G.T)).numpy() for G in systems]
    targets = np.zeros((m, m))
    deviation = 0.0
    for G, orders, w_ref in zip(systems, torch_orders(123, m, len(systems)), expected):
        C, _ = gradvac_coefficients(G @ G.T, orders, targets, 0.5, False)
        deviation = max(deviation, np.abs(C.sum(axis=0) - w_ref).max())
    np.testing.assert_allclose(targets, reference._phi_t.numpy(), atol=1e-6 if eps else 1e-12)
    assert deviation <= (1e-6 if eps else 1e-12), deviation


def test_torchjd_distribution_agrees_on_three_tasks():
    """Seeds mapped in distribution: the mean update over many random orders agrees."""
    G = np.array([[1.0, 0.2, -0.5], [-0.8, 1.0, 0.3], [0.1, -1.0, 1.0]])
    ours = np.mean([GradVac(seed=s)(G).direction for s in range(300)], axis=0)
    torch.manual_seed(0)
    K = torch.tensor(G @ G.T)
    theirs = np.mean([G.T @ GradVacWeighting()(K).numpy() for _ in range(300)], axis=0)
    np.testing.assert_allclose(ours, theirs, atol=0.05)


def test_seed_reproducibility_state_round_trip_and_reset_on_new_m():
    rng = np.random.default_rng(3)
    systems = [random_system(rng, 4, 6) for _ in range(6)]
    a = GradVac(seed=11)
    first = [a(G).direction for G in systems]
    b = GradVac(seed=11)
    np.testing.assert_array_equal(first, [b(G).direction for G in systems])
    c = GradVac(seed=11)
    for G in systems[:3]:
        c(G)
    state = c.state_dict()
    tail = [c(G).direction for G in systems[3:]]
    d = GradVac(seed=11)
    d.load_state_dict(state)
    np.testing.assert_array_equal(tail, [d(G).direction for G in systems[3:]])
    np.testing.assert_array_equal(tail, first[3:])
    # a different m needs reset(); it restarts from zero targets: the first call is PCGrad again
    with pytest.raises(mtlsolve.InvalidSystemError):
        c(np.array(C))
    c.reset()
    np.testing.assert_allclose(c(np.array(C)).direction, [0.5, 1.5], atol=1e-12)
    assert c.state_dict()["m"] == 2


def test_zero_rows_and_homogeneity():
    assert np.all(GradVac(seed=0)(np.zeros((3, 4))).direction == 0)
    G = np.array([[1.0, 0.0], [0.0, 0.0], [-1.0, 1.0]])
    solver = GradVac(seed=0)
    for _ in range(3):
        r = solver(G)
        assert np.isfinite(r.weights).all()
    rng = np.random.default_rng(4)
    G = random_system(rng, 5, 7)
    np.testing.assert_allclose(GradVac(seed=5)(3.5 * G).direction, 3.5 * GradVac(seed=5)(G).direction, rtol=1e-12)


@pytest.mark.parametrize(("backend", "dtype"), list(itertools.product(["numpy", "torch"], ["float32", "float64"])))
def test_backends_and_dtypes_agree(backend, dtype):
    rng = np.random.default_rng(6)
    systems = [random_system(rng, 5, 8) for _ in range(3)]
    reference, solver = GradVac(seed=9), GradVac(seed=9)
    for G in systems:
        expected = reference(G).direction
        X = G.astype(dtype) if backend == "numpy" else torch.tensor(G, dtype=getattr(torch, dtype))
        d = solver(X).direction
        assert type(d) is type(X) and d.dtype == X.dtype
        tol = 1e-4 if dtype == "float32" else 1e-12
        np.testing.assert_allclose(np.asarray(d, dtype=np.float64), expected, rtol=tol, atol=tol)


def test_registry_names_and_validation():
    assert isinstance(mtlsolve.get("gradient-vaccine"), GradVac)
    solver = mtlsolve.get("GradVac", ema_update="conflict_only", seed=1)
    assert isinstance(solver, GradVac) and solver.beta == 0.5 and solver.reduction == "sum"
    for bad in ({"beta": 1.5}, {"ema_update": "sometimes"}, {"group_type": 1}):
        with pytest.raises(mtlsolve.InvalidConfigError):
            mtlsolve.get("gradvac", **bad)

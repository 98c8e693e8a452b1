"""MoDo (docs/methods.md#modo): three stacked batches, λ ∈ Δ_m, MGDA fixed point, torchjd parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchjd.aggregation import MoDoWeighting

import mtlsolve
from mtlsolve import InvalidSystemError
from mtlsolve.kernels.simplex_qp import reference_simplex_qp
from mtlsolve.plugins.gramian.modo import MoDo

O = np.array([[1.0, 0.0], [0.0, 2.0]])
C = np.array([[1.0, 0.0], [-1.0, 1.0]])


def three_batches(rng: np.random.Generator, m: int, n: int, noise: float = 0.5) -> np.ndarray:
    """[G₁; G₂; G₃]: one mean gradient per task plus independent noise per batch."""
    mean = rng.standard_normal((m, n)) * rng.uniform(0.3, 3.0, (m, 1))
    return np.concatenate([mean + noise * rng.standard_normal((m, n)) for _ in range(3)])


def test_registered_with_libmtl_defaults():
    solver = mtlsolve.get("MoDo")
    assert type(solver) is MoDo and solver.batches == 3
    assert (solver.gamma, solver.rho) == (1e-3, 0.1)


def test_lambda_stays_on_the_simplex_and_d_uses_the_third_batch():
    rng = np.random.default_rng(0)
    solver = MoDo(gamma=0.5)
    for _ in range(40):
        G = three_batches(rng, 4, 6)
        r = solver(G)
        lam = r.diagnostics["lambda"]
        assert (lam >= 0).all() and lam.sum() == pytest.approx(1.0, abs=1e-12)
        np.testing.assert_array_equal(r.weights[:8], 0.0)
        np.testing.assert_allclose(r.direction, G[8:].T @ lam, atol=1e-12)


def test_first_step_by_hand():
    """λ₁ = Π_Δ(1/m − γ(G₁G₂ᵀ1/m + ρ/m)) from λ₀ = 1/m; interior here, so Π_Δ is the identity."""
    rng = np.random.default_rng(1)
    G = three_batches(rng, 3, 5)
    gamma, rho = 1e-3, 0.1
    lam0 = np.full(3, 1 / 3)
    step = lam0 - gamma * (G[:3] @ G[3:6].T @ lam0 + rho * lam0)
    expected = step + (1 - step.sum()) / 3  # the projection of a point near the centre shifts it along 1
    np.testing.assert_allclose(MoDo()(G).diagnostics["lambda"], expected, atol=1e-15)


@pytest.mark.parametrize("G, expected", [(O, (0.8, 0.4)), (C, (0.2, 0.4))], ids=["O", "C"])
def test_equal_batches_without_regularisation_converge_to_mgda(G, expected):
    """G₁ = G₂ = G₃, ρ = 0: projected gradient descent on ½λᵀKλ, whose fixed point is MGDA's (§4)."""
    solver = MoDo(gamma=0.2, rho=0.0)
    stacked = np.concatenate([G, G, G])
    for _ in range(500):
        r = solver(stacked)
    np.testing.assert_allclose(r.direction, expected, atol=1e-9)


def test_equal_batches_random_systems_converge_to_the_min_norm_weights():
    rng = np.random.default_rng(2)
    for _ in range(5):
        m, n = int(rng.integers(2, 6)), int(rng.integers(2, 8))
        G = rng.standard_normal((m, n)) + rng.standard_normal(n)
        K = G @ G.T
        solver = MoDo(gamma=1.0 / np.linalg.eigvalsh(K)[-1], rho=0.0)
        for _ in range(1500):
            r = solver(np.concatenate([G, G, G]))
        expected = reference_simplex_qp(K, np.zeros(m))  # cvxpy (Clarabel), independent of the kernel
        np.testing.assert_allclose(r.direction, G.T @ expected, atol=1e-6)


def test_parity_with_torchjd_on_the_cross_block():
    """torchjd 0.18.0 ``MoDoWeighting(gamma, rho)`` takes G₁G₂ᵀ and returns λ; mtlsolve's stacked
    weights are (0, 0, λ). Both keep λ across calls."""
    rng = np.random.default_rng(3)
    for gamma, rho in ((1e-3, 0.1), (0.1, 0.1), (0.3, 0.0)):
        ours, theirs = MoDo(gamma=gamma, rho=rho), MoDoWeighting(gamma=gamma, rho=rho)
        for _ in range(25):
            m = 4
            G = three_batches(rng, m, 7)
            lam_tj = theirs(torch.tensor(G[:m] @ G[m : 2 * m].T)).numpy()
            np.testing.assert_allclose(ours(G).weights[2 * m :], lam_tj, atol=1e-12)


def test_state_round_trip_and_reset():
    rng = np.random.default_rng(4)
    seq = [three_batches(rng, 3, 4) for _ in range(6)]
    solver = MoDo(gamma=0.3)
    for G in seq[:3]:
        solver(G)
    copy = MoDo(gamma=0.3)
    copy.load_state_dict(solver.state_dict())
    for G in seq[3:]:
        np.testing.assert_array_equal(copy(G).weights, solver(G).weights)
    solver.reset()
    np.testing.assert_array_equal(solver(seq[0]).weights, MoDo(gamma=0.3)(seq[0]).weights)


def test_gramian_only_and_torch_inputs_agree():
    rng = np.random.default_rng(5)
    G = three_batches(rng, 3, 5)
    w = MoDo(gamma=0.2)(G).weights
    np.testing.assert_allclose(MoDo(gamma=0.2)(gramian=G @ G.T).weights, w, atol=1e-14)
    np.testing.assert_allclose(MoDo(gamma=0.2)(torch.tensor(G)).weights.numpy(), w, atol=1e-14)


def test_one_batch_is_a_clear_error():
    with pytest.raises(InvalidSystemError, match="3 batches"):
        MoDo()(np.ones((2, 3)))


@pytest.mark.parametrize("kwargs", [{"gamma": 0.0}, {"gamma": -1.0}, {"rho": -0.1}, {"gamma": float("nan")}])
def test_invalid_hyperparameters(kwargs):
    with pytest.raises(ValueError):
        MoDo(**kwargs)


def test_no_convergence_claim_but_simplex_residual():
    """One projected step by definition: no ``converged`` is reported (nothing is solved to a
    tolerance); λ ∈ Δ holds and is reported as ``simplex_residual``."""
    rng = np.random.default_rng(5)
    G = rng.standard_normal((9, 6))
    for X in (G, G.astype(np.float32)):
        d = MoDo()(X).diagnostics
        assert "converged" not in d and d["simplex_residual"] <= 1e-15

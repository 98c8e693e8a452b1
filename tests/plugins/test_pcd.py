"""PCD (docs/methods.md#pcd): the primary gradient projected onto the set where every secondary
task gets a fraction τ of its normalised first-order progress, then rescaled to ‖g_1‖.

References: TorchJD 0.18.0's ``PCD`` aggregator (an independent dual active-set solver of the same
QP, with the same moving average), run call by call beside mtlsolve's; and the primal QP
min ½‖d − g̃_1‖² s.t. g̃_jᵀd ≥ τ_j‖g̃_j‖² solved by cvxpy (Clarabel).
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch
from torchjd.aggregation import PCD as TorchJDPCD

import mtlsolve
from mtlsolve.errors import InvalidConfigError, InvalidSystemError, StateError

#: systems per number of tasks (each is stepped 3 times through one instance): 240 in all
SPREAD = {1: 10, 2: 60, 3: 60, 5: 50, 10: 40, 20: 20}
TAUS = (0.0, 0.02, 0.3, 1.0)


def random_system(rng: np.random.Generator, m: int) -> np.ndarray:
    """Unequal row norms and a shared component of random sign; n < m for a quarter of them."""
    n = int(rng.integers(1, m)) if m > 2 and rng.random() < 0.25 else m + int(rng.integers(0, 2 * m))
    G = rng.standard_normal((m, n)) * rng.uniform(0.2, 5.0, (m, 1))
    return G + rng.standard_normal(n) * rng.choice([-1.0, 1.0], (m, 1))


def deviation(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.linalg.norm(ours - theirs) / max(np.linalg.norm(theirs), 1e-300))


def test_torchjd_parity():
    """Three successive calls per instance (the moving average matters from the second on), scalar
    and per-task τ, and a sixth of the systems made infeasible (two opposite secondary gradients)."""
    rng = np.random.default_rng(0)
    worst, infeasible = 0.0, 0
    for m, count in SPREAD.items():
        for k in range(count):
            tau = TAUS[k % len(TAUS)]
            if m > 2 and k % 5 == 4:
                tau = tuple(rng.uniform(0.0, 0.5, m - 1))
            beta = (0.999, 0.5)[k % 2]
            ours = mtlsolve.get("pcd", tau=tau, beta=beta)
            theirs = TorchJDPCD(tau=torch.tensor(tau) if isinstance(tau, tuple) else tau, beta=beta)
            for _ in range(3):
                G = random_system(rng, m)
                if m > 2 and k % 6 == 5:
                    G[2] = -rng.uniform(0.5, 2.0) * G[1]
                r = ours(G)
                assert r.diagnostics["converged"]
                infeasible += r.diagnostics["infeasible"]
                worst = max(worst, deviation(r.direction, theirs(torch.from_numpy(G)).numpy()))
    assert infeasible > 20
    assert worst <= 1e-9, worst


@pytest.mark.parametrize("m", [2, 3, 5, 8])
def test_primal_qp_against_cvxpy(m):
    """First call with eps = 0: s_i = 1/‖g_i‖, so g̃_i = g_i/‖g_i‖; d is the cvxpy minimiser of the
    primal QP rescaled to ‖g_1‖, and meets every constraint."""
    rng = np.random.default_rng(m)
    for tau in (0.02, 0.5):
        for _ in range(10):
            G = random_system(rng, m)
            r = mtlsolve.get("pcd", tau=tau, eps=0.0)(G)
            U = G / np.linalg.norm(G, axis=1, keepdims=True)
            d = cp.Variable(G.shape[1])
            problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(d - U[0])), [U[1:] @ d >= tau])
            problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
            if problem.status == "infeasible":
                np.testing.assert_allclose(r.direction, G[0], rtol=1e-12)
                continue
            reference = d.value * np.linalg.norm(G[0]) / np.linalg.norm(d.value)
            assert deviation(r.direction, reference) <= 1e-6
            # the constraints on the rescaled output d = d̃·‖g_1‖/‖d̃‖: u_jᵀd ≥ τ‖g_1‖/‖d̃‖
            scale = np.linalg.norm(G[0]) / np.linalg.norm(d.value)
            assert (U[1:] @ r.direction >= tau * scale - 1e-9 * np.linalg.norm(G[0])).all()


def test_worked_vectors():
    """Closed forms on unit gradients (eps = 0, first call). g_1 already meets the constraint: d = g_1.
    g_1 ⟂ g_2 with τ = ½: d̃ = g_1 + ½g_2, rescaled to ‖g_1‖."""
    G = np.array([[1.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(mtlsolve.get("pcd", eps=0.0)(G).direction, G[0], atol=1e-15)
    G = np.array([[2.0, 0.0], [0.0, 3.0]])
    d = mtlsolve.get("pcd", tau=0.5, eps=0.0)(G).direction
    np.testing.assert_allclose(d, 2.0 * np.array([1.0, 0.5]) / np.sqrt(1.25), rtol=1e-14)


def test_special_cases():
    """g_1 = 0 gives d = 0; opposite secondary gradients with τ > 0 leave no feasible d: d = g_1."""
    G = np.array([[0.0, 0.0], [1.0, 2.0], [3.0, -1.0]])
    r = mtlsolve.get("pcd")(G)
    np.testing.assert_array_equal(r.direction, 0.0)
    G = np.array([[1.0, 2.0, 0.0], [0.0, 1.0, 1.0], [0.0, -2.0, -2.0]])
    r = mtlsolve.get("pcd", tau=0.1)(G)
    np.testing.assert_allclose(r.direction, G[0], rtol=1e-14)
    assert r.diagnostics["infeasible"] and r.diagnostics["converged"]
    # τ = 0: constraints g_jᵀd ≥ 0 always have d = 0 as a solution, never infeasible
    r = mtlsolve.get("pcd", tau=0.0)(G)
    assert not r.diagnostics["infeasible"]
    assert (G[1:] @ r.direction >= -1e-12).all()


def test_secondary_rows_are_scale_free():
    """Multiplying a secondary row by the same c > 0 at every call leaves d unchanged (eps = 0)."""
    rng = np.random.default_rng(3)
    a, b = mtlsolve.get("pcd", eps=0.0, tau=0.3), mtlsolve.get("pcd", eps=0.0, tau=0.3)
    for _ in range(4):
        G = random_system(rng, 4)
        H = G * np.array([[1.0], [1e3], [1e-3], [7.0]])
        np.testing.assert_allclose(b(H).direction, a(G).direction, rtol=1e-9, atol=1e-12 * np.linalg.norm(G[0]))


def test_moving_average_state():
    """v_k = βv_{k−1} + (1 − β)‖g‖², debiased by 1 − β^k; the state round-trips and is checked."""
    rng = np.random.default_rng(4)
    pcd = mtlsolve.get("pcd", beta=0.9)
    expected = np.zeros(3)
    for _ in range(5):
        G = random_system(rng, 3)
        pcd(G)
        expected = 0.9 * expected + 0.1 * (G**2).sum(axis=1)
    state = pcd.state_dict()
    np.testing.assert_allclose(state["sq_norm_ema"].numpy(), expected, rtol=1e-13)
    assert state["steps"] == 5
    fresh = mtlsolve.get("pcd", beta=0.9)
    fresh.load_state_dict(state)
    G = random_system(rng, 3)
    np.testing.assert_array_equal(fresh(G).direction, pcd(G).direction)
    with pytest.raises(StateError):
        fresh.load_state_dict({**state, "sq_norm_ema": -state["sq_norm_ema"]})
    with pytest.raises(StateError):
        fresh.load_state_dict({**state, "steps": 0})


def test_bad_settings():
    with pytest.raises(InvalidConfigError):
        mtlsolve.get("pcd", tau=1.5)
    with pytest.raises(InvalidConfigError):
        mtlsolve.get("pcd", tau=[0.1, -0.1])
    with pytest.raises(InvalidConfigError):
        mtlsolve.get("pcd", beta=1.0)
    pcd = mtlsolve.get("pcd", tau=[0.1, 0.2])
    with pytest.raises(InvalidSystemError, match="2 entries for 1 secondary"):
        pcd(np.eye(2))
    assert pcd.state_dict() == {}  # a call that raises leaves the state as it was

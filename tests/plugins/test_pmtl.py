"""Pareto MTL (docs/methods.md#pmtl): the subproblem's two phases against MGDA run on the
explicit constraint-gradient vectors (u_j − u_k)ᵀG (the solver only sees K), the preference
set, the phase state, and a population of K = 5 models on the convex companion (docs/problems.md#fonseca-problems).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import mtlsolve
from mtlsolve.errors import InvalidSystemError
from mtlsolve.plugins.gramian.mgda import MGDA
from mtlsolve.plugins.pareto.pmtl import ParetoMTL, default_preferences
from mtlsolve.problems import fonseca_convex

F64 = torch.float64


def test_registration():
    for name in ("pmtl", "PMTL", "pareto_mtl"):
        assert type(mtlsolve.get(name)) is ParetoMTL
    assert ParetoMTL.stateful and ParetoMTL.family == "PA"


def test_default_preferences():
    U = default_preferences(2, 5)
    np.testing.assert_allclose(np.arctan2(U[:, 1], U[:, 0]), np.arange(5) * np.pi / 8, atol=1e-15)
    np.testing.assert_allclose(np.linalg.norm(U, axis=1), 1.0, rtol=1e-15)
    np.testing.assert_array_equal(default_preferences(1, 5), [[1.0]])
    for m, count, H in ((3, 5, 2), (3, 10, 3), (4, 5, 2), (5, 5, 1)):
        U = default_preferences(m, count)
        lattice = np.array([h for h in itertools.product(range(H + 1), repeat=m) if sum(h) == H], dtype=float)
        lattice /= np.linalg.norm(lattice, axis=1, keepdims=True)
        assert len(U) == len(lattice) >= count
        assert sorted(map(tuple, U.round(12))) == sorted(map(tuple, lattice.round(12)))


def test_one_preference_vector_is_the_mgda_step():
    rng = np.random.default_rng(0)
    for _ in range(40):
        m = int(rng.integers(1, 6))
        G, L = rng.standard_normal((m, 6)) * rng.uniform(0.1, 3, (m, 1)), rng.uniform(0.1, 2, m)
        expected = MGDA()(G)
        for solver in (ParetoMTL(preferences=[rng.uniform(0.1, 1, m)]), ParetoMTL(n_preferences=1)):
            r = solver(G, losses=L)
            assert r.diagnostics["phase"] == 2 and r.diagnostics["active"] == []
            np.testing.assert_allclose(r.weights, expected.weights, atol=1e-12)
            np.testing.assert_allclose(r.direction, expected.direction, atol=1e-12)


def random_case(rng):
    m = int(rng.integers(2, 5))
    U = rng.uniform(0, 1, (int(rng.integers(2, 7)), m)) + 1e-3
    k = int(rng.integers(len(U)))
    G = rng.standard_normal((m, m + 3)) * rng.uniform(0.2, 3, (m, 1))
    L = rng.uniform(0.1, 2, m)
    Un = U / np.linalg.norm(U, axis=1, keepdims=True)
    active = [j for j in range(len(U)) if (Un[j] - Un[k]) @ L > 0]
    return U, Un, k, G, L, active


def test_phase_two_is_mgda_over_tasks_and_active_constraints():
    rng = np.random.default_rng(1)
    seen_active = 0
    for _ in range(100):
        U, Un, k, G, L, active = random_case(rng)
        r = ParetoMTL(preferences=U, index=k, max_warmup_steps=0)(G, losses=L)
        assert r.diagnostics["phase"] == 2 and r.diagnostics["active"] == active
        vectors = np.vstack([G, (Un[active] - Un[k]) @ G])
        expected = MGDA()(vectors).direction
        np.testing.assert_allclose(r.direction, expected, atol=1e-10 * np.abs(G).max() ** 2 * G.shape[0])
        # the min-norm point d of the hull: d·v ≥ ‖d‖² for every task and constraint gradient
        assert (vectors @ r.direction >= r.direction @ r.direction - 1e-9 * np.abs(G).max() ** 2).all()
        seen_active += bool(active)
    assert seen_active > 30


def test_phase_one_descends_the_violated_constraints():
    rng = np.random.default_rng(2)
    cases = 0
    for _ in range(100):
        U, Un, k, G, L, active = random_case(rng)
        if not active:
            continue
        cases += 1
        r = ParetoMTL(preferences=U, index=k)(G, losses=L)
        assert r.diagnostics["phase"] == 1 and not r.diagnostics["feasible"]
        D = Un[active] - Un[k]
        np.testing.assert_allclose(r.direction, MGDA()(D @ G).direction, atol=1e-10 * np.abs(G).max() * G.shape[0])
        if len(active) == 1:
            np.testing.assert_allclose(r.weights, D[0], atol=1e-14)
    assert cases > 30


def test_two_task_phase_one_by_hand():
    """u = (1, 0), (0, 1), k = 0, L = (1, 2): c_1 = (u_1 − u_0)ᵀL = 1 > 0, so w = u_1 − u_0 = (−1, 1)."""
    r = ParetoMTL(preferences=[[1, 0], [0, 1]])(np.eye(2), losses=[1.0, 2.0])
    np.testing.assert_allclose(r.weights, [-1.0, 1.0])
    assert r.diagnostics["active"] == [1]


def test_phase_state():
    G = np.array([[1.0, 0.2], [-0.3, 1.0]])
    infeasible, feasible = [1.0, 2.0], [2.0, 0.1]  # for u_0 = (1, 0) of the default two-task set
    solver = ParetoMTL()
    assert solver(G, losses=infeasible).diagnostics["phase"] == 1
    assert solver(G, losses=infeasible).diagnostics["phase"] == 1
    state = solver.state_dict()
    assert solver(G, losses=feasible).diagnostics["phase"] == 2  # feasible: phase 2 at once
    assert solver(G, losses=infeasible).diagnostics["phase"] == 2  # and for good
    copy = ParetoMTL()
    copy.load_state_dict(state)
    assert copy(G, losses=infeasible).diagnostics["phase"] == 1
    solver.reset()
    assert solver(G, losses=infeasible).diagnostics["phase"] == 1
    capped = ParetoMTL(max_warmup_steps=2)
    assert [capped(G, losses=infeasible).diagnostics["phase"] for _ in range(4)] == [1, 1, 2, 2]


def test_normalize():
    rng = np.random.default_rng(3)
    for _ in range(20):
        U, Un, k, G, L, active = random_case(rng)
        a = ParetoMTL(preferences=U, index=k)(G, losses=L)
        b = ParetoMTL(preferences=U, index=k, normalize=True)(G, losses=L)
        m = G.shape[0]
        assert np.abs(b.weights).sum() == pytest.approx(m)
        np.testing.assert_allclose(b.weights, a.weights * m / np.abs(a.weights).sum(), rtol=1e-12)


def test_validation():
    G, L = np.eye(2), [1.0, 1.0]
    with pytest.raises(InvalidSystemError, match="out of range"):
        ParetoMTL(index=5)(G, losses=L)
    with pytest.raises(InvalidSystemError, match="entries"):
        ParetoMTL(preferences=[[1, 0, 0]])(G, losses=L)
    for bad in ({"preferences": [[1, -1]]}, {"preferences": [[0, 0]]}, {"max_warmup_steps": -1}, {"index": -1}):
        with pytest.raises(ValueError):
            ParetoMTL(**bad)


def test_population_on_the_convex_companion():
    """K = 5 models, one per default preference vector, from random starts, plain gradient steps
    x ← x − 0.1·d: each ends on the front (√f1 + √f2 = 1) inside its own sector,
    (u_j − u_k)ᵀf ≤ 0 for every j. The step is small on purpose: phase 2 stops at any point of
    the front (there d = 0 whatever the constraints), so a large step may cross the sector's edge
    on its last move before landing on the front (here by at most 3.2e-10, hence the 1e-8·‖f‖
    tolerance)."""
    U = default_preferences(2, 5)
    solvers = [ParetoMTL(index=k) for k in range(5)]
    X = np.random.default_rng(0).uniform(-1, 1, (5, 10))
    for _ in range(600):
        x = torch.tensor(X, requires_grad=True)
        F = fonseca_convex(x)
        J = torch.stack([torch.autograd.grad(F[:, i].sum(), x, retain_graph=True)[0] for i in range(2)], 1).numpy()
        F = F.detach().numpy()
        X = X - 0.1 * np.stack([s(J[k], losses=F[k]).direction for k, s in enumerate(solvers)])
    F = fonseca_convex(torch.tensor(X)).numpy()
    assert all(s.state_dict()["phase"] == 2 for s in solvers)
    np.testing.assert_allclose(np.sqrt(F).sum(axis=1), 1.0, atol=1e-4)
    for k, f in enumerate(F):
        assert ((U - U[k]) @ f).max() <= 1e-8 * np.linalg.norm(f), f"model {k} left its sector: f = {f}"
    angles = np.degrees(np.arctan2(F[:, 1], F[:, 0]))
    assert (np.diff(angles) > 0).all()  # one model per sector, in order


def test_subproblem_matches_the_papers_primal_in_cvxpy():
    """Lin et al. 2019, eq. (14): (d, a) = argmin a + ½‖d‖² s.t. g_iᵀd ≤ a for every task (phase 2
    only) and (u_j − u_k)ᵀG d ≤ a for every active constraint j, solved by cvxpy on G itself.
    The primal step d is −(the solver's gradient-like direction)."""
    import cvxpy as cp

    rng = np.random.default_rng(5)
    checked = {1: 0, 2: 0}
    for _ in range(60):
        U, Un, k, G, L, active = random_case(rng)
        for warmup in (None, 0):
            r = ParetoMTL(preferences=U, index=k, max_warmup_steps=warmup)(G, losses=L)
            phase = r.diagnostics["phase"]
            rows = (Un[active] - Un[k]) @ G
            vectors = rows if phase == 1 else np.vstack([G, rows])
            d, a = cp.Variable(G.shape[1]), cp.Variable()
            problem = cp.Problem(cp.Minimize(a + 0.5 * cp.sum_squares(d)), [vectors @ d <= a])
            problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
            assert problem.status == cp.OPTIMAL
            np.testing.assert_allclose(r.direction, -d.value, atol=1e-6 * np.abs(vectors).max())
            checked[phase] += 1
    assert checked[1] > 10 and checked[2] > 50


# ------------------------------------------------------------------ certificate
def test_certificate_on_mixed_scales_and_float32():
    """Both phases report the min-norm certificate on E K Eᵀ (row scales |E|·‖g‖), certified for
    row norms over eight decades and float32 inputs."""
    rng = np.random.default_rng(81)
    phases = set()
    for k in range(30):
        m = int(rng.integers(2, 5))
        G = rng.standard_normal((m, m + 2)) * 10.0 ** rng.uniform(-4, 4, (m, 1))
        L = rng.uniform(0.1, 3.0, m)
        for X in (G, G.astype(np.float32)):
            solver = ParetoMTL(index=int(rng.integers(0, 5)), max_warmup_steps=k % 2)
            for _ in range(2):  # phase 1 (when infeasible), then phase 2
                r = solver(X, losses=L)
                d = r.diagnostics
                assert d["converged"] and d["residual"] <= d["tolerance"], d
                phases.add(d["phase"])
    assert phases == {1, 2}

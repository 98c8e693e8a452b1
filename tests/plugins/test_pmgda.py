"""PMGDA (docs/methods.md#pmgda): the correction LP's fast path (simplex kernel after a
change of variables) against the cvxpy form LibMOON writes (variables μ and t), the mapping back
to task weights written out on G, the MGDA mode, and the convex companion (docs/problems.md#fonseca-problems):
the final L lies on the requested preference ray within h_tol.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mtlsolve
from mtlsolve.errors import InvalidSystemError
from mtlsolve.plugins.gramian.mgda import MGDA
from mtlsolve.plugins.pareto import pmgda
from mtlsolve.plugins.pareto.pmgda import PMGDA
from mtlsolve.problems import fonseca_convex

F64 = torch.float64


def random_system(rng):
    m = int(rng.integers(2, 8))
    G = rng.standard_normal((m, m + int(rng.integers(0, 6)))) * rng.uniform(0.2, 3.0, (m, 1))
    if rng.random() < 0.3:  # a common component: mostly aligned tasks
        G += rng.standard_normal(G.shape[1]) * rng.uniform(0.5, 2.0)
    return G, rng.uniform(0.05, 2.0, m), rng.uniform(0.2, 2.0, m)


def test_registration():
    for name in ("pmgda", "PMGDA"):
        assert type(mtlsolve.get(name)) is PMGDA
    assert PMGDA.family == "PA" and {n.value for n in PMGDA.needs} == {"gramian", "losses"}
    assert (PMGDA().sigma, PMGDA().h_tol) == (0.1, 1e-2)  # LibMOON PMGDASolver


def test_ray_distance_and_gradient():
    rng = np.random.default_rng(0)
    for m in (2, 3, 5):
        L, pref = rng.uniform(0.1, 2, m), rng.uniform(0.2, 2, m)
        x = torch.tensor(L, requires_grad=True)
        unit = torch.tensor(pref / np.linalg.norm(pref))
        h = torch.linalg.vector_norm(x - (x @ unit) * unit)
        (grad,) = torch.autograd.grad(h, x)
        value, jhf = pmgda.ray_distance(L, pref)
        assert value == pytest.approx(h.item(), rel=1e-13)
        np.testing.assert_allclose(jhf, grad.numpy(), rtol=1e-12, atol=1e-15)
    assert pmgda.ray_distance(np.array([2.0, 4.0]), np.array([1.0, 2.0]))[0] == pytest.approx(0.0, abs=1e-15)


def test_correction_lp_matches_cvxpy():
    """300 random systems (m = 2…7): the kernel's μ equals cvxpy's to 1e-6, both are feasible,
    and the kernel's objective min_j (Bμ)_j is at least cvxpy's (up to 1e-9)."""
    rng = np.random.default_rng(1)
    worst = 0.0
    for _ in range(300):
        G, L, pref = random_system(rng)
        m = len(L)
        sigma = float(rng.choice([0.0, 0.1, 0.5, 1.0]))
        _, jhf = pmgda.ray_distance(L, pref)
        B, norms = pmgda.correction_problem(G @ G.T, jhf, sigma)
        mu, ok = pmgda.solve_correction(B, norms, sigma)
        ref, ref_ok = pmgda.reference_correction(B, norms, sigma)
        assert ok and ref_ok
        assert mu.min() >= 0 and mu.sum() == pytest.approx(1.0, abs=1e-12)
        scale = np.abs(B).max()
        assert B[m] @ mu >= sigma * norms[m] - 1e-9 * scale
        assert (B[:m] @ mu).min() >= (B[:m] @ ref).min() - 1e-9 * scale
        worst = max(worst, np.abs(mu - ref).max())
    assert worst <= 1e-6


def test_correction_problem_written_on_G():
    """B_ji = g̃_j·g̃_i/‖g̃_i‖ with g̃ = the task gradients and ∇h = Σ_i (∂h/∂L_i) g_i, and the
    weights w map μ back: Gᵀw = Σ_i μ_i g̃_i/‖g̃_i‖ (eq. 18)."""
    rng = np.random.default_rng(2)
    for _ in range(30):
        G, L, pref = random_system(rng)
        h, jhf = pmgda.ray_distance(L, pref)
        Gt = np.vstack([G, jhf @ G])
        norms = np.linalg.norm(Gt, axis=1)
        B, n = pmgda.correction_problem(G @ G.T, jhf, 0.1)
        np.testing.assert_allclose(n, norms, rtol=1e-10)
        np.testing.assert_allclose(B, Gt @ (Gt / norms[:, None]).T, rtol=1e-10, atol=1e-12 * np.abs(B).max())
        result = PMGDA(preference=pref, h_tol=0.0)(G, losses=L)
        mu, _ = pmgda.reference_correction(B, n, 0.1)
        assert result.diagnostics["mode"] == "correction" and result.diagnostics["h"] == pytest.approx(h)
        expected = (mu / norms) @ Gt
        np.testing.assert_allclose(result.direction, expected, atol=1e-6 * np.abs(expected).max())
        # the constraint is descended at the requested rate
        assert (jhf @ G) @ result.direction >= 0.1 * norms[-1] - 1e-6 * norms[-1]


def test_mgda_mode_inside_the_tolerance():
    rng = np.random.default_rng(3)
    for _ in range(20):
        G, _, pref = random_system(rng)
        L = pref * rng.uniform(0.5, 2.0)  # on the ray: h = 0
        r = PMGDA(preference=pref)(G, losses=L)
        assert r.diagnostics["mode"] == "mgda"
        np.testing.assert_allclose(r.weights, MGDA()(G).weights, atol=1e-12)


def test_single_task_and_zero_gradients():
    assert PMGDA()(np.array([[3.0, -1.0]]), losses=[0.7]).weights.tolist() == [1.0]
    r = PMGDA(preference=(1, 2))(np.zeros((2, 4)), losses=[1.0, 0.3])
    assert r.diagnostics["mode"] == "correction" and (r.direction == 0).all() and np.isfinite(r.weights).all()


def test_preference_precedence_and_validation():
    G, L = np.eye(2), [2.0, 1.0]
    assert PMGDA(preference=(2, 1))(G, losses=L).diagnostics["mode"] == "mgda"
    assert PMGDA(preference=(2, 1))(G, losses=L, preference=[1, 1]).diagnostics["mode"] == "correction"
    for bad in ([1.0, 0.0], [-1.0, 2.0], [1.0, 1.0, 1.0]):
        with pytest.raises(InvalidSystemError):
            PMGDA()(G, losses=L, preference=bad)
    with pytest.raises(InvalidSystemError, match="losses"):
        PMGDA()(G)
    for bad in ({"sigma": 1.5}, {"sigma": -0.1}, {"h_tol": -1.0}):
        with pytest.raises(ValueError):
            PMGDA(**bad)


@pytest.mark.parametrize(
    ("pref", "start"),
    [((1, 1), -0.9), ((1, 1), 0.8), ((1, 2), -0.9), ((1, 2), 0.8), ((3, 1), 0.8)],
)
def test_convex_companion_ends_on_the_ray(pref, start):
    """Plain steps x ← x − 0.2·d from a point off the ray: the run ends on the front
    (√f1 + √f2 = 1) at distance h < h_tol from the ray through pref; for (1, 2) that is
    f ≈ (0.17157, 0.34315) (docs/problems.md#fonseca-problems), for (1, 1) f ≈ (0.25, 0.25)."""
    solver = PMGDA(preference=pref)
    x = torch.linspace(start, 0.7 if start < 0 else -0.3, 10, dtype=F64)
    modes = set()
    for _ in range(500):
        G = torch.func.jacrev(fonseca_convex)(x)
        r = solver(G, losses=fonseca_convex(x))
        modes.add(r.diagnostics["mode"])
        x = x - 0.2 * r.direction
    f = fonseca_convex(x).numpy()
    assert modes == {"mgda", "correction"}
    assert np.sqrt(f).sum() == pytest.approx(1.0, abs=1e-6)
    h, _ = pmgda.ray_distance(f, np.array(pref, dtype=float))
    assert h < solver.h_tol
    # the front point on the ray: f = c·pref with √c·Σ√pref_i = 1
    target = np.array(pref) / np.sqrt(pref).sum() ** 2
    np.testing.assert_allclose(f, target, atol=2 * solver.h_tol)


# ------------------------------------------------------------------ certificate
def test_certificate_in_both_modes():
    """The MGDA mode reports the min-norm KKT certificate, the correction mode the LP-duality one;
    both certified on float64 and float32 systems with row norms over six decades."""
    rng = np.random.default_rng(71)
    modes = set()
    for k in range(40):
        m = int(rng.integers(2, 7))
        G = rng.standard_normal((m, m + 3)) * 10.0 ** rng.uniform(-3, 3, (m, 1))
        pref = rng.uniform(0.2, 2.0, m)
        L = pref * rng.uniform(0.5, 2.0) * (1 + (0.0 if k % 3 == 0 else 0.5) * rng.standard_normal(m) ** 2)
        for X in (G, G.astype(np.float32)):
            r = PMGDA(preference=pref)(X, losses=L)
            d = r.diagnostics
            assert d["converged"] and d["residual"] <= d["tolerance"], d
            modes.add(d["mode"])
    assert modes == {"mgda", "correction"}


def test_correction_lp_certificate_and_infeasible_fallback(monkeypatch):
    """certified_correction's residual is at round-off; an LP found infeasible falls back to
    μ = e_m (a pure descent on h) and says so."""
    rng = np.random.default_rng(73)
    G = rng.standard_normal((3, 5))
    L, pref = np.array([1.0, 2.0, 0.5]), np.ones(3)
    h, jhf = pmgda.ray_distance(L, pref)
    B, norms = pmgda.correction_problem(G @ G.T, jhf, 0.1)
    mu, ok, residual = pmgda.certified_correction(B, norms, 0.1)
    assert ok and residual <= 1e-12
    monkeypatch.setattr(pmgda, "certified_correction", lambda B, norms, sigma: (np.zeros(4), False, 0.0))
    w, info = pmgda.pmgda_weights(G @ G.T, L, pref, 0.1, 1e-2)
    assert not info["converged"] and "descent on h" in info["fallback"]
    np.testing.assert_allclose(w @ G, jhf @ G / np.linalg.norm(jhf @ G))

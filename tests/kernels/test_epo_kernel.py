"""The EPO kernels: the simplex-method LP against cvxpy, and one EPO step (numba) against its
numpy construction solved by cvxpy.

LP: max cᵀα s.t. α ∈ Δ_m, Aα ≥ b. Random instances (hypothesis) are feasible by construction
(b = Aα₀ − slack for a random α₀ ∈ Δ_m), a fraction of them with zero slack on some rows
(degenerate vertices), or infeasible by construction (a row asking more than max_i A_ji). Generic
data have a unique optimum, where the kernel's vertex must equal cvxpy's point; on degenerate data
(K = 0, duplicated tasks, rank-deficient K) only the objective value and feasibility are compared.

Largest deviations measured on exactly these tests: |α − α_cvxpy| 7.4e-12 (random LPs; 49
feasible, 11 infeasible), 3.8e-11 (EPO steps, both modes); objective gap / max|c| 1.0e-12.
Timings (per call, on a shared 2-core machine at load ~11; a loop over 20 random EPO problems
of each mode, kernel vs cvxpy/Clarabel with the problem built once): m = 2: 13–17 µs vs 11 ms;
m = 5: 13–30 µs vs 12–13 ms; m = 10: 18–35 µs vs 11–17 ms; m = 20: 44–84 µs vs 9–26 ms;
m = 50: 0.17 ms (balance) / 3.4 ms (descent, ~300 degenerate pivots) vs 23–37 ms.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtlsolve.kernels import epo

SETTINGS = settings(
    max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)
AGREE = 1e-6  # kernel vs cvxpy on α (the brief's bound), on data scaled to O(1)
FEAS = 1e-9  # constraint violation of the kernel's α, relative to the row's scale


@st.composite
def lps(draw):
    m = draw(st.integers(1, 12), label="m")
    p = draw(st.integers(0, 12), label="p")
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="seed"))
    c = rng.standard_normal(m) * 10.0 ** rng.uniform(-3, 3)
    A = rng.standard_normal((p, m)) * 10.0 ** rng.uniform(-3, 3, (p, 1))
    alpha0 = rng.dirichlet(np.ones(m))
    kind = draw(st.sampled_from(["slack", "degenerate", "infeasible"]), label="kind")
    slack = np.abs(rng.standard_normal(p)) * np.abs(A).max(axis=1, initial=0.0)
    if kind == "degenerate":
        slack[rng.random(p) < 0.5] = 0.0
    b = A @ alpha0 - slack
    if kind == "infeasible" and p:
        j = rng.integers(p)
        b[j] = A[j].max() + 0.1 * np.abs(A[j]).max() + 1e-3
    return c, A, b, kind == "infeasible" and p > 0


def check_feasible(A, b, alpha):
    assert (alpha >= 0).all() and abs(alpha.sum() - 1) <= 1e-12
    if len(b):
        scale = np.maximum(np.abs(A).max(axis=1), np.abs(b))
        assert ((b - A @ alpha) <= FEAS * scale).all()


@SETTINGS
@given(problem=lps())
def test_lp_matches_cvxpy(problem):
    c, A, b, infeasible = problem
    alpha, ok, pivots = epo.simplex_lp(c, A, b)
    ref, ref_ok = epo.reference_simplex_lp(c, A, b)
    assert ok == ref_ok == (not infeasible)
    if not ok:
        assert (alpha == 0).all()
        return
    check_feasible(A, b, alpha)
    scale = np.abs(c).max()
    assert c @ alpha >= c @ ref - 1e-9 * scale  # at least as good as cvxpy's optimum
    assert c @ alpha == pytest.approx(c @ ref, abs=1e-8 * scale)
    np.testing.assert_allclose(alpha, ref, atol=AGREE)


def test_lp_without_rows_is_the_best_vertex():
    c = np.array([0.3, -1.0, 2.5, 2.4])
    alpha, ok, _ = epo.simplex_lp(c, np.zeros((0, 4)), np.zeros(0))
    assert ok
    np.testing.assert_array_equal(alpha, [0, 0, 1, 0])


def test_lp_hand_solved():
    """max α₁ s.t. α₂ ≥ 0.25 on Δ₂ (written as a row α₂ ≥ 0.25 and as −α₁ ≥ −0.75): α = (0.75, 0.25)."""
    for A, b in (([[0.0, 1.0]], [0.25]), ([[-1.0, 0.0]], [-0.75])):
        alpha, ok, _ = epo.simplex_lp(np.array([1.0, 0.0]), np.array(A), np.array(b))
        assert ok
        np.testing.assert_allclose(alpha, [0.75, 0.25], atol=1e-15)


# ---------------------------------------------------------------- EPO steps
def gramians(rng, m, count, kind="full"):
    for _ in range(count):
        if kind == "full":
            G = rng.standard_normal((m, m + int(rng.integers(0, 2 * m + 1)))) * rng.uniform(0.3, 3.0, (m, 1))
            G += rng.standard_normal(G.shape[1]) * rng.choice([-1.0, 1.0], (m, 1)) * rng.uniform(0, 1.5)
        elif kind == "rank_deficient":
            G = rng.standard_normal((m, int(rng.integers(1, m))))
        elif kind == "duplicated":
            G = rng.standard_normal((m, m + 2))
            G[1] = G[0]
        else:
            G = np.zeros((m, 3))
        yield G @ G.T


def losses_for(rng, m, r, k):
    """Alternately far from the ray (balance) and within μ ≤ 1e-4 of it (descent); some zero losses."""
    if k % 2:
        L = rng.uniform(0.05, 3.0, m)
        if k % 5 == 1:
            L[rng.integers(m)] = 0.0
        return L
    return rng.uniform(0.5, 2.0) / r * rng.uniform(0.999, 1.001, m)


@pytest.mark.parametrize("m", [1, 2, 3, 5, 10])
def test_epo_step_matches_reference(m):
    rng = np.random.default_rng(m)
    modes = set()
    for k, K in enumerate(gramians(rng, m, 30)):
        r = rng.uniform(0.2, 3.0, m)
        L = losses_for(rng, m, r, k)
        alpha, info = epo.epo_weights(K, L, r)
        ref, ref_info = epo.epo_weights(K, L, r, reference=True)
        assert {key: info.get(key) for key in ("mode", "relaxed", "fallback")} == {
            key: ref_info.get(key) for key in ("mode", "relaxed", "fallback")
        }
        assert info["converged"] and info["residual"] <= info["tolerance"]
        assert info["mu"] == pytest.approx(ref_info["mu"], abs=1e-14)
        np.testing.assert_allclose(alpha, ref, atol=AGREE)
        modes.add(info["mode"])
    assert modes == ({"descent"} if m == 1 else {"balance", "descent"})


@pytest.mark.parametrize("kind", ["rank_deficient", "duplicated", "zero"])
def test_epo_step_degenerate_gramians(kind):
    """Non-unique optima: the same LP value as cvxpy, and the kernel's α satisfies the LP's rows."""
    rng = np.random.default_rng(7)
    for m in (2, 3, 5):
        for k, K in enumerate(gramians(rng, m, 10, kind)):
            r = rng.uniform(0.2, 3.0, m)
            L = losses_for(rng, m, r, k)
            alpha, info = epo.epo_weights(K, L, r)
            ref, _ = epo.epo_weights(K, L, r, reference=True)
            mode, _, c, A, b, A_rel, b_rel = epo.epo_problem(K, L, r, 1e-4)
            assert "fallback" not in info and info["converged"] and info["mode"] == mode
            A, b = (A_rel, b_rel) if info["relaxed"] else (A, b)
            check_feasible(A, b, alpha)
            assert c @ alpha == pytest.approx(c @ ref, abs=1e-8 * max(np.abs(c).max(), 1e-300))


def test_non_uniformity_and_balance_direction():
    """μ is KL(l̂ ‖ 1/m) (written out here with torch), and a/Σ(r⊙L) is its gradient in L,
    so Ka = G(Gᵀa) holds the rates g_j·d_bal of the balance direction."""
    rng = np.random.default_rng(3)
    for m in (2, 3, 6):
        r, L = rng.uniform(0.2, 3.0, m), rng.uniform(0.1, 3.0, m)
        x = torch.tensor(L, requires_grad=True)
        rl = torch.tensor(r) * x
        lhat = rl / rl.sum()
        kl = (lhat * torch.log(lhat * m)).sum()
        (grad,) = torch.autograd.grad(kl, x)
        assert epo.non_uniformity(r * L) == pytest.approx(kl.item(), rel=1e-13)
        G = rng.standard_normal((m, m + 2))
        mode, mu, c, *_ = epo.epo_problem(G @ G.T, L, r, eps=0.0)
        assert mode == "balance" and mu == pytest.approx(kl.item(), rel=1e-13)
        expected = G @ (G.T @ (grad.numpy() * (r * L).sum()))
        np.testing.assert_allclose(c, expected / np.diag(G @ G.T).max(), rtol=1e-10, atol=1e-12)


def test_epo_semantics_of_the_two_modes():
    """Balance: g_j·d ≥ g_j·d_bal for the tasks d_bal ascends, ≥ 0 for the largest r_jL_j.
    Descent: g_j·d ≥ 0 for every task. Checked on the returned weights with G, not K."""
    rng = np.random.default_rng(4)
    for k in range(200):
        m = int(rng.integers(2, 7))
        G = rng.standard_normal((m, m + 3))
        r = rng.uniform(0.2, 3.0, m)
        L = losses_for(rng, m, r, k)
        alpha, info = epo.epo_weights(G @ G.T, L, r)
        rates = G @ (G.T @ alpha)
        tol = 1e-9 * (G**2).sum(axis=1).max()
        rl = r * L
        lhat = rl / rl.sum()
        mu = np.sum(lhat[lhat > 0] * np.log(m * lhat[lhat > 0]))
        d_bal = G.T @ (r * (np.log(np.maximum(m * lhat, epo.LOG_FLOOR)) - mu))
        bal = G @ d_bal
        if info["mode"] == "balance":
            assert mu > 1e-4
            star = rl == rl.max()
            assert (rates[star] >= -tol).all()
            if (bal > 0).any():
                assert (rates[~star & (bal <= 0)] >= bal[~star & (bal <= 0)] - tol).all()
            else:
                assert (rates >= -tol).all()
        else:
            assert mu <= 1e-4 and (rates >= -tol).all()


# ------------------------------------------------------------------ certificate
@SETTINGS
@given(problem=lps())
def test_lp_certificate(problem):
    """Every random LP (rows scaled over six decades, degenerate vertices, infeasible ones): a
    feasible verdict comes with an LP-duality residual at round-off (the final basis's duals
    close the gap), an infeasible one with a Farkas certificate at round-off; a perturbed α
    fails the residual of :func:`epo.lp_residual`."""
    c, A, b, infeasible = problem
    alpha, ok, _, residual = epo.certified_simplex_lp(c, A, b)
    assert ok == (not infeasible)
    assert residual <= 1e-11


def test_lp_residual_detects_wrong_points():
    """lp_residual is 0 at a primal–dual optimal pair and positive off it: an infeasible α, a
    feasible but suboptimal α, negative duals."""
    c = np.array([1.0, 0.0])
    A, b = np.array([[0.0, 1.0]]), np.array([0.25])
    # optimum α = (0.75, 0.25); dual: y_0 = 1, y = 1 (c + Aᵀy = (1, 1) ≤ y_0, gap 1 − 0.25 − 0.75 = 0)
    assert epo.lp_residual(c, A, b, np.array([0.75, 0.25]), 1.0, np.array([1.0])) == 0.0
    assert epo.lp_residual(c, A, b, np.array([0.8, 0.2]), 1.0, np.array([1.0])) > 0.04  # infeasible row
    assert epo.lp_residual(c, A, b, np.array([0.5, 0.5]), 1.0, np.array([1.0])) >= 0.1  # duality gap
    assert epo.lp_residual(c, A, b, np.array([0.75, 0.25]), 0.75, np.array([-1.0])) > 0.5  # y < 0


def test_epo_steps_are_certified_on_hard_gramians():
    """EPO steps on Gramians with row scales over 1e-10…1e3, near-opposed pairs (whose c = Kn·1
    cancels to 1e-6 of its terms), dependent rows and float32 accumulation: certified against the
    round-off of the input (the LP rows and costs judged relative to the terms they were summed from)."""
    from hard_systems import gramian_of, hard_matrix

    rng = np.random.default_rng(61)
    for family in ("gaussian", "opposed", "rank_deficient", "conditioned"):
        for dtype in (np.float64, np.float32):
            for k in range(12):
                m = int(rng.integers(2, 8))
                _, K, rho = gramian_of(hard_matrix(family, m, m + 2, rng), dtype)
                r = rng.uniform(0.2, 3.0, m)
                alpha, info = epo.epo_weights(K, losses_for(rng, m, r, k), r, roundoff=rho)
                assert info["converged"] == (info["residual"] <= info["tolerance"])
                # exactly opposed rows and κ = 1e12 make the LP's basis (nearly) singular: the step
                # may be left uncertified, and then says so
                hard = family in ("opposed", "conditioned")
                assert info["converged"] or (hard and isinstance(info["fallback"], str)), (family, info)
    # mixed row scales: certified, and the balance/descent semantics hold relative to each row
    for k in range(20):
        m = int(rng.integers(2, 7))
        G = rng.standard_normal((m, m + 3)) * 10.0 ** rng.uniform(-10, 3, (m, 1))
        r = rng.uniform(0.2, 3.0, m)
        alpha, info = epo.epo_weights(G @ G.T, losses_for(rng, m, r, k), r, roundoff=1e-15)
        assert info["converged"], info


def test_infeasible_balance_lp_falls_back_with_a_name(monkeypatch):
    """An LP found infeasible gives the MGDA weights, converged False, a named fallback and the
    Farkas residual of that verdict."""
    K = np.array([[1.0, 0.2], [0.2, 1.0]])
    real = epo._epo

    def infeasible(*args):
        alpha, balance, mu, relaxed, ok, pivots, residual = real(*args)
        return alpha, balance, mu, relaxed, False, pivots, 0.0

    monkeypatch.setattr(epo, "_epo", infeasible)
    alpha, info = epo.epo_weights(K, np.array([1.0, 2.0]), np.array([0.5, 0.5]))
    assert not info["converged"] and info["fallback"] == "MGDA min-norm weights"
    np.testing.assert_allclose(alpha, [0.5, 0.5])

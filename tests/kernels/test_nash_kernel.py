"""Nash-MTL's fixed point (numba Newton kernel) against its cvxpy reference and closed forms.

α > 0 with α_i(Kα)_i = 1 minimises the strictly convex f(α) = ½αᵀKα − Σ log α_i; it exists
iff 0 ∉ conv{g_i}, and is then unique. Rank-deficient systems are well posed when every row
has a positive component along one direction (n < m rows in an open half-space; duplicated
rows).

Largest deviations measured on exactly these problems (kernel vs the Newton-polished cvxpy
reference): max|α − α_ref|/max α 5.6e-11 (full rank) and 5.7e-11 (rank-deficient), which is
the kernel's stopping tolerance (the polished reference is converged further), |f − f_ref|
5.7e-14; kernel residuals max|α_i(Kα)_i − 1| ≤ 1e-10 by its stopping rule, 9.7e-11 measured.
Without polishing the reference is off by up to 1e-4 (Clarabel's exponential cones).
"""

from __future__ import annotations

import numpy as np
import pytest

from mtlsolve.errors import SolverError
from mtlsolve.kernels import fairgrad
from mtlsolve.kernels import nash as nk

M_VALUES = (2, 3, 5, 10, 40)
PER_M = 50
AGREE = 1e-6  # kernel vs cvxpy, relative to max_i α_i

pytestmark = pytest.mark.filterwarnings("ignore:Solution may be inaccurate")


def full_rank_matrices(m: int, rng: np.random.Generator, count: int = PER_M):
    """G (m x n, n ≥ m) with unequal row norms and a shared component (of random weight)."""
    for _ in range(count):
        n = m + int(rng.integers(0, 2 * m + 1))
        G = rng.standard_normal((m, n)) * rng.uniform(0.3, 3.0, (m, 1))
        yield G + rng.standard_normal(n) * rng.uniform(0, 1.5)


def deficient_matrices(m: int, rng: np.random.Generator, count: int = PER_M):
    """Well-posed rank-deficient G: alternately n < m rows all with a positive component along
    e_1 (0 ∉ conv), and duplicated rows (in random places) of such a matrix."""
    for k in range(count):
        if k % 2 == 0 or m == 2:
            n = int(rng.integers(1, m)) if m > 1 else 1
            G = rng.standard_normal((m, n))
            G[:, 0] = np.abs(G[:, 0]) + 0.2
        else:
            distinct = int(rng.integers(1, m))
            H = rng.standard_normal((distinct, m + 2))
            H[:, 0] = np.abs(H[:, 0]) + 0.2
            G = np.vstack([H, H[rng.integers(0, distinct, m - distinct)]])[rng.permutation(m)]
        yield G * rng.uniform(0.3, 3.0, (m, 1))


def residual(K: np.ndarray, alpha: np.ndarray) -> float:
    return float(np.abs(alpha * (K @ alpha) - 1.0).max())


def check(K: np.ndarray):
    alpha, _, status, res = nk.nash_weights(K)
    ref = nk.reference_nash_weights(K)
    assert status == nk.CONVERGED
    assert (alpha > 0).all()
    assert res <= 1e-10 and residual(K, alpha) <= 1e-10
    np.testing.assert_allclose(alpha, ref, rtol=0, atol=AGREE * ref.max())
    assert nk.nash_objective(K, alpha) == pytest.approx(nk.nash_objective(K, ref), abs=AGREE)


@pytest.mark.parametrize("m", M_VALUES)
def test_full_rank_matches_reference(m):
    rng = np.random.default_rng(m)
    for G in full_rank_matrices(m, rng):
        check(G @ G.T)


@pytest.mark.parametrize("m", M_VALUES)
def test_rank_deficient_matches_reference(m):
    rng = np.random.default_rng(100 + m)
    for G in deficient_matrices(m, rng):
        check(G @ G.T)


@pytest.mark.parametrize(
    ("G", "alpha"),
    [
        ([[1, 0], [0, 2]], [1, 0.5]),
        ([[1, 0], [-1, 1]], [1.84776, 1.30656]),
        ([[1, 0], [1, 1]], [0.76537, 0.5412]),
        ([[-4, 1, 1], [6, 1, 1]], [0.59146, 0.40707]),
    ],
    ids=["O", "C", "N", "J1"],
)
def test_worked_vectors(G, alpha):
    G = np.array(G, dtype=float)
    np.testing.assert_allclose(nk.nash_weights(G @ G.T)[0], alpha, atol=5e-6)


def test_closed_forms():
    """Orthogonal gradients: α_i = 1/‖g_i‖. Two tasks with cos ρ: α_i = 1/(‖g_i‖√(1 + ρ))
    (α_1‖g_1‖ = α_2‖g_2‖ = t solves t²(1 + ρ) = 1). One task: α = 1/‖g‖."""
    rng = np.random.default_rng(1)
    for m in (1, 3, 10, 40):
        Q = np.linalg.qr(rng.standard_normal((m + 2, m)))[0].T
        norms = 10.0 ** rng.uniform(-3, 3, m)
        K = (Q * norms[:, None]) @ (Q * norms[:, None]).T
        np.testing.assert_allclose(nk.nash_weights(K)[0], 1.0 / norms, rtol=1e-10)
    for _ in range(50):
        G = rng.standard_normal((2, int(rng.integers(2, 6))))
        n = np.linalg.norm(G, axis=1)
        rho = G[0] @ G[1] / (n[0] * n[1])
        np.testing.assert_allclose(nk.nash_weights(G @ G.T)[0], 1.0 / (n * np.sqrt(1.0 + rho)), rtol=1e-10)


def test_no_solution_is_reported():
    """0 ∈ conv{g_i}: a zero gradient, exactly opposite gradients, n < m with a cancelling
    combination. Status 2, α = 0, no NaN; the reference finds the problem unbounded too."""
    rng = np.random.default_rng(2)
    cases = [np.array([[1.0, 2.0], [0.0, 0.0]]), np.array([[1.0, 2.0], [-2.0, -4.0]]), np.zeros((3, 3))]
    for _ in range(20):
        H = rng.standard_normal((int(rng.integers(1, 6)), int(rng.integers(1, 5))))
        cases.append(np.vstack([H, -rng.dirichlet(np.ones(len(H))) @ H * rng.uniform(0.5, 2.0)]))
    for G in cases:
        alpha, _, status, res = nk.nash_weights(G @ G.T)
        assert status == nk.NO_SOLUTION and res == 1.0
        np.testing.assert_array_equal(alpha, 0.0)
    with pytest.raises(SolverError):
        nk.reference_nash_weights(cases[1] @ cases[1].T)


def test_warm_start_and_iteration_cap():
    """A warm start near the solution converges in fewer steps to the same α; a wrong-length or
    non-positive warm start falls back to the cold start; max_iter caps the steps (status 1)."""
    rng = np.random.default_rng(3)
    for G in full_rank_matrices(10, rng, count=10):
        K = G @ G.T
        alpha, cold, *_ = nk.nash_weights(K)
        near, warm, status, _ = nk.nash_weights(K, alpha * rng.uniform(0.95, 1.05, 10))
        assert status == nk.CONVERGED and warm <= cold
        np.testing.assert_allclose(near, alpha, rtol=1e-9)
        for bad in (np.ones(3), -alpha, np.full(10, np.nan)):
            np.testing.assert_array_equal(nk.nash_weights(K, bad)[0], alpha)
    G = next(full_rank_matrices(40, rng, count=1))
    _, iterations, status, res = nk.nash_weights(G @ G.T, max_iter=1)
    assert (iterations, status) == (1, nk.MAX_ITER) and res > 1e-10


def test_scale_invariance_and_permutation():
    """α(t²K) = α(K)/t, per task as well (α_i ∝ 1/‖g_i‖ under row scaling); permuting permutes."""
    rng = np.random.default_rng(4)
    for G in full_rank_matrices(10, rng, count=10):
        alpha = nk.nash_weights(G @ G.T)[0]
        for t in (1e-6, 1e6):
            np.testing.assert_allclose(nk.nash_weights(t * t * (G @ G.T))[0], alpha / t, rtol=1e-9)
        r = 10.0 ** rng.uniform(-3, 3, 10)
        np.testing.assert_allclose(nk.nash_weights((G * r[:, None]) @ (G * r[:, None]).T)[0], alpha / r, rtol=1e-9)
        perm = rng.permutation(10)
        np.testing.assert_allclose(nk.nash_weights((G @ G.T)[np.ix_(perm, perm)])[0], alpha[perm], rtol=1e-9)


def test_float32_gramians():
    """A float32 Gramian (slightly indefinite): converged, residual 1e-10 for that Gramian."""
    rng = np.random.default_rng(5)
    for m in (3, 10, 40):
        for G in full_rank_matrices(m, rng, count=5):
            K = (G.astype(np.float32) @ G.T.astype(np.float32)).astype(np.float64)
            alpha, _, status, _ = nk.nash_weights(K)
            assert status == nk.CONVERGED and residual(K, alpha) <= 1e-10


def test_compiled_once_and_reference_built_once():
    rng = np.random.default_rng(6)
    for m in (2, 5, 17):
        G = next(full_rank_matrices(m, rng, count=1))
        K = G @ G.T
        K.setflags(write=False)
        nk.nash_weights(K)
        nk.nash_weights(K, np.ones(m))
        nk.reference_nash_weights(K)
    assert len(fairgrad._fairgrad.signatures) == 1
    assert type(fairgrad._fairgrad._cache).__name__ != "NullCache"
    builds = fairgrad._reference_problem.cache_info().misses
    nk.reference_nash_weights(np.eye(5))
    assert fairgrad._reference_problem.cache_info().misses == builds


def test_nearly_opposed_gradients_are_solved_not_declared_unsolvable():
    """cos(g_1, g_2) = −1 + δ: α_i = 1/(‖g_i‖√δ) exists for every δ above the round-off; the
    kernel reaches the round-off floor of the residual (≈ ε·α_1‖g_1‖·Σ_j α_j‖g_j‖) instead of
    reporting "no solution", and the certificate accepts it."""
    rng = np.random.default_rng(7)
    for eps in (1e-2, 1e-3, 1e-4, 1e-5, 1e-6):
        for _ in range(5):
            norms = 10.0 ** rng.uniform(-3, 3, 2)
            Q = np.linalg.qr(rng.standard_normal((3, 3)))[0]
            base = np.array([[1.0, 0.0, 0.0], [-1.0, eps, 0.0]])
            G = base / np.linalg.norm(base, axis=1, keepdims=True) @ Q.T * norms[:, None]
            K = G @ G.T
            alpha, _, status, _ = nk.nash_weights(K)
            assert status == nk.CONVERGED
            root = np.sqrt(1.0 + eps * eps)
            one_plus_cos = eps * eps / (root * (1.0 + root))
            np.testing.assert_allclose(
                alpha, 1.0 / (norms * np.sqrt(one_plus_cos)), rtol=max(1e-9, 1e3 * 2.2e-16 / eps**2)
            )
            a = alpha * norms
            assert residual(K, alpha) <= 1e3 * np.finfo(float).eps * a.max() * a.sum()
            res, tol, ok = nk.nash_certificate(K, alpha, roundoff=1e-15)
            assert ok and res <= tol


def test_no_solution_threshold_follows_the_roundoff():
    """The existence test compares μ = ‖d_min‖² of the unit gradients with 4·m·ρ: a hull passing
    1e-5 from the origin (μ = 1e-10) is solvable at float64's ρ and not at float32's."""
    G = np.array([[1.0, 0.0], [-1.0, 2e-5]])
    K = G @ G.T
    assert nk.hull_distance(K) == pytest.approx(1e-10, rel=1e-4)
    assert nk.nash_weights(K, roundoff=1e-15)[2] == nk.CONVERGED
    alpha, _, status, res = nk.nash_weights(K, roundoff=1e-7)
    assert status == nk.NO_SOLUTION and res == 1.0 and not alpha.any()


def test_certificate_rejects_wrong_or_conflicting_weights():
    rng = np.random.default_rng(8)
    for G in full_rank_matrices(5, rng, count=10):
        K = G @ G.T
        alpha = nk.nash_weights(K)[0]
        res, tol, ok = nk.nash_certificate(K, alpha, roundoff=1e-15)
        assert ok and res <= 1e-10
        for bad in (alpha * 1.01, -alpha, np.zeros(5), alpha * np.r_[1.0, 1.0, 1.0, 1.0, np.nan]):
            res, tol, ok = nk.nash_certificate(K, bad, roundoff=1e-15)
            assert not ok and res > tol

"""The dual-cone projection kernel (numba, batched) against its cvxpy reference and the KKT conditions.

v* = argmin_{v ≥ u} ½vᵀKv: with μ = Kv*, the KKT conditions are v* ≥ u, μ ≥ 0 and
(v* − u)_i μ_i = 0. The minimiser is unique when K is positive definite; Kv* and
the objective value are unique always.

Largest deviations measured on exactly these problems (kernel vs the polished
cvxpy reference): |v − v_ref| 3.9e-11 (full rank), |f − f_ref| 1.4e-7 (on a
rank-deficient K at m = 40 where Clarabel reports "inaccurate"; ≤ 1.2e-9
elsewhere), |Kv − Kv_ref|/max K_ii 2e-8 (rank-deficient); KKT residuals /
scale ≤ 7.6e-13. Without polishing, |v − v_ref| reaches 4.1e-6 on
near-degenerate rows at m = 40, above the 1e-6 agreement.
"""

from __future__ import annotations

import numpy as np
import pytest

from mtlsolve.kernels import cone_projection as cp

M_VALUES = (2, 3, 5, 10, 40)
PER_M = 50
AGREE = 1e-6
KKT = 1e-10


def full_rank_gramians(m: int, rng: np.random.Generator, count: int = PER_M):
    """Every other one in UPGrad's form K/tr K + 1e-4·I."""
    for k in range(count):
        n = m + int(rng.integers(0, 2 * m + 1))
        G = rng.standard_normal((m, n)) * rng.uniform(0.3, 3.0, (m, 1))
        G += rng.standard_normal(n) * rng.choice([-1.0, 1.0], (m, 1)) * rng.uniform(0, 1.5)
        K = G @ G.T
        yield K if k % 2 == 0 else K / np.trace(K) + 1e-4 * np.eye(m)


def deficient_gramians(m: int, rng: np.random.Generator, count: int = PER_M):
    """Alternately G with fewer columns than rows, and G with duplicated rows (in random places)."""
    for k in range(count):
        if k % 2 == 0 or m == 2:
            G = rng.standard_normal((m, int(rng.integers(1, m))))
        else:
            distinct = int(rng.integers(1, m))
            H = rng.standard_normal((distinct, m + 2))
            G = np.vstack([H, H[rng.integers(0, distinct, m - distinct)]])[rng.permutation(m)]
        yield G @ G.T


def rows_to_check(m: int, rng: np.random.Generator) -> np.ndarray:
    """All rows u = e_i for small m; four random ones at m = 40 (the reference costs ~20 ms a row)."""
    return np.arange(m) if m <= 10 else rng.choice(m, 4, replace=False)


def objectives(K, V):
    return 0.5 * np.einsum("ij,jk,ik->i", V, K, V)


def assert_kkt(K, U, V, tol=KKT):
    scale = np.abs(np.diag(K)).max() * max(1.0, np.abs(V).max())
    mu = V @ K
    assert (V - U >= 0).all()
    assert mu.min() >= -tol * scale, "the projection leaves a conflict: Kv has a negative entry"
    assert np.abs((V - U) * mu).max() <= tol * scale * max(1.0, np.abs(V - U).max()), "complementary slackness"


@pytest.mark.parametrize("m", M_VALUES)
def test_full_rank_matches_reference(m):
    rng = np.random.default_rng(m)
    for K in full_rank_gramians(m, rng):
        V, _, converged = cp.project_dual_cone_rows(K)
        assert converged
        assert_kkt(K, np.eye(m), V)
        rows = rows_to_check(m, rng)
        ref = cp.reference_project_dual_cone(K, np.eye(m)[rows])
        np.testing.assert_allclose(V[rows], ref, rtol=0, atol=AGREE)
        np.testing.assert_allclose(objectives(K, V[rows]), objectives(K, ref), rtol=0, atol=AGREE)


@pytest.mark.parametrize("m", M_VALUES)
@pytest.mark.filterwarnings("ignore:Solution may be inaccurate")  # Clarabel on a few singular K at m = 40
def test_rank_deficient_matches_reference(m):
    rng = np.random.default_rng(100 + m)
    for K in deficient_gramians(m, rng):
        V, _, converged = cp.project_dual_cone_rows(K)
        assert converged
        assert_kkt(K, np.eye(m), V)
        rows = rows_to_check(m, rng)
        ref = cp.reference_project_dual_cone(K, np.eye(m)[rows])
        np.testing.assert_allclose(V[rows] @ K, ref @ K, rtol=0, atol=AGREE * K.diagonal().max())
        np.testing.assert_allclose(objectives(K, V[rows]), objectives(K, ref), rtol=0, atol=AGREE)


@pytest.mark.parametrize("m", (3, 10))
def test_general_u_matches_reference(m):
    """Any u, with negative entries too (the kernel is not only for u = e_i)."""
    rng = np.random.default_rng(200 + m)
    for K in full_rank_gramians(m, rng, count=10):
        U = rng.standard_normal((3, m))
        V, _, converged = cp.project_dual_cone(K, U)
        assert converged
        assert_kkt(K, U, V)
        ref = cp.reference_project_dual_cone(K, U)
        np.testing.assert_allclose(V, ref, rtol=0, atol=AGREE)
        np.testing.assert_allclose(objectives(K, V), objectives(K, ref), rtol=0, atol=AGREE)
        np.testing.assert_allclose(cp.project_dual_cone(K, U[0])[0], V[0], atol=1e-15)  # one vector


def test_upgrad_worked_vectors():
    """Worked vectors for UPGrad (Quinton & Rey, arXiv 2406.16232, eq. (5)): mean of the projections, exact and with TorchJD's regularisation."""
    cases = [
        ([[1, 0], [-1, 1]], [0.25, 0.75], [0.24989, 0.74996], 5e-6),
        ([[-4, 1, 1], [6, 1, 1]], [0.29240, 1.90058, 1.90058], [0.2929, 1.90035, 1.90035], 5e-5),
    ]
    for G, exact, regularised, atol in cases:
        G = np.array(G, dtype=float)
        K = G @ G.T
        np.testing.assert_allclose(cp.project_dual_cone_rows(K)[0].mean(0) @ G, exact, atol=5e-6)
        K = K / np.trace(K) + 1e-4 * np.eye(len(K))
        np.testing.assert_allclose(cp.project_dual_cone_rows(K)[0].mean(0) @ G, regularised, atol=atol)


def test_no_conflict_and_degenerate_inputs():
    rng = np.random.default_rng(3)
    G = np.abs(rng.standard_normal((6, 4)))  # K ≥ 0 entry-wise: every g_i is already in the cone
    V, iterations, _ = cp.project_dual_cone_rows(G @ G.T)
    assert (V == np.eye(6)).all() and iterations == 6
    assert (cp.project_dual_cone_rows(np.zeros((3, 3)))[0] == np.eye(3)).all()
    np.testing.assert_allclose(cp.project_dual_cone_rows(np.array([[2.0]]))[0], [[1.0]])
    # opposite gradients: the projections are 0 in gradient space
    G = np.array([[1.0, 2.0], [-1.0, -2.0], [0.0, 0.0]])
    V, _, _ = cp.project_dual_cone_rows(G @ G.T)
    np.testing.assert_allclose(V @ G, 0, atol=1e-12)


def test_two_tasks_closed_form():
    """m = 2, u = e_1: v = (1, max(0, −K_12/K_22)) (project g_1 off g_2 when they conflict)."""
    rng = np.random.default_rng(4)
    for _ in range(200):
        G = rng.standard_normal((2, int(rng.integers(2, 6))))
        K = G @ G.T
        v = cp.project_dual_cone(K, np.array([1.0, 0.0]))[0]
        np.testing.assert_allclose(v, [1.0, max(0.0, -K[0, 1] / K[1, 1])], rtol=1e-12, atol=1e-14)


def test_extreme_scales():
    rng = np.random.default_rng(5)
    for m in (3, 10, 40):
        for k in range(10):
            G = rng.standard_normal((m, int(rng.integers(1, 2 * m))))
            G *= 10.0 ** rng.uniform(-3, 3, (m, 1)) if k % 2 else 10.0 ** rng.choice([-20.0, 20.0])
            K = G @ G.T
            V, _, converged = cp.project_dual_cone_rows(K)
            assert converged
            assert_kkt(K, np.eye(m), V, tol=1e-9)


def test_compiled_once():
    rng = np.random.default_rng(6)
    for m in (2, 7):
        K = next(full_rank_gramians(m, rng, count=1))
        K.setflags(write=False)
        cp.project_dual_cone_rows(K)
        cp.project_dual_cone(K, np.ones(m))
    assert len(cp._project_dual_cone.signatures) == 1
    assert type(cp._project_dual_cone._cache).__name__ != "NullCache"


def test_dual_cone_weights_and_certificate():
    """dual_cone_weights = the sum of project_dual_cone's rows on TorchJD's K', and its KKT
    certificate is at round-off level, scale-free (rows over 10 decades), and sees a violation."""
    rng = np.random.default_rng(11)
    for _ in range(30):
        m = int(rng.integers(1, 8))
        G = rng.standard_normal((m, int(rng.integers(1, 9)))) * 10.0 ** rng.uniform(-5, 5, (m, 1))
        K = G @ G.T
        for U in (np.eye(m), np.full((1, m), 1.0 / m), np.diag(rng.uniform(0, 1, m))):
            w, V, Kp, _, converged = cp.dual_cone_weights(K, U, 0.0, 0.0)
            np.testing.assert_allclose(Kp, cp.regularised(K, 0.0, 0.0))
            expected, _, _ = cp.project_dual_cone(Kp, U)
            np.testing.assert_allclose(V, expected, rtol=1e-12, atol=1e-12 * np.abs(expected).max())
            np.testing.assert_allclose(w, V.sum(axis=0))
            assert converged and cp.dual_cone_certificate(Kp, U, V) <= 1e-12
        if m > 1:
            V = cp.project_dual_cone(K, np.eye(m))[0]
            moved = V.copy()
            moved[0, 0] = 0.5  # below u_0 = 1: primal infeasible
            assert cp.dual_cone_certificate(K, np.eye(m), moved) > 1e-6

"""The simplex QP kernel (numba) against its cvxpy reference and the KKT conditions.

For w* = argmin_{w ∈ Δ_m} ½wᵀQw + qᵀw with g = Qw* + q and λ = w*ᵀg, the KKT
conditions are g_i ≥ λ for every i and w*_i (g_i − λ) = 0. The minimiser is
unique when Q is positive definite; Qw* (hence d = Gᵀw* for Q = GGᵀ) and the
objective value are unique always.

Largest deviations measured on exactly these problems (kernel vs the polished
cvxpy reference): |w − w_ref| 1.9e-12 (full rank, q = 0), 8.2e-13 (with q),
|f − f_ref| 6.8e-13, |Kw − Kw_ref|/max K_ii 3.3e-11 (rank-deficient); KKT
residuals / scale ≤ 5.4e-14. Without polishing, |w − w_ref| reaches 5.1e-7 on
near-degenerate problems at m = 40 (interior-point accuracy ≈ gap/margin).
"""

from __future__ import annotations

import numpy as np
import pytest

from mtlsolve.kernels import simplex_qp as sq

pytestmark = pytest.mark.filterwarnings("ignore:Solution may be inaccurate")  # the cvxpy reference on hard systems

M_VALUES = (2, 3, 5, 10, 40)
PER_M = 50
AGREE = 1e-6  # kernel vs cvxpy, absolute, on problems of scale O(1)–O(100)
KKT = 1e-10  # KKT residuals relative to max(max_i Q_ii, max_i |q_i|)


def full_rank_gramians(m: int, rng: np.random.Generator, count: int = PER_M):
    """G (m x n, n ≥ m) with unequal row norms and a shared component of random sign."""
    for _ in range(count):
        n = m + int(rng.integers(0, 2 * m + 1))
        G = rng.standard_normal((m, n)) * rng.uniform(0.3, 3.0, (m, 1))
        G += rng.standard_normal(n) * rng.choice([-1.0, 1.0], (m, 1)) * rng.uniform(0, 1.5)
        yield G @ G.T


def deficient_gramians(m: int, rng: np.random.Generator, count: int = PER_M):
    """Alternately G with fewer columns than rows, and G with duplicated rows (in random places)."""
    for k in range(count):
        if k % 2 == 0 or m == 2:
            G = rng.standard_normal((m, int(rng.integers(1, m)))) if m > 1 else np.zeros((1, 1))
        else:
            distinct = int(rng.integers(1, m))
            H = rng.standard_normal((distinct, m + 2))
            G = np.vstack([H, H[rng.integers(0, distinct, m - distinct)]])[rng.permutation(m)]
        yield G @ G.T


def objective(Q, q, w):
    return 0.5 * w @ Q @ w + q @ w


def assert_kkt(Q, q, w, tol=KKT):
    scale = max(np.abs(np.diag(Q)).max(), np.abs(q).max(), 1e-300)
    g = Q @ w + q
    lam = w @ g
    assert (w >= 0).all()
    assert abs(w.sum() - 1.0) <= 1e-12
    assert (g - lam).min() >= -tol * scale, "a bound constraint has a negative multiplier"
    assert np.abs(w * (g - lam)).max() <= tol * scale, "complementary slackness"


@pytest.mark.parametrize("m", M_VALUES)
def test_full_rank_matches_reference(m):
    rng = np.random.default_rng(m)
    for K in full_rank_gramians(m, rng):
        w, _, converged = sq.min_norm_simplex(K)
        ref = sq.reference_min_norm_simplex(K)
        assert converged
        assert_kkt(K, np.zeros(m), w)
        np.testing.assert_allclose(w, ref, rtol=0, atol=AGREE)
        np.testing.assert_allclose(K @ w, K @ ref, rtol=0, atol=AGREE * K.diagonal().max())
        assert objective(K, 0 * w, w) == pytest.approx(objective(K, 0 * w, ref), abs=AGREE)
        assert objective(K, 0 * w, w) <= objective(K, 0 * w, ref) + 1e-12 * np.trace(K)


@pytest.mark.parametrize("m", M_VALUES)
def test_rank_deficient_matches_reference(m):
    rng = np.random.default_rng(100 + m)
    for K in deficient_gramians(m, rng):
        w, _, converged = sq.min_norm_simplex(K)
        ref = sq.reference_min_norm_simplex(K)
        assert converged
        assert_kkt(K, np.zeros(m), w)
        # the minimiser need not be unique, Kw* and the objective are
        np.testing.assert_allclose(K @ w, K @ ref, rtol=0, atol=AGREE * K.diagonal().max())
        assert objective(K, 0 * w, w) == pytest.approx(objective(K, 0 * w, ref), abs=AGREE)


@pytest.mark.parametrize("m", M_VALUES)
def test_linear_term_matches_reference(m):
    rng = np.random.default_rng(200 + m)
    for K in full_rank_gramians(m, rng, count=20):
        q = rng.standard_normal(m) * np.trace(K) / m
        w, _, converged = sq.simplex_qp(K, q)
        ref = sq.reference_simplex_qp(K, q)
        assert converged
        assert_kkt(K, q, w)
        np.testing.assert_allclose(w, ref, rtol=0, atol=AGREE)
        assert objective(K, q, w) == pytest.approx(objective(K, q, ref), abs=AGREE)


def test_worked_vectors():
    """Min-norm points of the worked vectors O, C, N, J1 (MGDA, Sener & Koltun, arXiv 1810.04650, eq. (3))."""
    cases = [
        ([[1, 0], [0, 2]], [0.8, 0.4]),
        ([[1, 0], [-1, 1]], [0.2, 0.4]),
        ([[1, 0], [1, 1]], [1, 0]),
        ([[-4, 1, 1], [6, 1, 1]], [0, 1, 1]),
    ]
    for G, d in cases:
        G = np.array(G, dtype=float)
        w, _, _ = sq.min_norm_simplex(G @ G.T)
        np.testing.assert_allclose(w @ G, d, atol=1e-12)


def test_two_tasks_closed_form():
    """m = 2: w_1 = clip((g_2 − g_1)·g_2 / ‖g_1 − g_2‖², 0, 1) (Sener & Koltun, Alg. 1)."""
    rng = np.random.default_rng(7)
    for _ in range(200):
        G = rng.standard_normal((2, int(rng.integers(1, 6))))
        K = G @ G.T
        w1 = np.clip((K[1, 1] - K[0, 1]) / (K[0, 0] + K[1, 1] - 2 * K[0, 1]), 0, 1)
        w, _, _ = sq.min_norm_simplex(K)
        np.testing.assert_allclose(w, [w1, 1 - w1], atol=1e-12)


def test_degenerate_inputs():
    # one task; the zero matrix (every point of the simplex is optimal); a zero gradient
    assert sq.min_norm_simplex(np.array([[3.0]]))[0].tolist() == [1.0]
    w, _, converged = sq.min_norm_simplex(np.zeros((4, 4)))
    assert converged and (w >= 0).all() and w.sum() == pytest.approx(1.0)
    G = np.array([[1.0, 2.0], [0.0, 0.0], [-3.0, 1.0]])
    w, _, _ = sq.min_norm_simplex(G @ G.T)
    np.testing.assert_allclose(w, [0, 1, 0], atol=1e-12)
    # exact duplicates: d is the min-norm point of the distinct rows
    H = np.array([[1.0, 0.0], [0.0, 2.0]])
    G = H[[0, 1, 0, 1, 1]]
    w, _, _ = sq.min_norm_simplex(G @ G.T)
    np.testing.assert_allclose(w @ G, [0.8, 0.4], atol=1e-12)


def test_extreme_scales_and_float32_gramians():
    """Row norms over six decades, tiny and huge overall scales, and float32 Gramians (slightly
    indefinite): the kernel converges and satisfies KKT to the accuracy of the data."""
    rng = np.random.default_rng(11)
    for m in (3, 10, 40):
        for k in range(12):
            G = rng.standard_normal((m, int(rng.integers(1, 2 * m))))
            if k % 3 == 0:
                G *= 10.0 ** rng.uniform(-3, 3, (m, 1))
            elif k % 3 == 1:
                G *= 10.0 ** rng.choice([-20.0, 20.0])
            else:
                G = G.astype(np.float32)
            K = (G @ G.T).astype(np.float64)
            w, _, converged = sq.min_norm_simplex(K)
            assert converged
            assert_kkt(K, np.zeros(m), w, tol=1e-6 if G.dtype == np.float32 else 1e-9)


def test_scale_invariance_and_permutation():
    rng = np.random.default_rng(12)
    for K in full_rank_gramians(10, rng, count=10):
        w = sq.min_norm_simplex(K)[0]
        np.testing.assert_allclose(sq.min_norm_simplex(1e-6 * K)[0], w, atol=1e-12)
        perm = rng.permutation(10)
        np.testing.assert_allclose(sq.min_norm_simplex(K[np.ix_(perm, perm)])[0], w[perm], atol=1e-12)


def test_compiled_once_and_reference_built_once():
    rng = np.random.default_rng(13)
    for m in (2, 5, 17):
        K = next(full_rank_gramians(m, rng, count=1))
        K.setflags(write=False)  # as GradientSystem.gramian64 hands it over
        sq.min_norm_simplex(K)
        sq.simplex_qp(K, np.ones(m))
        sq.reference_min_norm_simplex(K)
    assert len(sq._simplex_qp.signatures) == 1
    assert type(sq._simplex_qp._cache).__name__ != "NullCache"  # cached on disk
    builds = sq._reference_problem.cache_info().misses
    sq.reference_min_norm_simplex(np.eye(5))
    assert sq._reference_problem.cache_info().misses == builds


# ------------------------------------------------- scale-free KKT certificate
from hard_systems import FAMILIES, gramian_of, hard_matrix  # noqa: E402
from mtlsolve.gramian import certificate_tolerance  # noqa: E402

#: the reported system: row norms 2e-2, 2e3, 2e-3 (the old ridge 1e-14·max K_ii broke KKT by 6 %)
REPORTED = np.array(
    [[-7.497e-3, 1.593e-2, -4.962e-3], [535.587237, -1353.879332, -1437.82126], [1.018e-3, 7.38e-4, 8.79e-4]]
)


def kkt_relative_to_lambda(K, w):
    """max over the support of |(Kw)_i − wᵀKw| / wᵀKw: the residual the defect was reported in."""
    g = K @ w
    lam = w @ g
    return np.abs(g - lam)[w > 0].max() / lam


def test_reported_row_scales():
    """The reported system: KKT on the support to 1e-7 relative to ‖d‖² (it was 6 %; the row of norm
    2e3 carries the weight 5e-7, so an ulp of that weight moves its product by ~1e-9·‖d‖²), the
    scale-free residual at round-off, and the same d as the polished cvxpy reference."""
    K = REPORTED @ REPORTED.T
    w, _, converged = sq.min_norm_simplex(K)
    assert converged and kkt_relative_to_lambda(K, w) < 1e-7
    assert sq.kkt_residual(K, None, w) < 1e-14
    ref = sq.reference_min_norm_simplex(K)
    np.testing.assert_allclose(w @ REPORTED, ref @ REPORTED, rtol=1e-8)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_kkt_certified_on_hard_families(family, dtype):
    """Row scales over 1e-20…1e3, κ(K) = 1e12, rank deficiency, near-opposed pairs, 0 in (or
    near) the hull, zero rows, float32 Gramians: the scale-free KKT residual is within the
    certificate tolerance of the input's round-off, and no worse than the cvxpy reference's."""
    rng = np.random.default_rng([FAMILIES.index(family), np.dtype(dtype).itemsize])
    for m in (2, 3, 5, 8, 20, 40):
        for _ in range(6 if m < 20 else 2):
            n = int(rng.integers(1, 2 * m + 2))
            _, K, rho = gramian_of(hard_matrix(family, m, n, rng), dtype)
            w, _, converged = sq.min_norm_simplex(K)
            residual = sq.kkt_residual(K, None, w)
            assert converged and (w >= 0).all() and abs(w.sum() - 1) < 1e-14
            assert residual <= certificate_tolerance(rho), (family, m, n, residual)
            if m <= 8:  # objective no worse than the reference (which is not always certified)
                ref = sq.reference_min_norm_simplex(K)
                n_ = np.sqrt(np.diag(K))
                slack = certificate_tolerance(rho) * ((w @ n_) ** 2 + (ref @ n_) ** 2)
                assert w @ K @ w <= ref @ K @ ref + slack


def test_residual_is_scale_free_and_detects_errors():
    """The residual does not change under K → cK, and it stays at round-off when the rows are
    rescaled over 24 decades (the kernel's solution of D K D); wrong weights give a residual of
    order 1."""
    rng = np.random.default_rng(21)
    for _ in range(20):
        m = int(rng.integers(2, 10))
        G = rng.standard_normal((m, m + 2))
        K = G @ G.T
        w = sq.min_norm_simplex(K)[0]
        r = sq.kkt_residual(K, None, w)
        assert r < 1e-14
        assert sq.kkt_residual(2.0**-100 * K, None, w) == r
        uniform = np.full(m, 1 / m)
        if np.abs(K @ uniform - uniform @ K @ uniform).max() > 1e-3 * np.diag(K).max():
            assert sq.kkt_residual(K, None, uniform) > 1e-4
        t = 10.0 ** rng.uniform(-12, 12, m)
        Kt = K * np.outer(t, t)
        assert sq.kkt_residual(Kt, None, sq.min_norm_simplex(Kt)[0]) < 1e-13


def test_certified_min_norm_diagnostics_and_fallback(monkeypatch):
    """certified_min_norm reports residual ≤ tolerance and converged; when the active-set weights
    are wrong, the cvxpy reference rescues them (``solved_by``), and when both are wrong
    ``converged`` is False with a named fallback."""
    G = REPORTED
    K = G @ G.T
    w, info = sq.certified_min_norm(K, 1e-15)
    assert info["converged"] and info["residual"] <= info["tolerance"] == 1e-11 and "fallback" not in info
    bad = np.array([1.0, 0.0, 0.0])
    monkeypatch.setattr(sq, "_simplex_qp", lambda *args: (bad.copy(), 1, True))
    w, info = sq.certified_min_norm(K, 1e-15)
    assert info["converged"] and info["solved_by"] == "cvxpy reference"
    np.testing.assert_allclose(w @ G, sq.reference_min_norm_simplex(K) @ G, rtol=1e-12)
    monkeypatch.setattr(sq, "reference_min_norm_simplex", lambda K: bad.copy())
    w, info = sq.certified_min_norm(K, 1e-15)
    assert not info["converged"] and info["residual"] > info["tolerance"] and "cvxpy" in info["fallback"]


def test_scaled_kernel_on_linear_terms_with_zero_rows():
    """simplex_qp with q and zero rows of Q (linear in those weights) and mixed row scales: the
    scale-free KKT residual is at round-off and the objective is no worse than the reference."""
    rng = np.random.default_rng(23)
    for _ in range(30):
        m = int(rng.integers(2, 9))
        G = rng.standard_normal((m, m)) * 10.0 ** rng.uniform(-6, 3, (m, 1))
        G[rng.random(m) < 0.3] = 0.0
        Q = G @ G.T
        q = rng.standard_normal(m) * np.sqrt(np.diag(Q).max() + 1.0)
        w, _, converged = sq.simplex_qp(Q, q)
        ref = sq.reference_simplex_qp(Q, q)
        assert converged and sq.kkt_residual(Q, q, w) < 1e-13
        scale = np.abs(q).max() + np.diag(Q).max()
        assert objective(Q, q, w) <= objective(Q, q, ref) + 1e-12 * scale

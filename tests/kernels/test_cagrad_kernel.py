"""CAGrad's dual (numba kernel) against its cvxpy reference, the optimality conditions and
independent computations.

With b = K1/m, φ = c‖g_0‖ and F(w) = bᵀw + φ√(wᵀKw), the kernel returns w* = argmin_Δ F,
ν ≥ 0 with d_raw = g_0 + Gᵀν, and θ* = F(w*). Where g_w* ≠ 0 the conditions are: with
s = ‖g_w*‖, the gradient h = b + φKw*/s satisfies h_i ≥ λ = w*ᵀh (= F(w*)) with equality
where w*_i > 0 (dual KKT); ν = φw*/s, so νᵀKν = φ² (‖d_raw − g_0‖ = φ), and
g_i·d_raw = (b + Kν)_i ≥ θ* with equality where ν_i > 0 (d_raw attains the max-min value
θ* = F(w*): strong duality certifies both optimal). w* is unique for full-rank K; d_raw and
F* are unique whenever F* ≠ 0.

Largest deviations measured on exactly these problems (kernel vs the polished cvxpy
reference, relative to max K_ii where not a weight): |w − w_ref| 4.5e-14, |F − F_ref| 1.1e-15
(full rank); |Kw − Kw_ref| 8e-15 (rank-deficient, regular); |F − F_ref| 8.6e-10 (rank-deficient,
all: on the degenerate ones w* only has g_w ≈ 0); degenerate d_raw vs the NNLS projection
1.3e-15 (of max‖g_i‖); KKT residuals 8.4e-15. Without polishing the reference is off by up to
1e-5 in w (interior-point accuracy near weakly active bounds).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize

from mtlsolve.kernels import cagrad as cg

M_VALUES = (2, 3, 5, 10, 40)
PER_M = 50
AGREE = 1e-6  # kernel vs cvxpy, relative to max_i K_ii
KKT = 1e-10  # optimality conditions, relative to max_i K_ii
C = 0.4

pytestmark = pytest.mark.filterwarnings("ignore:Solution may be inaccurate")


def full_rank_matrices(m: int, rng: np.random.Generator, count: int = PER_M):
    """G (m x n, n ≥ m) with unequal row norms and a shared component of random sign."""
    for _ in range(count):
        n = m + int(rng.integers(0, 2 * m + 1))
        G = rng.standard_normal((m, n)) * rng.uniform(0.3, 3.0, (m, 1))
        yield G + rng.standard_normal(n) * rng.choice([-1.0, 1.0], (m, 1)) * rng.uniform(0, 1.5)


def deficient_matrices(m: int, rng: np.random.Generator, count: int = PER_M):
    """Alternately G with fewer columns than rows and G with duplicated rows (in random places)."""
    for k in range(count):
        if k % 2 == 0 or m == 2:
            G = rng.standard_normal((m, int(rng.integers(1, m)))) * rng.uniform(0.3, 3.0, (m, 1))
        else:
            distinct = int(rng.integers(1, m))
            H = rng.standard_normal((distinct, m + 2))
            G = np.vstack([H, H[rng.integers(0, distinct, m - distinct)]])[rng.permutation(m)]
        yield G


def phi_of(K: np.ndarray, c: float) -> float:
    return c * np.sqrt(max(K.sum(), 0.0)) / len(K)


def assert_optimal(K: np.ndarray, c: float, w, nu, value, tol: float = KKT) -> None:
    """The dual KKT conditions at w and the primal ones at ν (module docstring)."""
    m = len(K)
    scale = K.diagonal().max()
    b = K.sum(axis=1) / m
    phi = phi_of(K, c)
    assert (w >= 0).all() and abs(w.sum() - 1) <= 1e-12
    s = np.sqrt(w @ K @ w)
    h = b + phi * (K @ w) / s
    lam = w @ h
    assert (h - lam).min() >= -tol * scale, "a bound of the dual has a negative multiplier"
    assert np.abs(w * (h - lam)).max() <= tol * scale, "dual complementary slackness"
    assert lam == pytest.approx(value, abs=tol * scale)
    assert (nu >= 0).all()
    assert np.sqrt(nu @ K @ nu) == pytest.approx(phi, abs=tol * np.sqrt(scale)), "‖d_raw − g_0‖ = φ"
    products = b + K @ nu  # g_i·d_raw
    assert products.min() == pytest.approx(value, abs=tol * scale), "d_raw attains the dual value"
    assert np.abs((products - value)[nu > 1e-9 * nu.max()]).max() <= tol * scale


@pytest.mark.parametrize("m", M_VALUES)
def test_full_rank_matches_reference(m):
    rng = np.random.default_rng(m)
    for G in full_rank_matrices(m, rng):
        K = G @ G.T
        w, nu, value, _, converged, degenerate = cg.cagrad_dual(K, C)
        ref, f_ref = cg.reference_cagrad_dual(K, C)
        assert converged and not degenerate
        assert_optimal(K, C, w, nu, value)
        scale = K.diagonal().max()
        np.testing.assert_allclose(w, ref, rtol=0, atol=AGREE)
        assert cg.cagrad_objective(K, C, w) == pytest.approx(f_ref, abs=AGREE * scale)
        assert cg.cagrad_objective(K, C, w) <= f_ref + 1e-13 * scale


@pytest.mark.parametrize("m", M_VALUES)
def test_rank_deficient_matches_reference(m):
    """The objective always agrees; where F* ≠ 0 so does Kw* (hence d_raw), and the optimality
    conditions hold; where g_w* = 0 (degenerate) d_raw is the projection of g_0 onto
    {d : Gd ≥ 0}, computed independently by NNLS: min_{ν ≥ 0} ‖g_0 + Gᵀν‖."""
    rng = np.random.default_rng(100 + m)
    for c in (C, 2.0):
        for G in deficient_matrices(m, rng, count=PER_M // 2):
            K = G @ G.T
            w, nu, value, _, converged, degenerate = cg.cagrad_dual(K, c)
            ref, f_ref = cg.reference_cagrad_dual(K, c)
            scale = K.diagonal().max()
            assert converged
            assert cg.cagrad_objective(K, c, w) == pytest.approx(f_ref, abs=AGREE * scale)
            if degenerate:
                check_degenerate(G, c, nu, value)
            else:
                assert_optimal(K, c, w, nu, value)
                np.testing.assert_allclose(K @ w, K @ ref, rtol=0, atol=AGREE * scale)


def check_degenerate(G: np.ndarray, c: float, nu: np.ndarray, value: float) -> None:
    g0 = G.mean(axis=0)
    d = g0 + nu @ G
    x = scipy.optimize.nnls(G.T, -g0)[0]
    expected = g0 + x @ G
    norm = np.linalg.norm(G, axis=1).max()
    assert value == 0.0
    np.testing.assert_allclose(d, expected, rtol=0, atol=1e-9 * norm)
    assert np.linalg.norm(d - g0) <= c * np.linalg.norm(g0) * (1 + 1e-9)
    assert (G @ d).min() >= -1e-10 * norm**2


def test_degenerate_cases():
    """0 ∈ conv{g_i} and a d in the ball with Gd ≥ 0: θ* = 0, d_raw = the projection of g_0 onto
    {Gd ≥ 0}; w* then has g_w ≈ 0 (F(w*) ≈ 0)."""
    cases = [
        ([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]], 0.4),  # projection = g_0
        ([[1.0, 0.0], [0.0, 0.0]], 0.4),  # a zero gradient
        ([[1.0, 0.2], [-1.0, 0.2], [0.3, 1.0], [-2.0, -0.4]], 2.0),
    ]
    rng = np.random.default_rng(7)
    for _ in range(30):  # random: rows plus the negative of a convex combination, large c
        H = rng.standard_normal((int(rng.integers(2, 8)), int(rng.integers(2, 5))))
        cases.append((np.vstack([H, -rng.dirichlet(np.ones(len(H))) @ H]), 5.0))
    seen = 0
    for G, c in cases:
        G = np.array(G)
        K = G @ G.T
        w, nu, value, _, converged, degenerate = cg.cagrad_dual(K, c)
        assert converged and np.isfinite(w).all() and np.isfinite(nu).all()
        if degenerate:
            seen += 1
            check_degenerate(G, c, nu, value)
            assert cg.cagrad_objective(K, c, w) == pytest.approx(0.0, abs=1e-6 * K.diagonal().max())
        else:
            assert_optimal(K, c, w, nu, value)
    assert seen >= 10


def test_two_tasks_against_a_scalar_search():
    """m = 2: F((t, 1 − t)) is convex in t ∈ [0, 1]; a bounded scalar search (scipy) finds it."""
    rng = np.random.default_rng(3)
    for _ in range(100):
        G = rng.standard_normal((2, int(rng.integers(2, 6)))) * rng.uniform(0.2, 3.0, (2, 1))
        K = G @ G.T
        w, *_ = cg.cagrad_dual(K, C)
        res = scipy.optimize.minimize_scalar(
            lambda t: cg.cagrad_objective(K, C, np.array([t, 1 - t])),
            bounds=(0, 1),
            method="bounded",
            options={"xatol": 1e-12},
        )
        assert cg.cagrad_objective(K, C, w) <= res.fun + 1e-12 * K.diagonal().max()
        assert w[0] == pytest.approx(res.x, abs=1e-5)


@pytest.mark.parametrize(
    ("G", "d_raw"),
    [
        ([[1, 0], [0, 2]], [0.94721, 1]),
        ([[1, 0], [-1, 1]], [0.2, 0.5]),
        ([[1, 0], [1, 1]], [1.44721, 0.5]),
        ([[-4, 1, 1], [6, 1, 1]], [0.3468, 1.1633, 1.1633]),
    ],
    ids=["O", "C", "N", "J1"],
)
def test_worked_vectors(G, d_raw):
    """d_raw = g_0 + Gᵀν on worked vectors (Liu et al., arXiv 2110.14048, eq. (3); c = 0.4, rescale 0)."""
    G = np.array(G, dtype=float)
    _, nu, *_ = cg.cagrad_dual(G @ G.T, C)
    np.testing.assert_allclose(G.mean(axis=0) + nu @ G, d_raw, atol=5e-5)


def test_phi_zero_and_zero_matrix():
    """c = 0 or g_0 = 0: ν = 0 (d_raw = g_0) and w* a vertex minimising b; K = 0 stays finite."""
    rng = np.random.default_rng(4)
    G = rng.standard_normal((5, 3))
    H = np.array([[1.0, 2.0], [-1.0, -2.0]])  # g_0 = 0 exactly
    for K, c in ((G @ G.T, 0.0), (H @ H.T, 0.4), (np.zeros((3, 3)), 0.4)):
        w, nu, value, _, converged, degenerate = cg.cagrad_dual(K, c)
        b = K.sum(axis=1) / len(K)
        assert converged and not degenerate
        np.testing.assert_array_equal(nu, 0.0)
        assert w @ b == pytest.approx(b.min(), abs=1e-14) and value == pytest.approx(b.min(), abs=1e-12)
    # g_0 = 0 to round-off only: φ ~ 1e-9 and 0 ∈ conv{g_i}, so d_raw ≈ g_0 ≈ 0 on the degenerate path
    Gc = G - G.mean(axis=0)
    _, nu, *_ = cg.cagrad_dual(Gc @ Gc.T, 0.4)
    assert np.isfinite(nu).all() and np.linalg.norm(Gc.mean(axis=0) + nu @ Gc) <= 1e-12
    w, nu, *_ = cg.cagrad_dual(np.array([[4.0]]), 0.4)  # one task: d_raw = (1 + c) g
    assert w.tolist() == [1.0] and nu[0] == pytest.approx(0.4, rel=1e-12)


def test_scale_invariance_and_permutation():
    """ν and w* do not change when K is scaled (d_raw is positively homogeneous); permuting the
    tasks permutes them."""
    rng = np.random.default_rng(12)
    for G in full_rank_matrices(10, rng, count=10):
        K = G @ G.T
        w, nu, value, *_ = cg.cagrad_dual(K, C)
        for t in (1e-6, 1e6):
            w2, nu2, value2, *_ = cg.cagrad_dual(t * K, C)
            np.testing.assert_allclose(w2, w, atol=1e-12)
            np.testing.assert_allclose(nu2, nu, atol=1e-10 * nu.max())
            assert value2 == pytest.approx(t * value, rel=1e-10)
        perm = rng.permutation(10)
        w3, nu3, *_ = cg.cagrad_dual(K[np.ix_(perm, perm)], C)
        np.testing.assert_allclose(w3, w[perm], atol=1e-12)
        np.testing.assert_allclose(nu3, nu[perm], atol=1e-10 * nu.max())


def test_extreme_scales_and_float32_gramians():
    """Row norms over six decades and float32 Gramians (slightly indefinite): converged, optimal to
    the accuracy of the data."""
    rng = np.random.default_rng(11)
    for m in (3, 10, 40):
        for k in range(10):
            G = rng.standard_normal((m, m + 3))
            if k % 2 == 0:
                G *= 10.0 ** rng.uniform(-3, 3, (m, 1))
                tol = 1e-9
            else:
                G = G.astype(np.float32)
                tol = 1e-5
            K = (G @ G.T).astype(np.float64)
            w, nu, value, _, converged, degenerate = cg.cagrad_dual(K, C)
            assert converged and not degenerate
            if G.dtype == np.float64:
                assert_optimal(K, C, w, nu, value, tol=tol)
            else:
                assert np.sqrt(nu @ K @ nu) == pytest.approx(phi_of(K, C), rel=tol)
                assert (K.sum(axis=1) / m + K @ nu).min() == pytest.approx(value, abs=tol * K.diagonal().max())


def test_compiled_once_and_reference_built_once():
    rng = np.random.default_rng(13)
    for m in (2, 5, 17):
        K = next(iter(full_rank_matrices(m, rng, count=1)))
        K = K @ K.T
        K.setflags(write=False)  # as GradientSystem.gramian64 hands it over
        cg.cagrad_dual(K, C)
        cg.reference_cagrad_dual(K, C)
    assert len(cg._cagrad.signatures) == 1
    assert type(cg._cagrad._cache).__name__ != "NullCache"  # cached on disk
    builds = cg._reference_problem.cache_info().misses
    cg.reference_cagrad_dual(np.eye(5), C)
    assert cg._reference_problem.cache_info().misses == builds


# ------------------------------------------------------------------ certificate
from hard_systems import FAMILIES, gramian_of, hard_matrix  # noqa: E402
from mtlsolve.gramian import psd_repair  # noqa: E402
from mtlsolve.kernels._dense import normalised_factorable  # noqa: E402

#: the reported float32 system: its float32 Gramian has an eigenvalue −3e-8 (weights ~1e7 before)
REPORTED32 = np.array([[1.132, -0.645], [-1.770, 0.214], [0.914, 1.572]], dtype=np.float32)


def ball_excess(G: np.ndarray, c: float, nu: np.ndarray) -> float:
    """(‖d_raw − g_0‖ − c‖g_0‖)/S on the float64 rows, S = Σ(1/m + ν_i)‖g_i‖."""
    m = len(G)
    S = (1.0 / m + nu) @ np.linalg.norm(G, axis=1)
    return (np.linalg.norm(nu @ G) - c * np.linalg.norm(G.mean(axis=0))) / S if S > 0 else 0.0


def test_reported_float32_system():
    """The float32 Gramian of the reported system is indefinite: it is repaired, the weights stay
    O(1) (they were ~1e7), d_raw lies in the ball and the step is certified (0 ∈ conv{g_i} here,
    so the value is 0 and d_raw the projection of g_0 onto {Gd ≥ 0} = {0})."""
    G, K, rho = gramian_of(REPORTED32.astype(np.float64), np.float32)
    assert np.linalg.eigvalsh(K)[0] < 0
    w, nu, value, info = cg.certified_cagrad(K, 2.0, rho)
    assert info["repaired"] and info["converged"] and info["degenerate"] and value == 0.0
    assert np.abs(nu).max() < 10 and ball_excess(G, 2.0, nu) <= 0
    assert np.linalg.norm(G.mean(axis=0) + nu @ G) <= 1e-6 * np.linalg.norm(G, axis=1).max()


def test_psd_repair_is_small_and_scale_free():
    """float32 Gramians of dependent, near-opposed and mixed-scale rows: the repair returns a
    matrix the kernel can factor (D⁻¹KD⁻¹ ⪰ 0) that moves entry (i, j) by at most m·ρ·n_i·n_j;
    float64 Gramians of independent rows are left as they are."""
    rng = np.random.default_rng(41)
    repaired = 0
    for family in ("rank_deficient", "opposed", "mixed_scales", "hull_zero"):
        for m in (3, 8, 20):
            for _ in range(4):
                _, K, rho = gramian_of(hard_matrix(family, m, int(rng.integers(1, m + 3)), rng), np.float32)
                Kr, changed = psd_repair(K, cg.RIDGE)
                repaired += changed
                n = np.sqrt(np.diag(K))
                inv = np.divide(1.0, n, out=np.zeros_like(n), where=n > 0)
                assert normalised_factorable(Kr, 0.5 * cg.RIDGE)
                assert (np.abs(Kr - K) <= (m * rho + 1e-12) * np.outer(n, n)).all()
                assert np.linalg.eigvalsh(Kr * np.outer(inv, inv))[0] > -cg.RIDGE
    assert repaired > 5
    G = rng.standard_normal((6, 9))
    assert psd_repair(G @ G.T, cg.RIDGE)[1] is False


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_certified_on_hard_families(family, dtype):
    """Every family, m = 2…20, several c, float64 and float32 inputs: finite ν; a certified step
    has d_raw in the ball on the float64 input (within the tolerance, relative to S) and the
    max-min value of the cvxpy reference (relative to max‖g_i‖·S); an uncertified one (a system
    the input's precision cannot resolve) falls back to a d_raw inside the ball."""
    rng = np.random.default_rng([FAMILIES.index(family), np.dtype(dtype).itemsize])
    certified = total = 0
    for m in (2, 3, 5, 8, 20):
        for c in (0.1, 0.4, 1.0, 2.0, 5.0):
            if m == 20 and c in (0.1, 1.0):
                continue
            G, K, rho = gramian_of(hard_matrix(family, m, int(rng.integers(1, 2 * m + 2)), rng), dtype)
            w, nu, value, info = cg.certified_cagrad(K, c, rho)
            tol = info["tolerance"]
            assert np.isfinite(nu).all() and (nu >= 0).all() and np.isfinite(value)
            total += 1
            excess = ball_excess(G, c, nu)
            if not info["converged"]:
                assert info["residual"] > tol and "ball" in info["fallback"] and excess <= 4 * tol
                continue
            certified += 1
            assert info["residual"] <= tol and excess <= 4 * tol, (m, c, excess)
            if m <= 5:
                # the value near 0 ∈ conv{g_i} moves by ~√ρ over the Gramians within ρ of K (θ* ~ φ‖g_w‖)
                S = (1.0 / m + nu) @ np.sqrt(np.diag(K))
                _, f_ref = cg.reference_cagrad_dual(K, c)
                d = G.mean(axis=0) + nu @ G
                slack = (1e-6 + np.sqrt(tol)) * np.sqrt(np.diag(K)).max() * S
                assert (G @ d).min() >= f_ref - slack
    # float64 systems the data resolve are certified (the near-opposed and κ = 1e12 ones may not be)
    if dtype == np.float64 and family in ("gaussian", "mixed_scales", "rank_deficient", "hull_zero", "zero_rows"):
        assert certified == total


def test_certificate_detects_wrong_answers():
    """ν pushed 1 % out of the ball, or a dual point w off the optimum, fail the certificate."""
    rng = np.random.default_rng(43)
    for _ in range(20):
        G = rng.standard_normal((5, 8))
        K = G @ G.T
        w, nu, _, info = cg.certified_cagrad(K, 0.5, 1e-15)
        assert info["converged"] and not info["degenerate"]
        assert cg.cagrad_residual(K, 0.5, w, nu, False, 1e-15) <= 1e-13
        assert cg.cagrad_residual(K, 0.5, w, 1.01 * nu, False, 1e-15) > 1e-4
        other = rng.dirichlet(np.ones(5))
        if abs(cg.cagrad_objective(K, 0.5, other) - cg.cagrad_objective(K, 0.5, w)) > 1e-3 * np.diag(K).max():
            assert cg.cagrad_residual(K, 0.5, other, nu, False, 1e-15) > 1e-5


def test_mixed_row_scales_match_the_reference():
    """Rows of norms over 1e-16…1e3: the kernel's optimality tests are relative to each row, so its
    dual value is no worse than cvxpy's (it returned a vertex 7× worse when they were global)."""
    rng = np.random.default_rng(47)
    for _ in range(25):
        m = int(rng.integers(3, 12))
        G = rng.standard_normal((m, int(rng.integers(2, m + 2)))) * 10.0 ** rng.uniform(-16, 3, (m, 1))
        K = G @ G.T
        w, nu, value, info = cg.certified_cagrad(K, 0.4, 1e-15)
        _, f_ref = cg.reference_cagrad_dual(K, 0.4)
        assert info["converged"]
        assert cg.cagrad_objective(K, 0.4, w) <= f_ref + 1e-9 * abs(f_ref) + 1e-14 * np.diag(K).max()

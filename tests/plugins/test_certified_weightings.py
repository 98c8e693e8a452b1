"""Certified solves of the Gramian weightings with an inner problem (nash_mtl, fairgrad, imtl_g,
imtl_hybrid, aligned_mtl, aligned_mtl_ub, config, upgrad, dualproj) over families of hard inputs:
nearly opposed and ill-conditioned gradients, rows of very different norms, float32 data with
dependent rows, tiny and huge gradients. Each test checks the defining condition itself (on the
float64 values of the data), not only the solver's own diagnostics, and that ``converged`` is
True only when the condition holds to the reported tolerance.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import mtlsolve
from mtlsolve.errors import ConvergenceWarning
from mtlsolve.kernels.cone_projection import dual_cone_certificate
from mtlsolve.kernels.fairgrad import hull_distance

EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)


def rotation(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.linalg.qr(rng.standard_normal((n, n)))[0]


def nearly_opposed(rng: np.random.Generator, eps: float, n: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Two gradients at angle π − θ with tan θ = ε, rotated and scaled: (G, norms, 1 + cos)."""
    base = np.zeros((2, n))
    base[0, 0], base[1, 0], base[1, 1] = 1.0, -1.0, eps
    norms = 10.0 ** rng.uniform(-3, 3, 2)
    G = (base @ rotation(rng, n).T) / np.linalg.norm(base, axis=1, keepdims=True) * norms[:, None]
    root = np.sqrt(1.0 + eps * eps)
    return G, norms, eps * eps / (root * (1.0 + root))


def well_conditioned(rng: np.random.Generator, m: int, n: int, agree: bool = False) -> np.ndarray:
    """G with singular values in [1, 3] and rows scaled by [0.5, 2]; ``agree``: plus a shared
    component along v with every g_i·v ≥ 0.5, so that 0 ∉ conv{g_i} with a margin (κ stays small)."""
    U = rotation(rng, m)
    V = np.linalg.qr(rng.standard_normal((n, m)))[0]
    G = (U * rng.uniform(1.0, 3.0, m)) @ V.T
    if agree:
        v = V[:, 0]
        G = G + (np.abs(G @ v).max() + 0.5) * np.outer(np.ones(m), v)
    return G * rng.uniform(0.5, 2.0, (m, 1))


def quiet(solver, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return solver(*args, **kwargs)


def fixed_point_residual(G: np.ndarray, w: np.ndarray, alpha: float = 1.0) -> float:
    K = G @ G.T
    return float(np.abs(w ** (1.0 / alpha) * (K @ w) - 1.0).max())


# ------------------------------------------------------------------- nash_mtl, fairgrad
@pytest.mark.parametrize("eps", [1e-2, 1e-3, 1e-4, 1e-5, 1e-6])
def test_nash_nearly_opposed_pairs_are_solved(eps):
    """Two tasks with cos = −1 + μ' have α_i = 1/(‖g_i‖√(1 + cos)) (α_i‖g_i‖ = t, t²(1 + cos) = 1):
    solved, not declared unsolvable, with g_i·d = 1/α_i > 0 and a residual within the tolerance.
    (FairGrad at α = 2 and ε = 1e-6: the products g_i·d fall within the Gramian's round-off of
    zero, so that step is, rightly, not certified.)"""
    rng = np.random.default_rng(int(-np.log10(eps)))
    cases = (("nash_mtl", 1.0), ("fairgrad", 1.0)) + ((("fairgrad", 2.0),) if eps >= 1e-5 else ())
    for _ in range(6):
        G, norms, one_plus_cos = nearly_opposed(rng, eps, int(rng.integers(2, 6)))
        for name, alpha in cases:
            r = mtlsolve.get(name, **({"alpha": alpha} if name == "fairgrad" else {}))(G)
            w, dg = r.weights, r.diagnostics
            assert dg["converged"], dg
            assert (w > 0).all() and (G @ r.direction > 0).all()
            assert fixed_point_residual(G, w, alpha) <= dg["tolerance"]
            if alpha == 1.0:
                # the data's rounding moves 1 + cos by ~ε_64: the closed form holds to ε_64/ε²
                expected = 1.0 / (norms * np.sqrt(one_plus_cos))
                np.testing.assert_allclose(w, expected, rtol=max(1e-9, 1e3 * EPS64 / eps**2))


def test_nash_reported_reproducer():
    G = np.array([[1.0, 0.0], [-1.0, 1e-4]])
    for name in ("nash_mtl", "fairgrad"):
        r = mtlsolve.get(name)(G)
        assert r.diagnostics["converged"]
        np.testing.assert_allclose(r.weights, [14142.1357, 14142.1356], rtol=1e-8)
        assert fixed_point_residual(G, r.weights) <= 1e-7


def cancelling(rng: np.random.Generator, m: int, n: int) -> np.ndarray:
    """m gradients with 0 ∈ conv{g_i}: the last is minus a convex combination of the others."""
    H = rng.standard_normal((m - 1, n)) * 10.0 ** rng.uniform(-2, 2, (m - 1, 1))
    return np.vstack([H, -rng.dirichlet(np.ones(m - 1)) @ H * rng.uniform(0.5, 2.0)])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_no_solution_is_certified_and_falls_back(dtype):
    """0 ∈ conv{g_i} (float32 data included, where the kernel used to report a conflicting
    α as converged): no solution, certified by the hull's min-norm point, zero update first,
    the previous α after a solved step; never a NonFiniteError."""
    rng = np.random.default_rng(7)
    systems = [np.array([[0.8, 0.9], [0.3, -0.4], [-0.6, 0.5]])]
    systems += [cancelling(rng, int(rng.integers(2, 6)), int(rng.integers(1, 5))) for _ in range(20)]
    for G in systems:
        X = G.astype(dtype)
        for name in ("nash_mtl", "fairgrad"):
            solver = mtlsolve.get(name)
            with pytest.warns(ConvergenceWarning):
                r = solver(X)
            dg = r.diagnostics
            assert not dg["converged"] and dg["no_solution"] and dg["fallback"] == "zero update"
            assert dg["hull_distance"] <= 4 * len(G) * mtlsolve.GradientSystem(X).roundoff + 1e-13
            np.testing.assert_array_equal(np.asarray(r.weights), 0.0)
        solver = mtlsolve.get("nash_mtl")
        good = solver(well_conditioned(rng, len(G), G.shape[1] + len(G), agree=True))
        assert good.diagnostics["converged"]
        with pytest.warns(ConvergenceWarning):
            kept = solver(np.hstack([X, np.zeros((len(G), len(G)), dtype)]))
        assert kept.diagnostics["fallback"] == "previous weights"
        np.testing.assert_array_equal(np.asarray(kept.weights), good.weights.astype(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_converged_means_no_conflict(dtype):
    """Random systems, well posed or not, nearly cancelling included: a converged step has α > 0,
    g_i·d > 0 for the data's own values, and the fixed point on the exact Gramian of the data
    within the reported tolerance (which covers the round-off of the Gramian the solver read);
    no finite input raises."""
    rng = np.random.default_rng(8 if dtype == np.float32 else 9)
    converged = 0
    for k in range(120):
        m, n = int(rng.integers(2, 7)), int(rng.integers(1, 7))
        G = rng.standard_normal((m, n)) * 10.0 ** rng.uniform(-3, 3, (m, 1))
        if k % 3 == 0:  # the hull just misses the origin
            G = cancelling(rng, m, n)
            G[-1] += 10.0 ** rng.uniform(-6, -2) * np.abs(G).max() * rng.standard_normal(n)
        X = G.astype(dtype)
        G64 = X.astype(np.float64)
        for name, alpha in (("nash_mtl", 1.0), ("fairgrad", 0.5), ("fairgrad", 2.0)):
            r = quiet(mtlsolve.get(name, **({"alpha": alpha} if name == "fairgrad" else {})), X)
            w = np.asarray(r.weights, dtype=np.float64)
            assert np.isfinite(w).all()
            if r.diagnostics["converged"]:
                converged += 1
                assert (w > 0).all() and (G64 @ (w @ G64) > 0).all(), (name, G, w)
                assert fixed_point_residual(G64, w, alpha) <= 1.01 * r.diagnostics["tolerance"]
    assert converged > 100


def test_hull_distance_family():
    """μ = ‖d_min‖² of the unit gradients: 0 when 0 ∈ conv{g_i} (to the QP's ridge), the
    closed form (1 + cos)/2 for two tasks, 1/m for orthogonal ones; invariant under row scaling."""
    rng = np.random.default_rng(10)
    for _ in range(20):
        G = cancelling(rng, int(rng.integers(2, 6)), int(rng.integers(1, 5)))
        assert hull_distance(G @ G.T) <= 1e-13
        G2, _, one_plus_cos = nearly_opposed(rng, 10.0 ** rng.uniform(-3, -1), 4)
        assert hull_distance(G2 @ G2.T) == pytest.approx(one_plus_cos / 2, rel=1e-6)
        m = int(rng.integers(1, 6))
        Q = rotation(rng, m + 2)[:m] * 10.0 ** rng.uniform(-5, 5, (m, 1))
        assert hull_distance(Q @ Q.T) == pytest.approx(1.0 / m, rel=1e-10)


# ---------------------------------------------------------------------------- imtl_g
def projection_spread(G: np.ndarray, w: np.ndarray) -> float:
    K = G @ G.T
    p = K @ w / np.sqrt(np.diag(K))
    return float((p.max() - p.min()) / abs(p.mean()))


def test_imtl_g_rows_of_very_different_norms():
    """κ(K) up to ~1e16 from the row norms alone: equal projections to 1e-10 (the eigen
    pseudo-inverse of K missed them by 1e-4 and more), certified, Σα = 1."""
    rng = np.random.default_rng(11)
    for _ in range(30):
        m = int(rng.integers(2, 7))
        G = well_conditioned(rng, m, m + int(rng.integers(0, 4))) * 10.0 ** rng.uniform(-4, 4, (m, 1))
        for name in ("imtl_g", "imtl_hybrid"):
            kwargs = {"losses": np.ones(m)} if name == "imtl_hybrid" else {}
            r = mtlsolve.get(name)(G, **kwargs)
            assert r.diagnostics["converged"] and r.diagnostics["rank"] == m
            assert projection_spread(G, r.weights) <= 1e-10
            assert r.weights.sum() == pytest.approx(1.0, abs=1e-12)


def test_imtl_g_geometrically_ill_conditioned():
    """Nearly dependent unit gradients (κ(K̂) up to 1e10): the solve is backward stable, so the
    spread of the projections is at most ~ε·κ(K̂), and the certificate holds."""
    rng = np.random.default_rng(12)
    for k in range(2, 11):
        m = 4
        sigma = np.array([1.0, 0.5, 10.0 ** (-k / 2), 10.0 ** (-k / 2)])
        G = (rotation(rng, m) * sigma) @ np.linalg.qr(rng.standard_normal((m + 2, m)))[0].T
        r = mtlsolve.get("imtl_g")(G)
        Kn = G @ G.T / np.outer(np.linalg.norm(G, axis=1), np.linalg.norm(G, axis=1))
        assert r.diagnostics["converged"] and r.diagnostics["residual"] <= r.diagnostics["tolerance"]
        assert projection_spread(G, r.weights) <= 1e3 * EPS64 * np.linalg.cond(Kn)


def test_imtl_g_float32_dependent_rows():
    """g_3 = a·g_1 + b·g_2 (a, b > 0) in float32: rank 2 at float32's round-off, and d is the
    pseudo-inverse's (the float64 solve of the same data), not the ~1e-7 noise the float64
    rank cut-off gave."""
    G = np.array([[0.1, 0.2, 0.3], [0.3, 0.1, 0.2], [0.4, 0.3, 0.5]], dtype=np.float32)
    r = mtlsolve.get("imtl_g")(G)
    assert r.diagnostics["rank"] == 2 and r.diagnostics["converged"]
    np.testing.assert_allclose(r.direction, [0.3, 0.225, 0.375], rtol=1e-5)
    rng = np.random.default_rng(13)
    for _ in range(30):
        H = rng.standard_normal((2, int(rng.integers(2, 6))))
        a, b = rng.uniform(0.2, 2.0, 2)
        G64 = np.vstack([H, a * H[0] + b * H[1]])[rng.permutation(3)]
        X = G64.astype(np.float32)
        r32, r64 = mtlsolve.get("imtl_g")(X), mtlsolve.get("imtl_g")(X.astype(np.float64))
        assert r32.diagnostics["rank"] == r64.diagnostics["rank"] == 2
        np.testing.assert_allclose(r32.direction, r64.direction, rtol=1e-4, atol=1e-4 * np.abs(r64.direction).max())


# ------------------------------------------------------------------ aligned_mtl (+ UB)
def accurate_balance(K: np.ndarray, rank: int) -> tuple[np.ndarray, float]:
    """B = √s·K^{+1/2} on the top-``rank`` eigenspace (s = smallest kept λ), in 40-digit arithmetic."""
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(40):
        lam, Q = mpmath.eigsy(mpmath.matrix(K.tolist()))
        lam = np.array([float(x) for x in lam])
        Q = np.array(Q.tolist(), dtype=float)
    order = np.argsort(lam)[::-1][:rank]
    lam, Q = lam[order], Q[:, order]
    s = lam.min()
    return (Q * np.sqrt(s / lam)) @ Q.T, float(s)


@pytest.mark.parametrize("name", ["aligned_mtl", "aligned_mtl_ub"])
def test_aligned_rows_of_very_different_norms(name):
    """Row norms over 8 decades: BKB = s·I_r certified, and B agrees with a 40-digit
    eigendecomposition (an eigendecomposition of K in float64 loses the small rows)."""
    from mtlsolve.plugins.gramian.aligned_mtl import balance_matrix

    rng = np.random.default_rng(14)
    for _ in range(12):
        m = int(rng.integers(2, 5))
        G = well_conditioned(rng, m, m + 2) * 10.0 ** rng.uniform(-4, 4, (m, 1))
        r = mtlsolve.get(name, task_weights=np.ones(m))(G)
        assert r.diagnostics["converged"] and r.diagnostics["rank"] == m
        K = G @ G.T
        B, s, _ = balance_matrix(K)
        B_ref, s_ref = accurate_balance(K, m)
        assert s == pytest.approx(s_ref, rel=1e-10)
        np.testing.assert_allclose(r.weights, B_ref.sum(axis=1), rtol=1e-8, atol=1e-8 * np.abs(B_ref).max())


@pytest.mark.parametrize("name", ["aligned_mtl", "aligned_mtl_ub", "imtl_g", "config"])
def test_rank_follows_the_input_precision(name):
    """Two rows at an angle δ: a genuine direction in float64 (δ² ≫ ρ_64), round-off in float32
    (δ² ≲ ρ_32); orthogonal rows of norms 1 and 1e-4 stay independent at any precision."""
    for delta in (1e-5, 3e-6):
        G = np.array([[1.0, 0.0, 0.0], [1.0, delta, 0.0], [0.0, 0.0, 1.0]])
        assert mtlsolve.get(name)(G).diagnostics["rank"] == 3
        assert quiet(mtlsolve.get(name), G.astype(np.float32)).diagnostics["rank"] == 2
    for X in (np.diag([1.0, 1e-4]), np.diag([1.0, 1e-4]).astype(np.float32)):
        assert mtlsolve.get(name)(X).diagnostics["rank"] == 2


# ---------------------------------------------------------------------------- config
def test_config_equal_cosines_when_ill_conditioned():
    """Nearly dependent unit gradients and rows of very different norms: the cosines of d with
    every g_i agree to ~ε·κ(K̂) (a Cholesky solve, not the eigen pseudo-inverse), certified."""
    rng = np.random.default_rng(15)
    for k in range(2, 10):
        m = 4
        sigma = np.array([1.0, 0.7, 10.0 ** (-k / 2), 10.0 ** (-k / 2) * 0.5])
        G = (rotation(rng, m) * sigma) @ np.linalg.qr(rng.standard_normal((m + 3, m)))[0].T
        G = G * 10.0 ** rng.uniform(-4, 4, (m, 1))
        r = mtlsolve.get("config")(G)
        assert r.diagnostics["converged"]
        cosines = G @ r.direction / np.linalg.norm(G, axis=1) / np.linalg.norm(r.direction)
        unit = G / np.linalg.norm(G, axis=1, keepdims=True)
        assert np.ptp(cosines) <= 1e3 * EPS64 * np.linalg.cond(unit @ unit.T) * abs(cosines.mean())


# ------------------------------------------------------------------- upgrad, dualproj
@pytest.mark.parametrize("name", ["upgrad", "dualproj"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dual_cone_kkt_over_families(name, dtype):
    """Rows over 10 decades, rank-deficient systems, reg_eps = 0 (exact projection, repaired to
    PSD on the normalised Gramian) and TorchJD's default: certified, and the exact projection
    conflicts with no task for the data's own values."""
    rng = np.random.default_rng(16)
    for _ in range(25):
        m, n = int(rng.integers(2, 8)), int(rng.integers(1, 9))
        G = rng.standard_normal((m, n)) * 10.0 ** rng.uniform(-5, 5, (m, 1))
        X = G.astype(dtype)
        G64 = X.astype(np.float64)
        for reg_eps in (0.0, 1e-4):
            r = mtlsolve.get(name, reg_eps=reg_eps, norm_eps=0.0)(X)
            assert r.diagnostics["converged"] and r.diagnostics["residual"] <= r.diagnostics["tolerance"]
            if reg_eps == 0.0:
                norms = np.linalg.norm(G64, axis=1)
                w = np.asarray(r.weights, dtype=np.float64)
                slack = 1e-3 * norms * (np.abs(w) @ norms)  # far above the round-off, far below a conflict
                assert (G64 @ (w @ G64) >= -slack).all()


def test_dual_cone_certificate_sees_a_wrong_projection():
    """The KKT residual is ~0 at the projection; at v = u = e_i (no projection) it is the largest
    negative cosine of g_i with another gradient, the conflict left in d = g_i."""
    from mtlsolve.kernels.cone_projection import project_dual_cone

    rng = np.random.default_rng(17)
    for _ in range(20):
        m = int(rng.integers(2, 7))
        G = rng.standard_normal((m, int(rng.integers(1, 6)))) * 10.0 ** rng.uniform(-3, 3, (m, 1))
        K = G @ G.T
        U = np.eye(m)
        V, _, _ = project_dual_cone(K, U)
        assert dual_cone_certificate(K, U, V) <= 1e-12
        cosines = K / np.outer(np.linalg.norm(G, axis=1), np.linalg.norm(G, axis=1))
        assert dual_cone_certificate(K, U, U) == pytest.approx(max(0.0, -cosines.min()), rel=1e-12, abs=1e-15)


# ------------------------------------------------------------------- scale, dtypes
HOMOGENEOUS = {  # name: (power of c in d(cG) = c^power·d(G), extra arguments)
    "nash_mtl": (0, {}),
    "fairgrad": (0, {}),
    "imtl_g": (1, {}),
    "imtl_hybrid": (1, {}),
    "aligned_mtl": (1, {}),
    "aligned_mtl_ub": (1, {}),
    "config": (1, {}),
    "upgrad": (1, {"norm_eps": 0.0}),
    "dualproj": (1, {"norm_eps": 0.0}),
}


def solve(name: str, X: np.ndarray):
    power, kwargs = HOMOGENEOUS[name]
    extra = {"losses": np.ones(len(X), dtype=X.dtype)} if name == "imtl_hybrid" else {}
    return mtlsolve.get(name, **kwargs)(X, **extra)


@pytest.mark.parametrize("name", list(HOMOGENEOUS))
def test_tiny_and_huge_float32_gradients(name):
    """‖g‖ ~ 1e-25 (squared norms below float32's range) and ~1e15: the same direction as for G
    (scale-invariant solvers) or c·d(G) (positively homogeneous ones), to float32 precision."""
    rng = np.random.default_rng(18)
    power, _ = HOMOGENEOUS[name]
    for _ in range(8):
        m = int(rng.integers(2, 6))
        G = well_conditioned(rng, m, m + int(rng.integers(0, 3)), agree=True).astype(np.float32)
        d = np.asarray(solve(name, G).direction, dtype=np.float64)
        for c in (1e-25, 1e15):
            r = solve(name, G * np.float32(c))
            assert r.diagnostics["converged"]
            dc = np.asarray(r.direction, dtype=np.float64) / c**power
            np.testing.assert_allclose(dc, d, rtol=2e3 * EPS32, atol=2e3 * EPS32 * np.abs(d).max())


@pytest.mark.parametrize("name", list(HOMOGENEOUS))
def test_float32_agrees_with_float64_on_well_conditioned_systems(name):
    """κ(G) ≤ 12: float32 and float64 directions agree to a float32 tolerance (10³·ε_32·κ)."""
    rng = np.random.default_rng(19)
    for _ in range(10):
        m = int(rng.integers(1, 7))
        G = well_conditioned(rng, m, m + int(rng.integers(0, 4)), agree=True)
        d64 = solve(name, G).direction
        r32 = solve(name, G.astype(np.float32))
        assert r32.diagnostics["converged"]
        tol = 1e3 * EPS32 * np.linalg.cond(G)
        np.testing.assert_allclose(
            np.asarray(r32.direction, dtype=np.float64), d64, rtol=tol, atol=tol * np.abs(d64).max()
        )


# --------------------------------------------------------- closed forms: no certificate
@pytest.mark.parametrize("name", ["pcgrad", "gradvac", "krum"])
def test_closed_forms_with_tiny_zero_and_huge_rows(name):
    """Rows from 1e-20 to 1e8 in float32 (a squared norm far below float32's range), zero rows,
    a row a tiny multiple of another: finite, and equal to the float64 solve of the same data."""
    rng = np.random.default_rng(20)
    kwargs = {"n_byzantine": 1} if name == "krum" else {"seed": 0}
    for k in range(40):
        m, n = int(rng.integers(5, 8)), int(rng.integers(1, 6))
        G = rng.standard_normal((m, n)) * 10.0 ** rng.uniform(-20, 8, (m, 1))
        if k % 3 == 1:
            G[rng.integers(m)] = 0.0
        if k % 3 == 2:
            G[1] = -G[0] * 1e-10
        X = G.astype(np.float32)
        r32 = mtlsolve.get(name, **kwargs)(X)
        r64 = mtlsolve.get(name, **kwargs)(X.astype(np.float64))
        d32 = np.asarray(r32.direction, dtype=np.float64)
        assert np.isfinite(d32).all()
        if name == "krum" and r32.diagnostics["ties"] > 1:
            # scores equal within float32's round-off: the tied rows share the weight, and float64
            # (which can tell them apart) picks one of them
            assert set(r64.diagnostics["selected"].tolist()) <= set(r32.diagnostics["selected"].tolist())
            continue
        scale = np.abs(np.asarray(r64.weights)) @ np.linalg.norm(X.astype(np.float64), axis=1)
        np.testing.assert_allclose(d32, r64.direction, rtol=1e-4, atol=1e-4 * scale)

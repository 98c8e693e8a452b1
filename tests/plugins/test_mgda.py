"""MGDA (docs/methods.md#mgda, worked vectors): the min-norm point of the convex hull."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchjd.aggregation import MGDA as TorchjdMGDA

import mtlsolve
from mtlsolve import InvalidSystemError, Need
from mtlsolve.plugins.gramian.mgda import MGDA

O = [[1.0, 0.0], [0.0, 2.0]]
C = [[1.0, 0.0], [-1.0, 1.0]]
N = [[1.0, 0.0], [1.0, 1.0]]
J1 = [[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]]


def random_systems(seed: int, count: int = 30):
    """G with m ∈ {2, 3, 5, 10, 40}, unequal row norms, a shared component of random sign; every
    third one rank-deficient (n < m)."""
    rng = np.random.default_rng(seed)
    for k in range(count):
        m = int(rng.choice([2, 3, 5, 10, 40]))
        n = int(rng.integers(1, m)) if k % 3 == 2 and m > 2 else m + int(rng.integers(0, 2 * m))
        G = rng.standard_normal((m, n)) * rng.uniform(0.2, 5.0, (m, 1))
        yield G + rng.standard_normal(n) * rng.choice([-1.0, 1.0], (m, 1))


def two_task_weights(G: np.ndarray) -> np.ndarray:
    """Sener & Koltun, Alg. 1: γ = clip((g_2 − g_1)·g_2 / ‖g_1 − g_2‖², 0, 1), w = (γ, 1 − γ)."""
    diff = G[0] - G[1]
    gamma = np.clip(-(diff @ G[1]) / (diff @ diff), 0.0, 1.0)
    return np.array([gamma, 1.0 - gamma])


@pytest.mark.parametrize(
    ("G", "expected"),
    [(O, (0.8, 0.4)), (C, (0.2, 0.4)), (N, (1.0, 0.0)), (J1, (0.0, 1.0, 1.0))],
    ids=["O", "C", "N", "J1"],
)
def test_worked_vectors(G, expected):
    r = MGDA()(np.array(G))
    np.testing.assert_allclose(r.direction, expected, atol=1e-10)
    assert r.weights.sum() == pytest.approx(1.0)
    assert r.diagnostics["converged"]


def test_l2_normalisation_on_O():
    r = MGDA(normalisation="l2")(np.array(O))
    np.testing.assert_allclose(r.weights, [0.5, 0.25], atol=1e-12)
    np.testing.assert_allclose(r.direction, [0.5, 0.5], atol=1e-12)


def test_min_norm_property():
    """d·g_i ≥ ‖d‖² for every i, with equality where w_i > 0; w ∈ Δ_m."""
    for G in random_systems(1):
        r = MGDA()(G)
        d, w = r.direction, r.weights
        scale = np.abs(G).max() ** 2 * G.shape[1]
        products = G @ d
        assert (w >= 0).all() and w.sum() == pytest.approx(1.0, abs=1e-12)
        assert (products >= d @ d - 1e-10 * scale).all()
        np.testing.assert_allclose(products[w > 1e-9], d @ d, atol=1e-10 * scale)


def test_zero_iff_zero_in_hull():
    rng = np.random.default_rng(2)
    for _ in range(20):
        m, n = int(rng.integers(2, 12)), int(rng.integers(2, 8))
        G = rng.standard_normal((m, n))
        # 0 ∈ conv: append the negative of a convex combination of the rows
        lam = rng.dirichlet(np.ones(m))
        H = np.vstack([G, -(lam @ G) / 0.5])
        assert np.linalg.norm(MGDA()(H).direction) <= 1e-10 * np.abs(H).max()
        # 0 ∉ conv: every row has g·e ≥ γ > 0 for a unit e, so ‖d‖ ≥ d·e ≥ γ
        e = rng.standard_normal(n)
        e /= np.linalg.norm(e)
        G += np.outer(np.maximum(0.0, 0.5 - G @ e), e)
        assert np.linalg.norm(MGDA()(G).direction) >= 0.5 * (1 - 1e-12)


def test_two_tasks_closed_form():
    rng = np.random.default_rng(3)
    for _ in range(100):
        G = rng.standard_normal((2, int(rng.integers(1, 6))))
        np.testing.assert_allclose(MGDA()(G).weights, two_task_weights(G), atol=1e-12)


@pytest.mark.parametrize("normalisation", ["l2", "loss", "loss+"])
def test_normalisations(normalisation):
    """The min-norm point of conv{g_i/n_i}, with raw weights w_i/n_i (checked by solving the
    normalised rows directly and by the two-task closed form)."""
    rng = np.random.default_rng(4)
    for G in random_systems(5, count=12):
        m = G.shape[0]
        L = rng.uniform(0.1, 3.0, m)
        n = {"l2": np.linalg.norm(G, axis=1), "loss": L, "loss+": L * np.linalg.norm(G, axis=1)}[normalisation]
        r = MGDA(normalisation=normalisation)(G, losses=L)
        plain = MGDA()(G / n[:, None])
        np.testing.assert_allclose(r.weights, plain.weights / n, atol=1e-9 * np.abs(r.weights).max())
        np.testing.assert_allclose(r.direction, plain.direction, atol=1e-9 * np.abs(G / n[:, None]).max())
        if m == 2:
            np.testing.assert_allclose(r.weights, two_task_weights(G / n[:, None]) / n, rtol=1e-9)


def test_normalisation_needs_positive_losses_and_guards_zero_rows():
    G = np.array([[1.0, 0.0], [0.0, 0.0], [-1.0, 1.0]])
    assert Need.LOSSES in MGDA(normalisation="loss").requirements()
    assert Need.LOSSES not in MGDA(normalisation="l2").requirements()
    with pytest.raises(InvalidSystemError):
        MGDA(normalisation="loss")(G)
    with pytest.raises(InvalidSystemError):
        MGDA(normalisation="loss+")(G, losses=[1.0, 0.0, 2.0])
    r = MGDA(normalisation="l2")(G)  # a zero gradient: d = 0, finite weights
    assert np.isfinite(r.weights).all()
    np.testing.assert_allclose(r.direction, 0.0, atol=1e-15)
    with pytest.raises(ValueError):
        MGDA(normalisation="norm")


def test_log_transform():
    """loss_transform="log" (log_mgda): the min-norm point of conv{g_i/L_i}, weights mapped back;
    the same as normalisation="loss"."""
    rng = np.random.default_rng(6)
    for G in random_systems(7, count=10):
        L = rng.uniform(0.1, 3.0, G.shape[0])
        r = MGDA(loss_transform="log")(G, losses=L)
        plain = MGDA()(G / L[:, None])
        np.testing.assert_allclose(r.weights, plain.weights / L, atol=1e-9 * np.abs(r.weights).max())
        np.testing.assert_allclose(r.weights, MGDA(normalisation="loss")(G, losses=L).weights, rtol=1e-12)
    with pytest.raises(InvalidSystemError):
        MGDA(loss_transform="log")(np.array(C), losses=[1.0, -1.0])


def test_reduction_sum():
    G = np.array(J1)
    np.testing.assert_allclose(MGDA(reduction="sum")(G).weights, 2 * MGDA()(G).weights, rtol=1e-15)


def test_degenerate_systems():
    """G = 0 and a zero row give d = 0; duplicated rows give that row; weights stay finite on Δ_m."""
    cases = [(np.zeros((3, 4)), [0, 0, 0, 0]), ([[1.0, 2.0], [0.0, 0.0]], [0, 0]), ([[1.0, 1.0], [1.0, 1.0]], [1, 1])]
    for G, d in cases:
        r = MGDA()(np.array(G))
        assert np.isfinite(r.weights).all() and r.weights.sum() == pytest.approx(1.0)
        np.testing.assert_allclose(r.direction, d, atol=1e-15)


def test_gramian_only_and_permutation():
    G = next(random_systems(8, count=1))
    a = MGDA()(G)
    np.testing.assert_allclose(MGDA()(gramian=G @ G.T).weights, a.weights, atol=1e-14)
    perm = np.random.default_rng(8).permutation(G.shape[0])
    np.testing.assert_allclose(MGDA()(G[perm]).direction, a.direction, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_and_numpy_agree(dtype):
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    for G in random_systems(9, count=10):
        ref = MGDA()(G)
        for X in (torch.from_numpy(G).to(dtype), G.astype(np.float32 if dtype == torch.float32 else np.float64)):
            r = MGDA()(X)
            assert type(r.direction) is type(X) and r.direction.dtype == X.dtype
            assert r.weights.dtype == X.dtype
            d = np.asarray(r.direction, dtype=np.float64)
            np.testing.assert_allclose(d, ref.direction, atol=tol * np.abs(G).max() ** 2 * G.shape[1])


def test_matches_torchjd():
    """torchjd 0.18.0 ``MGDA`` is Frank–Wolfe from w = 1/m, weights on the simplex applied to the raw
    rows (our default ``reduction="mean"``, no normalisation). m = 2: its exact line search solves the
    problem in one step, so d agrees to 1e-9. m > 2: Frank–Wolfe is approximate; every point of the
    hull satisfies ‖d_tj − d*‖² ≤ ‖d_tj‖² − ‖d*‖² exactly when d* is the min-norm point."""
    for G in random_systems(10, count=40):
        d = MGDA()(G).direction
        theirs = TorchjdMGDA(epsilon=1e-12, max_iters=1000)(torch.from_numpy(G)).numpy()
        scale = np.abs(G).max() ** 2 * G.shape[1]
        if G.shape[0] == 2:
            np.testing.assert_allclose(d, theirs, atol=1e-9 * np.sqrt(scale))
        assert np.sum((theirs - d) ** 2) <= theirs @ theirs - d @ d + 1e-10 * scale
        assert d @ d <= theirs @ theirs + 1e-12 * scale


def test_registry_names():
    for name in ("mgda", "MGDA", "min_norm", "min-norm"):
        assert type(mtlsolve.get(name)) is MGDA
    assert mtlsolve.get("log_mgda").loss_transform == "log"
    assert mtlsolve.get("mgda", normalisation="loss+").normalisation == "loss+"


# ------------------------------------------------------------------ certificate
from hard_systems import FAMILIES, hard_matrix  # noqa: E402
from mtlsolve.errors import ConvergenceWarning  # noqa: E402
from mtlsolve.kernels import simplex_qp  # noqa: E402

REPORTED = np.array(
    [[-7.497e-3, 1.593e-2, -4.962e-3], [535.587237, -1353.879332, -1437.82126], [1.018e-3, 7.38e-4, 8.79e-4]]
)


def kkt_violation(G: np.ndarray, w: np.ndarray) -> float:
    """max_i of the min-norm KKT violations (g_i·d − ‖d‖² < 0 anywhere, ≠ 0 on the support) on the
    float64 rows, each divided by ‖g_i‖ν + ν² with ν = Σ w_j‖g_j‖."""
    d = w @ G
    n = np.linalg.norm(G, axis=1)
    nu = w @ n
    r = G @ d - d @ d
    v = np.where(w > 0, np.abs(r), np.maximum(-r, 0.0))
    scale = n * nu + nu**2
    return float(np.max(np.divide(v, scale, out=np.zeros_like(v), where=scale > 0)))


def test_reported_row_scales():
    """Rows of norms 2e-2, 2e3, 2e-3: KKT held to 6 % (relative to ‖d‖²) with the old ridge; now
    the scale-free residual is at round-off and the step is certified."""
    r = MGDA()(REPORTED)
    assert r.diagnostics["converged"] and r.diagnostics["residual"] <= r.diagnostics["tolerance"] == 1e-11
    assert kkt_violation(REPORTED, r.weights) < 1e-14
    d = r.direction
    support = r.weights > 0
    np.testing.assert_allclose(REPORTED[support] @ d, d @ d, rtol=1e-7)


@pytest.mark.parametrize("family", FAMILIES)
def test_certified_on_hard_families(family):
    """numpy/torch, float64/float32 inputs of every family (row scales 1e-20…1e3, κ 1e12, n < m,
    near-opposed, 0 in the hull, zero rows): the step is certified (residual ≤ tolerance from the
    input's round-off) and the KKT conditions hold on the float64 rows to that tolerance plus
    the rounding of d in the input dtype."""
    rng = np.random.default_rng(FAMILIES.index(family))
    for m in (2, 3, 5, 8, 20):
        for _ in range(3):
            G = hard_matrix(family, m, int(rng.integers(1, 2 * m + 2)), rng)
            for X in (G, G.astype(np.float32), torch.from_numpy(G).float()):
                r = MGDA()(X)
                X64 = X.double().numpy() if torch.is_tensor(X) else X.astype(np.float64)
                w = r.weights.double().numpy() if torch.is_tensor(X) else r.weights.astype(np.float64)
                u = float(np.finfo(np.float32 if X is not G else np.float64).eps)  # w is rounded to the input dtype
                assert r.diagnostics["converged"] and r.diagnostics["residual"] <= r.diagnostics["tolerance"]
                assert kkt_violation(X64, w / w.sum()) <= 2 * r.diagnostics["tolerance"] + 4 * m * u


def test_float32_agrees_with_float64():
    """Well-conditioned systems (κ(K) ≤ 1e3, rows of norm ~1): float32 and float64 weights and
    directions agree within 64ρ₃₂·κ plus the rounding of d (ρ₃₂ the float32 round-off bound)."""
    rng = np.random.default_rng(31)
    u = float(np.finfo(np.float32).eps)
    for m, n in ((2, 3), (3, 8), (5, 20), (8, 50), (12, 40)):
        for _ in range(5):
            U = np.linalg.qr(rng.standard_normal((m, m)))[0]
            V = np.linalg.qr(rng.standard_normal((n, m)))[0]
            G = (U * 10.0 ** -rng.uniform(0, 1.5, m)) @ V.T
            G /= np.linalg.norm(G, axis=1, keepdims=True) / rng.uniform(0.5, 2.0, (m, 1))
            kappa = np.linalg.cond(G @ G.T)
            rho = 2 * u + 2 * np.sqrt(n) * u
            tol = 64 * rho * kappa + 4 * m * u
            a, b = MGDA()(G), MGDA()(G.astype(np.float32))
            assert b.diagnostics["converged"]
            np.testing.assert_allclose(b.weights, a.weights, atol=tol)
            np.testing.assert_allclose(
                b.direction, a.direction, atol=tol * np.abs(a.weights) @ np.linalg.norm(G, axis=1)
            )


def test_uncertified_step_warns_and_names_its_fallback(monkeypatch):
    """A kernel answer that fails the certificate is replaced by the cvxpy reference (still
    certified); when that fails too the step says so: converged False, a named fallback, one
    ConvergenceWarning."""
    bad = np.array([1.0, 0.0, 0.0])
    monkeypatch.setattr(simplex_qp, "_simplex_qp", lambda *args: (bad.copy(), 1, True))
    r = MGDA()(REPORTED)
    assert r.diagnostics["converged"] and r.diagnostics["solved_by"] == "cvxpy reference"
    monkeypatch.setattr(simplex_qp, "reference_min_norm_simplex", lambda K: bad.copy())
    solver = MGDA()
    with pytest.warns(ConvergenceWarning, match="cvxpy reference"):
        r = solver(REPORTED)
    assert not r.diagnostics["converged"] and r.diagnostics["residual"] > r.diagnostics["tolerance"]
    assert isinstance(r.diagnostics["fallback"], str)


def test_mgda_ub_reports_the_same_certificate():
    r = mtlsolve.get("mgda_ub")(REPORTED, kind="representation")
    assert r.diagnostics["converged"] and r.diagnostics["residual"] <= r.diagnostics["tolerance"]

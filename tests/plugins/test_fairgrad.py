"""FairGrad (docs/methods.md#fairgrad, worked vectors): w > 0 with Kw = w^{−1/α}, d = Gᵀw.

The numba kernel is checked against its cvxpy reference (Clarabel, then Newton-polished) on
random systems with m ∈ {2, 3, 5, 10, 40} and α ∈ {0.5, 1, 2, 5}. Largest deviation measured,
max|w − w_ref|/max w_ref: 9.2e-11 (full rank) and 2.9e-11 (rank-deficient, well posed), i.e.
the kernel's stopping tolerance 1e-10. TorchJD parity is in tests/test_torchjd_parity.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mtlsolve
from mtlsolve.errors import ConvergenceWarning
from mtlsolve.kernels import fairgrad as fk
from mtlsolve.plugins.gramian.fairgrad import FairGrad

O = [[1.0, 0.0], [0.0, 2.0]]
C = [[1.0, 0.0], [-1.0, 1.0]]
N = [[1.0, 0.0], [1.0, 1.0]]
J1 = [[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]]
ALPHAS = (0.5, 1.0, 2.0, 5.0)
M_VALUES = (2, 3, 5, 10, 40)

pytestmark = pytest.mark.filterwarnings("ignore:Solution may be inaccurate")


def well_posed(rng: np.random.Generator, m: int, deficient: bool = False) -> np.ndarray:
    """G with 0 ∉ conv{g_i}: rows share a positive component along e_1 (conflicts elsewhere),
    unequal norms; ``deficient``: n < m (m > 2) or duplicated rows."""
    if deficient and m > 2:
        n = int(rng.integers(1, m))
        G = rng.standard_normal((m, n))
    else:
        G = rng.standard_normal((m, m + int(rng.integers(0, 2 * m + 1))))
    G[:, 0] = np.abs(G[:, 0]) + 0.2
    if deficient and m == 2:
        G[1] = G[0]
    return G * rng.uniform(0.3, 3.0, (m, 1))


def residual(K: np.ndarray, w: np.ndarray, alpha: float) -> float:
    return float(np.abs(K @ w * w ** (1.0 / alpha) - 1.0).max())


# ------------------------------------------------------------------- kernel vs cvxpy
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("deficient", [False, True], ids=["full_rank", "deficient"])
def test_kernel_matches_cvxpy_reference(alpha, deficient):
    rng = np.random.default_rng(int(10 * alpha) + deficient)
    for m in M_VALUES:
        for _ in range(6):
            K = (G := well_posed(rng, m, deficient)) @ G.T
            w, _, status, res = fk.fairgrad_weights(K, alpha=alpha)
            ref = fk.reference_fairgrad_weights(K, alpha)
            assert status == fk.CONVERGED and (w > 0).all()
            assert res <= 1e-10 and residual(K, w, alpha) <= 1e-9
            np.testing.assert_allclose(w, ref, rtol=0, atol=1e-6 * ref.max())


def test_unpolished_reference_is_close():
    """The cvxpy solution itself (before the Newton polish) already lands on the kernel's w to ~1e-4."""
    rng = np.random.default_rng(7)
    for alpha in (1.0, 2.0):
        for m in (3, 10):
            K = (G := well_posed(rng, m)) @ G.T
            raw = fk.reference_fairgrad_weights(K, alpha, polish=False)
            np.testing.assert_allclose(fk.fairgrad_weights(K, alpha=alpha)[0], raw, rtol=1e-3)


# ---------------------------------------------------------------- worked vectors
@pytest.mark.parametrize(
    ("G", "alpha", "d"),
    [
        (O, 1.0, (1.0, 1.0)),
        (C, 1.0, (0.5412, 1.30656)),
        (N, 1.0, (1.30656, 0.5412)),
        (J1, 1.0, (0.07658, 0.99853, 0.99853)),
        (O, 2.0, (1.0, 0.7937)),
        (C, 2.0, (0.67821, 1.49584)),
        (N, 2.0, (1.15632, 0.40842)),
        (J1, 2.0, (0.03127, 0.79082, 0.79082)),
    ],
    ids=["O1", "C1", "N1", "J1_1", "O2", "C2", "N2", "J1_2"],
)
def test_worked_vectors(G, alpha, d):
    r = FairGrad(alpha=alpha)(np.array(G))
    np.testing.assert_allclose(r.direction, d, atol=5e-6)
    assert r.diagnostics["converged"]


# ------------------------------------------------------------------------- must hold
@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(
    m=st.integers(1, 12),
    extra=st.integers(0, 6),
    alpha=st.sampled_from(ALPHAS),
    seed=st.integers(0, 2**32 - 1),
    log_scale=st.floats(-3, 3),
)
def test_fixed_point_products_and_permutation(m, extra, alpha, seed, log_scale):
    """Kw = w^{−1/α} (residual ≤ 1e-10), so g_i·d = w_i^{−1/α} > 0; permuting tasks permutes w."""
    rng = np.random.default_rng(seed)
    G = well_posed(rng, m) * 10.0**log_scale
    r = FairGrad(alpha=alpha)(G)
    w, d = r.weights, r.direction
    assert r.diagnostics["converged"] and (w > 0).all()
    assert residual(G @ G.T, w, alpha) <= 1e-9
    np.testing.assert_allclose(G @ d, w ** (-1.0 / alpha), rtol=1e-9)
    perm = rng.permutation(m)
    np.testing.assert_allclose(FairGrad(alpha=alpha)(G[perm]).weights, w[perm], rtol=1e-9)


def test_alpha_one_equals_nash_mtl():
    rng = np.random.default_rng(1)
    for m in M_VALUES:
        for deficient in (False, True):
            G = well_posed(rng, m, deficient)
            np.testing.assert_allclose(FairGrad()(G).weights, mtlsolve.get("nash_mtl")(G).weights, rtol=1e-9)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_orthogonal_gradients(alpha):
    """Orthogonal g_i of norms n_i: n_i²w_i = w_i^{−1/α}, so w_i = n_i^{−2α/(α+1)}."""
    rng = np.random.default_rng(2)
    for m in (1, 3, 10, 40):
        Q = np.linalg.qr(rng.standard_normal((m + 2, m)))[0].T
        norms = 10.0 ** rng.uniform(-3, 3, m)
        np.testing.assert_allclose(
            FairGrad(alpha=alpha)(Q * norms[:, None]).weights, norms ** (-2 * alpha / (alpha + 1)), rtol=1e-10
        )


@pytest.mark.parametrize("alpha", ALPHAS)
def test_homogeneity(alpha):
    """d(cG) = c^{(1−α)/(1+α)}·d(G) and w(cG) = c^{−2α/(α+1)}·w(G)."""
    rng = np.random.default_rng(3)
    for m in M_VALUES:
        G = well_posed(rng, m)
        r = FairGrad(alpha=alpha)(G)
        for c in (1e-3, 0.2, 7.0, 1e3):
            rc = FairGrad(alpha=alpha)(c * G)
            np.testing.assert_allclose(rc.direction, c ** ((1 - alpha) / (1 + alpha)) * r.direction, rtol=1e-8)
            np.testing.assert_allclose(rc.weights, c ** (-2 * alpha / (alpha + 1)) * r.weights, rtol=1e-8)


def test_no_solution_and_zero_rows():
    """0 ∈ conv{g_i}: w = 0 (d = 0), reported. A zero gradient gets weight 0 and the others are
    solved alone (the reference's limit w_i → ∞ leaves the same d)."""
    rng = np.random.default_rng(4)
    H = rng.standard_normal((5, 3))
    cancelling = np.vstack([H, -rng.dirichlet(np.ones(5)) @ H])  # n < m with 0 ∈ conv{g_i}
    for G in (np.array([[1.0, 2.0], [-2.0, -4.0]]), np.zeros((3, 2)), cancelling):
        for alpha in ALPHAS:
            with pytest.warns(ConvergenceWarning, match="zero update"):
                r = FairGrad(alpha=alpha)(G)
            np.testing.assert_array_equal(r.weights, 0.0)
            assert not r.diagnostics["converged"] and "w = 0" in r.diagnostics["message"]
            assert r.diagnostics["no_solution"] and r.diagnostics["residual"] > r.diagnostics["tolerance"]
    G = well_posed(rng, 5)
    with_zero = np.insert(G, 2, 0.0, axis=0)
    for alpha in ALPHAS:
        r, alone = FairGrad(alpha=alpha)(with_zero), FairGrad(alpha=alpha)(G)
        np.testing.assert_allclose(r.direction, alone.direction, rtol=1e-12)
        assert r.weights[2] == 0.0 and r.diagnostics["zero_tasks"] == 1
    with pytest.raises(ValueError):
        FairGrad(alpha=0.0)


def test_warm_start_state():
    """The previous w warm-starts the next solve: fewer Newton steps, the same w; state round-trips."""
    rng = np.random.default_rng(5)
    G = well_posed(rng, 10)
    for alpha in (1.0, 2.0):
        solver = FairGrad(alpha=alpha)
        cold = solver(G)
        G2 = G + 1e-3 * rng.standard_normal(G.shape)
        warm = solver(G2)
        fresh = FairGrad(alpha=alpha)(G2)
        assert warm.diagnostics["iterations"] < fresh.diagnostics["iterations"]
        np.testing.assert_allclose(warm.weights, fresh.weights, rtol=1e-9)
        restored = FairGrad(alpha=alpha)
        restored.load_state_dict(solver.state_dict())
        np.testing.assert_array_equal(restored(G).weights, solver(G).weights)
        assert cold.diagnostics["converged"]


def test_kernel_compiled_once_reference_built_once():
    rng = np.random.default_rng(6)
    for m in (2, 5, 17):
        K = (G := well_posed(rng, m)) @ G.T
        K.setflags(write=False)
        fk.fairgrad_weights(K, alpha=2.0)
        fk.fairgrad_weights(K, np.ones(m), alpha=0.5)
        fk.reference_fairgrad_weights(K, 2.0)
    assert len(fk._fairgrad.signatures) == 1
    builds = fk._reference_problem.cache_info().misses
    fk.reference_fairgrad_weights(np.eye(5) + 0.1, 2.0)
    assert fk._reference_problem.cache_info().misses == builds

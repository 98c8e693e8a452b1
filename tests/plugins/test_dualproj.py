"""DualProj (docs/methods.md#dualproj, worked vectors): d = π_J(g_0), the projection of the
mean gradient onto the dual cone {x : Gx ≥ 0}, in UPGrad's weight form and regularisation.

The kernel is checked against the cvxpy reference of cone_projection and against the KKT
conditions of the primal projection; TorchJD parity is in tests/test_torchjd_parity.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mtlsolve
from mtlsolve.kernels.cone_projection import dualproj_weights, reference_project_dual_cone
from mtlsolve.plugins.gramian.dualproj import DualProj

O = [[1.0, 0.0], [0.0, 2.0]]
C = [[1.0, 0.0], [-1.0, 1.0]]
N = [[1.0, 0.0], [1.0, 1.0]]
J1 = [[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]]
EXACT = {"reg_eps": 0.0}

pytestmark = pytest.mark.filterwarnings("ignore:Solution may be inaccurate")


def random_system(rng: np.random.Generator, m: int, deficient: bool = False) -> np.ndarray:
    """Unequal row norms and a shared component of random sign (conflicts and agreement)."""
    n = int(rng.integers(1, m)) if deficient and m > 2 else m + int(rng.integers(0, 2 * m))
    G = rng.standard_normal((m, n)) * rng.uniform(0.2, 5.0, (m, 1))
    return G + rng.standard_normal(n) * rng.choice([-1.0, 1.0], (m, 1))


@pytest.mark.parametrize(
    ("G", "exact", "regularised", "atol"),
    [
        (O, (0.5, 1.0), (0.5, 1.0), 1e-12),
        (C, (0.0, 0.5), (0.0, 0.5), 1e-12),
        (N, (1.0, 0.5), (1.0, 0.5), 1e-12),
        (J1, (5 / 9, 10 / 9, 10 / 9), (0.55632, 1.11092, 1.11092), 5e-6),
    ],
    ids=["O", "C", "N", "J1"],
)
def test_worked_vectors(G, exact, regularised, atol):
    """reg_eps = 0 gives the exact projection, the defaults (norm_eps = reg_eps = 1e-4) torchjd's."""
    G = np.array(G)
    np.testing.assert_allclose(DualProj(**EXACT)(G).direction, exact, atol=1e-12)
    r = DualProj()(G)
    np.testing.assert_allclose(r.direction, regularised, atol=atol)
    assert r.diagnostics["converged"]


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(m=st.sampled_from([2, 3, 5, 10, 40]), deficient=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_exact_projection_kkt(m, deficient, seed):
    """reg_eps = 0: d is the projection of g_0 onto {x : Gx ≥ 0} iff d = g_0 + Gᵀλ with λ = w − 1/m ≥ 0,
    Gd ≥ 0 and λ_j(Gd)_j = 0 (the KKT conditions of min ½‖x − g_0‖² s.t. Gx ≥ 0)."""
    G = random_system(np.random.default_rng(seed), m, deficient)
    r = DualProj(**EXACT)(G)
    d, lam = r.direction, r.weights - 1.0 / m
    scale = (G**2).sum(axis=1).max()
    products = G @ d
    assert (lam >= -1e-12).all()
    assert (products >= -1e-9 * scale).all()
    assert np.abs(lam * products).max() <= 1e-9 * scale * max(lam.max(), 1.0)
    np.testing.assert_allclose(d, G.mean(axis=0) + lam @ G, atol=1e-12 * np.sqrt(scale))


@pytest.mark.parametrize("m", [2, 3, 5, 10, 40])
def test_kernel_matches_cvxpy_reference(m):
    """v = argmin_{v ≥ 1/m} ½vᵀK'v, K' = K/tr K + reg_eps·I, against cone_projection's cvxpy reference."""
    rng = np.random.default_rng(m)
    for k in range(12):
        K = (G := random_system(rng, m, deficient=k % 3 == 2)) @ G.T
        for reg_eps in (0.0, 1e-4):
            w, _, converged = dualproj_weights(K, 1e-4, reg_eps)
            Kp = K / np.trace(K) + reg_eps * np.eye(m)
            ref = reference_project_dual_cone(Kp, np.ones(m)) / m  # Clarabel is more accurate at u = 1
            assert converged
            # the kernel's v is exact: the KKT conditions v ≥ u, K'v ≥ 0, (v − u)∘K'v = 0 hold to round-off
            mu = Kp @ w
            assert (w >= 1.0 / m).all() and mu.min() >= -1e-12 and np.abs((w - 1.0 / m) * mu).max() <= 1e-12
            # on the scale u = 1 (m·v), as tests/kernels/test_cone_projection.py: the polished Clarabel
            # solution is off by up to 1.2e-6 at m = 40 (a bound it leaves by that much); K'v and the
            # objective are unique, v only when K' is non-singular
            np.testing.assert_allclose(m * mu, m * Kp @ ref, rtol=0, atol=2e-6)
            assert w @ mu <= ref @ Kp @ ref + 1e-12
            if reg_eps > 0 or np.linalg.matrix_rank(G) == m:
                np.testing.assert_allclose(m * w, m * ref, rtol=0, atol=2e-6)


def test_regularised_products_bound():
    """The KKT conditions of min_{v ≥ u} vᵀK'v give (K'v)_j ≥ 0, so d·g_j ≥ −reg_eps·tr(K)·w_j; w ≥ 1/m."""
    rng = np.random.default_rng(1)
    for m in (2, 3, 5, 10, 40):
        G = random_system(rng, m)
        r = DualProj()(G)
        bound = -1e-4 * np.trace(G @ G.T) * r.weights - 1e-10 * (G**2).sum(axis=1).max()
        assert (G @ r.direction >= bound).all()
        assert (r.weights >= 1.0 / m - 1e-12).all()


def test_mean_in_cone_is_unchanged():
    """g_0 already in the dual cone (Gg_0 ≥ 0): d = g_0, with and without the regularisation."""
    rng = np.random.default_rng(2)
    for _ in range(20):
        G = np.abs(rng.standard_normal((int(rng.integers(2, 8)), 4)))  # K ≥ 0 entry-wise
        G[0] = -0.3 * G[0]  # one conflicting row, while g_0 stays in the cone
        if (G @ G.mean(axis=0) < 0).any():
            continue
        for kwargs in ({}, EXACT):
            np.testing.assert_allclose(DualProj(**kwargs)(G).direction, G.mean(axis=0), rtol=1e-14)


def test_positive_homogeneous_and_reduction():
    rng = np.random.default_rng(3)
    for m in (2, 5, 10):
        G = random_system(rng, m)
        r = DualProj()(G)
        for c in (0.1, 7.0, 1e3):
            np.testing.assert_allclose(DualProj()(c * G).direction, c * r.direction, rtol=1e-9, atol=1e-12 * c)
        np.testing.assert_allclose(DualProj(reduction="sum")(G).weights, m * r.weights, rtol=1e-15)
        np.testing.assert_allclose(DualProj()(gramian=G @ G.T).weights, r.weights, rtol=1e-12)


def test_small_trace_and_degenerate():
    G = 1e-3 * np.array(J1)  # tr K < norm_eps: K' = reg_eps·I and d = g_0
    np.testing.assert_allclose(DualProj()(G).direction, G.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(DualProj()(np.zeros((3, 4))).direction, 0.0)
    opposite = np.array([[1.0, 2.0], [0.0, 0.0], [-1.0, -2.0]])
    for kwargs in ({}, EXACT):
        r = DualProj(**kwargs)(opposite)
        assert np.isfinite(r.weights).all() and np.abs(r.direction).max() <= 1e-3


def test_names():
    for name in ("dualproj", "DualProj", "dual_proj", "dual-proj"):
        assert type(mtlsolve.get(name)) is DualProj

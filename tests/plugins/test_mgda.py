"""MGDA (catalogue §3.2 row ``mgda``, §4 vectors): the min-norm point of the convex hull."""

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
def test_catalogue_vectors(G, expected):
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

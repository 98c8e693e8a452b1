"""UPGrad (docs/methods.md#upgrad, worked vectors): the mean of the projections onto the dual cone."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
import torch
from torchjd.aggregation import UPGrad as TorchjdUPGrad
from torchjd.aggregation import UPGradWeighting
from torchjd.linalg import DualConeProjector, QuadprogProjector

import mtlsolve
from mtlsolve.plugins.gramian.upgrad import UPGrad

O = [[1.0, 0.0], [0.0, 2.0]]
C = [[1.0, 0.0], [-1.0, 1.0]]
N = [[1.0, 0.0], [1.0, 1.0]]
J1 = [[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]]
EXACT = {"reg_eps": 0.0}


def random_systems(seed: int, count: int = 30):
    """G with m ∈ {2, 3, 5, 10, 40}, unequal row norms, a shared component of random sign; every
    third one rank-deficient (n < m)."""
    rng = np.random.default_rng(seed)
    for k in range(count):
        m = int(rng.choice([2, 3, 5, 10, 40]))
        n = int(rng.integers(1, m)) if k % 3 == 2 and m > 2 else m + int(rng.integers(0, 2 * m))
        G = rng.standard_normal((m, n)) * rng.uniform(0.2, 5.0, (m, 1))
        yield G + rng.standard_normal(n) * rng.choice([-1.0, 1.0], (m, 1))


def scale_of(G: np.ndarray) -> float:
    return float((G**2).sum(axis=1).max())


@pytest.mark.parametrize(
    ("G", "exact", "regularised", "atol"),
    [
        (O, (0.5, 1.0), (0.5, 1.0), 1e-12),
        (C, (0.25, 0.75), (0.24989, 0.74996), 5e-6),
        (N, (1.0, 0.5), (1.0, 0.5), 1e-12),
        (J1, (0.29240, 1.90058, 1.90058), (0.2929, 1.90035, 1.90035), 5e-5),
    ],
    ids=["O", "C", "N", "J1"],
)
def test_worked_vectors(G, exact, regularised, atol):
    """reg_eps = 0 gives the exact vector, the default (norm_eps = reg_eps = 1e-4) torchjd's."""
    G = np.array(G)
    np.testing.assert_allclose(UPGrad(**EXACT)(G).direction, exact, atol=min(atol, 5e-6))
    r = UPGrad()(G)
    np.testing.assert_allclose(r.direction, regularised, atol=atol)
    assert r.diagnostics["converged"]


def test_exact_two_task_closed_form():
    """m = 2: π(g_1) = g_1 − min(0, g_1·g_2)/‖g_2‖²·g_2 (and symmetrically), d = their mean."""
    rng = np.random.default_rng(1)
    for _ in range(100):
        G = rng.standard_normal((2, int(rng.integers(2, 6))))
        dot = min(0.0, G[0] @ G[1])
        p1 = G[0] - dot / (G[1] @ G[1]) * G[1]
        p2 = G[1] - dot / (G[0] @ G[0]) * G[0]
        np.testing.assert_allclose(UPGrad(**EXACT)(G).direction, (p1 + p2) / 2, atol=1e-12 * np.sqrt(scale_of(G)))


def test_non_conflicting():
    """Exact: d·g_j ≥ 0. Regularised: the KKT conditions of min_{v ≥ e_i} vᵀK'v give (K'v_i)_j ≥ 0,
    so d·g_j ≥ −reg_eps·tr(K)·w_j."""
    for G in random_systems(2):
        K = G @ G.T
        exact = UPGrad(**EXACT)(G)
        assert (G @ exact.direction >= -1e-10 * scale_of(G)).all()
        r = UPGrad()(G)
        bound = -1e-4 * np.trace(K) * r.weights - 1e-10 * scale_of(G)
        assert (G @ r.direction >= bound).all()
        assert (r.weights >= 1.0 / G.shape[0] - 1e-12).all()  # v_i ≥ e_i, so w ≥ 1/m


def test_no_conflict_gives_mean():
    rng = np.random.default_rng(3)
    for _ in range(10):
        G = np.abs(rng.standard_normal((int(rng.integers(2, 8)), 4)))  # K ≥ 0 entry-wise
        for kwargs in ({}, EXACT):
            r = UPGrad(**kwargs)(G)
            np.testing.assert_allclose(r.direction, G.mean(axis=0), rtol=1e-14)


def test_small_trace_gives_mean():
    """tr K < norm_eps: K' = reg_eps·I, every e_i is its own projection and d = g_0."""
    G = 1e-3 * np.array(J1)  # tr K = 5.6e-5 < 1e-4
    np.testing.assert_allclose(UPGrad()(G).direction, G.mean(axis=0), rtol=1e-14)
    assert not np.allclose(UPGrad(norm_eps=1e-6)(G).direction, G.mean(axis=0))


def test_positive_homogeneous_above_norm_eps():
    for G in random_systems(4, count=10):
        d = UPGrad()(G).direction
        for c in (0.1, 7.0):
            np.testing.assert_allclose(UPGrad()(c * G).direction, c * d, atol=1e-10 * c * np.sqrt(scale_of(G)))


def test_reduction_sum_and_gramian_only():
    G = next(random_systems(5, count=1))
    r = UPGrad()(G)
    np.testing.assert_allclose(UPGrad(reduction="sum")(G).weights, G.shape[0] * r.weights, rtol=1e-15)
    np.testing.assert_allclose(UPGrad()(gramian=G @ G.T).weights, r.weights, rtol=1e-13)
    with pytest.raises(ValueError):
        UPGrad(reg_eps=-1.0)


def test_degenerate_systems():
    np.testing.assert_allclose(UPGrad()(np.zeros((3, 4))).direction, 0.0)
    G = np.array([[1.0, 2.0], [0.0, 0.0], [-1.0, -2.0]])  # opposite gradients and a zero row
    for kwargs in ({}, EXACT):
        r = UPGrad(**kwargs)(G)
        assert np.isfinite(r.weights).all()
        np.testing.assert_allclose(r.direction, 0.0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kwargs", [{}, EXACT], ids=["default", "exact"])
def test_torch_and_numpy_agree(dtype, kwargs):
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    for G in random_systems(6, count=10):
        ref = UPGrad(**kwargs)(G)
        for X in (torch.from_numpy(G).to(dtype), G.astype(np_dtype)):
            r = UPGrad(**kwargs)(X)
            assert type(r.direction) is type(X) and r.direction.dtype == X.dtype
            d = np.asarray(r.direction, dtype=np.float64)
            np.testing.assert_allclose(d, ref.direction, atol=tol * np.sqrt(scale_of(G)) * np.abs(ref.weights).max())


class NNLSProjector(DualConeProjector):
    """TorchJD's QP min_{v ≥ u} vᵀK'v, K' = K/tr K + 1e-4·I, solved independently of mtlsolve:
    with K' = RᵀR and v = u + x it is the NNLS problem min_{x ≥ 0} ‖Rx + Ru‖."""

    def __call__(self, U: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
        K = G.numpy()
        trace = np.trace(K)
        R = scipy.linalg.cholesky((K / trace if trace >= 1e-4 else 0 * K) + 1e-4 * np.eye(len(K)))
        V = np.array([u + scipy.optimize.nnls(R, -R @ u)[0] for u in U.numpy().reshape(-1, len(K))])
        return torch.from_numpy(V.reshape(U.shape))


@pytest.mark.parametrize(
    "projector",
    [
        pytest.param(NNLSProjector, id="nnls"),
        pytest.param(
            QuadprogProjector,
            id="quadprog",
            marks=pytest.mark.skipif(
                importlib.util.find_spec("quadprog") is None or importlib.util.find_spec("qpsolvers") is None,
                reason="torchjd's default projector needs quadprog and qpsolvers (torchjd[quadprog_projector])",
            ),
        ),
    ],
)
def test_matches_torchjd(projector):
    """torchjd 0.18.0 ``UPGrad``: uniform preference 1/m, weights w = Σ_i v(e_i/m) applied to the raw
    rows, norm_eps = reg_eps = 1e-4 (their ``QuadprogProjector`` defaults), i.e. our defaults."""
    for G in random_systems(7, count=30):
        J = torch.from_numpy(G)
        r = UPGrad()(G)
        weights = UPGradWeighting(projector=projector())(J @ J.T).numpy()
        np.testing.assert_allclose(r.weights, weights, rtol=0, atol=1e-6 * np.abs(weights).max())
        d = TorchjdUPGrad(projector=projector())(J).numpy()
        np.testing.assert_allclose(r.direction, d, rtol=0, atol=1e-6 * np.linalg.norm(d) + 1e-12)


def test_registry_names():
    for name in ("upgrad", "UPGrad", "up-grad"):
        assert type(mtlsolve.get(name)) is UPGrad
    assert mtlsolve.get("upgrad", reg_eps=0).reg_eps == 0.0


# ------------------------------------------------------------------ preference
def test_uniform_pref_is_the_default():
    for G in random_systems(8, count=10):
        m = G.shape[0]
        for kwargs in ({}, EXACT):
            np.testing.assert_allclose(
                UPGrad(pref=np.full(m, 1.0 / m), **kwargs)(G).weights, UPGrad(**kwargs)(G).weights, atol=1e-12
            )


@pytest.mark.parametrize("projector", [NNLSProjector, None], ids=["nnls", "torchjd_default"])
def test_pref_matches_torchjd(projector):
    """torchjd 0.18.0 ``UPGradWeighting(pref_vector=p)``: w = Σ_i v(p_i e_i)."""
    rng = np.random.default_rng(9)
    for G in random_systems(9, count=20):
        p = rng.uniform(0.0, 2.0, G.shape[0])
        p[rng.random(G.shape[0]) < 0.2] = 0.0
        J = torch.from_numpy(G)
        args = {} if projector is None else {"projector": projector()}
        expected = UPGradWeighting(pref_vector=torch.from_numpy(p), **args)(J @ J.T).numpy()
        np.testing.assert_allclose(UPGrad(pref=p)(G).weights, expected, atol=1e-6 * max(np.abs(expected).max(), 1e-12))


def test_pref_on_one_task_projects_its_gradient():
    """p = e_1, two tasks, exact: d = π_J(g_1) = g_1 − min(0, g_1·g_2)/‖g_2‖²·g_2."""
    rng = np.random.default_rng(10)
    for _ in range(50):
        G = rng.standard_normal((2, int(rng.integers(2, 6))))
        expected = G[0] - min(0.0, G[0] @ G[1]) / (G[1] @ G[1]) * G[1]
        np.testing.assert_allclose(UPGrad(pref=[1.0, 0.0], **EXACT)(G).direction, expected, atol=1e-12)


def test_pref_validation():
    with pytest.raises(ValueError):
        UPGrad(pref=[1.0, -0.5])
    with pytest.raises(mtlsolve.InvalidSystemError, match="entries"):
        UPGrad(pref=[1.0, 1.0, 1.0])(np.eye(2))

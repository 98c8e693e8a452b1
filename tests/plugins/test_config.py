"""ConFIG (docs/methods.md#config, worked vectors): Gramian form against a transcription of
eq. (2) on G and against torchjd 0.18.0 ``ConFIG``."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch
from torchjd.aggregation import ConFIG as TorchJDConFIG

import mtlsolve
from mtlsolve.errors import ConvergenceWarning
from mtlsolve.plugins.gramian.config import ConFIG

VECTORS = {
    "O": ([[1.0, 0.0], [0.0, 2.0]], (1.5, 1.5)),
    "C": ([[1.0, 0.0], [-1.0, 1.0]], (0.35355, 0.85355)),
    "N": ([[1.0, 0.0], [1.0, 1.0]], (2.06066, 0.85355)),
    "J1": ([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], (0.15881, 2.07061, 2.07061)),
}


def config_on_matrix(G, p=None):
    """Eq. (2) written on G: d_u = U⁺p, d = (Σ_i g_i·d̂) d̂."""
    norms = np.linalg.norm(G, axis=1, keepdims=True)
    U = np.divide(G, norms, out=np.zeros_like(G), where=norms > 0)
    du = np.linalg.pinv(U) @ (np.ones(len(G)) if p is None else p)
    if np.linalg.norm(du) < 1e-9:  # U has unit rows: d_u is O(1) unless p is orthogonal to range(U)
        return np.zeros(G.shape[1])
    unit = du / np.linalg.norm(du)
    return (G @ unit).sum() * unit


@pytest.mark.parametrize("name", list(VECTORS))
@pytest.mark.parametrize("least_squares", [False, True])
def test_worked_vectors(name, least_squares):
    G, expected = VECTORS[name]
    np.testing.assert_allclose(ConFIG(least_squares=least_squares)(np.array(G)).direction, expected, atol=5e-6)


def test_equal_cosines_and_positive_products_for_independent_gradients():
    rng = np.random.default_rng(0)
    for m, n in [(2, 3), (3, 3), (4, 10), (6, 8)]:
        for _ in range(10):
            G = rng.standard_normal((m, n)) * rng.uniform(0.1, 10, (m, 1))
            d = ConFIG()(G).direction
            cosines = G @ d / np.linalg.norm(G, axis=1) / np.linalg.norm(d)
            np.testing.assert_allclose(cosines, cosines[0], rtol=1e-9)
            assert (G @ d > 0).all()


def test_matches_transcription_including_rank_deficient_and_zero_rows():
    rng = np.random.default_rng(1)
    for m, n in [(3, 5), (5, 2), (6, 3), (4, 1)]:
        for _ in range(10):
            G = rng.standard_normal((m, n)) * rng.uniform(0.1, 10, (m, 1))
            G[rng.integers(m)] *= rng.choice([0.0, 1.0])
            for least_squares in (False, True):
                with warnings.catch_warnings(record=True) as caught:  # p ⟂ range(K̄): the zero-update fallback
                    warnings.simplefilter("always", ConvergenceWarning)
                    r = ConFIG(least_squares=least_squares)(G)
                d = r.direction
                assert bool(caught) == (not r.diagnostics["converged"]) == (not d.any())
                np.testing.assert_allclose(d, config_on_matrix(G), rtol=1e-8, atol=1e-8 * np.abs(G).max())


def test_preference_vector():
    rng = np.random.default_rng(2)
    G = rng.standard_normal((3, 6))
    p = np.array([1.0, 2.0, 0.5])
    d = ConFIG(preference=p)(G).direction
    np.testing.assert_allclose(d, config_on_matrix(G, p), rtol=1e-10)
    with pytest.raises(mtlsolve.InvalidSystemError):
        ConFIG(preference=[1.0, 2.0])(G)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_torchjd(dtype):
    rng = np.random.default_rng(3)
    deviation = 0.0
    for m, n in [(2, 3), (3, 7), (5, 5), (6, 3), (8, 20)]:
        for _ in range(10):
            G = rng.standard_normal((m, n)) * rng.uniform(0.1, 10, (m, 1))
            X = torch.tensor(G, dtype=dtype)
            ours = ConFIG()(X).direction
            theirs = TorchJDConFIG()(X)
            assert ours.dtype == dtype
            scale = np.linalg.norm(G, axis=1).sum()
            deviation = max(deviation, float((ours - theirs).abs().max()) / scale)
    assert deviation < (1e-12 if dtype == torch.float64 else 1e-5), deviation


def test_zero_system_homogeneity_and_permutation():
    with pytest.warns(ConvergenceWarning, match="zero update"):
        r = ConFIG()(np.zeros((3, 4)))
    assert np.all(r.direction == 0) and np.all(r.weights == 0)
    rng = np.random.default_rng(4)
    G = rng.standard_normal((4, 6))
    d = ConFIG()(G).direction
    np.testing.assert_allclose(ConFIG()(0.01 * G).direction, 0.01 * d, rtol=1e-10)
    perm = [2, 0, 3, 1]
    np.testing.assert_allclose(ConFIG()(G[perm]).direction, d, rtol=1e-10)


def test_gramian_only_gives_the_weights():
    rng = np.random.default_rng(5)
    G = rng.standard_normal((4, 9))
    w = ConFIG()(gramian=G @ G.T).weights
    np.testing.assert_allclose(G.T @ w, ConFIG()(G).direction, rtol=1e-12)


@pytest.mark.parametrize(("backend", "dtype"), list(itertools.product(["numpy", "torch"], ["float32", "float64"])))
def test_backends_and_dtypes_agree(backend, dtype):
    G = np.random.default_rng(6).standard_normal((5, 8))
    expected = ConFIG()(G).direction
    X = G.astype(dtype) if backend == "numpy" else torch.tensor(G, dtype=getattr(torch, dtype))
    d = ConFIG()(X).direction
    assert type(d) is type(X) and d.dtype == X.dtype
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(np.asarray(d, dtype=np.float64), expected, rtol=tol, atol=tol)


def test_registry_names():
    assert isinstance(mtlsolve.get("ConFIG"), ConFIG)
    assert mtlsolve.get("conflict-free", least_squares=True).least_squares
    with pytest.raises(mtlsolve.InvalidConfigError):
        mtlsolve.get("config", rank_tol=-1.0)

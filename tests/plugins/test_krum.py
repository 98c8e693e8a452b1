"""Krum / Multi-Krum (docs/methods.md#krum): paper scoring against a transcription on G,
torchjd 0.18.0 scoring (``distance="euclidean"``) against ``torchjd.aggregation.Krum``."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torchjd.aggregation import Krum as TorchJDKrum

import mtlsolve
from mtlsolve.plugins.gramian.krum import Krum


def krum_on_matrix(G, f, k, squared=True):
    """Blanchard et al., Section 4, on the rows of G: the indices of the k lowest scores."""
    m = len(G)
    scores = []
    for i in range(m):
        dist = sorted(np.linalg.norm(G[i] - G[j]) ** (2 if squared else 1) for j in range(m) if j != i)
        scores.append(sum(dist[: m - f - 2]))
    return np.argsort(scores, kind="stable")[:k]


def test_one_row_or_the_mean_of_k_rows_as_the_transcription():
    rng = np.random.default_rng(0)
    for f, k, squared in itertools.product([0, 1, 2], [1, 2, 3], [True, False]):
        m = 2 * f + 3 + int(rng.integers(0, 4))
        for _ in range(10):
            G = rng.standard_normal((m, 5)) * rng.uniform(0.5, 2, (m, 1))
            distance = "squared" if squared else "euclidean"
            r = Krum(n_byzantine=f, n_selected=k, distance=distance)(G)
            chosen = krum_on_matrix(G, f, k, squared)
            expected = np.zeros(m)
            expected[chosen] = 1.0 / k
            np.testing.assert_array_equal(r.weights, expected)
            np.testing.assert_allclose(r.direction, G[chosen].mean(axis=0), rtol=1e-12, atol=1e-15)
            assert sorted(r.diagnostics["selected"]) == sorted(chosen)


def test_a_far_outlier_is_never_selected():
    rng = np.random.default_rng(1)
    for f in (1, 2):
        for _ in range(50):
            m = 2 * f + 3 + int(rng.integers(0, 5))
            G = rng.standard_normal((m, 4))
            bad = rng.choice(m, size=f, replace=False)
            G[bad] = G[bad] * 1e3 + rng.standard_normal(4) * 1e4
            for k in range(1, m - f + 1):
                w = Krum(n_byzantine=f, n_selected=k)(G).weights
                assert (w[bad] == 0).all()


def test_squared_and_euclidean_scores_can_pick_different_rows():
    # scores (squared) 107, 71, 31, 25, 47 pick row 3; (euclidean) 17.9, 14.2, 8.24, 8.56, 10.2 pick row 2
    G = np.array([[-4.0, -4.0], [2.0, 2.0], [-3.0, 2.0], [-1.0, 1.0], [-4.0, 2.0]])
    squared = Krum(n_byzantine=0)(G).diagnostics["selected"][0]
    euclidean = Krum(n_byzantine=0, distance="euclidean")(G).diagnostics["selected"][0]
    assert squared == krum_on_matrix(G, 0, 1, True)[0]
    assert euclidean == krum_on_matrix(G, 0, 1, False)[0]
    assert (squared, euclidean) == (3, 2)


@pytest.mark.parametrize(("f", "k"), [(0, 1), (1, 1), (1, 3), (2, 2)])
def test_euclidean_matches_torchjd(f, k):
    rng = np.random.default_rng(10 * f + k)
    for _ in range(20):
        # m − f − 2 ≥ 2: with one neighbour, mutual nearest rows tie, and topk breaks ties arbitrarily
        m = f + 4 + int(rng.integers(0, 5))
        G = torch.tensor(rng.standard_normal((m, 6)) * rng.uniform(0.5, 2, (m, 1)))
        ours = Krum(n_byzantine=f, n_selected=k, distance="euclidean")(G).direction
        torch.testing.assert_close(ours, TorchJDKrum(n_byzantine=f, n_selected=k)(G), rtol=1e-12, atol=1e-12)


def test_task_count_checks():
    G = np.random.default_rng(2).standard_normal((6, 3))
    with pytest.raises(mtlsolve.InvalidSystemError, match=r"2f \+ 3"):
        Krum(n_byzantine=2)(G)  # paper: 6 < 7
    Krum(n_byzantine=2, distance="euclidean")(G)  # torchjd: 6 ≥ 5
    with pytest.raises(mtlsolve.InvalidSystemError, match="f \\+ 3"):
        Krum(n_byzantine=4, distance="euclidean")(G)
    with pytest.raises(mtlsolve.InvalidSystemError, match="n_selected"):
        Krum(n_byzantine=0, n_selected=7)(G)


def test_homogeneity_permutation_and_gramian_only():
    rng = np.random.default_rng(3)
    G = rng.standard_normal((7, 5))
    r = Krum(n_byzantine=1, n_selected=2)(G)
    np.testing.assert_allclose(Krum(n_byzantine=1, n_selected=2)(5.0 * G).direction, 5.0 * r.direction, rtol=1e-12)
    perm = rng.permutation(7)
    np.testing.assert_allclose(Krum(n_byzantine=1, n_selected=2)(G[perm]).direction, r.direction, rtol=1e-12)
    np.testing.assert_array_equal(Krum(n_byzantine=1, n_selected=2)(gramian=G @ G.T).weights, r.weights)


@pytest.mark.parametrize(("backend", "dtype"), list(itertools.product(["numpy", "torch"], ["float32", "float64"])))
def test_backends_and_dtypes_agree(backend, dtype):
    G = np.random.default_rng(4).standard_normal((6, 8))
    expected = Krum(n_byzantine=1)(G).direction
    X = G.astype(dtype) if backend == "numpy" else torch.tensor(G, dtype=getattr(torch, dtype))
    d = Krum(n_byzantine=1)(X).direction
    assert type(d) is type(X) and d.dtype == X.dtype
    np.testing.assert_allclose(np.asarray(d, dtype=np.float64), expected, rtol=1e-6)


def test_registry_requires_n_byzantine():
    assert isinstance(mtlsolve.get("multi-krum", n_byzantine=1, n_selected=2), Krum)
    assert isinstance(mtlsolve.from_config({"name": "Krum", "n_byzantine": 0}), Krum)
    for bad in ({}, {"n_byzantine": -1}, {"n_byzantine": 1, "n_selected": 0}, {"n_byzantine": 1, "distance": "l1"}):
        with pytest.raises(mtlsolve.InvalidConfigError):
            mtlsolve.get("krum", **bad)

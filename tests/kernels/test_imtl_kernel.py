"""The compiled full-rank IMTL-G kernel against a 40-digit solve of K x = n (Liu et al., ICLR 2021)."""

from __future__ import annotations

import numpy as np
import pytest

from mtlsolve.gramian import rank_threshold
from mtlsolve.kernels.imtl import NOT_FULL_RANK, SOLVED, imtl_full_rank

mpmath = pytest.importorskip("mpmath")

RHO = 2.0 * 3 * np.finfo(np.float64).eps


def _exact_weights(K: np.ndarray) -> np.ndarray:
    """α = K⁻¹n/(1ᵀK⁻¹n) solved with 40 digits from the float64 K."""
    with mpmath.workdps(40):
        A = mpmath.matrix(K.tolist())
        n = mpmath.matrix([mpmath.sqrt(A[i, i]) for i in range(K.shape[0])])
        x = mpmath.lu_solve(A, n)
        total = sum(x)
        return np.array([float(v / total) for v in x])


def _system(rng: np.random.Generator, m: int, kappa: float, spread: float) -> np.ndarray:
    """G = S·U·Σ·Vᵀ: singular values over [1/√κ, 1], row scales over [1/spread, 1]."""
    U = np.linalg.qr(rng.standard_normal((m, m)))[0]
    V = np.linalg.qr(rng.standard_normal((3 * m, m)))[0]
    G = (U * np.geomspace(1.0, kappa**-0.5, m)) @ V.T
    G *= np.geomspace(1.0, 1.0 / spread, m)[rng.permutation(m), None]
    return G @ G.T


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("kappa", "spread"), [(1e2, 1.0), (1e6, 1e3), (1e10, 1e6)])
def test_weights_match_a_40_digit_solve(seed, kappa, spread):
    rng = np.random.default_rng(seed)
    m = int(rng.integers(2, 9))
    K = _system(rng, m, kappa, spread)
    status, w, residual, spread_ = imtl_full_rank(K, rank_threshold(m, RHO), -1.0, RHO)
    assert status == SOLVED  # no draw here has 1ᵀK⁻¹n at round-off (the DEGENERATE status)
    exact = _exact_weights(K)
    # the normalised system's condition number bounds the error of a backward-stable solve
    kn = np.linalg.cond(K / np.sqrt(np.outer(np.diag(K), np.diag(K))))
    assert np.abs(w - exact).max() <= 1e3 * kn * np.finfo(np.float64).eps * np.abs(exact).sum()
    assert residual <= 1e3 * np.finfo(np.float64).eps * max(1.0, kn)
    assert spread_ >= 0.0


def test_rank_deficient_and_zero_rows_are_left_to_the_general_path():
    g = np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [0.5, 0.1, 0.2]])
    assert imtl_full_rank(g @ g.T, rank_threshold(3, RHO), -1.0, RHO)[0] == NOT_FULL_RANK
    K = np.diag([1.0, 0.0])
    assert imtl_full_rank(K, rank_threshold(2, RHO), -1.0, RHO)[0] == NOT_FULL_RANK


def test_rtol_replaces_the_round_off_cutoff():
    K = np.array([[1.0, 0.999], [0.999, 1.0]])  # normalised eigenvalues 1.999 and 0.001
    assert imtl_full_rank(K, rank_threshold(2, RHO), -1.0, RHO)[0] == SOLVED
    assert imtl_full_rank(K, rank_threshold(2, RHO), 1e-2, RHO)[0] == NOT_FULL_RANK

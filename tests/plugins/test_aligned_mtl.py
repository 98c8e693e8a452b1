"""Aligned-MTL (Senushkin et al., arXiv 2305.19000, Algorithm 1; docs/methods.md#aligned_mtl) and worked vectors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import mtlsolve
from mtlsolve.gramian import numerical_rank
from mtlsolve.plugins.gramian import aligned_mtl
from mtlsolve.plugins.gramian.aligned_mtl import AlignedMTL, balance_matrix

O = [[1.0, 0.0], [0.0, 2.0]]
C = [[1.0, 0.0], [-1.0, 1.0]]
N = [[1.0, 0.0], [1.0, 1.0]]
J1 = [[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]]
RANK_DEFICIENT = [[1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]


def aligned_by_svd(G: np.ndarray, scale_mode: str = "min", rank: int | None = None) -> np.ndarray:
    """Ĝ = √s·U_r V_rᵀ from the SVD G = UΣVᵀ (the parameter-space Procrustes solution), s from σ²,
    r the numerical rank of the normalised Gramian at G's round-off unless given."""
    U, sigma, Vt = np.linalg.svd(G, full_matrices=False)
    lam = sigma**2
    r = default_rank(G) if rank is None else rank
    # median: the lower one for an even count (torch.median in the official code)
    s = {"min": lam[r - 1], "median": lam[r // 2], "rmse": lam[:r].mean()}[scale_mode]
    return np.sqrt(s) * U[:, :r] @ Vt[:r]


def default_rank(G: np.ndarray) -> int:
    """The rank aligned_mtl keeps by default: eigenvalues of D⁻¹KD⁻¹ above 4·m·ρ of the system."""
    return numerical_rank(G @ G.T, mtlsolve.GradientSystem(G).roundoff)


@pytest.mark.parametrize(
    ("G", "expected"),
    [(O, (0.5, 0.5)), (C, (0.1382, 0.41459)), (N, (0.41459, 0.1382)), (J1, (0.21328, 0.96733, 0.96733))],
    ids=["O", "C", "N", "J1"],
)
def test_worked_vectors(G, expected):
    np.testing.assert_allclose(AlignedMTL()(np.array(G)).direction, expected, atol=5e-6)
    np.testing.assert_allclose(AlignedMTL(reduction="sum")(np.array(G)).direction, 2 * np.array(expected), atol=1e-5)


def test_official_code_sum_convention():
    r = AlignedMTL(reduction="sum")(np.array(J1))
    np.testing.assert_allclose(r.weights, [1.11814, 0.81652], atol=5e-6)
    np.testing.assert_allclose(r.direction, [0.42656, 1.93467, 1.93467], atol=5e-6)
    np.testing.assert_allclose(AlignedMTL(task_weights=[1, 1])(np.array(J1)).weights, r.weights, rtol=1e-12)


def test_rank_deficient_vector():
    G = np.array(RANK_DEFICIENT)
    r = AlignedMTL(reduction="sum")(G)
    np.testing.assert_allclose(r.weights, [0.26833, 0.53666, 1.0], atol=5e-6)
    np.testing.assert_allclose(r.direction, [1.34164, 1.0, 0.0], atol=5e-6)
    assert r.diagnostics["rank"] == 2 and r.diagnostics["scale"] == pytest.approx(1.0)
    B, s, lam = balance_matrix(G @ G.T)
    np.testing.assert_allclose(lam, [1.0, 5.0], rtol=1e-12)
    np.testing.assert_allclose(B, [[0.0894, 0.1789, 0], [0.1789, 0.3578, 0], [0, 0, 1]], atol=5e-5)
    # BKB = s·P_range, and α = Bw lies in range(K)
    K = G @ G.T
    P = K @ np.linalg.pinv(K)
    np.testing.assert_allclose(B @ K @ B, s * P, atol=1e-12)


def test_random_3x50_aligned_gramian_is_sigma_min_squared_identity():
    rng = np.random.default_rng(0)
    G = rng.standard_normal((3, 50))
    B, s, _ = balance_matrix(G @ G.T)
    aligned = B @ G
    sigma_min = np.linalg.svd(G, compute_uv=False).min()
    np.testing.assert_allclose(aligned @ aligned.T, sigma_min**2 * np.eye(3), atol=1e-6 * sigma_min**2)


@pytest.mark.parametrize("scale_mode", ["min", "median", "rmse"])
@pytest.mark.parametrize(("m", "n"), [(2, 5), (4, 4), (6, 30), (8, 3), (10, 10)])
def test_aligned_gramian_and_svd_transcription(scale_mode, m, n):
    rng = np.random.default_rng(m * 31 + n)
    for _ in range(10):
        G = rng.standard_normal((m, n)) * rng.uniform(0.1, 10.0, size=(m, 1))
        w = rng.uniform(0.0, 1.0, m)
        r = AlignedMTL(scale_mode=scale_mode, task_weights=w)(G)
        rank, s = r.diagnostics["rank"], r.diagnostics["scale"]
        assert rank == default_rank(G) == min(m, n)
        assert r.diagnostics["converged"] and r.diagnostics["residual"] <= r.diagnostics["tolerance"]
        B, _, _ = balance_matrix(G @ G.T, scale_mode=scale_mode)
        np.testing.assert_allclose(r.weights, B @ w, rtol=1e-12)
        # BKB = s·I_r on range(K), to the accuracy an eigendecomposition of K allows (ε·κ(K))
        K = G @ G.T
        lam, V = np.linalg.eigh(K)
        Vr = V[:, -rank:]
        np.testing.assert_allclose(B @ K @ B, s * Vr @ Vr.T, atol=1e-12 * s * max(1.0, lam[-1] / lam[-rank]))
        np.testing.assert_allclose(r.direction, aligned_by_svd(G, scale_mode).T @ w, rtol=1e-8, atol=1e-10)


def test_scale_modes_on_orthogonal_gradients():
    # λ = 1, 4, 9, 16: s = 1 (min), 4 (lower median, torch.median), 7.5 (mean); Ĝ = √s·I
    G = np.diag([1.0, 2.0, 3.0, 4.0])
    for mode, s in (("min", 1.0), ("median", 4.0), ("rmse", 7.5)):
        r = AlignedMTL(scale_mode=mode, reduction="sum")(G)
        assert r.diagnostics["scale"] == pytest.approx(s)
        np.testing.assert_allclose(r.direction, np.full(4, np.sqrt(s)), rtol=1e-12)


def test_independent_of_eigenvector_signs_and_basis(monkeypatch):
    rng = np.random.default_rng(1)
    # repeated eigenvalues of K and of its normalised form: two orthogonal pairs of equal norms plus one more
    Q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    K = Q @ np.diag([1.0, 1.0, 4.0, 4.0, 9.0]) @ Q.T
    expected, s, _ = balance_matrix(K)
    true_eigh = np.linalg.eigh

    def twisted_eigh(A):
        """Random signs, and a random rotation inside each cluster of equal eigenvalues."""
        lam, V = true_eigh(A)
        V = V * rng.choice([-1.0, 1.0], size=len(lam))
        start = 0
        for stop in range(1, len(lam) + 1):
            if stop == len(lam) or lam[stop] - lam[start] > 1e-12 * max(abs(lam[-1]), 1.0):
                if stop - start > 1:
                    R, _ = np.linalg.qr(rng.standard_normal((stop - start, stop - start)))
                    V[:, start:stop] = V[:, start:stop] @ R
                start = stop
        return lam, V

    monkeypatch.setattr(aligned_mtl.np.linalg, "eigh", twisted_eigh)
    for _ in range(5):
        B, s2, _ = balance_matrix(K)
        np.testing.assert_allclose(B, expected, atol=1e-12)
        assert s2 == pytest.approx(s) == pytest.approx(1.0)


def test_single_task_is_unchanged():
    g = np.array([[3.0, -1.0, 2.0]])
    for reduction in ("mean", "sum"):
        r = AlignedMTL(reduction=reduction)(g)
        np.testing.assert_allclose(r.weights, [1.0], rtol=1e-12)
        np.testing.assert_allclose(r.direction, g[0], rtol=1e-12)


def test_zero_system_and_zero_rows():
    r = AlignedMTL()(np.zeros((3, 4)))
    np.testing.assert_array_equal(r.weights, 0.0)
    np.testing.assert_array_equal(r.direction, 0.0)
    assert r.diagnostics["rank"] == 0
    G = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 2.0]])
    r = AlignedMTL(reduction="sum")(G)
    # the zero row spans the null space of K: its weight is dropped; the others are O's aligned system
    np.testing.assert_allclose(r.weights, [1.0, 0.0, 0.5], rtol=1e-12)
    np.testing.assert_allclose(r.direction, [1.0, 1.0], rtol=1e-12)


def test_rank_tolerance():
    G = np.diag([1.0, 1e-4])  # orthogonal rows: rank 2 at any precision (the normalised Gramian is I)
    for X in (G, G.astype(np.float32)):
        r = AlignedMTL(reduction="sum")(X)
        assert r.diagnostics["rank"] == 2 and r.diagnostics["converged"]
        np.testing.assert_allclose(r.direction, [1e-4, 1e-4], rtol=1e-6)
    assert r.diagnostics["condition_number"] == pytest.approx(1e8, rel=1e-6)
    # rank_tol drops eigenvalues of K relative to λ_max (the official code's m·ε_float32)
    assert AlignedMTL(rank_tol=2 * np.finfo(np.float32).eps)(G).diagnostics["rank"] == 1


def test_permutation_equivariant_and_positive_homogeneous():
    rng = np.random.default_rng(2)
    G = rng.standard_normal((5, 7))
    perm = rng.permutation(5)
    r = AlignedMTL()(G)
    np.testing.assert_allclose(AlignedMTL()(G[perm]).weights, r.weights[perm], rtol=1e-9)
    np.testing.assert_allclose(AlignedMTL()(4.0 * G).direction, 4.0 * r.direction, rtol=1e-9)


def test_validation():
    with pytest.raises(ValueError):
        AlignedMTL(scale_mode="max")
    with pytest.raises(ValueError):
        AlignedMTL(rank_tol=-1.0)
    with pytest.raises(ValueError):
        AlignedMTL(task_weights=[1.0, np.nan])
    with pytest.raises(mtlsolve.InvalidSystemError):
        AlignedMTL(task_weights=[0.5, 0.5])(np.eye(3))


@pytest.mark.parametrize(("backend", "dtype"), list(itertools.product(["numpy", "torch"], ["float32", "float64"])))
def test_backends_and_dtypes_agree(backend, dtype):
    rng = np.random.default_rng(3)
    G = rng.standard_normal((4, 9))
    reference = AlignedMTL()(G).direction
    X = G.astype(dtype) if backend == "numpy" else torch.tensor(G, dtype=getattr(torch, dtype))
    d = AlignedMTL()(X).direction
    assert type(d) is type(X) and d.dtype == X.dtype
    tol = 1e-4 if dtype == "float32" else 1e-10
    np.testing.assert_allclose(np.asarray(d, dtype=np.float64), reference, rtol=tol, atol=tol)


def test_registry_names():
    for name in ("amtl", "Aligned_MTL", "AlignedMTL", "aligned", "aligned-mtl"):
        assert isinstance(mtlsolve.get(name), AlignedMTL)
    assert mtlsolve.from_config({"name": "amtl", "reduction": "sum"}).reduction == "sum"

"""IMTL-G (docs/methods.md#imtl_g, worked vectors): Gramian form against the paper's closed form on G."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import mtlsolve
from mtlsolve.errors import ConvergenceWarning
from mtlsolve.plugins.gramian.imtl_g import IMTLG

O = [[1.0, 0.0], [0.0, 2.0]]
C = [[1.0, 0.0], [-1.0, 1.0]]
N = [[1.0, 0.0], [1.0, 1.0]]
J1 = [[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]]


def closed_form(G: np.ndarray) -> np.ndarray:
    """nash-mtl / LibMTL IMTL-G: α_{2:m} = g_1ᵀUᵀ(DUᵀ)⁻¹ (rows of D: g_1 − g_i; of U: u_1 − u_i),
    α_1 = 1 − Σα_{2:m}."""
    u = G / np.linalg.norm(G, axis=1, keepdims=True)
    D = G[:1] - G[1:]
    U = u[:1] - u[1:]
    rest = G[0] @ U.T @ np.linalg.inv(D @ U.T)
    return np.concatenate([[1.0 - rest.sum()], rest])


def projections_on_unit_gradients(G: np.ndarray, d: np.ndarray) -> np.ndarray:
    return (G / np.linalg.norm(G, axis=1, keepdims=True)) @ d


@pytest.mark.parametrize(
    ("G", "expected"),
    [(O, (2 / 3, 2 / 3)), (C, (0.17157, 0.41421)), (N, (1, 0.41421)), (J1, (0.0767, 1, 1))],
    ids=["O", "C", "N", "J1"],
)
def test_worked_vectors(G, expected):
    r = IMTLG()(np.array(G))
    np.testing.assert_allclose(r.direction, expected, atol=5e-6)
    assert r.weights.sum() == pytest.approx(1.0)


def test_orthogonal_weights():
    np.testing.assert_allclose(IMTLG()(np.array(O)).weights, [2 / 3, 1 / 3], rtol=1e-12)


@pytest.mark.parametrize(("m", "n"), [(2, 3), (3, 3), (4, 9), (7, 12), (10, 40)])
def test_equal_projections_and_closed_form(m, n):
    rng = np.random.default_rng(10 * m + n)
    for _ in range(25):
        G = rng.standard_normal((m, n)) * rng.uniform(0.1, 10.0, size=(m, 1)) + rng.standard_normal(n)
        r = IMTLG()(G)
        assert r.weights.sum() == pytest.approx(1.0, abs=1e-10)
        p = projections_on_unit_gradients(G, r.direction)
        np.testing.assert_allclose(p, p[0], rtol=1e-8)
        np.testing.assert_allclose(r.weights, closed_form(G), rtol=1e-7, atol=1e-9 * np.abs(r.weights).max())


def test_dependent_rows_keep_equal_projections():
    # duplicates and positive multiples keep n in range(K): the pseudo-inverse still equalises u_i·d
    rng = np.random.default_rng(1)
    for _ in range(20):
        base = rng.standard_normal((3, 6))
        G = np.vstack([base, base[0], 2.5 * base[1], base[2]])
        r = IMTLG()(G)
        assert r.diagnostics["rank"] == 3
        assert r.weights.sum() == pytest.approx(1.0, abs=1e-10)
        p = projections_on_unit_gradients(G, r.direction)
        np.testing.assert_allclose(p, p[0], rtol=1e-7)


def test_zero_gradients_give_finite_output():
    with pytest.warns(ConvergenceWarning, match="zero update"):
        r = IMTLG()(np.zeros((3, 2)))
    np.testing.assert_array_equal(r.weights, 0.0)
    np.testing.assert_array_equal(r.direction, 0.0)
    assert r.diagnostics["degenerate"]
    # a single zero row gets weight 0; the others are C's solution
    r = IMTLG()(np.array([[1.0, 0.0], [0.0, 0.0], [-1.0, 1.0]]))
    np.testing.assert_allclose(r.weights, [0.58578644, 0.0, 0.41421356], atol=1e-8)
    np.testing.assert_allclose(r.direction, [0.17157, 0.41421], atol=5e-6)


def test_vanishing_normaliser_gives_zero_weights():
    # unit gradients with cosine matrix K̄ and v = K̄⁻¹1 = (44, −10, 45)/63; norms n = (1, 10/89, 1)
    # make 1ᵀK⁻¹n = Σ v_i/n_i = 0 exactly, so α = K⁻¹n/(1ᵀK⁻¹n) is unbounded
    U = np.array([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.6, 0.6, np.sqrt(0.28)]])
    np.testing.assert_allclose(np.linalg.solve(U @ U.T, np.ones(3)), np.array([44, -10, 45]) / 63)
    G = np.diag([1.0, 10 / 89, 1.0]) @ U
    for scale in (1e-3, 1.0, 1e4):
        with pytest.warns(ConvergenceWarning, match="zero update"):
            r = IMTLG()(scale * G)
        assert r.diagnostics["degenerate"] and not r.diagnostics["converged"]
        np.testing.assert_array_equal(r.weights, 0.0)
    # one part in 10⁶ away the weights are large but the method's own
    G[1] *= 1 + 1e-6
    r = IMTLG()(G)
    assert not r.diagnostics["degenerate"]
    np.testing.assert_allclose(r.weights, closed_form(G), rtol=1e-5)


def test_ridge_option():
    rng = np.random.default_rng(2)
    G = rng.standard_normal((4, 6))
    np.testing.assert_allclose(IMTLG(singular="ridge")(G).weights, IMTLG()(G).weights, rtol=1e-6)
    # singular K: the ridge keeps the output finite and still sums to 1
    r = IMTLG(singular="ridge")(np.vstack([G, G[0]]))
    assert np.isfinite(r.weights).all() and r.weights.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        IMTLG(singular="lstsq")
    with pytest.raises(ValueError):
        IMTLG(ridge=0.0)


def test_permutation_equivariant_and_positive_homogeneous():
    rng = np.random.default_rng(3)
    G = rng.standard_normal((5, 8))
    perm = rng.permutation(5)
    r = IMTLG()(G)
    np.testing.assert_allclose(IMTLG()(G[perm]).weights, r.weights[perm], rtol=1e-9)
    np.testing.assert_allclose(IMTLG()(7.0 * G).direction, 7.0 * r.direction, rtol=1e-9)


def test_log_transform_uses_log_gradients():
    rng = np.random.default_rng(4)
    G = rng.standard_normal((3, 5))
    L = rng.uniform(0.5, 2.0, 3)
    d = mtlsolve.get("log_imtl")(G, losses=L).direction
    np.testing.assert_allclose(d, IMTLG()(G / L[:, None]).direction, rtol=1e-10)


@pytest.mark.parametrize(("backend", "dtype"), list(itertools.product(["numpy", "torch"], ["float32", "float64"])))
def test_backends_and_dtypes_agree(backend, dtype):
    rng = np.random.default_rng(5)
    G = rng.standard_normal((4, 7))
    reference = IMTLG()(G).direction
    X = G.astype(dtype) if backend == "numpy" else torch.tensor(G, dtype=getattr(torch, dtype))
    d = IMTLG()(X).direction
    assert type(d) is type(X) and d.dtype == X.dtype
    tol = 1e-4 if dtype == "float32" else 1e-10
    np.testing.assert_allclose(np.asarray(d, dtype=np.float64), reference, rtol=tol, atol=tol)


def test_registry_names():
    for name in ("imtl", "IMTL-G", "IMTLG", "imtl_g"):
        solver = mtlsolve.get(name)
        assert isinstance(solver, IMTLG) and solver.loss_transform is None
    assert mtlsolve.get("log_imtl").loss_transform == "log"

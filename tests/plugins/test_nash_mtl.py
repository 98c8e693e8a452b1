"""Nash-MTL (docs/methods.md#nash_mtl, worked vectors): α > 0 with α_i(Kα)_i = 1, d = Gᵀα."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import scipy.optimize
import torch

import mtlsolve
from mtlsolve.errors import ConvergenceWarning
from mtlsolve.plugins.gramian.nash_mtl import NashMTL
from torchjd_reference import ClarabelNashMTLWeighting

O = [[1.0, 0.0], [0.0, 2.0]]
C = [[1.0, 0.0], [-1.0, 1.0]]
N = [[1.0, 0.0], [1.0, 1.0]]
J1 = [[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]]


def random_systems(seed: int, count: int = 30):
    """Well-posed G (0 ∉ conv{g_i}) with m ∈ {2, 3, 5, 10, 40}, unequal row norms and conflicts
    (rows only share a positive component along e_1); every third one rank-deficient (n < m)."""
    rng = np.random.default_rng(seed)
    for k in range(count):
        m = int(rng.choice([2, 3, 5, 10, 40]))
        n = int(rng.integers(1, m)) if k % 3 == 2 and m > 2 else m + int(rng.integers(0, 2 * m))
        G = rng.standard_normal((m, n))
        G[:, 0] = np.abs(G[:, 0]) + 0.1
        yield G * rng.uniform(0.2, 5.0, (m, 1))


def clip(d: np.ndarray, max_norm: float = 1.0) -> np.ndarray:
    """The reference's max-norm clipping of the shared update (an adapter option in mtlsolve)."""
    norm = np.linalg.norm(d)
    return d * (max_norm / norm) if norm > max_norm else d


@pytest.mark.parametrize(
    ("G", "alpha", "d", "clipped"),
    [
        (O, (1.0, 0.5), (1.0, 1.0), (0.70711, 0.70711)),
        (C, (1.84776, 1.30656), (0.5412, 1.30656), (0.38268, 0.92388)),
        (N, (0.76537, 0.5412), (1.30656, 0.5412), (0.92388, 0.38268)),
        (J1, (0.59146, 0.40707), (0.07658, 0.99853, 0.99853), (0.05415, 0.70607, 0.70607)),
    ],
    ids=["O", "C", "N", "J1"],
)
def test_worked_vectors(G, alpha, d, clipped):
    """Unclipped α and d (d from the fairgrad α = 1 row, which equals Nash-MTL), and d clipped to
    norm 1 as the reference does. On C the reference fails and returns α = (1, 1); we do not."""
    r = NashMTL()(np.array(G))
    np.testing.assert_allclose(r.weights, alpha, atol=5e-6)
    np.testing.assert_allclose(r.direction, d, atol=5e-6)
    np.testing.assert_allclose(clip(r.direction), clipped, atol=5e-6)
    assert r.diagnostics["converged"]


def test_fixed_point_and_products():
    """α_i(Kα)_i = 1 to 1e-6 (1e-10 by construction), hence g_i·d = 1/α_i > 0."""
    for G in random_systems(1, count=40):
        r = NashMTL()(G)
        alpha, d = r.weights, r.direction
        assert (alpha > 0).all() and r.diagnostics["converged"]
        np.testing.assert_allclose(alpha * (G @ G.T @ alpha), 1.0, atol=1e-10)
        np.testing.assert_allclose(G @ d, 1.0 / alpha, rtol=1e-9)


def test_equals_fairgrad_formulation():
    """FairGrad with α = 1 solves Kw = w⁻¹ by bounded least squares from w = 1/m (LibMTL, TorchJD);
    here with scipy's least_squares: the same weights (the weights equal fairgrad(alpha=1), Ban & Ji, arXiv 2402.15638)."""
    for G in random_systems(2, count=20):
        K = G @ G.T
        m = len(K)
        fair = scipy.optimize.least_squares(
            lambda w: K @ w - 1.0 / w, np.full(m, 1.0 / m), bounds=(1e-12, np.inf), xtol=1e-15, ftol=1e-15, gtol=1e-15
        ).x
        np.testing.assert_allclose(NashMTL()(G).weights, fair, rtol=1e-6)


def test_orthogonal_closed_form_scale_invariance_and_permutation():
    """Orthogonal gradients of norms n_i: w_i = 1/n_i; d(cG) = d(G); permuting permutes α."""
    rng = np.random.default_rng(3)
    for m in (1, 2, 5, 20):
        norms = 10.0 ** rng.uniform(-2, 2, m)
        G = np.linalg.qr(rng.standard_normal((m + 3, m)))[0].T * norms[:, None]
        np.testing.assert_allclose(NashMTL()(G).weights, 1.0 / norms, rtol=1e-10)
    for G in random_systems(4, count=10):
        r = NashMTL()(G)
        for c in (1e-4, 3.0, 1e4):
            np.testing.assert_allclose(NashMTL()(c * G).direction, r.direction, rtol=1e-9, atol=1e-12)
        perm = rng.permutation(len(G))
        np.testing.assert_allclose(NashMTL()(G[perm]).weights, r.weights[perm], rtol=1e-9)


def test_update_every_and_warm_start_state():
    """α is recomputed every ``update_weights_every`` calls and reused in between; the state holds
    the last α (the warm start) and the step count."""
    G = list(random_systems(5, count=6))
    G = [G[0] * (1 + 0.05 * k) for k in range(6)]  # one problem drifting in scale
    solver = NashMTL(update_weights_every=3)
    results = [solver(X) for X in G]
    assert [r.diagnostics["updated"] for r in results] == [True, False, False, True, False, False]
    np.testing.assert_array_equal(results[1].weights, results[0].weights)
    np.testing.assert_allclose(results[3].weights, NashMTL()(G[3]).weights, rtol=1e-9)
    assert solver.state_dict()["step"] == 6
    np.testing.assert_array_equal(solver.state_dict()["alpha"], results[3].weights)


def test_state_dict_round_trip_and_reset():
    rng = np.random.default_rng(6)
    G0, E = rng.standard_normal((2, 5, 7))
    G0[:, 0] = np.abs(G0[:, 0]) + 1.0
    seq = [G0 + 0.05 * k * E for k in range(6)]  # one problem drifting over six steps
    solver = NashMTL()
    for X in seq[:3]:
        solver(X)
    snapshot = pickle.loads(pickle.dumps(solver.state_dict()))
    expected = [solver(X) for X in seq[3:]]
    copy = NashMTL()
    copy.load_state_dict(snapshot)
    for a, b in zip((copy(X) for X in seq[3:]), expected):
        np.testing.assert_array_equal(a.weights, b.weights)
        np.testing.assert_array_equal(a.direction, b.direction)
    with pytest.raises(mtlsolve.InvalidSystemError):  # m changes: the state must be reset first
        solver(np.array(J1))
    solver.reset()
    assert solver.state_dict() == {}
    solver(np.array(J1))
    assert solver.state_dict()["step"] == 1 and solver.state_dict()["m"] == 2


def test_failures_keep_the_previous_alpha_or_give_zero():
    """No α exists when 0 ∈ conv{g_i}: the first step gives α = 0 (d = 0); a later failing step keeps
    the previous α; both say so in the diagnostics; nothing is NaN."""
    bad = [np.array([[1.0, 2.0], [-2.0, -4.0]]), np.array([[1.0, 2.0], [0.0, 0.0]]), np.zeros((2, 2))]
    for G in bad:
        solver = NashMTL()
        with pytest.warns(ConvergenceWarning, match="zero update"):
            r = solver(G)
        assert not r.diagnostics["converged"] and "no solution" in r.diagnostics["message"]
        assert r.diagnostics["fallback"] == "zero update" and r.diagnostics["no_solution"]
        np.testing.assert_array_equal(r.weights, 0.0)
        np.testing.assert_array_equal(r.direction, 0.0)
        good = solver(np.array(O))
        assert good.diagnostics["converged"]
        with pytest.warns(ConvergenceWarning, match="previous weights"):
            r = solver(G)
        assert "kept the previous" in r.diagnostics["message"] and r.diagnostics["fallback"] == "previous weights"
        np.testing.assert_array_equal(r.weights, good.weights)
    G = np.array([[1.0, 0.0, 0.0], [-0.5, 1.0, 0.0], [0.2, -0.7, 2.0]])
    with pytest.warns(ConvergenceWarning):
        r = NashMTL(max_iter=1)(G)  # not converged in one Newton step: also a failure
    assert not r.diagnostics["converged"] and "iteration cap" in r.diagnostics["message"]
    np.testing.assert_array_equal(r.weights, 0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_and_numpy_agree(dtype):
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    for G in random_systems(9, count=12):
        if G.shape[1] < G.shape[0]:
            continue  # float32 comparisons need a well-conditioned system
        ref = NashMTL()(G)
        for X in (torch.from_numpy(G).to(dtype), G.astype(np.float32 if dtype == torch.float32 else np.float64)):
            r = NashMTL()(X)
            assert type(r.direction) is type(X) and r.direction.dtype == X.dtype and r.weights.dtype == X.dtype
            np.testing.assert_allclose(np.asarray(r.weights, dtype=np.float64), ref.weights, rtol=tol)
            np.testing.assert_allclose(np.asarray(r.direction, dtype=np.float64), ref.direction, rtol=tol, atol=tol)


@pytest.mark.filterwarnings("ignore:You are solving a parameterized problem that is not DPP")
def test_matches_torchjd():
    """torchjd 0.18.0 ``NashMTL(n_tasks, max_norm=1.0, update_weights_every=1, optim_niter=20)``:
    CCCP on K/‖K‖_F from the warm start α = 1, returning α clipped so that ‖Gᵀα‖ ≤ max_norm.
    Mapping: our α is its unclipped α (``prvs_alpha``) and clip(d) its output with max_norm = 1
    (clipping is an adapter option in mtlsolve). Its CCCP stops on an α change < 1e-6 after at
    most 20 conic solves, so it is compared to 1e-4, on the systems where its own fixed-point
    residual is below 1e-3 (it silently keeps α = 1 after a failed solve, docs/methods.md#nash_mtl)."""
    rng = np.random.default_rng(10)
    compared = 0
    for m in (2, 3, 3, 4, 5):
        for _ in range(3):
            G = rng.standard_normal((m, m + 2)) * rng.uniform(0.3, 3.0, (m, 1))
            G[:, 0] = np.abs(G[:, 0]) + 0.1
            weighting = ClarabelNashMTLWeighting(n_tasks=m, max_norm=1.0, update_weights_every=1, optim_niter=20)
            clipped_alpha = weighting(torch.from_numpy(G)).numpy()
            alpha = np.asarray(weighting.prvs_alpha, dtype=np.float64)
            if np.abs(alpha * (G @ G.T @ alpha) - 1.0).max() > 1e-3:
                continue
            compared += 1
            r = NashMTL()(G)
            np.testing.assert_allclose(r.weights, alpha, rtol=1e-4)
            np.testing.assert_allclose(clip(r.direction), clipped_alpha @ G, rtol=1e-4, atol=1e-4)
    assert compared >= 12


def test_registry_names():
    for name in ("nash_mtl", "nashmtl", "nash", "Nash_MTL", "NashMTL", "nash-mtl"):
        assert type(mtlsolve.get(name)) is NashMTL
    solver = mtlsolve.from_config({"name": "nash_mtl", "update_weights_every": 2, "max_iter": 50})
    assert (solver.update_weights_every, solver.max_iter) == (2, 50)
    with pytest.raises(mtlsolve.InvalidConfigError):
        mtlsolve.get("nash_mtl", update_weights_every=0)

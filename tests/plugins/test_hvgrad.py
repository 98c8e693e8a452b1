"""HVGrad (docs/methods.md#hvgrad): the exact hypervolume gradient against finite
differences of mtlsolve.metrics.hypervolume (2-D and 3-D), hand-computed 2-D values, the
non-dominated layers, zero weight outside the reference box, and a population on the convex
companion (docs/problems.md#fonseca-problems) whose hypervolume does not decrease.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mtlsolve
from mtlsolve.errors import InvalidSystemError
from mtlsolve.metrics import hypervolume
from mtlsolve.plugins.pareto.hvgrad import HVGrad, hypervolume_gradient, nondominated_layers, population_weights
from mtlsolve.problems import fonseca_convex


def test_registration():
    for name in ("hvgrad", "HVGrad", "hv_grad"):
        assert type(mtlsolve.get(name)) is HVGrad
    assert HVGrad.family == "PA" and HVGrad.stateful


@pytest.mark.parametrize("d", [1, 2, 3])
def test_gradient_matches_finite_differences(d):
    """Central differences would straddle kinks; the gradient is the one-sided derivative for a
    decrease of p_i, so it is compared with (HV(p − δe_i) − HV(p))/δ on random populations
    (points inside and outside the box, dominated ones included)."""
    rng = np.random.default_rng(d)
    r = np.ones(d)
    delta = 1e-7
    for _ in range(40):
        P = rng.uniform(0.0, 1.2, (int(rng.integers(1, 8)), d))
        grad = hypervolume_gradient(P, r)
        base = hypervolume(P, r)
        for k in range(len(P)):
            for i in range(d):
                Q = P.copy()
                Q[k, i] -= delta
                fd = -(hypervolume(Q, r) - base) / delta
                assert grad[k, i] == pytest.approx(fd, abs=1e-6)


def test_two_d_by_hand():
    """Front (1, 3), (2, 2), (3, 1) with r = (4, 4): ∂HV/∂f1(p_j) = −(f2(p_{j−1}) − f2(p_j)) with
    f2(p_0) = r2, ∂HV/∂f2(p_j) = −(f1(p_{j+1}) − f1(p_j)) with f1(p_4) = r1; the dominated point
    (2.5, 2.5) and the point (5, 0) outside the box get 0 (docs/problems.md#hypervolume test vectors)."""
    P = np.array([[1, 3], [2, 2], [3, 1], [2.5, 2.5], [5, 0]], dtype=float)
    expected = -np.array([[1, 1], [1, 1], [1, 1], [0, 0], [0, 0]], dtype=float)
    np.testing.assert_array_equal(hypervolume_gradient(P, [4, 4]), expected)
    np.testing.assert_array_equal(hypervolume_gradient([[1.0, 2.0]], [4, 4]), [[-2.0, -3.0]])


def test_layers():
    P = np.array([[1, 3], [2, 2], [3, 1], [2.5, 2.5], [3, 3], [2, 2], [4, 4]], dtype=float)
    np.testing.assert_array_equal(nondominated_layers(P), [0, 0, 0, 1, 2, 0, 3])


def test_population_weights_fronts_and_box():
    """Layer by layer (HIGA-MO) the dominated point (2.5, 2.5) gets the gradient of its own layer;
    with fronts=False it gets 0; outside the box always 0; normalised rows have unit norm."""
    P = np.array([[1, 3], [2, 2], [3, 1], [2.5, 2.5], [5, 0], [3.5, 4.0]], dtype=float)
    r = np.array([4.0, 4.0])
    W = population_weights(P, r, normalize=False)
    np.testing.assert_array_equal(W[:3], 1.0)
    np.testing.assert_array_equal(W[3], [1.5, 1.5])
    np.testing.assert_array_equal(W[4:], 0.0)
    np.testing.assert_array_equal(population_weights(P, r, fronts=False, normalize=False)[3], 0.0)
    Wn = population_weights(P, r)
    np.testing.assert_allclose(np.linalg.norm(Wn[:4], axis=1), 1.0, rtol=1e-15)
    np.testing.assert_array_equal(Wn[4:], 0.0)


def test_solver_reads_the_population():
    P = np.array([[1, 3], [2, 2], [3, 1], [2.5, 2.5], [5, 0]], dtype=float)
    G = np.array([[1.0, 0.5], [-0.2, 1.0]])
    for k in range(len(P)):
        r = HVGrad(index=k, reference=(4, 4), normalize=False)(G, losses=P[k], population=P)
        np.testing.assert_array_equal(r.weights, population_weights(P, np.array([4.0, 4.0]), normalize=False)[k])
        np.testing.assert_allclose(r.direction, G.T @ r.weights)
        assert r.diagnostics["hypervolume"] == pytest.approx(6.0)
    # row k of the population is the system's losses
    moved = HVGrad(index=1, reference=(4, 4), normalize=False)(G, losses=[2.0, 1.5], population=P)
    # (2, 1.5) between (1, 3) and (3, 1): −∂HV/∂f1 = 3 − 1.5, −∂HV/∂f2 = 3 − 2
    np.testing.assert_array_equal(moved.weights, [1.5, 1.0])
    Q = P.copy()
    Q[1] = [2.0, 1.5]
    np.testing.assert_array_equal(moved.weights, population_weights(Q, np.array([4.0, 4.0]), normalize=False)[1])


def test_default_reference_is_fixed_at_the_first_call():
    P = np.array([[1.0, 3.0], [2.0, 2.0]])
    solver = HVGrad(index=0)
    first = solver(np.eye(2), losses=P[0], population=P)
    assert first.diagnostics["reference"] == pytest.approx([2.2, 3.3])
    later = solver(np.eye(2), losses=[5.0, 5.0], population=P * 3)  # now outside the fixed box
    assert later.diagnostics["reference"] == pytest.approx([2.2, 3.3])
    assert (later.weights == 0).all()
    state = solver.state_dict()
    copy = HVGrad(index=0)
    copy.load_state_dict(state)
    assert copy(np.eye(2), losses=P[0], population=P).diagnostics["reference"] == pytest.approx([2.2, 3.3])


def test_validation():
    G = np.eye(2)
    with pytest.raises(InvalidSystemError, match="out of range"):
        HVGrad(index=3)(G, losses=[1.0, 1.0], population=np.ones((2, 2)))
    with pytest.raises(InvalidSystemError, match="K x 2"):
        HVGrad()(G, losses=[1.0, 1.0], population=np.ones((2, 3)))
    with pytest.raises(InvalidSystemError, match="entries"):
        HVGrad(reference=(1, 1, 1))(G, losses=[1.0, 1.0])
    with pytest.raises(InvalidSystemError, match="losses"):
        HVGrad()(G)
    with pytest.raises(ValueError):
        HVGrad(index=-1)


def test_population_on_the_convex_companion():
    """K = 6 models, r = (1, 1), plain steps x ← x − 0.02·d: the population's HV never decreases
    by more than 1e-9 per step (observed: it increases at every step), ends well above its start,
    every model ends near the front, and a model started outside the box never moves."""
    K = 6
    X = np.random.default_rng(1).uniform(-0.3, 0.3, (K, 10))
    X[5] = 1.0  # f = (‖1 − 1/√10‖²/4, ‖1 + 1/√10‖²/4) = (1.17, 4.33): outside the box
    start_outside = X[5].copy()
    solvers = [HVGrad(index=k, reference=(1.0, 1.0)) for k in range(K)]
    hvs = []
    for _ in range(400):
        x = torch.tensor(X, requires_grad=True)
        F = fonseca_convex(x)
        J = torch.stack([torch.autograd.grad(F[:, i].sum(), x, retain_graph=True)[0] for i in range(2)], 1).numpy()
        F = F.detach().numpy()
        hvs.append(hypervolume(F, [1.0, 1.0]))
        results = [s(J[k], losses=F[k], population=F) for k, s in enumerate(solvers)]
        assert (results[5].weights == 0).all()
        X = X - 0.02 * np.stack([res.direction for res in results])
    F = fonseca_convex(torch.tensor(X)).numpy()
    assert np.diff(hvs).min() >= -1e-9
    assert hvs[-1] > hvs[0] + 0.15
    np.testing.assert_allclose(np.sqrt(F[:5]).sum(axis=1), 1.0, atol=1e-2)
    np.testing.assert_array_equal(X[5], start_outside)

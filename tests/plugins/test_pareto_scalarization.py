"""Pareto scalarisations (docs/methods.md#pareto-methods): tchebycheff, mtche, pbi.

Weights are the gradient of the scalarisation in L (checked against autograd of the formula
written here and against torchjd 0.18.0's PBI); the minimisers on the convex companion
problem (docs/problems.md#fonseca-problems) are reached by plain gradient steps on Σ w_i f_i.
"""

from __future__ import annotations

import importlib.metadata

import numpy as np
import pytest
import torch
import torchjd.scalarization as tjd

from mtlsolve.errors import InvalidSystemError
from mtlsolve.plugins.pareto.pbi import PBI
from mtlsolve.plugins.pareto.tchebycheff import ModifiedTchebycheff, Tchebycheff
from mtlsolve.problems import fonseca_convex
from mtlsolve.registry import Registry
from mtlsolve.solver import Need

F64 = torch.float64
#: the convex companion's front point on the ray f ∥ (1, 2): √f1 (1 + √2) = 1
RAY_1_2 = (1 / (1 + np.sqrt(2)) ** 2, 2 / (1 + np.sqrt(2)) ** 2)


def t(values) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.float64))


def loss_grad(scalar_fn, L: np.ndarray) -> np.ndarray:
    x = torch.tensor(L, dtype=F64, requires_grad=True)
    return torch.autograd.grad(scalar_fn(x), x)[0].numpy()


def tche_formula(lam, z):
    return lambda L: (t(lam) * (L - t(z))).max()


def pbi_formula(theta, lam, z):
    """d₁ + θ d₂ written out, with the constant 1e-12 under the root of d₂ (as TorchJD)."""
    direction = t(lam) / t(lam).norm()

    def value(L):
        F = L - t(z)
        d1 = F @ direction
        p = F - d1 * direction
        return d1 + theta * torch.sqrt(p @ p + 1e-12)

    return value


def test_registration():
    eps = [ep for ep in importlib.metadata.entry_points(group="mtlsolve") if ep.name == "pareto"]
    assert eps and eps[0].value == "mtlsolve.plugins.pareto"
    registry = Registry(entry_points=lambda: eps)
    assert {"epo", "mtche", "pbi", "pmtl", "tchebycheff"} <= set(registry.available())
    for name, cls in [
        ("tche", Tchebycheff),
        ("Tche", Tchebycheff),
        ("agg_tche", Tchebycheff),
        ("mTche", ModifiedTchebycheff),
        ("agg_mtche", ModifiedTchebycheff),
        ("modified_tchebycheff", ModifiedTchebycheff),
        ("PBI", PBI),
        ("agg_pbi", PBI),
    ]:
        assert registry.resolve(name)[0].cls is cls
    for cls in (Tchebycheff, ModifiedTchebycheff, PBI):
        assert cls.family == "PA" and cls.needs == frozenset({Need.LOSSES})
    assert registry.get("pbi", theta=1).theta == 1.0


# ---------------------------------------------------------------- tchebycheff
def test_tchebycheff_weights_are_the_argmax_subgradient():
    rng = np.random.default_rng(0)
    for _ in range(20):
        m = int(rng.integers(2, 6))
        lam, z, L = rng.dirichlet(np.ones(m)), rng.normal(size=m) * 0.1, rng.uniform(0, 2, m)
        r = Tchebycheff(preference=lam, ideal=z)(losses=L)
        y = lam * (L - z)
        i = int(np.argmax(y))
        expected = np.zeros(m)
        expected[i] = lam[i]
        np.testing.assert_array_equal(r.weights, expected)  # only the arg-max task is non-zero
        np.testing.assert_allclose(r.weights, loss_grad(tche_formula(lam, z), L), rtol=1e-14)
        assert r.diagnostics["value"] == pytest.approx(y.max(), rel=1e-14)
        unweighted = Tchebycheff(preference=lam, ideal=z, weighted_value=False)(losses=L)
        np.testing.assert_array_equal(unweighted.weights, np.eye(m)[i])
        assert unweighted.diagnostics["value"] == L[i]


def test_mtche_weights():
    rng = np.random.default_rng(1)
    for _ in range(20):
        m = int(rng.integers(2, 6))
        lam, z, L = rng.uniform(0.1, 1, m), rng.normal(size=m) * 0.1, rng.uniform(0, 2, m)
        r = ModifiedTchebycheff(preference=lam, ideal=z)(losses=L)
        formula = lambda x: ((x - t(z)) / t(lam)).max()  # noqa: E731
        np.testing.assert_allclose(r.weights, loss_grad(formula, L), rtol=1e-14)
        assert np.count_nonzero(r.weights) == 1
        assert r.diagnostics["value"] == pytest.approx(float(formula(torch.tensor(L))), rel=1e-14)
    with pytest.raises(InvalidSystemError, match="> 0"):
        ModifiedTchebycheff(preference=[1.0, 0.0])(losses=[1.0, 1.0])


# ------------------------------------------------------------------------ pbi
def test_pbi_weights_value_and_torchjd():
    rng = np.random.default_rng(2)
    worst_w = worst_value = 0.0
    for _ in range(30):
        m = int(rng.integers(2, 6))
        theta = float(rng.choice([0.0, 1.0, 5.0]))
        lam, z, L = rng.dirichlet(np.ones(m)), rng.normal(size=m) * 0.1, rng.uniform(0, 2, m)
        r = PBI(theta=theta, preference=lam, ideal=z)(losses=L)
        np.testing.assert_allclose(r.weights, loss_grad(pbi_formula(theta, lam, z), L), rtol=1e-12, atol=1e-14)
        ref = tjd.PBI(theta, weights=t(lam), reference=t(z))
        worst_w = max(worst_w, np.abs(r.weights - loss_grad(ref, L)).max())
        worst_value = max(worst_value, abs(r.diagnostics["value"] - ref(torch.tensor(L)).item()))
    assert worst_w < 1e-12 and worst_value < 1e-12


def test_pbi_special_cases():
    lam, z = np.array([1.0, 2.0, 2.0]), np.array([0.1, -0.2, 0.0])
    direction = lam / 3.0
    L = np.array([0.4, 1.7, 0.3])
    # θ = 0: the projection on λ̂
    r = PBI(theta=0.0, preference=lam, ideal=z)(losses=L)
    np.testing.assert_allclose(r.weights, direction, rtol=1e-14)
    assert r.diagnostics["value"] == pytest.approx((L - z) @ direction)
    # L − z ∥ λ: d₂ = 0 (up to the constant under the root) and finite weights λ̂
    on_ray = z + 0.8 * lam
    r = PBI(preference=lam, ideal=z)(losses=on_ray)
    assert r.diagnostics["d2"] <= 1e-6 and r.diagnostics["d1"] == pytest.approx(0.8 * 3.0)
    assert np.isfinite(r.weights).all()
    np.testing.assert_allclose(r.weights, direction, atol=1e-9)


# ---------------------------------------------------------------- precedence
def test_preference_precedence_and_validation():
    L = np.array([0.3, 0.9])
    # default: uniform λ = 1/m, z = 0
    np.testing.assert_allclose(Tchebycheff()(losses=L).weights, [0.0, 0.5])
    # field over default
    np.testing.assert_allclose(Tchebycheff(preference=[4.0, 1.0])(losses=L).weights, [4.0, 0.0])
    # system extras over the field, for the preference and the ideal point
    solver = Tchebycheff(preference=[4.0, 1.0], ideal=[0.0, 0.0])
    r = solver(losses=L, preference=np.array([1.0, 1.0]), ideal=[0.0, 0.8])
    np.testing.assert_allclose(r.weights, [1.0, 0.0])
    r = PBI(preference=[1.0, 0.0])(losses=L, preference=torch.tensor([0.0, 1.0]))
    assert r.diagnostics["d1"] == pytest.approx(0.9)
    for bad in ([1.0, 1.0, 1.0], [-1.0, 2.0], [0.0, 0.0], [np.nan, 1.0]):
        with pytest.raises(InvalidSystemError):
            Tchebycheff()(losses=L, preference=bad)
    with pytest.raises(InvalidSystemError, match="entries"):
        PBI(ideal=[0.0])(losses=L)
    with pytest.raises(ValueError):
        PBI(theta=-1.0)


# ------------------------------------------------------------ convex companion
def optimise(solver, steps=300, lr=0.5, decay=0.97):
    """Gradient steps on Σ w_i f_i (w from the solver at each step) for the convex companion, n = 10,
    with a geometrically decaying step; returns the final f."""
    x = torch.linspace(-0.9, 0.7, 10, dtype=F64).requires_grad_()
    for k in range(steps):
        f = fonseca_convex(x)
        w = solver(losses=f.detach()).weights
        (g,) = torch.autograd.grad((w * f).sum(), x)
        with torch.no_grad():
            x -= lr * decay**k * g
    return fonseca_convex(x).detach().numpy()


@pytest.mark.parametrize(
    ("solver", "expected"),
    [
        (Tchebycheff(preference=(1, 1)), (0.25, 0.25)),  # the front point on the ray λ = (1, 1), z = 0
        (Tchebycheff(preference=(2, 1)), RAY_1_2),
        (ModifiedTchebycheff(preference=(1, 2)), (0.17157, 0.34315)),  # the front point on the ray λ = (1, 2)
        (PBI(preference=(1, 1)), (0.25, 0.25)),
        (PBI(preference=(1, 2)), RAY_1_2),
    ],
    ids=["tche_1_1", "tche_2_1", "mtche_1_2", "pbi_1_1", "pbi_1_2"],
)
def test_convex_companion_minimisers(solver, expected):
    f = optimise(solver)
    np.testing.assert_allclose(f, expected, atol=5e-4)
    assert np.sqrt(f).sum() == pytest.approx(1.0, abs=1e-3)  # on the front √f1 + √f2 = 1


def test_objective_gradient_matches_formula():
    """solver.objective(L(x)) back-propagates the scalarisation's gradient through a model."""
    x0 = torch.linspace(-0.5, 0.9, 10, dtype=F64)
    lam, z = (0.3, 0.7), (0.01, -0.02)
    for solver, formula in [
        (Tchebycheff(preference=lam, ideal=z), tche_formula(lam, z)),
        (ModifiedTchebycheff(preference=lam, ideal=z), lambda L: ((L - t(z)) / t(lam)).max()),
        (PBI(preference=lam, ideal=z), pbi_formula(5.0, lam, z)),
    ]:
        grads = []
        for fn in (solver.objective, formula):
            x = x0.clone().requires_grad_()
            grads.append(torch.autograd.grad(fn(fonseca_convex(x)), x)[0])
        torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-14)

"""EPO (docs/methods.md#epo): hand-solved LPs on two tasks, diagnostics, preference handling,
and the convex companion (docs/problems.md#fonseca-problems) driven by plain gradient steps along −d.

Tolerance on the convex companion: EPO switches from "balance" to "descent" once
μ = KL(l̂ ‖ 1/m) ≤ eps, and the descent LP keeps d·d_bal ≥ 0 without driving μ to 0, so the run
ends on the front at a point with μ ≤ eps, not on the ray itself. The test computes that band of
front points (f(s) = ((s−1)²/4, (s+1)²/4) with μ(s) ≤ eps) and requires the final f in it; with
eps = 1e-4 and r = (2, 1) it spans f1 ∈ [0.16875, 0.17443] (by Pinsker, |l̂ − 1/m|₁ ≤ √(2·eps)),
with eps = 1e-10 it shrinks to ±3e-6 around the exact ray point.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import entropy

import mtlsolve
from mtlsolve.errors import InvalidSystemError
from mtlsolve.plugins.pareto.epo import EPO
from mtlsolve.problems import fonseca_convex

F64 = torch.float64
O = np.array([[1.0, 0.0], [0.0, 2.0]])
C = np.array([[1.0, 0.0], [-1.0, 1.0]])


def kl_uniform(rl):
    return entropy(rl / rl.sum(), np.full(len(rl), 1.0 / len(rl)))


def test_registration():
    for name in ("epo", "EPO", "exact_pareto"):
        assert type(mtlsolve.get(name)) is EPO
    assert EPO.family == "PA" and {n.value for n in EPO.needs} == {"gramian", "losses"}


def test_descent_mode_on_the_ray():
    """L ∝ 1/r: μ = 0, so max Σ_j g_j·d over Δ₂ with g_j·d ≥ 0: all weight on the longer gradient."""
    r = EPO(preference=(1, 1))(O, losses=[1.0, 1.0])
    np.testing.assert_allclose(r.weights, [0.0, 1.0], atol=1e-15)
    np.testing.assert_allclose(r.direction, [0.0, 2.0], atol=1e-15)
    assert r.diagnostics["mode"] == "descent" and r.diagnostics["mu"] == 0.0
    r = EPO(preference=(2, 1))(O, losses=[0.5, 1.0])  # r⊙L = (1, 1)
    assert r.diagnostics["mode"] == "descent" and r.diagnostics["mu"] == pytest.approx(0.0, abs=1e-16)


def test_balance_mode_descends_the_larger_loss():
    """O, L = (2, 1), r = (1, 1): d_bal descends task 1 only (J = J* = {1}); the LP maximises
    d·d_bal with g_1·d ≥ 0 and g_2·d ≥ g_2·d_bal (< 0): α = (1, 0), d = g_1."""
    r = EPO()(O, losses=[2.0, 1.0])
    np.testing.assert_allclose(r.weights, [1.0, 0.0], atol=1e-15)
    assert r.diagnostics["mode"] == "balance"
    assert r.diagnostics["mu"] == pytest.approx(kl_uniform(np.array([2.0, 1.0])), rel=1e-13)


def test_controlled_ascent_binds():
    """C = [[1, 0], [−1, 1]], L = (1.2, 1): the LP's optimum α₁ is capped by the ascent row
    g_2·d = −α₁ + 2α₂ ≥ (Ka)_2, i.e. α₁ = (2 − (Ka)_2)/3, with a computed here from the paper's
    formula a = r⊙(log(m·l̂) − μ)."""
    L, pref = np.array([1.2, 1.0]), np.array([1.0, 1.0])
    K = C @ C.T
    lhat = pref * L / (pref * L).sum()
    mu = kl_uniform(pref * L)
    a = pref * (np.log(2 * lhat) - mu)
    Ka = K @ a
    assert Ka[0] > 0 > Ka[1]
    r = EPO(preference=pref)(C, losses=L)
    alpha1 = (2 - Ka[1]) / 3
    assert 0 < alpha1 < 1
    np.testing.assert_allclose(r.weights, [alpha1, 1 - alpha1], atol=1e-12)
    rates = C @ r.direction
    assert rates[1] == pytest.approx(Ka[1], rel=1e-10)  # task 2 ascends, at d_bal's rate
    assert rates[0] > 0


def test_single_task_zero_losses_and_zero_gradients():
    assert EPO()(np.array([[3.0, -1.0]]), losses=[0.7]).weights.tolist() == [1.0]
    r = EPO()(np.array([[1.0, 2.0], [0.5, -1.0], [0.0, 1.0]]), losses=[0.0, 0.0, 0.0])
    assert r.diagnostics["mode"] == "descent" and np.isfinite(r.weights).all()
    r = EPO()(np.zeros((3, 4)), losses=[1.0, 2.0, 3.0])
    assert (r.direction == 0).all() and np.isfinite(r.weights).all() and r.weights.sum() == pytest.approx(1.0)


def test_preference_precedence_and_validation():
    L = [2.0, 1.0]
    field = EPO(preference=(1.0, 2.0))(O, losses=L)  # r⊙L = (2, 2): on the ray
    assert field.diagnostics["mode"] == "descent"
    extra = EPO(preference=(1.0, 2.0))(O, losses=L, preference=[1.0, 1.0])  # the extras win
    assert extra.diagnostics["mode"] == "balance"
    for bad in ([1.0, 0.0], [-1.0, 2.0], [1.0, 1.0, 1.0]):
        with pytest.raises(InvalidSystemError):
            EPO()(O, losses=L, preference=bad)
    with pytest.raises(InvalidSystemError, match="non-negative losses"):
        EPO()(O, losses=[-0.1, 1.0])
    with pytest.raises(InvalidSystemError, match="losses"):
        EPO()(O)
    with pytest.raises(ValueError):
        EPO(eps=-1.0)


def test_gramian_path_equals_matrix_path():
    rng = np.random.default_rng(0)
    for _ in range(20):
        m = int(rng.integers(2, 6))
        G, L = rng.standard_normal((m, 7)), rng.uniform(0.1, 2.0, m)
        a, b = EPO()(G, losses=L), EPO()(gramian=G @ G.T, losses=L)
        np.testing.assert_allclose(a.weights, b.weights, atol=1e-12)
        assert a.diagnostics["mode"] == b.diagnostics["mode"]


# ------------------------------------------------------------ convex companion
def run(solver, steps=300, lr=0.5):
    """Plain gradient steps x ← x − lr·d on the convex companion (n = 10); returns the final f."""
    x = torch.linspace(-0.9, 0.7, 10, dtype=F64)
    for _ in range(steps):
        G = torch.func.jacrev(fonseca_convex)(x)
        x = x - lr * solver(G, losses=fonseca_convex(x)).direction
    return fonseca_convex(x).numpy()


def band(pref, eps):
    """The front points f(s) whose μ = KL(l̂ ‖ 1/2) is ≤ eps: (lowest f1, highest f1)."""
    s = np.linspace(-1, 1, 2_000_001)[1:-1]  # the open front: both losses > 0
    f = np.column_stack([(s - 1) ** 2 / 4, (s + 1) ** 2 / 4])
    rl = f * np.asarray(pref, dtype=np.float64)
    lhat = rl / rl.sum(axis=1, keepdims=True)
    mu = (lhat * np.log(2 * lhat)).sum(axis=1)
    inside = f[mu <= eps, 0]
    return inside.min(), inside.max()


@pytest.mark.parametrize("eps", [1e-4, 1e-10], ids=["default_eps", "eps_1e-10"])
@pytest.mark.parametrize(
    ("pref", "expected"),
    [((1, 1), (0.25, 0.25)), ((2, 1), (0.17157, 0.34315))],  # ray points of docs/problems.md#fonseca-problems
    ids=["r_1_1", "r_2_1"],
)
def test_convex_companion(pref, expected, eps):
    solver = EPO(preference=pref, eps=eps)
    f = run(solver)
    assert np.sqrt(f).sum() == pytest.approx(1.0, abs=1e-9)  # on the front √f1 + √f2 = 1
    assert kl_uniform(np.array(pref) * f) <= eps * (1 + 1e-6)
    low, high = band(pref, eps)
    assert low - 1e-6 <= f[0] <= high + 1e-6
    half_width = max(high - expected[0], expected[0] - low)
    np.testing.assert_allclose(f, expected, atol=half_width + 1e-5)  # the expected values have 5 decimals


def test_certificate_on_mixed_scales_and_float32():
    """Both modes report the LP certificate, certified for row norms over six decades and for
    float32 inputs (whose Gramian is repaired to its PSD part when indefinite)."""
    rng = np.random.default_rng(91)
    modes = set()
    for k in range(40):
        m = int(rng.integers(2, 7))
        G = rng.standard_normal((m, m + int(rng.integers(-1, 3)))) * 10.0 ** rng.uniform(-3, 3, (m, 1))
        r = rng.uniform(0.2, 2.0, m)
        L = (1.0 / r) * (rng.uniform(0.999, 1.001, m) if k % 2 else rng.uniform(0.3, 3.0, m))
        for X in (G, G.astype(np.float32)):
            out = EPO(preference=r)(X, losses=L)
            d = out.diagnostics
            assert d["converged"] and d["residual"] <= d["tolerance"], d
            modes.add(d["mode"])
    assert modes == {"balance", "descent"}

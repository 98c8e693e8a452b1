"""Simplex projection kernel (numba) against its cvxpy reference and the optimality conditions;
the projected momentum-SGD loop against torch.optim.SGD."""

from __future__ import annotations

import numpy as np
import torch

from mtlsolve.kernels import simplex_projection as sp


def bisection_projection(v: np.ndarray) -> np.ndarray:
    """Π_Δ(v) = max(v − θ, 0) with Σ max(v − θ, 0) = 1, θ found by bisection (another algorithm)."""
    lo, hi = v.min() - 1.0, v.max()
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if np.maximum(v - mid, 0.0).sum() > 1.0 else (lo, mid)
    return np.maximum(v - 0.5 * (lo + hi), 0.0)


def test_projection_matches_cvxpy_and_kkt():
    rng = np.random.default_rng(0)
    for k in range(150):
        m = int(rng.choice([1, 2, 3, 5, 10, 40]))
        v = rng.standard_normal(m) * 10.0 ** rng.uniform(-2, 2)
        x = sp.project_simplex(v)
        assert (x >= 0).all() and abs(x.sum() - 1.0) < 1e-12
        np.testing.assert_allclose(x, bisection_projection(v), atol=1e-12 * max(1.0, np.abs(v).max()))
        if k % 10 == 0:
            np.testing.assert_allclose(x, sp.reference_project_simplex(v), atol=1e-6)
        # KKT: x − v = θ·1 − μ with μ ≥ 0 and μ_i x_i = 0, i.e. x_i − v_i equal on the support
        # and ≥ that value off it
        gap = x - v
        theta = gap[x > 0].max()
        np.testing.assert_allclose(gap[x > 0], theta, atol=1e-12 * max(1.0, np.abs(v).max()))
        assert (gap[x == 0] >= theta - 1e-12 * max(1.0, np.abs(v).max())).all()


def test_points_of_the_simplex_are_fixed():
    rng = np.random.default_rng(1)
    for m in (1, 2, 4, 9):
        x = rng.dirichlet(np.ones(m))
        np.testing.assert_allclose(sp.project_simplex(x), x, atol=1e-15)


def test_projected_sgd_matches_torch_sgd_with_momentum():
    rng = np.random.default_rng(2)
    for _ in range(12):
        m = int(rng.integers(1, 7))
        C = rng.standard_normal((m, m))
        b = rng.standard_normal(m)
        x0 = rng.dirichlet(np.ones(m))
        lr, momentum, n_iter = float(rng.uniform(0.01, 2.0)), float(rng.uniform(0.0, 0.9)), int(rng.integers(1, 30))
        x = torch.tensor(x0, requires_grad=True)
        opt = torch.optim.SGD([x], lr=lr, momentum=momentum)
        Ct, bt = torch.tensor(C), torch.tensor(b)
        for _ in range(n_iter):
            opt.zero_grad()
            x.grad = Ct @ x.detach() + bt
            opt.step()
            with torch.no_grad():
                x.copy_(torch.from_numpy(bisection_projection(x.detach().numpy())))
        got = sp.projected_sgd(C, b, x0, lr=lr, momentum=momentum, n_iter=n_iter)
        np.testing.assert_allclose(got, x.detach().numpy(), atol=1e-9)

"""Euclidean projection onto the probability simplex, and the projected-gradient loops built on it.

Π_Δ(v) = argmin_{x ∈ Δ_m} ‖x − v‖² is computed exactly by the sort-based rule
(Held, Wolfe, Crowder 1974; Duchi et al., ICML 2008): with u the entries of v in
decreasing order and ρ the largest k with u_k > (Σ_{j≤k} u_j − 1)/k,
Π_Δ(v) = max(v − θ, 0), θ = (Σ_{j≤ρ} u_j − 1)/ρ.

:func:`projected_sgd` runs SDMGrad's inner solver (Xiao, Ban, Ji, NeurIPS 2023,
arXiv 2305.18409): ``n_iter`` steps of SGD with heavy-ball momentum
(``torch.optim.SGD``: v ← βv + g, x ← x − lr·v, v₀ = 0) on a linear gradient
g = Cx + b, each followed by Π_Δ. The cvxpy formulation of Π_Δ is the reference
the kernel is tested against.
"""

from __future__ import annotations

import numpy as np

from mtlsolve.kernels import _cvx
from mtlsolve.kernels._numba import kernel


@kernel
def _project(v, out):
    # Π_Δ(v) = Π_Δ(v − c·1): shifted by max v, the top entries keep their exact differences however
    # large v is (no cancellation of v_i − θ at |v| ≫ 1)
    m = v.shape[0]
    v = v - v.max()
    u = np.sort(v)[::-1]
    css = 0.0
    theta = 0.0
    for k in range(m):
        css += u[k]
        t = (css - 1.0) / (k + 1)
        if u[k] > t:  # holds for a prefix of k: the last one gives θ
            theta = t
    for i in range(m):
        out[i] = max(v[i] - theta, 0.0)


@kernel
def _projected_sgd(C, b, x, lr, momentum, n_iter):
    m = x.shape[0]
    x = x.copy()
    v = np.zeros(m)
    step = np.empty(m)
    for _ in range(n_iter):
        g = C @ x + b
        for i in range(m):
            v[i] = momentum * v[i] + g[i]
            step[i] = x[i] - lr * v[i]
        _project(step, x)
    return x


def project_simplex(v: np.ndarray) -> np.ndarray:
    """Π_Δ(v) for a float64 vector v."""
    v = np.ascontiguousarray(v, dtype=np.float64)
    out = np.empty_like(v)
    _project(v, out)
    return out


def projected_sgd(
    C: np.ndarray, b: np.ndarray, x0: np.ndarray, *, lr: float, momentum: float, n_iter: int
) -> np.ndarray:
    """``n_iter`` projected momentum-SGD steps on the gradient Cx + b from x0 ∈ Δ_m."""
    as_f64 = lambda a: np.ascontiguousarray(a, dtype=np.float64)  # noqa: E731
    return _projected_sgd(as_f64(C), as_f64(b), as_f64(x0), float(lr), float(momentum), int(n_iter))


# ------------------------------------------------------------ cvxpy reference
@_cvx.cached
def _reference_problem(m: int):
    import cvxpy as cp

    v = cp.Parameter(m, name="v")
    x = cp.Variable(m, name="x")
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x - v)), [x >= 0, cp.sum(x) == 1])
    assert problem.is_dpp()
    return problem, v, x


def reference_project_simplex(v: np.ndarray) -> np.ndarray:
    """cvxpy (Clarabel) solution of min ‖x − v‖² over Δ_m; the problem is built once per m."""
    v = np.asarray(v, dtype=np.float64)
    problem, param, x = _reference_problem(v.shape[0])
    param.value = v
    _cvx.solve(problem)
    return np.asarray(x.value, dtype=np.float64)

"""Projection onto the dual cone of the task gradients, in weight space (UPGrad, DualProj).

For G with Gramian K = GGᵀ and a weight vector u, the projection of Gᵀu onto
the dual cone {x : Gx ≥ 0} is Gᵀv with

    v = argmin_{v ≥ u} ½ vᵀKv        (Quinton & Rey 2024, arXiv 2406.16232, Prop. 1)

Writing v = u + x turns it into the non-negative QP min_{x ≥ 0} ½xᵀKx + (Ku)ᵀx,
solved exactly, in the Jacobi-scaled variable y = s∘x (s_i = √K_ii), by the active-set
core of :mod:`mtlsolve.kernels._dense` without the equality constraint (start x = 0, so
a u already in the cone, Ku ≥ 0, returns v = u at once). The kernel is batched over the
rows of U.

Certificate (:func:`dual_cone_certificate`): the KKT conditions of each projection — v ≥ u,
μ = Kv ≥ 0 (μ_i = g_i·d), (v − u)_i μ_i = 0 — as a scale-free residual, each violation
relative to √K_ii and Σ_j |v_j|√K_jj (≥ ‖d‖), so that an entry-wise round-off ρ·√K_ii√K_jj
of K moves it by about ρ.
"""

from __future__ import annotations

import numpy as np

from mtlsolve.kernels import _cvx
from mtlsolve.kernels._dense import RIDGE, active_set, as_kernel_array, row_norms, unit_diagonal
from mtlsolve.kernels._numba import kernel
from mtlsolve.kernels.simplex_qp import default_max_iter


@kernel
def _project_dual_cone(K, U, ridge, max_iter):
    k, m = U.shape
    # Jacobi scaling x = y/s, s_i = √K_ii: the QP in y has a unit diagonal, so gradients of
    # very different norms are priced alike (a zero gradient keeps s_i = 1)
    Ks, s = unit_diagonal(K)
    V = np.empty((k, m))
    y = np.empty(m)
    q = np.empty(m)
    qmag = np.empty(m)
    no_equality = np.empty(0)
    L = np.empty((m, m))
    idx = np.empty(m, np.int64)
    free = np.empty(m, np.bool_)
    work = np.empty((5, m))
    iterations = 0
    converged = True
    for r in range(k):
        # q = (K u)/s and the sizes of its terms, skipping the zero entries of u (UPGrad's u = e_i
        # costs O(m))
        for i in range(m):
            q[i] = 0.0
            qmag[i] = 0.0
        for j in range(m):
            uj = U[r, j]
            if uj != 0.0:
                for i in range(m):
                    q[i] += K[j, i] * uj
                    qmag[i] += abs(K[j, i] * uj)
        for i in range(m):
            q[i] /= s[i]
            qmag[i] /= s[i]
            free[i] = False
        _, it, conv = active_set(Ks, q, qmag, no_equality, ridge, max_iter, y, free, L, idx, work)
        iterations += it
        converged = converged and conv
        for i in range(m):
            V[r, i] = U[r, i] + y[i] / s[i]
    return V, iterations, converged


@kernel
def _regularised(K, norm_eps, reg_eps):
    """TorchJD's K' = K/tr K (the zero matrix when tr K < norm_eps) + reg_eps·I."""
    m = K.shape[0]
    trace = 0.0
    for i in range(m):
        trace += K[i, i]
    factor = 1.0 / trace if trace >= norm_eps and trace > 0.0 else 0.0
    Kn = K * factor
    for i in range(m):
        Kn[i, i] += reg_eps
    return Kn


@kernel
def _upgrad_weights(K, norm_eps, reg_eps, ridge, max_iter):
    m = K.shape[0]
    V, iterations, converged = _project_dual_cone(_regularised(K, norm_eps, reg_eps), np.eye(m), ridge, max_iter)
    w = np.zeros(m)
    for r in range(m):
        for i in range(m):
            w[i] += V[r, i]
    return w / m, iterations, converged


@kernel
def _dualproj_weights(K, norm_eps, reg_eps, ridge, max_iter):
    m = K.shape[0]
    U = np.full((1, m), 1.0 / m)
    V, iterations, converged = _project_dual_cone(_regularised(K, norm_eps, reg_eps), U, ridge, max_iter)
    return V[0], iterations, converged


@kernel
def _dual_cone_weights(K, U, norm_eps, reg_eps, ridge, max_iter):
    Kp = _regularised(K, norm_eps, reg_eps)
    V, iterations, converged = _project_dual_cone(Kp, U, ridge, max_iter)
    w = np.zeros(K.shape[0])
    for r in range(V.shape[0]):
        for i in range(K.shape[0]):
            w[i] += V[r, i]
    return w, V, Kp, iterations, converged


def dual_cone_weights(K: np.ndarray, U: np.ndarray, norm_eps: float, reg_eps: float, *, ridge: float = RIDGE):
    """w = Σ_r v_r, v_r = argmin_{v ≥ u_r} ½vᵀK'v for the rows u_r of U (k x m), on TorchJD's
    K' (as :func:`upgrad_weights`), in one numba call.

    Returns (w, V, K', total iterations, converged), for :func:`dual_cone_certificate`.
    """
    K = as_kernel_array(K)
    U = as_kernel_array(np.atleast_2d(U))
    return _dual_cone_weights(K, U, float(norm_eps), float(reg_eps), ridge, default_max_iter(K.shape[0]))


def certified_dual_cone_weights(K: np.ndarray, solved: np.ndarray, U: np.ndarray, norm_eps: float, reg_eps: float):
    """:func:`dual_cone_weights` on ``solved`` (K itself or a repair of it) and
    :func:`dual_cone_certificate` on K's own K', in one compiled call (the per-step path of
    UPGrad and DualProj). Returns (w, iterations, finished, residual)."""
    same = solved is K
    K = as_kernel_array(K)
    solved = K if same else as_kernel_array(solved)
    U = as_kernel_array(np.atleast_2d(U))
    w, iterations, finished, residual = _certified_dual_cone_weights(
        K, solved, same, U, float(norm_eps), float(reg_eps), RIDGE, default_max_iter(K.shape[0])
    )
    return w, int(iterations), bool(finished), float(residual)


@kernel
def _certified_dual_cone_weights(K, solved, same, U, norm_eps, reg_eps, ridge, max_iter):
    w, V, K_solved, iterations, finished = _dual_cone_weights(solved, U, norm_eps, reg_eps, ridge, max_iter)
    K_given = K_solved if same else _regularised(K, norm_eps, reg_eps)
    return w, iterations, finished, _dual_cone_certificate(K_given, U, V)


def regularised(K: np.ndarray, norm_eps: float, reg_eps: float) -> np.ndarray:
    """TorchJD's K' = K/tr K (the zero matrix when tr K < ``norm_eps``) + ``reg_eps``·I."""
    return _regularised(as_kernel_array(K), float(norm_eps), float(reg_eps))


def dual_cone_certificate(K: np.ndarray, U: np.ndarray, V: np.ndarray) -> float:
    """The scale-free KKT residual of v_r = argmin_{v ≥ u_r} ½vᵀKv for every row r: with
    x = v − u, μ = Kv (the multipliers: μ_i = g_i·d), s_i = √K_ii and S = Σ_j |v_j|s_j (≥ ‖d‖),
    the largest of the primal infeasibility max(−x_i, 0)·s_i/S, the dual infeasibility
    max(−μ_i, 0)/(s_i·S) (a negative cosine-like g_i·d) and the complementarity
    x_i·|μ_i|/S². 0 for an exact solution; an entry-wise error ρ·s_i·s_j of K moves it by ≈ ρ.
    """
    U = np.atleast_2d(as_kernel_array(U))
    V = np.atleast_2d(as_kernel_array(V))
    return float(_dual_cone_certificate(as_kernel_array(K), U, V))


@kernel
def _dual_cone_certificate(K, U, V):
    m = K.shape[0]
    s = row_norms(K)
    worst = 0.0
    for r in range(V.shape[0]):
        S = 0.0
        for j in range(m):
            S += abs(V[r, j]) * s[j]
        if not S > 0.0:
            S = 1.0
        for i in range(m):
            mu = 0.0
            for j in range(m):
                mu += V[r, j] * K[j, i]
            x = V[r, i] - U[r, i]
            worst = max(worst, max(-x, 0.0) * s[i] / S, max(x, 0.0) * abs(mu) / (S * S))
            if s[i] > 0.0:
                worst = max(worst, max(-mu, 0.0) / (s[i] * S))
    return worst


def upgrad_weights(K: np.ndarray, norm_eps: float, reg_eps: float, *, ridge: float = RIDGE):
    """UPGrad's weights with the uniform preference: the mean of v_i = argmin_{v ≥ e_i} ½vᵀK'v,
    K' = K/tr K (0 when tr K < ``norm_eps``) + ``reg_eps``·I, as TorchJD regularises.

    One numba call does all of it. Returns (w, total iterations, converged).
    """
    K = as_kernel_array(K)
    return _upgrad_weights(K, float(norm_eps), float(reg_eps), ridge, default_max_iter(K.shape[0]))


def dualproj_weights(K: np.ndarray, norm_eps: float, reg_eps: float, *, ridge: float = RIDGE):
    """DualProj's weights with the uniform preference: v = argmin_{v ≥ 1/m} ½vᵀK'v, the projection
    of g_0 onto the dual cone, with K' regularised as in :func:`upgrad_weights`.

    Returns (w, iterations, converged).
    """
    K = as_kernel_array(K)
    return _dualproj_weights(K, float(norm_eps), float(reg_eps), ridge, default_max_iter(K.shape[0]))


def project_dual_cone(K: np.ndarray, U: np.ndarray, *, ridge: float = RIDGE, max_iter: int | None = None):
    """For each row u of U (k x m, or one m-vector), v = argmin_{v ≥ u} ½vᵀKv.

    K is a symmetric PSD float64 m x m matrix. Returns (V, total iterations,
    converged) with V shaped like U.
    """
    K = as_kernel_array(K)
    U = np.asarray(U, dtype=np.float64)
    m = K.shape[0]
    cap = default_max_iter(m) if max_iter is None else max_iter
    V, it, converged = _project_dual_cone(K, as_kernel_array(U.reshape(-1, m)), ridge, cap)
    return V.reshape(U.shape), it, converged


def project_dual_cone_rows(K: np.ndarray, *, ridge: float = RIDGE, max_iter: int | None = None):
    """The m projections of UPGrad, u = e_i for every task i: V[i] = argmin_{v ≥ e_i} ½vᵀKv."""
    return project_dual_cone(K, np.eye(np.shape(K)[0]), ridge=ridge, max_iter=max_iter)


# ------------------------------------------------------------ cvxpy reference
@_cvx.cached
def _reference_problem(m: int):
    import cvxpy as cp

    F = cp.Parameter((m, m), name="F")
    u = cp.Parameter(m, name="u")
    v = cp.Variable(m, name="v")
    problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(F @ v)), [v >= u])
    assert problem.is_dpp()
    return problem, F, u, v


def reference_project_dual_cone(K: np.ndarray, U: np.ndarray, *, polish: bool = True) -> np.ndarray:
    """cvxpy (Clarabel) solution of the same problem, min_{v ≥ u} ½‖Fv‖² with FᵀF = K, for each
    row u of U; built once per m.

    K is first divided by its trace (the minimiser does not change): Clarabel at the tight
    tolerances of :mod:`mtlsolve.kernels._cvx` stalls on badly scaled data, and the form in
    x = v − u ≥ 0 fails more often. ``polish``: an interior-point solution is accurate to
    about gap/margin where strict complementarity is weak; the equality-constrained problem
    on the support of v − u is then solved with ``numpy.linalg.lstsq`` and kept if it is
    feasible and no worse.
    """
    K = np.asarray(K, dtype=np.float64)
    U = np.asarray(U, dtype=np.float64)
    m = K.shape[0]
    trace = float(np.trace(K))
    problem, F, u, v = _reference_problem(m)
    F.value = _cvx.psd_factor(K / trace if trace > 0 else K)
    rows = []
    for row in U.reshape(-1, m):
        u.value = row
        _cvx.solve(problem)
        x = (np.asarray(v.value, dtype=np.float64) - row).clip(0.0, None)
        rows.append(row + (_polish(K, K @ row, x) if polish else x))
    return np.array(rows).reshape(U.shape)


def _polish(K: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    support = x > 1e-6 * max(x.max(), 1e-300)
    if not support.any():
        return x
    polished = np.zeros_like(x)
    polished[support] = np.linalg.lstsq(K[np.ix_(support, support)], -b[support], rcond=None)[0]
    gain = 0.5 * (polished @ K @ polished - x @ K @ x) + b @ (polished - x)
    return polished if polished.min() >= 0 and gain <= 1e-15 * np.abs(K).max() else x

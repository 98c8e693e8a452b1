"""Nash-MTL's bargaining solution (Navon et al., ICML 2022, arXiv 2202.01017, eq. (3)–(4)).

The weights α > 0 solve α_i(Kα)_i = 1 for every i (Gᵀα·g_i = 1/α_i), the
stationarity condition of the strictly convex

    f(α) = ½αᵀKα − Σ_i log α_i.

f has a minimiser iff no v ≥ 0, v ≠ 0 has Kv = 0, i.e. iff 0 ∉ conv{g_i}
(a zero gradient, exactly opposite gradients, n < m with a conflict that
cancels out); otherwise f is unbounded below along such a v and no weights
solve the fixed point.

The kernel works in the Jacobi-scaled variable a = s∘α (s_i = ‖g_i‖), where
the condition reads a_i(K̂a)_i = 1 with the unit-diagonal K̂ = D⁻¹KD⁻¹, so the
iterates are O(1) whatever the gradient norms. Newton's method on f: with
D = diag(a) the step is Δa = D u, (DK̂D + I)u = 1 − a∘K̂a (a Cholesky solve of
a matrix ⪰ I), and λ² = uᵀ(1 − a∘K̂a) is the Newton decrement. f is
self-concordant, so for λ < ¼ the full step stays feasible and converges
quadratically; otherwise a backtracking (Armijo) line search from the largest
step keeping a > 0 is used. It stops when max_i |a_i(K̂a)_i − 1| ≤ ``tol`` (or
the round-off floor of evaluating it, 8·m·ε·max_i a_i(|K̂|a)_i), reports "no
solution" (status 2) when a gradient is zero or when that floor exceeds 1e-6
(the iterates run off along a v ≥ 0 with K̂v ≈ 0, max_i a_i ≳ 1e4: f is
unbounded below to round-off), and status 1 at the iteration cap.
"""

from __future__ import annotations

import numba
import numpy as np

from mtlsolve.kernels import _cvx

#: iterates whose residual has a round-off error above this mean f is unbounded below (0 ∈ conv{g_i}
#: to round-off): with a unit-diagonal K̂ that is max_i a_i ≳ 1e4
FLOOR = 1e-6
CONVERGED, MAX_ITER, NO_SOLUTION = 0, 1, 2
STATUS = {CONVERGED: "converged", MAX_ITER: "iteration cap reached", NO_SOLUTION: "no solution: 0 ∈ conv{g_i}"}


@numba.njit(cache=True)
def _objective(Kh, a, Ka):
    f = 0.0
    for i in range(a.shape[0]):
        f += 0.5 * a[i] * Ka[i] - np.log(a[i])
    return f


@numba.njit(cache=True)
def _matvec(Kh, a, out):
    m = a.shape[0]
    for i in range(m):
        t = 0.0
        for j in range(m):
            t += Kh[i, j] * a[j]
        out[i] = t


@numba.njit(cache=True)
def _nash(K, alpha0, tol, max_iter):
    m = K.shape[0]
    alpha = np.zeros(m)
    s = np.empty(m)
    for i in range(m):
        if not K[i, i] > 0.0:
            return alpha, 0, NO_SOLUTION, 1.0  # α_i(Kα)_i = 0 for a zero gradient
        s[i] = np.sqrt(K[i, i])
    Kh = np.empty((m, m))
    for i in range(m):
        for j in range(m):
            Kh[i, j] = K[i, j] / (s[i] * s[j])
        Kh[i, i] = 1.0
    a = np.empty(m)
    warm = alpha0.shape[0] == m
    for i in range(m):
        warm = warm and alpha0[i] > 0.0 and np.isfinite(alpha0[i])
    for i in range(m):
        a[i] = alpha0[i] * s[i] if warm else 1.0
    Ka = np.empty(m)
    _matvec(Kh, a, Ka)
    # the best point on the ray {t·a}: f(ta) = ½t²aᵀK̂a − m log t − Σ log a is least at t² = m/aᵀK̂a
    quad = 0.0
    for i in range(m):
        quad += a[i] * Ka[i]
    if quad > 0.0:
        t = np.sqrt(m / quad)
        for i in range(m):
            a[i] *= t
            Ka[i] *= t
    M = np.empty((m, m))
    rhs = np.empty(m)
    u = np.empty(m)
    trial = np.empty(m)
    Kt = np.empty(m)
    eps = np.finfo(np.float64).eps
    status = MAX_ITER
    residual = np.inf
    it = 0
    while True:
        residual = 0.0
        floor = 0.0
        for i in range(m):
            residual = max(residual, abs(a[i] * Ka[i] - 1.0))
            t = 0.0
            for j in range(m):
                t += abs(Kh[i, j]) * a[j]
            floor = max(floor, a[i] * t)
        # f unbounded below: the iterates grow until the round-off of a_i(K̂a)_i reaches 1e-6
        # (this also catches NaN and inf from an overflowing step)
        if not 8.0 * m * eps * floor <= FLOOR:
            status = NO_SOLUTION
            break
        if residual <= max(tol, 8.0 * m * eps * floor):
            status = CONVERGED
            break
        if it >= max_iter:
            break
        it += 1
        # Newton: (D K̂ D + I) u = 1 − a∘K̂a, Δa = a∘u; M is factored in place (lower triangle)
        for i in range(m):
            rhs[i] = 1.0 - a[i] * Ka[i]
            for j in range(i + 1):
                M[i, j] = a[i] * Kh[i, j] * a[j]
            M[i, i] += 1.0
        for j in range(m):
            d = M[j, j]
            for c in range(j):
                d -= M[j, c] * M[j, c]
            M[j, j] = np.sqrt(max(d, 1e-300))
            for i in range(j + 1, m):
                t = M[i, j]
                for c in range(j):
                    t -= M[i, c] * M[j, c]
                M[i, j] = t / M[j, j]
        for i in range(m):
            t = rhs[i]
            for c in range(i):
                t -= M[i, c] * u[c]
            u[i] = t / M[i, i]
        for i in range(m - 1, -1, -1):
            t = u[i]
            for r in range(i + 1, m):
                t -= M[r, i] * u[r]
            u[i] = t / M[i, i]
        lam2 = 0.0
        for i in range(m):
            lam2 += u[i] * rhs[i]
        step = 1.0
        if lam2 >= 0.0625:
            # far from the minimiser: the largest step keeping a > 0, then backtracking
            for i in range(m):
                if u[i] < 0.0:
                    step = min(step, -0.99 / u[i])
            f0 = _objective(Kh, a, Ka)
            while True:
                for i in range(m):
                    trial[i] = a[i] * (1.0 + step * u[i])
                _matvec(Kh, trial, Kt)
                if _objective(Kh, trial, Kt) <= f0 - 0.25 * step * lam2 or step < 1e-12:
                    break
                step *= 0.5
        for i in range(m):
            a[i] *= 1.0 + step * u[i]
        _matvec(Kh, a, Ka)
    if status == NO_SOLUTION:
        return alpha, it, status, 1.0  # the residual of α = 0
    for i in range(m):
        alpha[i] = a[i] / s[i]
    return alpha, it, status, residual


def nash_weights(K: np.ndarray, alpha0: np.ndarray | None = None, *, tol: float = 1e-10, max_iter: int = 100):
    """α > 0 with α_i(Kα)_i = 1 for the Gramian K (m x m, symmetric PSD), from the warm start
    ``alpha0`` (positive, length m; otherwise a cold start).

    Returns (alpha, iterations, status, residual): status 0 converged, 1 iteration cap (alpha is
    the last iterate), 2 no solution (0 ∈ conv{g_i}; alpha is all zeros); residual =
    max_i |α_i(Kα)_i − 1| of the returned alpha.
    """
    K = np.ascontiguousarray(K, dtype=np.float64)
    if not K.flags.writeable:
        K = K.copy()
    a0 = np.zeros(0) if alpha0 is None else np.ascontiguousarray(alpha0, dtype=np.float64).ravel().copy()
    alpha, it, status, residual = _nash(K, a0, float(tol), int(max_iter))
    return alpha, int(it), int(status), float(residual)


def nash_objective(K: np.ndarray, alpha: np.ndarray) -> float:
    """f(α) = ½αᵀKα − Σ log α_i."""
    return float(0.5 * alpha @ K @ alpha - np.log(alpha).sum())


# ------------------------------------------------------------ cvxpy reference
@_cvx.cached
def _reference_problem(m: int):
    import cvxpy as cp

    F = cp.Parameter((m, m), name="F")
    a = cp.Variable(m, name="a")
    problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(F @ a) - cp.sum(cp.log(a))))
    assert problem.is_dpp()
    return problem, F, a


def reference_nash_weights(K: np.ndarray, *, polish: bool = True) -> np.ndarray:
    """cvxpy (Clarabel) minimiser of ½‖Fα‖² − Σ log α (FᵀF = K), built once per m.

    Solved in the unit-diagonal scaling a = s∘α, K̂ = D⁻¹KD⁻¹ (s_i = √K_ii; the minimiser maps
    back exactly), which keeps Clarabel well conditioned. Raises
    :class:`~mtlsolve.errors.SolverError` when the problem is unbounded (0 ∈ conv{g_i}).
    ``polish``: Clarabel's exponential-cone solutions stop at relative errors of 1e-6 to 1e-4
    (often "optimal_inaccurate"), so plain Newton steps a ← a − (K̂ + diag(a)⁻²)⁻¹(K̂a − 1/a)
    (``numpy.linalg.solve``) follow, and the iterate with the smallest residual
    max_i |a_i(K̂a)_i − 1| is returned.
    """
    K = np.asarray(K, dtype=np.float64)
    s = np.sqrt(np.diag(K))
    Kh = K / np.outer(s, s)
    problem, F, a = _reference_problem(K.shape[0])
    F.value = _cvx.psd_factor(Kh)
    _cvx.solve(problem)
    a = np.asarray(a.value, dtype=np.float64)
    return (_polish(Kh, a) if polish else a) / s


def _polish(Kh: np.ndarray, a: np.ndarray) -> np.ndarray:
    def residual(x):
        return np.abs(x * (Kh @ x) - 1.0).max()

    best, best_residual = a, residual(a)
    for _ in range(20):
        a = a - np.linalg.solve(Kh + np.diag(a**-2.0), Kh @ a - 1.0 / a)
        if not (a > 0).all():
            break
        r = residual(a)
        if r < best_residual:
            best, best_residual = a, r
        if r < 1e-14:
            break
    return best

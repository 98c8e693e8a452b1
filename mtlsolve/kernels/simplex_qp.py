"""Convex QPs over the probability simplex: min ½wᵀQw + qᵀw s.t. w ≥ 0, Σw = 1.

The min-norm point of the convex hull of the task gradients (MGDA, Sener &
Koltun 2018, eq. 3) is the case q = 0, Q = K. The kernel is a primal
active-set method (Nocedal & Wright, *Numerical Optimization*, Alg. 16.3)
with a Cholesky factor of the free block that is updated, not recomputed,
when an index enters or leaves the free set, so one iteration costs O(m·|F|).
It terminates finitely (capped by ``max_iter``) and returns the exact
solution of the problem with Q replaced by Q + δI, δ = ``ridge`` · max_i Q_ii
(default 1e-14, an objective change ≤ δ/2·‖w‖²). Because (1ᵀw)² = 1 on the
simplex, the kernel works with Q + c·11ᵀ (same minimiser), so a free block
stays well conditioned when Q_FF is singular but the face problem is not (a
zero gradient, 0 in the affine hull of the free gradients). The ridge and
Cholesky pivots clamped at δ keep truly singular blocks (duplicated or
dependent gradients, round-off eigenvalues of a float32 Gramian) well posed.
Where the minimiser is not unique (duplicated tasks) the one returned is the
one the active-set path reaches; d = Gᵀw and the objective are unique.

The same core without the equality constraint solves the non-negative QPs of
:mod:`mtlsolve.kernels.cone_projection`.
"""

from __future__ import annotations

import numba
import numpy as np

from mtlsolve.kernels import _cvx
from mtlsolve.kernels._dense import as_kernel_array

#: δ relative to max_i Q_ii; see the module docstring
RIDGE = 1e-14
#: relative tolerance of the optimality test on the multipliers
TOL = 1e-13
#: numba options of every kernel here and in cone_projection
JIT = {"cache": True}


@numba.njit(**JIT)
def _chol_append(L, nf, Q, idx, j, delta, ya, yb, qj):
    """Extend the factor L (nf x nf) of Q[F, F] + δI by index j, and the forward
    solutions ya = L⁻¹1, yb = L⁻¹(−q_F) by their new last entry (−q_j = ``qj``)."""
    for r in range(nf):
        s = Q[idx[r], j]
        for c in range(r):
            s -= L[nf, c] * L[r, c]
        L[nf, r] = s / L[r, r]
    d = Q[j, j] + delta
    sa = 1.0
    sb = qj
    for c in range(nf):
        d -= L[nf, c] * L[nf, c]
        sa -= L[nf, c] * ya[c]
        sb -= L[nf, c] * yb[c]
    # the Schur complement of a matrix ⪰ δI is ≥ δ; clamp round-off and slightly indefinite input
    L[nf, nf] = np.sqrt(max(d, delta))
    ya[nf] = sa / L[nf, nf]
    yb[nf] = sb / L[nf, nf]
    idx[nf] = j


@numba.njit(**JIT)
def _chol_delete(L, nf, idx, k, x, ya, yb, q):
    """Remove position k from the free set: shift, a rank-one update of the trailing block
    of L, and ya, yb forward-solved again from position k on."""
    for i in range(k + 1, nf):
        x[i] = L[i, k]
    for i in range(k, nf - 1):
        idx[i] = idx[i + 1]
        for c in range(k):
            L[i, c] = L[i + 1, c]
        for c in range(k, i + 1):
            L[i, c] = L[i + 1, c + 1]
    for j in range(k, nf - 1):
        ljj = L[j, j]
        xj = x[j + 1]
        r = np.sqrt(ljj * ljj + xj * xj)
        c = r / ljj
        s = xj / ljj
        L[j, j] = r
        for i in range(j + 1, nf - 1):
            L[i, j] = (L[i, j] + s * x[i + 1]) / c
            x[i + 1] = c * x[i + 1] - s * L[i, j]
    for i in range(k, nf - 1):
        sa = 1.0
        sb = -q[idx[i]]
        for c in range(i):
            sa -= L[i, c] * ya[c]
            sb -= L[i, c] * yb[c]
        ya[i] = sa / L[i, i]
        yb[i] = sb / L[i, i]


@numba.njit(**JIT)
def _back_solve(L, nf, t, z):
    """z[:nf] = L⁻ᵀ t[:nf] (t is overwritten); row-wise, so L is read contiguously."""
    for i in range(nf - 1, -1, -1):
        zi = t[i] / L[i, i]
        z[i] = zi
        for r in range(i):
            t[r] -= L[i, r] * zi


@numba.njit(**JIT)
def _active_set(Q, q, simplex, ridge, max_iter, w, L, idx, free, work):
    """Solve min ½wᵀ(Q + δI)w + qᵀw over w ≥ 0 (and Σw = 1 when ``simplex``) into ``w``.

    ``L`` (m x m), ``idx``, ``free`` and ``work`` (5 x m) are work arrays. Returns
    (iterations, converged). Without the simplex constraint the start is w = 0.

    Note: numba's on-disk cache keys a caller on its own source file only; after
    editing this core, delete the cached kernels of cone_projection too
    (mtlsolve/kernels/__pycache__/cone_projection.*.nb*).
    """
    m = Q.shape[0]
    ya = work[0]
    yb = work[1]
    t = work[2]
    z = work[3]
    g = work[4]
    qscale = 0.0
    scale = 0.0
    for i in range(m):
        scale = max(scale, abs(Q[i, i]))
        qscale = max(qscale, abs(q[i]))
    # the ridge is relative to the matrix (q's scale only stands in for Q = 0)
    delta = ridge * (scale if scale > 0.0 else (qscale if qscale > 0.0 else 1.0))
    for i in range(m):
        w[i] = 0.0
        free[i] = False
    nf = 0
    if simplex:
        j0 = 0
        for i in range(1, m):
            if 0.5 * Q[i, i] + q[i] < 0.5 * Q[j0, j0] + q[j0]:
                j0 = i
        _chol_append(L, 0, Q, idx, j0, delta, ya, yb, -q[j0])
        nf = 1
        free[j0] = True
        w[j0] = 1.0
    lam = 0.0
    converged = False
    it = 0
    while it < max_iter:
        it += 1
        if nf > 0:
            # the equality-constrained minimiser z on the free set: (Q_FF + δI) z = λ1 − q_F,
            # z = L⁻ᵀ(λ ya + yb) with λ fixed by 1ᵀz = 1
            if simplex:
                saa = 0.0
                sab = 0.0
                for r in range(nf):
                    saa += ya[r] * ya[r]
                    sab += ya[r] * yb[r]
                lam = (1.0 - sab) / saa
            for r in range(nf):
                t[r] = lam * ya[r] + yb[r]
            _back_solve(L, nf, t, z)
            zmax = 0.0
            for r in range(nf):
                zmax = max(zmax, abs(z[r]))
            # ratio test: step from w towards z until the first free weight reaches zero
            alpha = 1.0
            block = -1
            for r in range(nf):
                if z[r] < -1e-15 * zmax:
                    wr = w[idx[r]]
                    step = wr / (wr - z[r])
                    if step < alpha:
                        alpha = step
                        block = r
            for r in range(nf):
                i = idx[r]
                w[i] = max(w[i] + alpha * (z[r] - w[i]), 0.0)
            if block >= 0:
                i = idx[block]
                w[i] = 0.0
                free[i] = False
                _chol_delete(L, nf, idx, block, t, ya, yb, q)
                nf -= 1
                continue
        # at the minimiser on the free set: price the bound constraints, μ_i = (Qw + q)_i − λ
        xmax = 0.0
        for i in range(m):
            g[i] = q[i]
        for r in range(nf):
            j = idx[r]
            wj = w[j]
            xmax = max(xmax, wj)
            for i in range(m):
                g[i] += wj * Q[j, i]
        tol = TOL * m * (scale * xmax + qscale)
        best = -tol
        jadd = -1
        for i in range(m):
            mu = g[i] - lam
            if not free[i] and mu < best:
                best = mu
                jadd = i
        if jadd < 0:
            converged = True
            break
        _chol_append(L, nf, Q, idx, jadd, delta, ya, yb, -q[jadd])
        free[jadd] = True
        nf += 1
    return it, converged


@numba.njit(**JIT)
def _simplex_qp(Q, q, ridge, max_iter):
    m = Q.shape[0]
    # Q + c·11ᵀ has the same minimiser on the simplex (module docstring)
    c = 0.0
    for i in range(m):
        c = max(c, abs(Q[i, i]), abs(q[i]))
    if c == 0.0:
        c = 1.0
    Qc = Q + c
    w = np.empty(m)
    L = np.empty((m, m))
    idx = np.empty(m, np.int64)
    free = np.empty(m, np.bool_)
    it, converged = _active_set(Qc, q, True, ridge, max_iter, w, L, idx, free, np.empty((5, m)))
    return w, it, converged


def default_max_iter(m: int) -> int:
    """The iteration cap: generous next to the ≤ 2m iterations a typical solve takes."""
    return 20 * m + 100


def simplex_qp(Q: np.ndarray, q: np.ndarray, *, ridge: float = RIDGE, max_iter: int | None = None):
    """argmin_{w ∈ Δ_m} ½wᵀQw + qᵀw for a symmetric PSD Q (float64, m x m).

    Returns (w, iterations, converged).
    """
    Q = as_kernel_array(Q)
    q = as_kernel_array(q)
    m = Q.shape[0]
    return _simplex_qp(Q, q, ridge, default_max_iter(m) if max_iter is None else max_iter)


def min_norm_simplex(K: np.ndarray, *, ridge: float = RIDGE, max_iter: int | None = None):
    """The weights of the min-norm point of conv{g_i}: argmin_{w ∈ Δ_m} ½wᵀKw.

    Returns (w, iterations, converged).
    """
    K = as_kernel_array(K)
    m = K.shape[0]
    return _simplex_qp(K, np.zeros(m), ridge, default_max_iter(m) if max_iter is None else max_iter)


# ------------------------------------------------------------ cvxpy reference
@_cvx.cached
def _reference_problem(m: int):
    import cvxpy as cp

    F = cp.Parameter((m, m), name="F")
    q = cp.Parameter(m, name="q")
    w = cp.Variable(m, name="w")
    objective = cp.Minimize(0.5 * cp.sum_squares(F @ w) + q @ w)
    problem = cp.Problem(objective, [w >= 0, cp.sum(w) == 1])
    assert problem.is_dpp()
    return problem, F, q, w


def reference_simplex_qp(Q: np.ndarray, q: np.ndarray, *, polish: bool = True) -> np.ndarray:
    """cvxpy (Clarabel) solution of the same QP; the problem is built once per m.

    Q and q are first divided by max(max_i Q_ii, max_i |q_i|) (the minimiser does not
    change): Clarabel at the tight tolerances of :mod:`mtlsolve.kernels._cvx` stalls on
    badly scaled data. ``polish``: an interior-point solution is accurate to about
    gap/margin in w where strict complementarity is weak; the equality-constrained
    problem on its support is then solved with ``numpy.linalg.lstsq`` and kept if it is
    feasible and no worse.
    """
    Q = np.asarray(Q, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    scale = max(float(np.abs(np.diag(Q)).max()), float(np.abs(q).max()))
    if scale > 0:
        Q, q = Q / scale, q / scale
    problem, F, q_param, w = _reference_problem(Q.shape[0])
    F.value = _cvx.psd_factor(Q)
    q_param.value = q
    _cvx.solve(problem)
    w = np.asarray(w.value, dtype=np.float64).clip(0.0, None)
    w /= w.sum()
    return _polish(Q, q, w) if polish else w


def _polish(Q: np.ndarray, q: np.ndarray, w: np.ndarray) -> np.ndarray:
    support = w > 1e-6 * w.max()
    n = int(support.sum())
    kkt = np.zeros((n + 1, n + 1))
    kkt[:n, :n] = Q[np.ix_(support, support)]
    kkt[:n, n] = kkt[n, :n] = 1.0
    solution = np.linalg.lstsq(kkt, np.append(-q[support], 1.0), rcond=None)[0]
    polished = np.zeros_like(w)
    polished[support] = solution[:n]
    gain = 0.5 * (polished @ Q @ polished - w @ Q @ w) + q @ (polished - w)
    return polished if polished.min() >= 0 and gain <= 1e-15 * np.abs(Q).max() else w


def reference_min_norm_simplex(K: np.ndarray, *, polish: bool = True) -> np.ndarray:
    """cvxpy reference of :func:`min_norm_simplex`."""
    return reference_simplex_qp(K, np.zeros(np.shape(K)[0]), polish=polish)

"""Convex QPs over the probability simplex: min ½wᵀQw + qᵀw s.t. w ≥ 0, Σw = 1.

The min-norm point of the convex hull of the task gradients (MGDA, Sener &
Koltun 2018, eq. 3) is the case q = 0, Q = K. The kernel is a primal
active-set method (Nocedal & Wright, *Numerical Optimization*, Alg. 16.3)
with a Cholesky factor of the free block that is updated, not recomputed,
when an index enters or leaves the free set, so one iteration costs O(m·|F|).

Scale: it runs on the Jacobi-scaled problem. With s_i = √Q_ii (max(√Q_ii, |q_i|/max_j √Q_jj)
with a linear term, so a row that q dominates is scaled by q; a zero row gets the smallest
other s_i) and v = s⊙w, the QP is min ½vᵀQ̃v + q̃ᵀv over v ≥ 0, aᵀv = 1, with
Q̃ = S⁻¹QS⁻¹ (unit diagonal for the min-norm problem), q̃ = q/s and a = 1/s, so row norms
spanning any number of decades are priced alike. On the feasible set (aᵀv)² = 1,
so Q̃ + c·aaᵀ has the same minimiser. The free block is factored with that shift for a
c ≈ 1/max_F a_i² (:func:`_scaled_active_set`; the block is refactored, O(|F|³), only when the
smallest free row norm moves by more than a factor 2): ≤ 4 entry-wise on the free set, so it
swamps no row, and large enough that a free block which is singular only along a
direction changing aᵀv (a zero gradient, 0 in the affine hull of the free gradients)
stays well conditioned. A ridge δ = ``ridge`` (default 1e-14) on the unit diagonal, and
Cholesky pivots clamped at δ, keep dependent free sets (duplicated gradients,
n < m, the round-off eigenvalues of a float32 Gramian) well posed; it moves
the KKT conditions by at most δ in the scale-free measure below. Where the
minimiser is not unique (duplicated tasks) the one returned is the one the
active-set path reaches; d = Gᵀw and the objective are unique.

Certificate (:func:`kkt_residual`): with g = Qw + q, λ = wᵀg, n_i = √Q_ii and
ν = Σ_j n_j w_j (≥ ‖Gᵀw‖), the KKT conditions are g_i ≥ λ for every i with
equality where w_i > 0; the residual is the largest violation of row i divided
by n_i·ν + ν² + |q_i| + |q|ᵀw, the size of the round-off an entry-wise relative
perturbation of Q and q makes in that row (a backward error: the weights are
exact for data perturbed by about residual·n_i·n_j). For the min-norm problem
it reads |g_i·d − ‖d‖²| / (‖g_i‖ν + ν²).

The original (unscaled) core :func:`_active_set` without the equality
constraint solves the non-negative QPs of :mod:`mtlsolve.kernels.cone_projection`.
"""

from __future__ import annotations

import warnings

import numba
import numpy as np

from mtlsolve.kernels import _cvx
from mtlsolve.kernels._dense import as_kernel_array

#: the ridge δ on the unit diagonal of the scaled problem (the unscaled core: relative to max_i Q_ii)
RIDGE = 1e-14
#: relative tolerance of the optimality test on the multipliers (unscaled core)
TOL = 1e-13
#: ... of the scaled core, per task and relative to each multiplier's round-off (module docstring)
SCALED_TOL = 1e-14
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
def _append_a(L, nf, Q, c, idx, j, delta, ya, yb, a, q):
    """Extend the factor L (nf x nf) of Q[F, F] + c·a_Fa_Fᵀ + δI by index j, and ya = L⁻¹a_F,
    yb = L⁻¹(−q_F) by their new last entry (the equality aᵀv = 1 of the scaled problem)."""
    aj = a[j]
    for r in range(nf):
        i = idx[r]
        s = Q[i, j] + c * a[i] * aj
        for k in range(r):
            s -= L[nf, k] * L[r, k]
        L[nf, r] = s / L[r, r]
    d = Q[j, j] + c * aj * aj + delta
    sa = aj
    sb = -q[j]
    for k in range(nf):
        d -= L[nf, k] * L[nf, k]
        sa -= L[nf, k] * ya[k]
        sb -= L[nf, k] * yb[k]
    # the Schur complement of a matrix ⪰ δI is ≥ δ: clamp round-off and slightly indefinite input
    L[nf, nf] = np.sqrt(max(d, delta))
    ya[nf] = sa / L[nf, nf]
    yb[nf] = sb / L[nf, nf]
    idx[nf] = j


@numba.njit(**JIT)
def _delete_a(L, nf, idx, k, x, ya, yb, a, q):
    """:func:`_chol_delete` for the equality aᵀv = 1."""
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
        sa = a[idx[i]]
        sb = -q[idx[i]]
        for c in range(i):
            sa -= L[i, c] * ya[c]
            sb -= L[i, c] * yb[c]
        ya[i] = sa / L[i, i]
        yb[i] = sb / L[i, i]


@numba.njit(**JIT)
def _scaled_active_set(Q, q, a, ridge, max_iter, v, L, idx, free, work):
    """min ½vᵀ(Q + δI)v + qᵀv over v ≥ 0, aᵀv = 1 (a > 0, Q with a unit diagonal) into ``v``.
    Returns (iterations, converged).

    The free block is factored with the shift c·a_Fa_Fᵀ, c ≈ 1/max_F a_i² (kept within a factor
    4 of that, refactored when it drifts further), which is ≤ 4 entry-wise and ≥ 1/16 along a
    null direction of Q_FF that changes aᵀv (0 in the affine hull of the free gradients). The
    pricing tolerance of index i is relative to the size of its round-off,
    ν + |q_i| + a_i(ν² + |q|ᵀv + c) with ν = Σv (module docstring), so it is scale-free."""
    m = Q.shape[0]
    ya = work[0]
    yb = work[1]
    t = work[2]
    z = work[3]
    g = work[4]
    delta = ridge
    for i in range(m):
        v[i] = 0.0
        free[i] = False
    # start at the best vertex v = e_j/a_j
    j0 = 0
    best = np.inf
    for i in range(m):
        f = 0.5 * Q[i, i] / (a[i] * a[i]) + q[i] / a[i]
        if f < best:
            best = f
            j0 = i
    c = 1.0 / (a[j0] * a[j0])
    _append_a(L, 0, Q, c, idx, j0, delta, ya, yb, a, q)
    nf = 1
    free[j0] = True
    v[j0] = 1.0 / a[j0]
    tolf = SCALED_TOL * (m + 1)
    last = j0
    converged = False
    it = 0
    while it < max_iter:
        it += 1
        # the minimiser z on the free face: (Q_FF + c·a_Fa_Fᵀ + δI) z = λ'a_F − q_F with aᵀz = 1
        saa = 0.0
        sab = 0.0
        for r in range(nf):
            saa += ya[r] * ya[r]
            sab += ya[r] * yb[r]
        if not (saa > 0.0 and saa < np.inf and abs(sab) < np.inf):
            break  # the factor overflowed (an indefinite Q beyond the ridge): keep the last iterate
        lam = (1.0 - sab) / saa
        for r in range(nf):
            t[r] = lam * ya[r] + yb[r]
        _back_solve(L, nf, t, z)
        # ratio test; an entry of z is taken as 0 (clipped) only when it is negligible both for
        # d = Σ v_r u_r (next to Σ|z|) and for the weights a_r z_r (next to their largest)
        zsum = 0.0
        zmax = 0.0
        for r in range(nf):
            zsum += abs(z[r])
            zmax = max(zmax, abs(a[idx[r]] * z[r]))
        alpha = 1.0
        block = -1
        for r in range(nf):
            if z[r] < -1e-15 * min(zsum, zmax / a[idx[r]]):
                vr = v[idx[r]]
                step = vr / (vr - z[r])
                if step < alpha:
                    alpha = step
                    block = r
        if block >= 0 and alpha == 0.0 and idx[block] == last:
            # the index just added cannot move off its bound: its multiplier was negative by
            # round-off only; take the face minimiser with that weight at 0
            block = -1
            alpha = 1.0
        for r in range(nf):
            i = idx[r]
            v[i] = max(v[i] + alpha * (z[r] - v[i]), 0.0)
        if block >= 0:
            i = idx[block]
            v[i] = 0.0
            free[i] = False
            _delete_a(L, nf, idx, block, t, ya, yb, a, q)
            nf -= 1
            amax = 0.0
            for r in range(nf):
                amax = max(amax, a[idx[r]])
            if c * amax * amax < 0.0625:
                c = 1.0 / (amax * amax)
                for r in range(nf):
                    _append_a(L, r, Q, c, idx, idx[r], delta, ya, yb, a, q)
            continue
        # price the bounds: μ_i = (Qv + q)_i − λa_i with λ = λ' − c (as aᵀv = 1)
        lam -= c
        nu = 0.0
        qv = 0.0
        for i in range(m):
            g[i] = q[i]
        for r in range(nf):
            j = idx[r]
            vj = v[j]
            nu += vj
            qv += abs(q[j]) * vj
            for i in range(m):
                g[i] += vj * Q[j, i]
        lamscale = nu * nu + qv + c
        worst = 0.0
        jadd = -1
        for i in range(m):
            if not free[i]:
                mu = (g[i] - lam * a[i]) / (nu + abs(q[i]) + a[i] * lamscale)
                if mu < worst:
                    worst = mu
                    jadd = i
        if jadd < 0 or worst >= -tolf:
            converged = True
            break
        if c * a[jadd] * a[jadd] > 4.0:
            c = 1.0 / (a[jadd] * a[jadd])
            for r in range(nf):
                _append_a(L, r, Q, c, idx, idx[r], delta, ya, yb, a, q)
        _append_a(L, nf, Q, c, idx, jadd, delta, ya, yb, a, q)
        free[jadd] = True
        last = jadd
        nf += 1
    return it, converged


@numba.njit(**JIT)
def _simplex_qp(Q, q, ridge, max_iter):
    m = Q.shape[0]
    # s_i = √Q_ii, or |q_i|/max_j √Q_jj where the linear term dominates row i (a tiny or zero
    # row with a large q_i: its weight is then set by q, and q/s stays of the size of the rest)
    big = 0.0
    for i in range(m):
        big = max(big, np.sqrt(max(Q[i, i], 0.0)))
    s = np.zeros(m)
    smin = np.inf
    for i in range(m):
        if Q[i, i] > 0.0:
            s[i] = np.sqrt(Q[i, i])
        if big > 0.0:
            s[i] = max(s[i], abs(q[i]) / big)
        if s[i] > 0.0:
            smin = min(smin, s[i])
    if smin == np.inf:
        smin = 1.0
    a = np.empty(m)
    for i in range(m):
        if not s[i] > 0.0:
            s[i] = smin
        a[i] = 1.0 / s[i]
    # Q̃ = S⁻¹QS⁻¹ (a unit diagonal where s_i = √Q_ii); a zero row of Q stays zero
    Qs = np.zeros((m, m))
    qs = np.empty(m)
    for i in range(m):
        qs[i] = q[i] * a[i]
        if Q[i, i] > 0.0:
            for j in range(m):
                if Q[j, j] > 0.0:
                    Qs[i, j] = Q[i, j] * a[i] * a[j]
            if s[i] * s[i] == Q[i, i]:
                Qs[i, i] = 1.0
    v = np.empty(m)
    L = np.empty((m, m))
    idx = np.empty(m, np.int64)
    free = np.empty(m, np.bool_)
    it, converged = _scaled_active_set(Qs, qs, a, ridge, max_iter, v, L, idx, free, np.empty((5, m)))
    w = np.empty(m)
    total = 0.0
    for i in range(m):
        w[i] = v[i] * a[i]
        total += w[i]
    for i in range(m):
        w[i] /= total
    return w, it, converged


@numba.njit(**JIT)
def _kkt_residual(Q, q, w, scales):
    """The scale-free KKT residual of the module docstring (``scales`` n_i ≥ 0; empty: √Q_ii)."""
    m = Q.shape[0]
    if scales.shape[0] == 0:
        scales = np.empty(m)
        for i in range(m):
            scales[i] = np.sqrt(max(Q[i, i], 0.0))
    g = np.empty(m)
    lam = 0.0
    nu = 0.0
    qw = 0.0
    total = 0.0
    worst = 0.0
    for i in range(m):
        t = q[i]
        for j in range(m):
            t += Q[i, j] * w[j]
        g[i] = t
        lam += w[i] * t
        nu += scales[i] * abs(w[i])
        qw += abs(q[i] * w[i])
        total += w[i]
        worst = max(worst, -w[i])
    worst = max(worst, abs(total - 1.0))
    for i in range(m):
        r = g[i] - lam
        violation = abs(r) if w[i] > 0.0 else max(-r, 0.0)
        if violation > 0.0:
            scale = scales[i] * nu + nu * nu + abs(q[i]) + qw
            worst = max(worst, violation / scale if scale > 0.0 else np.inf)
    return worst


_NO_SCALES = np.empty(0)


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


def kkt_residual(Q: np.ndarray, q: np.ndarray | None, w: np.ndarray, scales: np.ndarray | None = None) -> float:
    """The scale-free KKT residual of w for min_{w ∈ Δ} ½wᵀQw + qᵀw (module docstring).

    ``scales`` (default √Q_ii) are the n_i the round-off of row i is relative to; a Gramian
    E K Eᵀ of combined gradients passes |E|·n, the bound on the norms its round-off scales with.
    """
    Q = as_kernel_array(Q)
    q = np.zeros(Q.shape[0]) if q is None else as_kernel_array(q)
    scales = _NO_SCALES if scales is None else as_kernel_array(scales)
    return float(_kkt_residual(Q, q, as_kernel_array(w), scales))


def certified_min_norm(
    K: np.ndarray, roundoff: float, *, scales: np.ndarray | None = None
) -> tuple[np.ndarray, dict]:
    """:func:`min_norm_simplex` with its certificate: (w, diagnostics).

    The active-set solve runs on K, or on its PSD part where K is indefinite beyond the ridge
    (:func:`mtlsolve.kernels.cagrad.psd_repair`; float32 Gramians); the certificate is K's.
    ``diagnostics``: ``iterations``, ``residual`` (:func:`kkt_residual`), ``tolerance``
    (:func:`mtlsolve.gramian.certificate_tolerance` of ``roundoff``, the bound ρ on K's
    entry-wise round-off relative to n_i·n_j) and ``converged`` (residual ≤ tolerance). When
    the active-set weights are not certified the cvxpy reference (:func:`reference_min_norm_simplex`)
    is solved too and the weights with the smaller residual are returned; if those are not
    certified either, ``converged`` is False and ``fallback`` names that reference solve.
    """
    from mtlsolve.gramian import certificate_tolerance

    from mtlsolve.kernels.cagrad import psd_repair

    K = as_kernel_array(K)
    m = K.shape[0]
    q = np.zeros(m)
    scales = _NO_SCALES if scales is None else as_kernel_array(scales)
    # a K indefinite beyond the ridge (a Gramian accumulated in float32) makes the QP nonconvex:
    # solve on its PSD part, certify on K itself
    w, iterations, _ = _simplex_qp(psd_repair(K)[0], q, RIDGE, default_max_iter(m))
    residual = float(_kkt_residual(K, q, w, scales))
    tolerance = certificate_tolerance(roundoff)
    info: dict = {"iterations": int(iterations), "residual": residual, "tolerance": float(tolerance)}
    if not residual <= tolerance:
        try:
            with warnings.catch_warnings():  # cvxpy's "Solution may be inaccurate": the residual decides
                warnings.simplefilter("ignore", UserWarning)
                ref = reference_min_norm_simplex(K)
        except Exception:  # noqa: BLE001 - the reference is a fallback; its failure leaves the kernel's weights
            ref = None
        if ref is not None:
            ref_residual = float(_kkt_residual(K, q, as_kernel_array(ref), scales))
            if ref_residual < residual:
                w, info["residual"] = ref, ref_residual
                info["solved_by"] = "cvxpy reference"
    info["converged"] = bool(info["residual"] <= tolerance)
    if not info["converged"]:
        info["fallback"] = "cvxpy reference solve (the weights with the smaller KKT residual)"
    return w, info


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
    problem on its support is then solved in the Jacobi-scaled variables (so rows of any
    scale keep their digits) and kept if it is feasible and its KKT residual is smaller.
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
    best, best_residual = w, kkt_residual(Q, q, w)
    for threshold in (1e-6, 1e-9, 1e-3):
        support = w > threshold * w.max()
        n = int(support.sum())
        s = np.sqrt(np.clip(np.diag(Q)[support], 0.0, None))
        s[s == 0] = s.max() if s.max() > 0 else 1.0
        kkt = np.zeros((n + 1, n + 1))
        kkt[:n, :n] = Q[np.ix_(support, support)] / np.outer(s, s)
        kkt[:n, n] = kkt[n, :n] = 1.0 / s
        a = np.linalg.norm(kkt[n, :n])
        kkt[:n, n] /= a
        kkt[n, :n] /= a
        solution = np.linalg.lstsq(kkt, np.append(-q[support] / s, 1.0 / a), rcond=None)[0]
        polished = np.zeros_like(w)
        polished[support] = solution[:n] / s
        if polished.min() >= 0 and polished.sum() > 0:
            polished /= polished.sum()
            residual = kkt_residual(Q, q, polished)
            if residual < best_residual:
                best, best_residual = polished, residual
    return best


def reference_min_norm_simplex(K: np.ndarray, *, polish: bool = True) -> np.ndarray:
    """cvxpy reference of :func:`min_norm_simplex`."""
    return reference_simplex_qp(K, np.zeros(np.shape(K)[0]), polish=polish)

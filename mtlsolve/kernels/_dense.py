"""The dense linear algebra the m x m kernels share: a Cholesky factor grown and shrunk one index
at a time (and the full factorization), its solves, and the one active-set QP core every QP
kernel runs.

Active-set core (:func:`active_set`): the primal active-set method of Nocedal & Wright,
*Numerical Optimization* (2nd ed., 2006), Alg. 16.3, for

    min ½vᵀ(Q + δI)v + qᵀv   over v ≥ 0, and aᵀv = 1 (a > 0) when ``a`` is given,

on a Jacobi-scaled Q (unit diagonal where a row is not zero, so entries are ≤ 1 in magnitude).
The Cholesky factor of the free block is updated, not recomputed, when an index enters
(:func:`chol_append`, O(m·|F|)) or leaves (:func:`chol_delete`, Givens rotations) the free
set. With the equality, the block is factored with the shift c·a_Fa_Fᵀ (on the feasible set
(aᵀv)² = 1, so the minimiser does not move) for a c in [1/16, 4]/max_F a_i²: ≤ 4 entry-wise,
so it swamps no row, and large enough that a free block singular only along a direction that
changes aᵀv (a zero gradient, 0 in the affine hull of the free gradients) stays well
conditioned; the block is refactored, O(|F|³), only when c leaves that range. The ridge δ,
and pivots clamped at δ, keep dependent free sets (duplicated gradients, n < m, the
round-off eigenvalues of a float32 Gramian) well posed.

The free set is optimal when no multiplier μ_i = (Qv + q)_i − λa_i off it is below
−:data:`PRICE_TOL`·(m + 1) relative to the size of its round-off,
ν + qmag_i + a_i(ν² + qmagᵀv + c) with ν = Σ_F v_j (``qmag`` ≥ |q| are the sizes of the
terms q was computed from), so rows of any scale are priced alike; otherwise the most
negative μ_i enters (relative to that size with the equality, whose a_i spread the rows'
scales). An index whose multiplier was negative by round-off only cannot move off its bound
when it enters; it then stays free at 0 and is not priced again, so the method cannot cycle.
"""

from __future__ import annotations

import numpy as np

from mtlsolve.kernels._numba import kernel

#: the ridge δ on the unit diagonal of a Jacobi-scaled QP
RIDGE = 1e-14
#: relative tolerance of the pricing, per task (module docstring)
PRICE_TOL = 1e-14
#: a ratio-test step component below this fraction of the step's size is round-off (clipped, not blocking)
CLIP = 1e-15
#: the smallest pivot² a factorization takes as positive (the smallest normal float64)
PIVOT_FLOOR = float(np.finfo(np.float64).tiny)


def as_kernel_array(a) -> np.ndarray:
    """A writable C-contiguous float64 array, so every call hits the same compiled signature
    (numba types a read-only array, such as ``GradientSystem.gramian64``, separately)."""
    a = np.ascontiguousarray(a, dtype=np.float64)
    return a if a.flags.writeable else a.copy()


@kernel
def symmetrise_if_regular(K, floor):
    """Whether the float64 copy K of a computed Gramian is regular: every entry finite and every
    diagonal entry in [floor, ∞). If so, K is replaced by ½(K + Kᵀ) in place; otherwise it is
    left as it is. One pass for the common case of :attr:`mtlsolve.GradientSystem.gramian64`."""
    m = K.shape[0]
    for i in range(m):
        if not (K[i, i] >= floor and K[i, i] < np.inf):
            return False
        for j in range(m):
            if not np.isfinite(K[i, j]):
                return False
    for i in range(m):
        for j in range(i):
            K[i, j] = K[j, i] = 0.5 * (K[i, j] + K[j, i])
    return True


# ------------------------------------------------------------------ Cholesky factor
@kernel(inline=True)
def chol_append(L, k, Q, idx, j, shift, a, c):
    """Grow the Cholesky factor L (k x k) of M = Q[F, F] + c·a_Fa_Fᵀ + shift·I, F = idx[:k], by
    the index j: writes L[k, :k], sets idx[k] = j and returns the Schur complement
    M_jj − ‖L[k, :k]‖², the square of the new pivot, which the caller sets as L[k, k] (clamped,
    or rejected). ``a`` is read only when c ≠ 0 (it may be empty then)."""
    for r in range(k):
        i = idx[r]
        s = Q[i, j]
        if c != 0.0:
            s += c * a[i] * a[j]
        for t in range(r):
            s -= L[k, t] * L[r, t]
        L[k, r] = s / L[r, r]
    d = Q[j, j] + c * a[j] * a[j] + shift if c != 0.0 else Q[j, j] + shift
    for t in range(k):
        d -= L[k, t] * L[k, t]
    idx[k] = j
    return d


@kernel(inline=True)
def chol_delete(L, n, idx, k, x):
    """Remove position k from the factor L (n x n) of M[F, F], F = idx[:n]: rows below k shift up
    and the trailing block takes the rank-one update of the removed column, by Givens rotations
    (``x`` is a work vector)."""
    for i in range(k + 1, n):
        x[i] = L[i, k]
    for i in range(k, n - 1):
        idx[i] = idx[i + 1]
        for t in range(k):
            L[i, t] = L[i + 1, t]
        for t in range(k, i + 1):
            L[i, t] = L[i + 1, t + 1]
    for j in range(k, n - 1):
        ljj = L[j, j]
        xj = x[j + 1]
        r = np.sqrt(ljj * ljj + xj * xj)
        cos = r / ljj
        sin = xj / ljj
        L[j, j] = r
        for i in range(j + 1, n - 1):
            L[i, j] = (L[i, j] + sin * x[i + 1]) / cos
            x[i + 1] = cos * x[i + 1] - sin * L[i, j]


@kernel
def cholesky(M, L, floor):
    """L = the Cholesky factor of the symmetric M (read from its lower triangle; L may be M),
    column by column (faster than growing it row by row). A pivot² at or below ``floor`` (> 0)
    is clamped there, so the factor is of a nearby matrix; returns True when none was."""
    m = M.shape[0]
    exact = True
    for j in range(m):
        d = M[j, j]
        for t in range(j):
            d -= L[j, t] * L[j, t]
        if not d > floor:
            exact = False
            d = floor
        L[j, j] = np.sqrt(d)
        for i in range(j + 1, m):
            s = M[i, j]
            for t in range(j):
                s -= L[i, t] * L[j, t]
            L[i, j] = s / L[j, j]
    return exact


@kernel(inline=True)
def row_norms(K):
    """n_i = √K_ii, a negative round-off diagonal read as 0 (:func:`mtlsolve.gramian.norms`)."""
    m = K.shape[0]
    n = np.empty(m)
    for i in range(m):
        n[i] = np.sqrt(max(K[i, i], 0.0))
    return n


@kernel(inline=True)
def forward_row(L, k, b, y):
    """Row k of the forward substitution L y = b: y[k] = (b − L[k, :k]·y[:k]) / L[k, k]."""
    s = b
    for t in range(k):
        s -= L[k, t] * y[t]
    y[k] = s / L[k, k]


@kernel(inline=True)
def back_solve(L, n, t, z):
    """z[:n] = L⁻ᵀ t[:n] (t is overwritten; z may be t); row-wise, so L is read contiguously."""
    for i in range(n - 1, -1, -1):
        zi = t[i] / L[i, i]
        z[i] = zi
        for r in range(i):
            t[r] -= L[i, r] * zi


@kernel(inline=True)
def chol_solve(L, n, rhs, out):
    """out[:n] = (L Lᵀ)⁻¹ rhs[:n] for the lower-triangular factor L[:n, :n]."""
    for k in range(n):
        forward_row(L, k, rhs[k], out)
    back_solve(L, n, out, out)


@kernel
def normalised_factorable(K, shift):
    """Whether D⁻¹KD⁻¹ + shift·I (D = diag √K_ii, zero rows left zero) has a Cholesky factor."""
    m = K.shape[0]
    inv = np.empty(m)
    for i in range(m):
        inv[i] = 1.0 / np.sqrt(K[i, i]) if K[i, i] > 0.0 else 0.0
    Kn = np.empty((m, m))
    for i in range(m):
        for j in range(i + 1):
            Kn[i, j] = K[i, j] * inv[i] * inv[j]
        Kn[i, i] += shift
    return cholesky(Kn, Kn, PIVOT_FLOOR)


# ------------------------------------------------------------------ active-set QP core
@kernel
def unit_diagonal(K):
    """(Q, s): the Jacobi scaling Q = S⁻¹KS⁻¹, s_i = √K_ii (1 for a zero row, which stays zero),
    with an exact unit diagonal."""
    m = K.shape[0]
    s = np.empty(m)
    for i in range(m):
        s[i] = np.sqrt(K[i, i]) if K[i, i] > 0.0 else 1.0
    Q = np.empty((m, m))
    for i in range(m):
        for j in range(m):
            Q[i, j] = K[i, j] / (s[i] * s[j])
        if K[i, i] > 0.0:
            Q[i, i] = 1.0
    return Q, s


@kernel(inline=True)
def _append_free(L, nf, Q, q, a, c, delta, idx, j, ya, yb):
    """Append j to the factor of the free block (pivot clamped at δ), and ya = L⁻¹a_F (with the
    equality), yb = L⁻¹(−q_F) by their new last entry."""
    d = chol_append(L, nf, Q, idx, j, delta, a, c)
    # the Schur complement of a matrix ⪰ δI is ≥ δ: clamp round-off and slightly indefinite input
    L[nf, nf] = np.sqrt(max(d, delta))
    if a.shape[0] > 0:
        forward_row(L, nf, a[j], ya)
    forward_row(L, nf, -q[j], yb)


@kernel(inline=True)
def _shift(a, idx, nf):
    """c = 1/max_F a_i² for the free set idx[:nf]."""
    amax = 0.0
    for r in range(nf):
        amax = max(amax, a[idx[r]])
    return 1.0 / (amax * amax)


@kernel
def active_set(Q, q, qmag, a, delta, max_iter, v, free, L, idx, work):
    """min ½vᵀ(Q + δI)v + qᵀv over v ≥ 0, and aᵀv = 1 unless ``a`` is empty (module docstring).

    Starts from the feasible ``v`` with free set ``free`` (v is set to 0 off it); both are
    updated in place. ``L`` (m x m), ``idx`` (m) and ``work`` (5 x m) are work arrays; on
    return ``L`` holds the factor of the final free block Q_FF + c·a_Fa_Fᵀ + δI in the order
    ``idx[:|F|]``. Returns (|F|, iterations, converged).
    """
    m = Q.shape[0]
    equality = a.shape[0] > 0
    ya = work[0]
    yb = work[1]
    t = work[2]
    z = work[3]
    g = work[4]
    nf = 0
    for i in range(m):
        if free[i]:
            idx[nf] = i
            nf += 1
        else:
            v[i] = 0.0
    c = _shift(a, idx, nf) if equality and nf > 0 else 0.0
    for r in range(nf):
        _append_free(L, r, Q, q, a, c, delta, idx, idx[r], ya, yb)
    tol = PRICE_TOL * (m + 1)
    lam = 0.0
    last = -1
    converged = False
    it = 0
    while it < max_iter:
        it += 1
        if nf > 0:
            # the minimiser z on the free face: (Q_FF + c·a_Fa_Fᵀ + δI) z = λ'a_F − q_F, with λ'
            # fixed by aᵀz = 1 (λ' = 0 without the equality); z = L⁻ᵀ(λ'ya + yb)
            if equality:
                saa = 0.0
                sab = 0.0
                for r in range(nf):
                    saa += ya[r] * ya[r]
                    sab += ya[r] * yb[r]
                if not (saa > 0.0 and saa < np.inf and abs(sab) < np.inf):
                    break  # the factor overflowed (an indefinite Q beyond the ridge): keep the last iterate
                lam = (1.0 - sab) / saa
            for r in range(nf):
                t[r] = lam * ya[r] + yb[r] if equality else yb[r]
            back_solve(L, nf, t, z)
            # ratio test; an entry of z is taken as 0 (clipped) only when it is negligible both for
            # Σ_F v_j (next to Σ|z|) and for the weights a_j z_j (next to their largest)
            zsum = 0.0
            zmax = 0.0
            if equality:
                for r in range(nf):
                    zsum += abs(z[r])
                    zmax = max(zmax, abs(z[r]) * a[idx[r]])
            else:
                for r in range(nf):
                    zmax = max(zmax, abs(z[r]))
                zsum = zmax
            if not zsum < np.inf:
                break
            alpha = 1.0
            block = -1
            for r in range(nf):
                if z[r] < -CLIP * (min(zsum, zmax / a[idx[r]]) if equality else zmax):
                    vr = v[idx[r]]
                    step = vr / (vr - z[r])
                    if step < alpha:
                        alpha = step
                        block = r
            if block >= 0 and alpha == 0.0 and idx[block] == last:
                # the index just added cannot move off its bound: its multiplier was negative by
                # round-off only; take the face minimiser with that entry at 0
                block = -1
                alpha = 1.0
            for r in range(nf):
                i = idx[r]
                v[i] = max(v[i] + alpha * (z[r] - v[i]), 0.0)
            if block >= 0:
                i = idx[block]
                v[i] = 0.0
                free[i] = False
                chol_delete(L, nf, idx, block, t)
                nf -= 1
                if equality and c < 0.0625 * _shift(a, idx, nf):
                    # c fell below 1/16 of 1/max_F a_i²: refactor with c = 1/max_F a_i²
                    c = _shift(a, idx, nf)
                    for r in range(nf):
                        _append_free(L, r, Q, q, a, c, delta, idx, idx[r], ya, yb)
                else:
                    for r in range(block, nf):
                        if equality:
                            forward_row(L, r, a[idx[r]], ya)
                        forward_row(L, r, -q[idx[r]], yb)
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
            qv += qmag[j] * vj
            for i in range(m):
                g[i] += vj * Q[j, i]
        lamscale = nu * nu + qv + c
        jadd = -1
        if equality:
            # the a_i spread the rows' scales: the most negative relative multiplier enters
            worst = -tol
            for i in range(m):
                if not free[i]:
                    size = nu + qmag[i] + a[i] * lamscale
                    mu = g[i] - lam * a[i]
                    if mu < worst * size:
                        worst = mu / size
                        jadd = i
        else:
            # the most negative multiplier of the unit-diagonal problem enters (Dantzig's rule)
            best = 0.0
            for i in range(m):
                if not free[i] and g[i] < best and g[i] < -tol * (nu + qmag[i]):
                    best = g[i]
                    jadd = i
        if jadd < 0:
            converged = True
            break
        if equality and c * a[jadd] * a[jadd] > 4.0:
            c = 1.0 / (a[jadd] * a[jadd])
            for r in range(nf):
                _append_free(L, r, Q, q, a, c, delta, idx, idx[r], ya, yb)
        _append_free(L, nf, Q, q, a, c, delta, idx, jadd, ya, yb)
        free[jadd] = True
        last = jadd
        nf += 1
    return nf, it, converged


# ------------------------------------------------------------------ certificates
@kernel
def simplex_violation(w):
    """How far w is from the probability simplex: max(max_i −w_i, |Σw − 1|)."""
    total = 0.0
    worst = 0.0
    for i in range(w.shape[0]):
        total += w[i]
        worst = max(worst, -w[i])
    return max(worst, abs(total - 1.0))

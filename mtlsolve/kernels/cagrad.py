"""CAGrad's inner problem (Liu et al., NeurIPS 2021, arXiv 2110.14048, eq. (4)–(5)).

With g_0 = Gᵀ1/m, b = K1/m (b_i = g_i·g_0) and φ = c‖g_0‖, the dual is

    w* = argmin_{w ∈ Δ_m} F(w),   F(w) = bᵀw + φ√(wᵀKw) = g_wᵀg_0 + φ‖g_w‖,

and the update is d = g_0 + φ g_w*/‖g_w*‖. The kernel does not solve the dual
directly. CAGrad's primal max_{‖d − g_0‖ ≤ φ} min_i g_i·d has the value
θ* = F(w*), and for every θ the projection of g_0 onto P_θ = {d : g_i·d ≥ θ}
is d(θ) = g_0 + Gᵀν(θ) with

    ν(θ) = argmin_{ν ≥ 0} ½νᵀKν + (b − θ1)ᵀν          (a non-negative QP),

so p(θ) = φ²/2 − ½‖d(θ) − g_0‖² is the optimal value plus φ²/2: concave and
non-increasing. θ* is its root (the largest θ whose P_θ meets the ball), d* =
d(θ*), ν* = φw*/‖g_w*‖, so w* = ν*/1ᵀν* and the update's weights are
1/m + ν*. Equivalently θ* = min_{ν ≥ 0} (½νᵀKν + bᵀν + φ²/2)/1ᵀν, which
Dinkelbach's method (Newton's method on p from the right) minimises; on a
fixed free set F, ν_F(θ) = θK_FF⁻¹1 − K_FF⁻¹b_F is affine and p a concave
parabola, so once the free set is right its root is computed in closed form
and checked against the KKT conditions: the result is exact, not iterated
to a tolerance.

Degenerate cases, none producing NaN:

- φ = 0 (c = 0 or g_0 = 0): d = g_0, ν = 0; w* is a vertex minimising b.
- θ* = 0: every d of the ball with Gd ≥ 0 is optimal (d is unique whenever
  θ* ≠ 0). This happens when 0 ∈ conv{g_i} and dist(g_0, P_0) ≤ φ (the dual
  optimum has g_w* = 0), or at c = 1 exactly when 0 ∈ conv{g_i}. The kernel
  returns the optimal d nearest g_0, the projection of g_0 onto
  P_0 = {d : Gd ≥ 0}, which is also the limit of d(θ*) as the data approach
  such a case, flagged ``degenerate``; w* is then a minimiser with F(w*) = 0
  (where g_w* = 0, only to about √δ).
  For θ > 0 the QP is unbounded when 0 ∈ conv{g_i}; the ridge bounds it with
  y ~ θ/δ, which the kernel recognises because the resulting d misses
  min_i g_i·d = θ with the unregularised K.

The QPs are solved in the Jacobi-scaled variable y = s∘ν (s_i = ‖g_i‖) by the
active-set core of :mod:`mtlsolve.kernels._dense` (Nocedal & Wright, Alg. 16.3, bounds
only), warm-started from the previous θ's solution and free set; a ridge δ = 1e-14 on
the unit diagonal keeps dependent free sets (duplicated gradients, n < m) well posed,
and the final closed-form root is recomputed without it where Q_FF allows (pivots
above 1e-10), so the ridge does not bias the answer. The optimality tests of the
QPs are relative to each row's own terms (Σy + |b̃_j| + |θ|/s_j), so rows whose
norms span many decades are priced alike.

Precision: on an indefinite K (a Gramian accumulated in float32 has eigenvalues
down to about −m·ρ) the QP for θ > 0 is unbounded along the negative directions
and the weights blow up; such a K is first replaced by its PSD part
(:func:`mtlsolve.gramian.psd_repair`, on the normalised Gramian). Every solve is then certified
(:func:`cagrad_residual`, :func:`certified_cagrad`).
"""

from __future__ import annotations

import numpy as np

from mtlsolve.gramian import psd_repair
from mtlsolve.kernels import _cvx
from mtlsolve.kernels._dense import (
    RIDGE,
    active_set,
    as_kernel_array,
    chol_append,
    chol_solve,
    normalised_factorable,
    simplex_violation,
    unit_diagonal,
)
from mtlsolve.kernels._numba import kernel

#: outer (Dinkelbach) iteration cap; each outer step costs one warm-started QP solve
MAX_OUTER = 60


@kernel
def _nnqp(Q, q, qmag, delta, y, free, L, idx, max_iter):
    """min ½yᵀ(Q + δI)y + qᵀy over y ≥ 0 from the feasible y with free set ``free`` (both updated
    in place): the active-set core without the equality; ``qmag`` ≥ |q| are the sizes of the
    terms q was computed from. Returns (|F|, iterations, converged); L holds the factor of the
    final free block, in the order ``idx[:|F|]``."""
    return active_set(Q, q, qmag, np.empty(0), delta, max_iter, y, free, L, idx, np.empty((5, Q.shape[0])))


@kernel
def _ratio(Qs, bs, e, y, phi2, delta):
    """(N, N/D) with N = ½yᵀ(Q + δI)y + bᵀy + φ²/2 (p(0) when y = y(0)) and D = eᵀy:
    Dinkelbach's update N/D is ≥ θ* for every y ≥ 0, y ≠ 0 (inf for y = 0)."""
    m = Qs.shape[0]
    num = 0.5 * phi2
    den = 0.0
    for i in range(m):
        if y[i] != 0.0:
            t = 0.0
            for j in range(m):
                t += Qs[i, j] * y[j]
            num += y[i] * (0.5 * (t + delta * y[i]) + bs[i])
            den += e[i] * y[i]
    return num, (num / den if den > 0.0 else np.inf)


@kernel
def _cagrad(K, c, max_iter):
    m = K.shape[0]
    Qs, s = unit_diagonal(K)
    b = np.zeros(m)
    g0sq = 0.0
    for i in range(m):
        for j in range(m):
            b[i] += K[i, j]
        b[i] /= m
        g0sq += b[i] / m
    phi = c * np.sqrt(max(g0sq, 0.0))
    phi2 = phi * phi
    nu = np.zeros(m)
    w = np.zeros(m)
    if phi == 0.0:
        # F(w) = bᵀw: a vertex; d = g_0
        k = np.argmin(b)
        w[k] = 1.0
        return w, nu, b[k], 0, True, False
    bs = np.empty(m)
    e = np.empty(m)
    bmax = 0.0
    for i in range(m):
        bs[i] = b[i] / s[i]
        e[i] = 1.0 / s[i]
        bmax = max(bmax, abs(b[i]))
    delta = RIDGE
    y = np.zeros(m)
    free = np.zeros(m, np.bool_)
    work = np.empty((m + 6, m + 1))  # the factor L (first m rows), then work vectors
    idx = np.empty(m, np.int64)
    # θ_0 = min_i F(e_i) ≥ θ*, attained by y = t·e_i with t = φ/√(Q_ii + δ)
    best = 0
    theta = np.inf
    for i in range(m):
        f = b[i] + phi * s[i] * np.sqrt(Qs[i, i] + delta)
        if f < theta:
            theta = f
            best = i
    y[best] = phi / np.sqrt(Qs[best, best] + delta)
    free[best] = True
    theta, iterations, converged = _dinkelbach(Qs, bs, e, phi2, delta, theta, y, free, work, idx, max_iter)
    scale = bmax + phi2
    # For θ > 0 the QP is bounded only if 0 ∉ conv{g_i}; the ridge bounds it anyway, with
    # y ~ θ/δ. A genuine solution has min_i g_i·d = θ with the unregularised K; if not,
    # 0 ∈ conv{g_i} and θ* ≤ 0. At θ* = 0 (that case, or a root at 0 to round-off) every d of
    # the ball with Gd ≥ 0 is optimal: take the one nearest g_0, the projection onto P_0.
    artefact = False
    if theta > 1e-12 * scale:
        gd = np.inf
        for i in range(m):
            t = bs[i]
            for j in range(m):
                t += Qs[i, j] * y[j]
            gd = min(gd, s[i] * t)
        artefact = not gd >= theta - 1e-9 * (abs(theta) + scale)
    if artefact or abs(theta) <= 1e-12 * scale:
        L = work[:m]
        if artefact:
            # y grew along (Q_FF + δI)⁻¹e_F on its free set: w ∝ that direction has g_w ≈ 0
            nf = 0
            no_rank_one = np.empty(0)
            for i in range(m):
                if free[i]:
                    d = chol_append(L, nf, Qs, idx, i, delta, no_rank_one, 0.0)
                    L[nf, nf] = np.sqrt(max(d, delta))  # pivots clamped at δ, as in the QP core
                    nf += 1
            for r in range(nf):
                work[m, r] = e[idx[r]]
            chol_solve(L, nf, work[m], work[m + 1])
            for i in range(m):
                y[i] = 0.0
            for r in range(nf):
                y[idx[r]] = max(work[m + 1, r], 0.0)
        _weights_of(y, s, w)
        y0 = np.zeros(m)
        free0 = np.zeros(m, np.bool_)
        qmag = work[m + 5]
        for i in range(m):
            qmag[i] = abs(bs[i])
        nf, it, conv0 = _nnqp(Qs, bs, qmag, delta, y0, free0, L, idx, max_iter)
        iterations += it
        if nf > 0 and _exact_factor(L, Qs, idx, nf):
            alpha = work[m + 2]
            if _face_root(Qs, bs, e, phi2, L, idx, nf, free0, work[m], alpha, work[m + 3], work[m + 4], True):
                _set_free(y0, work[m + 4], idx, nf)
        if _ratio(Qs, bs, e, y0, phi2, delta)[0] >= -1e-12 * scale:
            # dist(g_0, P_0) ≤ φ: θ* = 0
            for i in range(m):
                nu[i] = y0[i] / s[i]
            return w, nu, 0.0, iterations, conv0, True
        if artefact:
            y[:] = y0
            free[:] = free0
            theta, it, converged = _dinkelbach(
                Qs, bs, e, phi2, delta, _ratio(Qs, bs, e, y, phi2, delta)[1], y, free, work, idx, max_iter
            )
            iterations += it
    for i in range(m):
        nu[i] = y[i] / s[i]
    _weights_of(y, s, w)
    return w, nu, theta, iterations, converged, False


@kernel
def _projection(K, max_iter):
    """ν ≥ 0 with g_0 + Gᵀν the projection of g_0 onto {d : Gd ≥ 0}: argmin_{ν ≥ 0} ½νᵀKν + bᵀν
    (b = K1/m), solved in the Jacobi-scaled variable like the rest of the kernel."""
    m = K.shape[0]
    Qs, s = unit_diagonal(K)
    bs = np.zeros(m)
    qmag = np.zeros(m)
    for i in range(m):
        for j in range(m):
            bs[i] += K[i, j]
        bs[i] /= m * s[i]
        qmag[i] = abs(bs[i])
    y = np.zeros(m)
    free = np.zeros(m, np.bool_)
    _nnqp(Qs, bs, qmag, RIDGE, y, free, np.empty((m, m)), np.empty(m, np.int64), max_iter)
    for i in range(m):
        y[i] /= s[i]
    return y


@kernel
def _weights_of(y, s, w):
    """w = ν/1ᵀν with ν = y/s (uniform for y = 0)."""
    m = y.shape[0]
    total = 0.0
    for i in range(m):
        w[i] = y[i] / s[i]
        total += w[i]
    for i in range(m):
        w[i] = w[i] / total if total > 0.0 else 1.0 / m


@kernel
def _dinkelbach(Qs, bs, e, phi2, delta, theta, y, free, work, idx, max_iter):
    """From θ ≥ θ* and a feasible y (with its free set), decrease θ to the root of p: Dinkelbach
    steps θ ← R(y(θ)), finished by the exact root on the free set once that set is optimal.
    Returns (θ*, iterations, converged) with y = y(θ*)."""
    m = Qs.shape[0]
    L = work[:m]
    rhs = work[m]
    z = work[m + 1]
    q = work[m + 2]
    alpha = work[m + 3]
    beta = work[m + 4]
    iterations = 0
    qmag = work[m + 5]
    for _ in range(MAX_OUTER):
        for i in range(m):
            q[i] = bs[i] - theta * e[i]
            qmag[i] = abs(bs[i]) + abs(theta) * e[i]
        nf, it, _ = _nnqp(Qs, q, qmag, delta, y, free, L, idx, max_iter)
        iterations += it + 1
        if nf > 0 and _face_root(Qs, bs, e, phi2, L, idx, nf, free, rhs, alpha, beta, z, False):
            # the free set is optimal: y_F(θ*) in closed form; without the ridge where Q_FF allows
            theta = alpha[nf]
            _set_free(y, z, idx, nf)
            if _exact_factor(L, Qs, idx, nf) and _face_root(
                Qs, bs, e, phi2, L, idx, nf, free, rhs, alpha, beta, z, False
            ):
                theta = alpha[nf]
                _set_free(y, z, idx, nf)
            return theta, iterations, True
        new = _ratio(Qs, bs, e, y, phi2, delta)[1]
        if not new < theta - 1e-15 * (abs(theta) + abs(new)):
            return min(theta, new), iterations, True
        theta = new
    return theta, iterations, False


@kernel
def _face_root(Qs, bs, e, phi2, L, idx, nf, free, rhs, alpha, beta, z, at_zero):
    """On the free set F (factor L of Q_FF): y_F(θ) = θα − β with α = Q_FF⁻¹e_F, β = Q_FF⁻¹b_F,
    and p(θ) = φ²/2 − ½(Aθ² − 2Cθ + B) with A = e_Fᵀα, C = e_Fᵀβ, B = b_Fᵀβ. Takes its larger
    root (θ = 0 when ``at_zero``), writes y_F(θ) to z and θ to alpha[nf]; True if that
    satisfies the KKT conditions of the whole QP at θ."""
    for r in range(nf):
        rhs[r] = e[idx[r]]
    chol_solve(L, nf, rhs, alpha)
    for r in range(nf):
        rhs[r] = bs[idx[r]]
    chol_solve(L, nf, rhs, beta)
    th = 0.0
    if not at_zero:
        A = 0.0
        B = 0.0
        C = 0.0
        for r in range(nf):
            A += e[idx[r]] * alpha[r]
            C += e[idx[r]] * beta[r]
            B += bs[idx[r]] * beta[r]
        disc = C * C - A * (B - phi2)
        if not (A > 0.0 and disc >= 0.0):
            return False
        root = np.sqrt(disc)
        th = (C + root) / A if C >= 0.0 else (B - phi2) / (C - root)
    ok = _face_is_optimal(Qs, bs, e, th, alpha, beta, idx, nf, free, z)
    alpha[nf] = th
    return ok


@kernel
def _exact_factor(L, Q, idx, nf):
    """Refactor Q_FF (order idx[:nf]) without the ridge; False if a pivot² falls below 1e-10
    (of the unit diagonal), where the ridged factor is kept."""
    no_rank_one = np.empty(0)
    for k in range(nf):
        d = chol_append(L, k, Q, idx, idx[k], 0.0, no_rank_one, 0.0)
        if not d > 1e-10:
            return False
        L[k, k] = np.sqrt(d)
    return True


@kernel
def _set_free(y, z, idx, nf):
    for i in range(y.shape[0]):
        y[i] = 0.0
    for r in range(nf):
        y[idx[r]] = z[r]


@kernel
def _face_is_optimal(Qs, bs, e, th, alpha, beta, idx, nf, free, yF):
    """KKT at θ for the face solution y_F = θα − β (written to yF): y_F ≥ 0 and
    (Qy + b − θe)_j ≥ 0 off the free set, to round-off."""
    m = Qs.shape[0]
    ymax = 0.0
    for r in range(nf):
        yF[r] = th * alpha[r] - beta[r]
        ymax = max(ymax, abs(yF[r]))
    if ymax == 0.0:
        return False
    for r in range(nf):
        if yF[r] < -1e-12 * ymax:
            return False
        yF[r] = max(yF[r], 0.0)
    for j in range(m):
        if not free[j]:
            g = bs[j] - th * e[j]
            for r in range(nf):
                g += Qs[j, idx[r]] * yF[r]
            # relative to the size of the terms of row j (scale-free)
            if g < -1e-12 * (nf * ymax + abs(bs[j]) + abs(th) * e[j]):
                return False
    return True


def cagrad_dual(K: np.ndarray, c: float, *, max_iter: int | None = None):
    """Solve CAGrad's dual for the Gramian K (m x m, symmetric PSD) and c ≥ 0.

    Returns (w, nu, value, iterations, converged, degenerate): ``w`` = argmin_{w ∈ Δ_m} F(w);
    ``nu`` ≥ 0 with d_raw = g_0 + Gᵀnu (= φ w/‖g_w‖ in the regular case), so the update's
    weights are 1/m + nu; ``value`` = F(w) = min_i g_i·d_raw; ``degenerate`` when the
    optimum has g_w = 0 (module docstring); w is then the min-norm point of conv{g_i}
    (:func:`mtlsolve.kernels.simplex_qp.min_norm_simplex`, F(w) = 0 to round-off).
    A K that is indefinite beyond round-off (a Gramian accumulated in float32) is replaced
    by its PSD part first (:func:`mtlsolve.gramian.psd_repair`): on an indefinite K the dual is unbounded
    along the negative directions.
    """
    return _dual(psd_repair(as_kernel_array(K), RIDGE)[0], c, max_iter)


def _dual(K: np.ndarray, c: float, max_iter: int | None):
    m = K.shape[0]
    cap = 20 * m + 100 if max_iter is None else int(max_iter)
    w, nu, value, it, converged, degenerate = _cagrad(K, float(c), cap)
    if degenerate:
        from mtlsolve.kernels.simplex_qp import min_norm_simplex

        w = min_norm_simplex(K)[0]
    return w, nu, float(value), int(it), bool(converged), bool(degenerate)


@kernel
def _residual(K, c, w, nu, degenerate, rho):
    """The certificate of :func:`cagrad_residual`."""
    m = K.shape[0]
    n = np.empty(m)
    b = np.zeros(m)
    g0sq = 0.0
    top = 0.0
    for i in range(m):
        n[i] = np.sqrt(max(K[i, i], 0.0))
        top = max(top, n[i])
        for j in range(m):
            b[i] += K[i, j]
        b[i] /= m
        g0sq += b[i] / m
    phi = c * np.sqrt(max(g0sq, 0.0))
    # w ∈ Δ, ν ≥ 0
    worst = simplex_violation(w)
    s_nu = 0.0
    s_x = 0.0
    s_w = 0.0
    for i in range(m):
        s_nu += abs(nu[i]) * n[i]
        s_x += abs(1.0 / m + nu[i]) * n[i]
        s_w += abs(w[i]) * n[i]
    if s_nu > 0.0:
        for i in range(m):
            worst = max(worst, -nu[i] * n[i] / s_nu)
    # products g_i·d_raw = (b + Kν)_i, their minimum θ, ‖d_raw − g_0‖² = νᵀKν and wᵀKw
    theta = np.inf
    nkn = 0.0
    wkw = 0.0
    bw = 0.0
    for i in range(m):
        t = 0.0
        u = 0.0
        for j in range(m):
            t += K[i, j] * nu[j]
            u += K[i, j] * w[j]
        theta = min(theta, b[i] + t)
        nkn += nu[i] * t
        wkw += w[i] * u
        bw += b[i] * w[i]
    # the ball for every Gramian within ρ of K (νᵀKν moves by ≤ ρS_ν², φ² by ≤ c²ρS_0²):
    # √(νᵀKν + ρS_ν²) ≤ √(φ² − c²ρS_0²) + residual·S
    if s_nu > 0.0:
        s_0 = 0.0
        for i in range(m):
            s_0 += n[i] / m
        radius = np.sqrt(max(phi * phi - c * c * rho * s_0 * s_0, 0.0))
        worst = max(worst, (np.sqrt(max(nkn, 0.0) + rho * s_nu * s_nu) - radius) / s_x)
    scale = top * s_x
    if scale > 0.0:
        # zero duality gap: F(w) = bᵀw + φ‖g_w‖ = min_i g_i·d_raw
        gap = abs(bw + phi * np.sqrt(max(wkw, 0.0)) - theta) / scale
        if degenerate and s_w > 0.0:
            # or, as the root of wᵀKw ≈ 0 is only accurate to √ε: θ* = 0 because d_raw has
            # g_i·d_raw ≥ 0 and 0 ∈ conv{g_i} (the min-norm point w has wᵀKw ≈ 0)
            gap = min(gap, max(-theta / scale, wkw / (s_w * s_w)))
        worst = max(worst, gap)
    return worst


def cagrad_residual(K: np.ndarray, c: float, w: np.ndarray, nu: np.ndarray, degenerate: bool, roundoff: float) -> float:
    """The scale-free certificate of a CAGrad solve (w, ν) on K, with x = 1/m + ν the weights
    of d_raw, n_i = √K_ii, S_ν = Σν_i n_i, S = Σx_i n_i and ρ = ``roundoff``: the largest of

    * w ∈ Δ and ν ≥ 0 (violations, relative);
    * the ball ‖d_raw − g_0‖ ≤ φ for every Gramian within ρ of K (νᵀKν moves by up to ρS_ν²
      and φ² by up to c²ρS_0², S_0 = Σn_i/m): (√(νᵀKν + ρS_ν²) − √(φ² − c²ρS_0²))/S, so a
      d_raw that only K's round-off puts inside the ball, or a radius φ = c‖g_0‖ that K
      cannot resolve (nearly cancelling gradients), fails;
    * optimality: the duality gap |F(w) − min_i g_i·d_raw| / (max_i n_i · S) (weak duality makes
      F(w) ≥ min_i g_i·d for every d of the ball, so a zero gap certifies both); in the
      ``degenerate`` case (value 0, where √(wᵀKw) is only known to √ε) alternatively
      max(−min_i g_i·d_raw/(max_i n_i·S), wᵀKw/(Σw_i n_i)²): d_raw has g_i·d_raw ≥ 0 and
      0 ∈ conv{g_i}, so no d does better than 0.
    """
    K = as_kernel_array(K)
    w = as_kernel_array(w)
    nu = as_kernel_array(nu)
    return float(_residual(K, float(c), w, nu, bool(degenerate), float(roundoff)))


@kernel
def _certified_dual(K, c, max_iter, roundoff, shift):
    """The common case of :func:`certified_cagrad` in one call: a K whose normalised form (plus
    ``shift``·I) has a Cholesky factor and a regular solve, with its residual; the residual is
    −1 when K needs the PSD repair or the solve is degenerate."""
    m = K.shape[0]
    if not normalised_factorable(K, shift):
        return np.zeros(m), np.zeros(m), 0.0, 0, False, -1.0
    w, nu, value, iterations, _, degenerate = _cagrad(K, c, max_iter)
    if degenerate:
        return w, nu, value, iterations, True, -1.0
    return w, nu, value, iterations, False, _residual(K, c, w, nu, False, roundoff)


def certified_cagrad(K: np.ndarray, c: float, roundoff: float, *, max_iter: int | None = None):
    """:func:`cagrad_dual` with its certificate (:func:`cagrad_residual`): (w, nu, value, diagnostics).

    ``diagnostics``: ``iterations``, ``degenerate``, ``repaired`` (K was replaced by its PSD part),
    ``residual`` (measured on the Gramian solved), ``tolerance`` (certificate_tolerance(ρ)),
    ``converged``. When the residual exceeds the tolerance, t ≤ 1 is the largest factor that puts
    g_0 + tGᵀν in the ball for every Gramian within ρ of K; the dual is solved again for the
    radius tφ (``radius_scale``) and that answer certified against the original c (the smaller
    radius costs the max-min value (1 − t)·φ·‖g_w‖, as dθ*/dφ = ‖g_w‖, which its duality gap
    then shows). Where 0 ∈ conv{g_i} within the certificate tolerance (the min-norm point's
    wᵀKw ≤ tol·(Σw_i n_i)²) the degenerate answer (value 0, d_raw the projection of g_0 onto
    {Gd ≥ 0}) is tried next. If those fail too (a system the data's precision cannot resolve,
    e.g. nearly opposed gradients in float32), ``converged`` is False and ``fallback`` names what is returned: d_raw = g_0 + tGᵀν
    (t = 0, the mean gradient g_0, where the radius c‖g_0‖ itself is not resolved).
    """
    from mtlsolve.gramian import certificate_tolerance

    K = as_kernel_array(K)
    cap = 20 * K.shape[0] + 100 if max_iter is None else int(max_iter)
    w, nu, value, iterations, degenerate, residual = _certified_dual(K, float(c), cap, float(roundoff), 0.5 * RIDGE)
    repaired = False
    if residual < 0.0:  # K needs its PSD repair, or the solve is degenerate: the general path
        K, repaired = psd_repair(K, RIDGE)
        w, nu, value, iterations, _, degenerate = _dual(K, c, max_iter)
        residual = cagrad_residual(K, c, w, nu, degenerate, roundoff)
    tolerance = certificate_tolerance(roundoff)
    info = {
        "iterations": iterations,
        "degenerate": degenerate,
        "repaired": repaired,
        "residual": residual,
        "tolerance": float(tolerance),
        "converged": bool(residual <= tolerance),
    }
    if not info["converged"]:
        t = _into_ball(K, c, nu, roundoff)
        if 0.0 < t < 1.0:
            # the ball is not certified (the radius or ‖Gᵀν‖ carry K's round-off): solve for the
            # largest radius tφ the data certify and certify that answer against the original c
            w2, nu2, _, it2, _, degenerate2 = _dual(K, t * c, max_iter)
            t2 = _into_ball(K, c, nu2, roundoff)
            nu2 = nu2 * t2
            residual2 = max(cagrad_residual(K, c, w2, nu2, degenerate2, roundoff), 1.0 - t2)
            info["iterations"] += it2
            if residual2 <= tolerance:
                value = float((K.sum(axis=1) / K.shape[0] + K @ nu2).min())
                info.update(radius_scale=t, degenerate=degenerate2, residual=residual2, converged=True)
                return w2, nu2, value, info
        # 0 ∈ conv{g_i} within the data's precision (the min-norm point is certified ≈ 0): the
        # value θ* = 0 is then consistent with the data, and the projection of g_0 onto
        # {Gd ≥ 0} (the degenerate answer) may be certified where the regular one is not
        from mtlsolve.kernels.simplex_qp import certified_min_norm

        w0, mn = certified_min_norm(K, roundoff)
        n = np.sqrt(np.clip(np.diag(K), 0.0, None))
        if mn["converged"] and w0 @ K @ w0 <= tolerance * (w0 @ n) ** 2:
            nu0 = _projection(K, 20 * K.shape[0] + 100 if max_iter is None else int(max_iter))
            residual0 = cagrad_residual(K, c, w0, nu0, True, roundoff)
            if residual0 <= tolerance:
                value = float((K.sum(axis=1) / K.shape[0] + K @ nu0).min())
                info.update(degenerate=True, residual=residual0, converged=True)
                return w0, nu0, value, info
        # fallback: d_raw pulled back into the ball for every Gramian within ρ of K
        nu = nu * t
        value = float((K.sum(axis=1) / K.shape[0] + K @ nu).min())
        info["fallback"] = "d_raw = g_0 + t·Gᵀν scaled into the ball (t ≤ 1; t = 0 is the mean gradient g_0)"
        info["message"] = "CAGrad's max-min direction is not resolved by the Gramian's precision"
    return w, nu, value, info


def _into_ball(K: np.ndarray, c: float, nu: np.ndarray, roundoff: float) -> float:
    """The largest t ≤ 1 with √(t²(νᵀKν + ρS_ν²)) ≤ √(φ² − c²ρS_0²): tν keeps d_raw in the ball
    for every Gramian within ρ of K (0 when the radius is not resolved)."""
    m = K.shape[0]
    n = np.sqrt(np.clip(np.diag(K), 0.0, None))
    radius2 = c**2 * (max(K.sum(), 0.0) / m**2 - roundoff * (n.sum() / m) ** 2)
    length2 = max(float(nu @ K @ nu), 0.0) + roundoff * float(nu @ n) ** 2
    if radius2 <= 0.0 or length2 <= 0.0:
        return 0.0 if length2 > 0.0 else 1.0
    return min(1.0, float(np.sqrt(radius2 / length2)))


def cagrad_objective(K: np.ndarray, c: float, w: np.ndarray) -> float:
    """F(w) = bᵀw + φ√(wᵀKw) with b = K1/m, φ = c‖g_0‖."""
    K = np.asarray(K, dtype=np.float64)
    m = K.shape[0]
    b = K.sum(axis=1) / m
    phi = c * np.sqrt(max(b.sum() / m, 0.0))
    return float(b @ w + phi * np.sqrt(max(w @ K @ w, 0.0)))


# ------------------------------------------------------------ cvxpy reference
@_cvx.cached
def _reference_problem(m: int):
    import cvxpy as cp

    F = cp.Parameter((m, m), name="phiF")  # φ times a factor of K: a product of Parameters is not DPP
    b = cp.Parameter(m, name="b")
    w = cp.Variable(m, name="w")
    problem = cp.Problem(cp.Minimize(b @ w + cp.norm(F @ w, 2)), [w >= 0, cp.sum(w) == 1])
    assert problem.is_dpp()
    return problem, F, b, w


def reference_cagrad_dual(K: np.ndarray, c: float, *, polish: bool = True) -> tuple[np.ndarray, float]:
    """cvxpy (Clarabel) solution of min_{w ∈ Δ_m} bᵀw + φ‖Fw‖ (FᵀF = K), built once per m.

    K is divided by max_i K_ii first (w* does not change; Clarabel at tight tolerances
    stalls on badly scaled data). ``polish``: the interior-point w is accurate to about
    1e-5 near weakly active bounds, so the stationarity conditions on its support S are
    then solved directly and the result kept if feasible and no worse: with
    [K_SS 1; 1ᵀ 0] solved for the right-hand sides (0; 1) → x_0 and (−b_S; 0) → x_1,
    w_S = x_0 + σx_1, σ² = x_0ᵀKx_0 / (φ² − x_1ᵀKx_1) (x_0ᵀKx_1 = 0 since 1ᵀx_1 = 0).
    Returns (w, F(w)).
    """
    K = np.asarray(K, dtype=np.float64)
    m = K.shape[0]
    scale = float(np.diag(K).max())
    Kn = K / scale if scale > 0 else K
    b = Kn.sum(axis=1) / m
    phi = c * np.sqrt(max(b.sum() / m, 0.0))
    problem, F, b_param, w = _reference_problem(m)
    F.value = phi * _cvx.psd_factor(Kn)
    b_param.value = b
    _cvx.solve(problem)
    w = np.asarray(w.value, dtype=np.float64).clip(0.0, None)
    w /= w.sum()
    if polish and phi > 0:
        w = _polish(Kn, b, phi, w)
    return w, cagrad_objective(K, c, w)


def _polish(K: np.ndarray, b: np.ndarray, phi: float, w: np.ndarray) -> np.ndarray:
    support = w > 1e-6 * w.max()
    n = int(support.sum())
    kkt = np.zeros((n + 1, n + 1))
    kkt[:n, :n] = K[np.ix_(support, support)]
    kkt[:n, n] = kkt[n, :n] = 1.0
    rhs = np.zeros((n + 1, 2))
    rhs[n, 0] = 1.0
    rhs[:n, 1] = -b[support]
    x = np.linalg.lstsq(kkt, rhs, rcond=None)[0][:n]
    Ks = K[np.ix_(support, support)]
    a, gamma = x[:, 0] @ Ks @ x[:, 0], x[:, 1] @ Ks @ x[:, 1]
    if not phi**2 > gamma:
        return w
    polished = np.zeros_like(w)
    polished[support] = x[:, 0] + np.sqrt(max(a, 0.0) / (phi**2 - gamma)) * x[:, 1]
    objective = lambda v: b @ v + phi * np.sqrt(max(v @ K @ v, 0.0))  # noqa: E731
    better = objective(polished) <= objective(w) + 1e-15 * np.abs(K).max()
    return polished if polished.min() >= 0 and abs(polished.sum() - 1) < 1e-9 and better else w

"""The linear programs of EPO (Mahapatra & Rajan, ICML 2020, §4), over the probability simplex.

Both EPO modes solve an LP of the form

    max cᵀα  s.t.  α ∈ Δ_m,  Aα ≥ b                                   (LP)

with rows of A taken from the Gramian K = GGᵀ (a row (Kα)_j ≥ b_j says the update
d = Gᵀα changes task j's loss at a bounded rate: g_j·d ≥ b_j). The fast kernel is a
dense two-phase simplex method on the tableau (Dantzig pricing, switching for good to
Bland's rule at the first degenerate pivot, so it cannot cycle), in numba; it returns
an optimal vertex, or reports the LP infeasible. Each row of [A | b] is divided by its
largest entry and c by its largest entry first, so the tolerances below are relative.
The cvxpy reference (Clarabel) solves the same LP; where the optimum is not unique it
returns another optimal point (an interior point of the optimal face), with the same
objective value.

:func:`epo_weights` builds the EPO problem of one step from K, the losses L and the
preference r and solves it with either.

Certificate (:func:`certified_simplex_lp`): at the optimal vertex the primal and dual
solutions of the final basis are recomputed from the scaled data (Gaussian elimination
with partial pivoting: the tableau carries the round-off of every pivot, and a degenerate
pivot on a tiny entry amplifies it) and LP duality is checked on the original data
(:func:`lp_residual`: feasibility of both, zero gap, each row relative to its own terms).
An infeasible verdict is checked by the Farkas certificate of phase 1.
"""

from __future__ import annotations

import numpy as np

from mtlsolve.gramian import psd_repair
from mtlsolve.kernels import _cvx
from mtlsolve.kernels._dense import RIDGE, simplex_violation
from mtlsolve.kernels._numba import kernel

#: reduced costs below −COST_TOL are improving (data scaled to O(1))
COST_TOL = 1e-12
#: smallest tableau entry used as a pivot
PIVOT_TOL = 1e-11
#: a phase-1 optimum above this (sum of the artificials, data scaled to O(1)) means infeasible
FEAS_TOL = 1e-9
#: degenerate pivots in a row after which the pricing switches to Bland's rule
DEGENERATE_STREAK = 10
#: EPO's floor on m·l̂_i inside the log of the balance direction (LibMOON), so a zero loss stays finite
LOG_FLOOR = 1e-3


@kernel
def _pivot(T, basis, r, q):
    rows, cols = T.shape
    piv = T[r, q]
    for j in range(cols):
        T[r, j] /= piv
    for i in range(rows):
        f = T[i, q]
        if i != r and f != 0.0:
            for j in range(cols):
                T[i, j] -= f * T[r, j]
            T[i, q] = 0.0
    T[r, q] = 1.0
    basis[r] = q


@kernel
def _iterate(T, basis, ncols, max_iter, it):
    """Minimise the objective row (the last row of T: reduced costs, then −value) over the
    first ``ncols`` columns. Returns (iterations so far, optimal).

    Dantzig's rule, and Bland's after ``DEGENERATE_STREAK`` degenerate pivots in a row (until
    the next pivot that moves): at a vertex Bland's rule cannot cycle and between vertices the
    objective decreases, so the method terminates."""
    R = T.shape[0] - 1
    rhs = T.shape[1] - 1
    streak = 0
    while it < max_iter:
        bland = streak >= DEGENERATE_STREAK
        q = -1
        best = -COST_TOL
        for j in range(ncols):
            if T[R, j] < best:
                q = j
                if bland:
                    break
                best = T[R, j]
        if q < 0:
            return it, True
        r = -1
        ratio = np.inf
        for i in range(R):
            if T[i, q] > PIVOT_TOL:
                t = T[i, rhs] / T[i, q]
                if t < ratio or (t == ratio and basis[i] < basis[r]):
                    ratio = t
                    r = i
        if r < 0:  # unbounded: impossible over the simplex, only through round-off
            return it, False
        streak = streak + 1 if ratio <= 0.0 else 0
        _pivot(T, basis, r, q)
        it += 1
    return it, False


@kernel
def _simplex_lp(c, A, b, max_iter, cmag, rowmag, feas_tol):
    """The two-phase simplex method; returns (α, feasible, pivots, certificate residual).
    ``cmag`` and ``rowmag`` (≥ 0) are the magnitudes of the terms c and the rows were computed
    from: the certificate measures each residual relative to the larger of those and the
    entries themselves, so data computed with cancellation is judged at its own precision.
    A phase-1 optimum (the sum of the artificials, rows scaled to a unit largest entry) up to
    ``feas_tol`` counts as feasible: pass the tolerance the data's precision allows."""
    m = c.shape[0]
    p = A.shape[0]
    R = p + 1
    N = m + p + R  # columns: α, the surplus s of each row, one artificial per row
    T = np.zeros((R + 1, N + 1))
    basis = np.empty(R, np.int64)
    scales = np.empty(p)
    # row 0: Σα = 1
    for j in range(m):
        T[0, j] = 1.0
    T[0, N] = 1.0
    T[0, m + p] = 1.0
    basis[0] = m + p
    # rows 1..p: A_i α − s_i = b_i, scaled, with the right-hand side made ≥ 0; where b_i ≤ 0
    # the surplus itself starts basic and the row needs no artificial
    for i in range(p):
        scale = abs(b[i])
        for j in range(m):
            scale = max(scale, abs(A[i, j]))
        if scale == 0.0:
            scale = 1.0
        scales[i] = scale
        sign = 1.0 if b[i] > 0.0 else -1.0
        r = i + 1
        for j in range(m):
            T[r, j] = sign * A[i, j] / scale
        T[r, m + i] = -sign
        T[r, N] = sign * b[i] / scale
        if sign < 0.0:
            basis[r] = m + i
        else:
            T[r, m + p + r] = 1.0
            basis[r] = m + p + r
    T0 = T[:R].copy()  # the scaled constraints, to recompute the final basic solution from
    # phase 1: minimise the sum of the basic artificials
    for i in range(R):
        if basis[i] >= m + p:
            for j in range(N + 1):
                T[R, j] -= T[i, j]
            T[R, basis[i]] = 0.0
    it, ok = _iterate(T, basis, N, max_iter, 0)
    alpha = np.zeros(m)
    if not ok:
        return alpha, False, it, np.inf
    if -T[R, N] > feas_tol:
        # infeasible: the phase-1 multipliers u_i = T[R, m+i]/scale_i ≥ 0 are a Farkas certificate
        u = np.empty(p)
        for i in range(p):
            u[i] = T[R, m + i] / scales[i]
        return alpha, False, it, _farkas_residual(A, b, u, np.maximum(scales, rowmag))
    # drive the artificials left at zero out of the basis (a row with none to swap is redundant)
    for i in range(R):
        if basis[i] >= m + p:
            for j in range(m + p):
                if abs(T[i, j]) > PIVOT_TOL:
                    _pivot(T, basis, i, j)
                    break
    # phase 2: minimise −cᵀα, scaled, over α and the surplus columns
    cscale = 0.0
    for j in range(m):
        cscale = max(cscale, abs(c[j]))
    if cscale == 0.0:
        cscale = 1.0
    for j in range(N + 1):
        T[R, j] = 0.0
    for j in range(m):
        T[R, j] = -c[j] / cscale
    for i in range(R):
        k = basis[i]
        if k < m:
            f = T[R, k]
            if f != 0.0:
                for j in range(N + 1):
                    T[R, j] -= f * T[i, j]
                T[R, k] = 0.0
    it, ok = _iterate(T, basis, m + p, max_iter, it)
    total = 0.0
    for i in range(R):
        if basis[i] < m:
            v = max(T[i, N], 0.0)
            alpha[basis[i]] = v
            total += v
    for j in range(m):
        alpha[j] /= total
    # the dual solution of the final basis, read off the reduced costs (scaled back)
    y = np.empty(p)
    for i in range(p):
        y[i] = T[R, m + i] * cscale / scales[i]
    y0 = T[R, m + p] * cscale
    if not ok:
        return alpha, ok, it, np.inf
    cert_scales = np.maximum(scales, rowmag)
    cert_c = max(cscale, cmag)
    residual = _lp_residual(c, A, b, alpha, y0, y, cert_scales, cert_c)
    # the tableau carries the round-off of every pivot (a tiny degenerate pivot amplifies it):
    # recompute the primal and dual solutions of the final basis from the scaled data, and keep
    # them when their certificate is better
    fresh = _basis_solution(T0, basis, m, p, c, cscale, scales)
    if fresh[0]:
        fresh_residual = _lp_residual(c, A, b, fresh[1], fresh[2], fresh[3], cert_scales, cert_c)
        if fresh_residual < residual:
            return fresh[1], ok, it, fresh_residual
    return alpha, ok, it, residual


@kernel
def _gauss_solve(M, rhs):
    """(ok, x) with M x = rhs by Gaussian elimination with partial pivoting (M and rhs are
    overwritten); ok is False for a zero pivot or a non-finite x (the caller compares the
    certificates, so an inaccurate x from a nearly singular M is rejected there)."""
    n = M.shape[0]
    for k in range(n):
        piv = k
        for i in range(k, n):
            if abs(M[i, k]) > abs(M[piv, k]):
                piv = i
        if M[piv, k] == 0.0:
            return False, rhs
        if piv != k:
            for j in range(n):
                M[k, j], M[piv, j] = M[piv, j], M[k, j]
            rhs[k], rhs[piv] = rhs[piv], rhs[k]
        for i in range(k + 1, n):
            f = M[i, k] / M[k, k]
            if f != 0.0:
                for j in range(k, n):
                    M[i, j] -= f * M[k, j]
                rhs[i] -= f * rhs[k]
    for i in range(n - 1, -1, -1):
        t = rhs[i]
        for j in range(i + 1, n):
            t -= M[i, j] * rhs[j]
        rhs[i] = t / M[i, i]
    return bool(np.isfinite(rhs).all()), rhs


@kernel
def _basis_solution(T0, basis, m, p, c, cscale, scales):
    """(ok, α, y_0, y) of the basis ``basis`` solved afresh from the scaled constraint rows T0:
    B x_B = rhs and Bᵀπ = (costs of the basic columns), by LU with partial pivoting."""
    R = T0.shape[0]
    N = T0.shape[1] - 1
    B = np.empty((R, R))
    cost = np.zeros(R)
    for k in range(R):
        for i in range(R):
            B[i, k] = T0[i, basis[k]]
        if basis[k] < m:
            cost[k] = -c[basis[k]] / cscale
    alpha = np.zeros(m)
    y = np.zeros(p)
    ok, x = _gauss_solve(B.copy(), T0[:, N].copy())
    if not ok:
        return False, alpha, 0.0, y
    ok, pi = _gauss_solve(B.T.copy(), cost)
    if not ok:
        return False, alpha, 0.0, y
    total = 0.0
    for k in range(R):
        if basis[k] < m:
            v = max(x[k], 0.0)
            alpha[basis[k]] = v
            total += v
    if not total > 0.0:
        return False, alpha, 0.0, y
    for j in range(m):
        alpha[j] /= total
    # reduced cost of column j: cost_j − πᵀT0[:, j]; the surplus of row i has cost 0, the
    # artificial of row 0 (the column e_0) too
    for i in range(p):
        red = 0.0
        for r in range(R):
            red -= pi[r] * T0[r, m + i]
        y[i] = red * cscale / scales[i]
    return True, alpha, -pi[0] * cscale, y


@kernel
def _lp_residual(c, A, b, alpha, y0, y, scales, cscale):
    """The optimality certificate of α for max cᵀα over α ∈ Δ, Aα ≥ b, with the dual
    min y_0 − bᵀy s.t. y ≥ 0, c + Aᵀy ≤ y_0·1 (:func:`lp_residual`)."""
    m = c.shape[0]
    p = A.shape[0]
    worst = simplex_violation(alpha)
    dscale = cscale
    for i in range(p):
        dscale += abs(y[i]) * scales[i]
        worst = max(worst, -y[i] * scales[i] / cscale)
        r = -b[i]
        for j in range(m):
            r += A[i, j] * alpha[j]
        worst = max(worst, -r / scales[i])
    gap = y0
    for i in range(p):
        gap -= b[i] * y[i]
    for j in range(m):
        gap -= c[j] * alpha[j]
        s = y0 - c[j]
        for i in range(p):
            s -= y[i] * A[i, j]
        worst = max(worst, -s / dscale)
    return max(worst, abs(gap) / dscale)


@kernel
def _farkas_residual(A, b, u, scales):
    """The certificate of infeasibility of {α ∈ Δ : Aα ≥ b}: u ≥ 0 with max_j (Aᵀu)_j < bᵀu (then
    uᵀAα ≤ max_j (Aᵀu)_j < uᵀb for every α ∈ Δ). Returns max(0, max_j (Aᵀu)_j − bᵀu) and the
    negative entries of u, relative to Σ|u_i|·scale_i (inf when u = 0)."""
    m = A.shape[1]
    p = A.shape[0]
    size = 0.0
    worst = 0.0
    bu = 0.0
    for i in range(p):
        size += abs(u[i]) * scales[i]
        bu += b[i] * u[i]
    if size == 0.0:
        return np.inf
    for i in range(p):
        worst = max(worst, -u[i] * scales[i] / size)
    top = -np.inf
    for j in range(m):
        t = 0.0
        for i in range(p):
            t += A[i, j] * u[i]
        top = max(top, t)
    return max(worst, (top - bu) / size)


def default_max_iter(m: int, p: int) -> int:
    """The pivot cap: generous next to the ~2(m + p) pivots a solve takes."""
    return 50 * (m + p) + 100


def simplex_lp(c: np.ndarray, A: np.ndarray, b: np.ndarray, *, max_iter: int | None = None):
    """argmax cᵀα over α ∈ Δ_m with Aα ≥ b (A is p x m, p ≥ 0), as an optimal vertex.

    Returns (α, feasible, pivots); α is zero when ``feasible`` is False.
    """
    alpha, ok, it, _ = certified_simplex_lp(c, A, b, max_iter=max_iter)
    return alpha, ok, it


def certified_simplex_lp(
    c: np.ndarray,
    A: np.ndarray,
    b: np.ndarray,
    *,
    max_iter: int | None = None,
    cmag: float = 0.0,
    rowmag: np.ndarray | None = None,
    feas_tol: float = FEAS_TOL,
):
    """:func:`simplex_lp` with its certificate: (α, feasible, pivots, residual).

    Feasible: the residual of LP duality at α and the dual solution of the final basis
    (:func:`lp_residual`). Infeasible: that of the Farkas certificate read off phase 1
    (u ≥ 0 with max_j (Aᵀu)_j < bᵀu), so the verdict "no α exists" is checked too; inf
    when the pivot cap was hit. Rows are measured relative to max(|b_i|, max_j |A_ij|,
    ``rowmag``_i) and the costs to max(max_j |c_j|, ``cmag``) (pass the magnitudes of the terms
    that data was summed from when it was computed with cancellation): the residual is scale-free.
    ``feas_tol``: the scaled row violation up to which the LP counts as feasible.
    """
    c = np.ascontiguousarray(c, dtype=np.float64)
    A = np.ascontiguousarray(A, dtype=np.float64).reshape(-1, c.shape[0])
    b = np.ascontiguousarray(b, dtype=np.float64).reshape(-1)
    cap = default_max_iter(*A.shape[::-1]) if max_iter is None else max_iter
    rowmag = np.zeros(A.shape[0]) if rowmag is None else np.ascontiguousarray(rowmag, dtype=np.float64)
    alpha, ok, it, residual = _simplex_lp(c, A, b, cap, float(cmag), rowmag, float(feas_tol))
    return alpha, bool(ok), int(it), float(residual)


def lp_residual(c: np.ndarray, A: np.ndarray, b: np.ndarray, alpha: np.ndarray, y0: float, y: np.ndarray) -> float:
    """The scale-free optimality residual of (α; y_0, y) for max cᵀα over α ∈ Δ, Aα ≥ b: the
    largest of α ∉ Δ, primal violations (b_i − A_iα)/s_i, dual violations −y_i s_i/‖c‖_∞ and
    −(y_0 − c_j − (Aᵀy)_j)/D, and the duality gap |y_0 − bᵀy − cᵀα|/D, with s_i =
    max(|b_i|, ‖A_i‖_∞) and D = ‖c‖_∞ + Σ|y_i|s_i. Zero exactly at a primal–dual optimal pair."""
    c = np.ascontiguousarray(c, dtype=np.float64)
    A = np.ascontiguousarray(A, dtype=np.float64).reshape(-1, c.shape[0])
    b = np.ascontiguousarray(b, dtype=np.float64).reshape(-1)
    scales = np.maximum(np.abs(A).max(axis=1, initial=0.0), np.abs(b))
    scales[scales == 0] = 1.0
    cscale = float(np.abs(c).max(initial=0.0)) or 1.0
    y = np.ascontiguousarray(y, dtype=np.float64)
    return float(_lp_residual(c, A, b, np.ascontiguousarray(alpha, dtype=np.float64), float(y0), y, scales, cscale))


# ------------------------------------------------------------ cvxpy reference
@_cvx.cached
def _reference_problem(m: int, p: int):
    import cvxpy as cp

    c = cp.Parameter(m, name="c")
    A = cp.Parameter((p, m), name="A")
    b = cp.Parameter(p, name="b")
    alpha = cp.Variable(m, name="alpha")
    constraints = [alpha >= 0, cp.sum(alpha) == 1]
    if p:
        constraints.append(A @ alpha >= b)
    problem = cp.Problem(cp.Maximize(c @ alpha), constraints)
    assert problem.is_dpp()
    return problem, c, A, b, alpha


def reference_simplex_lp(c: np.ndarray, A: np.ndarray, b: np.ndarray):
    """cvxpy (Clarabel) solution of the same LP, built once per shape, with the same row
    and objective scaling as the kernel. Returns (α, feasible)."""
    import cvxpy as cp

    c = np.asarray(c, dtype=np.float64)
    m = c.shape[0]
    A = np.asarray(A, dtype=np.float64).reshape(-1, m)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    scale = np.maximum(np.abs(A).max(axis=1, initial=0.0), np.abs(b))
    scale[scale == 0] = 1.0
    problem, c_p, A_p, b_p, alpha = _reference_problem(m, A.shape[0])
    cmax = np.abs(c).max()
    c_p.value = c / cmax if cmax > 0 else c
    A_p.value = A / scale[:, None]
    b_p.value = b / scale
    problem.solve(solver=cp.CLARABEL, **_cvx.CLARABEL_OPTIONS)
    if problem.status in (cp.INFEASIBLE, cp.INFEASIBLE_INACCURATE):
        return np.zeros(m), False
    if problem.status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
        raise _cvx.SolverError(f"cvxpy reference LP ended with status {problem.status!r}")
    w = np.asarray(alpha.value, dtype=np.float64).clip(0.0, None)
    return w / w.sum(), True


# --------------------------------------------------------------------- EPO
def non_uniformity(rl: np.ndarray) -> float:
    """μ = KL(l̂ ‖ 1/m) with l̂ = rl/Σrl (0·log 0 = 0); 0 when Σrl = 0."""
    total = rl.sum()
    if total <= 0:
        return 0.0
    lhat = rl / total
    nz = lhat > 0
    return float(np.sum(lhat[nz] * np.log(lhat[nz] * len(rl))))


def epo_problem(K: np.ndarray, losses: np.ndarray, r: np.ndarray, eps: float):
    """The LP data of one EPO step (Mahapatra & Rajan 2020, the EPO search of §4; LibMOON).

    With rl = r⊙L, l̂ = rl/Σrl, μ = KL(l̂ ‖ 1/m) and the balance direction
    d_bal = Gᵀa, a = r⊙(log(m·l̂) − μ) (a/Σrl = ∇_L μ), so Ka = (g_j·d_bal)_j:

    * μ > eps, "balance": max αᵀKa. With J = {j : (Ka)_j > 0} (tasks d_bal descends)
      non-empty, g_j·d ≥ (Ka)_j for j ∉ J (ascent no faster than along d_bal) and
      g_j·d ≥ 0 for the tasks J* of largest r_jL_j; with J empty, g_j·d ≥ 0 for all j.
    * μ ≤ eps, "descent": max 1ᵀKα s.t. Kα ≥ 0 and αᵀKa ≥ min(max_j (Ka)_j, 0)
      (LibMOON's restricted form, which keeps d from undoing the balance); the
      ``relaxed`` LP drops the last row.

    Returns (mode, μ, c, A, b, relaxed A, relaxed b) with K scaled to a unit largest
    diagonal entry (the LPs are homogeneous in K). Rows that constrain nothing are left
    out of A.
    """
    m = K.shape[0]
    top = float(np.max(np.diag(K))) if m else 0.0
    Kn = K / top if top > 0 else np.zeros_like(K)
    rl = r * losses
    total = rl.sum()
    mu = non_uniformity(rl)
    if total > 0:
        a = r * (np.log(np.maximum(m * rl / total, LOG_FLOOR)) - mu)
    else:
        a = np.zeros(m)
    Ka = Kn @ a
    if mu > eps:
        J = Ka > 0
        if J.any():
            star = rl == rl.max()
            rows = ~J | star
            b = np.where(star, 0.0, Ka)[rows]
            A = Kn[rows]
        else:
            A, b = Kn, np.zeros(m)
        return "balance", mu, Ka, A, b, A, b
    A = np.vstack([Kn, Ka[None, :]])
    b = np.append(np.zeros(m), min(Ka.max(), 0.0))
    return "descent", mu, Kn.sum(axis=1), A, b, Kn, np.zeros(m)


@kernel
def _epo(K, losses, r, eps, max_iter, feas_tol):
    """:func:`epo_problem` and its LP in one compiled call: (α, balance?, μ, relaxed, feasible, pivots,
    residual of the LP certificates)."""
    m = K.shape[0]
    top = 0.0
    for i in range(m):
        top = max(top, K[i, i])
    Kn = K / top if top > 0.0 else np.zeros((m, m))
    rl = r * losses
    total = rl.sum()
    mu = 0.0
    a = np.zeros(m)
    if total > 0.0:
        for i in range(m):
            if rl[i] > 0.0:
                mu += rl[i] / total * np.log(m * rl[i] / total)
        for i in range(m):
            a[i] = r[i] * (np.log(max(m * rl[i] / total, LOG_FLOOR)) - mu)
    Ka = np.zeros(m)
    Ka_mag = np.zeros(m)  # Σ_j |Kn_ij a_j|: the size of the terms (Ka)_i cancels from
    rowsum = np.zeros(m)  # Σ_j |Kn_ij|, that of (Kn 1)_i
    for i in range(m):
        for j in range(m):
            Ka[i] += Kn[i, j] * a[j]
            Ka_mag[i] += abs(Kn[i, j] * a[j])
            rowsum[i] += abs(Kn[i, j])
    if mu > eps:
        rlmax = rl.max()
        J = Ka > 0.0
        rows = np.ones(m, np.bool_)
        if J.any():
            rows = ~J | (rl == rlmax)
        A = Kn[rows]
        b = np.where(rl == rlmax, 0.0, Ka)[rows] if J.any() else np.zeros(m)
        rowmag = Ka_mag[rows] if J.any() else np.zeros(m)
        alpha, ok, it, residual = _simplex_lp(Ka, A, b, max_iter, Ka_mag.max(), rowmag, feas_tol)
        return alpha, True, mu, False, ok, it, residual
    c = np.zeros(m)
    A = np.empty((m + 1, m))
    b = np.zeros(m + 1)
    for i in range(m):
        for j in range(m):
            c[i] += Kn[j, i]
            A[i, j] = Kn[i, j]
        A[m, i] = Ka[i]
    b[m] = min(Ka.max(), 0.0)
    rowmag = np.zeros(m + 1)
    rowmag[m] = Ka_mag.max()
    alpha, ok, it, residual = _simplex_lp(c, A, b, max_iter, rowsum.max(), rowmag, feas_tol)
    if ok:
        return alpha, False, mu, False, ok, it, residual
    # the restricted LP's infeasibility (its Farkas residual) and the relaxed LP are both certified
    alpha, ok, it2, relaxed = _simplex_lp(
        c, A[:m].copy(), b[:m].copy(), max_iter, rowsum.max(), rowmag[:m].copy(), feas_tol
    )
    return alpha, False, mu, True, ok, it + it2, max(residual, relaxed)


def epo_weights(
    K: np.ndarray,
    losses: np.ndarray,
    r: np.ndarray,
    eps: float = 1e-4,
    *,
    reference: bool = False,
    roundoff: float = 0.0,
):
    """EPO's α (on the simplex) for Gramian K, losses L ≥ 0 and preference r > 0.

    When the restricted descent LP is infeasible the relaxed one is solved (Kα ≥ 0 is
    always feasible in exact arithmetic: the MGDA min-norm point satisfies it). The fast
    path is one numba call; ``reference=True`` builds the LPs with :func:`epo_problem`
    (numpy) and solves them with cvxpy. Returns (α, diagnostics: ``mu``, ``mode``,
    ``relaxed``, ``pivots``, and on the fast path the certificate: ``residual`` (LP duality
    at α and the final basis's dual solution, plus the Farkas certificate of the restricted
    LP's infeasibility when ``relaxed``; :func:`certified_simplex_lp`), ``tolerance``
    (certificate_tolerance of ``roundoff``, the round-off bound ρ of K) and ``converged``).
    When the LP is found infeasible (only round-off can make the relaxed descent LP so; the
    balance LP can be) or the certificate fails, ``converged`` is False and ``fallback``
    names what is returned: the MGDA min-norm weights, or the uncertified LP vertex. A K that is
    indefinite beyond round-off (accumulated in float32) is replaced by its PSD part first
    (:func:`mtlsolve.gramian.psd_repair`), and the LPs count as feasible within the
    certificate tolerance.
    """
    from mtlsolve.gramian import certificate_tolerance

    K = np.ascontiguousarray(K, dtype=np.float64)
    losses = np.ascontiguousarray(losses, dtype=np.float64)
    r = np.ascontiguousarray(r, dtype=np.float64)
    residual = None
    if reference:
        mode, mu, c, A, b, A_rel, b_rel = epo_problem(K, losses, r, eps)
        alpha, ok = reference_simplex_lp(c, A, b)
        relaxed = not ok and A_rel is not A
        if relaxed:
            alpha, ok = reference_simplex_lp(c, A_rel, b_rel)
        pivots = 0
    else:
        if not K.flags.writeable:
            K = K.copy()  # one compiled signature (numba types read-only arrays separately)
        # an indefinite K (accumulated in float32) can make Kα ≥ 0 infeasible: use its PSD part
        K = psd_repair(K, RIDGE)[0]
        m = K.shape[0]
        # the LP counts as feasible within the data's precision (a float32 Gramian is only PSD to ρ)
        feas_tol = max(FEAS_TOL, certificate_tolerance(roundoff))
        alpha, balance, mu, relaxed, ok, pivots, residual = _epo(
            K, losses, r, float(eps), default_max_iter(m, m + 1), float(feas_tol)
        )
        mode = "balance" if balance else "descent"
    info = {"mu": float(mu), "mode": mode, "relaxed": bool(relaxed), "pivots": int(pivots)}
    if residual is not None:
        tolerance = certificate_tolerance(roundoff)
        info.update(residual=float(residual), tolerance=float(tolerance), converged=bool(ok and residual <= tolerance))
        if not info["converged"]:
            info["fallback"] = "MGDA min-norm weights" if not ok else "none: the uncertified LP vertex is returned"
    if not ok:
        from mtlsolve.kernels.simplex_qp import min_norm_simplex

        alpha = min_norm_simplex(K)[0]
        info["fallback"] = "MGDA min-norm weights"
        if residual is not None:
            # the LP has no solution to certify; its Farkas certificate of infeasibility is kept
            info.update(residual=float("inf"), infeasibility_residual=float(residual))
    return alpha, info

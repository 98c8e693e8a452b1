"""FairGrad's α-fair weights (Ban & Ji, ICML 2024, arXiv 2402.15638, eq. (4)); Nash-MTL is α = 1.

The weights w > 0 solve Kw = w^{−1/α} element-wise (g_i·d = w_i^{−1/α} for d = Gᵀw),
the stationarity condition of the strictly convex

    f(w) = ½wᵀKw − Σ_i h(w_i),   h(x) = x^p/p with p = 1 − 1/α (h = log at α = 1),

since h'(x) = x^{−1/α}. A minimiser exists iff no v ≥ 0, v ≠ 0 has Kv = 0, i.e. iff
0 ∉ conv{g_i}; otherwise f decreases without end (α ≥ 1) or toward an infimum it never
reaches (α < 1) along such a v, and no weights solve the system.

Existence is decided first, and certified: the min-norm point of the hull of the unit
gradients u_i = g_i/‖g_i‖ (:func:`mtlsolve.kernels.simplex_qp.min_norm_simplex` on the
normalised Gramian D⁻¹KD⁻¹) has μ = ‖d_min‖² ≤ :func:`no_solution_threshold` (the rank
cut-off 4·m·ρ of the round-off ρ, :mod:`mtlsolve.gramian`) exactly when 0 ∈ conv{g_i} within
round-off; a zero gradient has μ = 0. Only then is "no solution" (status 2) reported.
Otherwise a minimiser exists, with Σ_i ‖g_i‖w_i ≤ √(m/μ) at α = 1.

The kernel works in the variable a with w_i = t_i a_i, t_i = K_ii^{−α/(α+1)} (the solution
when the gradients are orthogonal, so the cold start is a = 1): the system reads
a_i(K'a)_i = q_i with K' = TKT and q_i = c_i a_i^p, c_i = K'_ii = K_ii^{(1−α)/(1+α)}
(c = 1 and K' the unit-diagonal Gramian D⁻¹KD⁻¹ at α = 1: Nash's condition is equivariant
under row scaling, α_i ← α_i/‖g_i‖). The cold or warm start is first moved to the best point
of its ray {s·a}. Newton's method on f: with D = diag(a) the step is Δa = D u,
(DK'D + diag(q)/α)u = q − a∘K'a (a Cholesky solve), and λ² = uᵀ(q − a∘K'a) is the Newton
decrement. A backtracking (Armijo) line search starts from the largest step ≤ 1 keeping
a > 0 and evaluates the decrease of f exactly as −tλ² + ½t²‖Du‖²_{K'} − Σ q_i(φ_p(tu_i) − tu_i),
φ_p(x) = ((1+x)^p − 1)/p (log1p at p = 0), which stays accurate down to steps of round-off
size. It stops when max_i |a_i(K'a)_i/q_i − 1| ≤ ``tol``, or after three more steps once the
residual is within the round-off of evaluating it, 8·m·ε·max_i a_i(|K'|a)_i/q_i (nearly
opposed gradients make a large and that floor well above 1e-10), and returns the iterate
of smallest residual; status 1 at the iteration cap, 3 on a non-finite iterate.

:func:`fairgrad_certificate` checks a solution on K in float64: residual
max_i |w_i^{1/α}(Kw)_i − 1| (inf unless w > 0 and every g_i·d = (Kw)_i lies above its
round-off 4ρ‖g_i‖Σ_j‖g_j‖w_j: no task conflicts with d within the round-off of K) against the
round-off tolerance of the system scaled by S = max_i w_i^{1/α}‖g_i‖Σ_j‖g_j‖w_j (an
entry-wise error ρ·‖g_i‖‖g_j‖ of K moves the residual by up to ρS; nearly opposed gradients
make S large).
"""

from __future__ import annotations

import numpy as np

from mtlsolve.errors import SolverError
from mtlsolve.gramian import certificate_tolerance, rank_threshold
from mtlsolve.kernels import _cvx
from mtlsolve.kernels._dense import RIDGE, as_kernel_array, chol_solve, cholesky, row_norms
from mtlsolve.kernels._numba import kernel
from mtlsolve.kernels.simplex_qp import _simplex_qp, default_max_iter

CONVERGED, MAX_ITER, NO_SOLUTION, BREAKDOWN = 0, 1, 2, 3
STATUS = {
    CONVERGED: "converged",
    MAX_ITER: "iteration cap reached",
    NO_SOLUTION: "no solution: 0 ∈ conv{g_i}",
    BREAKDOWN: "numerical breakdown (a non-finite Newton iterate)",
}
#: the min-norm QP's ridge perturbs μ by up to ~2e-14: "no solution" below this whatever ρ
HULL_FLOOR = 1e-13
#: Newton steps taken once the residual is at its round-off floor, for the best iterate
POLISH_STEPS = 3


@kernel
def _matvec(A, x, out):
    m = x.shape[0]
    for i in range(m):
        t = 0.0
        for j in range(m):
            t += A[i, j] * x[j]
        out[i] = t


@kernel
def _phi_minus_x(x, p):
    """φ_p(x) − x for x > −1, φ_p(x) = ((1+x)^p − 1)/p, log1p(x) at p = 0."""
    l = np.log1p(x)
    return (l if p == 0.0 else np.expm1(p * l) / p) - x


@kernel
def _fairgrad(K, w0, alpha, tol, max_iter):
    m = K.shape[0]
    w = np.zeros(m)
    t = np.empty(m)
    c = np.empty(m)
    for i in range(m):
        if not K[i, i] > 0.0:
            return w, 0, NO_SOLUTION, 1.0  # (Kw)_i = 0 for a zero gradient
        t[i] = K[i, i] ** (-alpha / (alpha + 1.0))
    Ks = np.empty((m, m))
    for i in range(m):
        for j in range(m):
            Ks[i, j] = K[i, j] * t[i] * t[j]
        c[i] = Ks[i, i]
    if alpha == 1.0:  # exactly the unit-diagonal Gramian of Nash-MTL
        for i in range(m):
            Ks[i, i] = 1.0
            c[i] = 1.0
    p = 1.0 - 1.0 / alpha
    a = np.empty(m)
    warm = w0.shape[0] == m
    for i in range(m):
        warm = warm and w0[i] > 0.0 and np.isfinite(w0[i] / t[i]) and w0[i] / t[i] > 0.0
    for i in range(m):
        a[i] = w0[i] / t[i] if warm else 1.0
    Ka = np.empty(m)
    q = np.empty(m)
    _matvec(Ks, a, Ka)
    # the best point on the ray {s·a}: f(sa) = ½s²aᵀK'a − s^p Σ q_i/p is least at s^{2−p} = Σq_i/aᵀK'a
    quad = 0.0
    total = 0.0
    for i in range(m):
        quad += a[i] * Ka[i]
        total += c[i] * a[i] ** p
    if quad > 0.0:
        scale = (total / quad) ** (1.0 / (2.0 - p))
        if np.isfinite(scale) and scale > 0.0:
            for i in range(m):
                a[i] *= scale
                Ka[i] *= scale
    M = np.empty((m, m))
    L = np.empty((m, m))
    rhs = np.empty(m)
    u = np.empty(m)
    Du = np.empty(m)
    KDu = np.empty(m)
    best_a = a.copy()
    best = np.inf
    eps = np.finfo(np.float64).eps
    status = MAX_ITER
    polish = 0
    it = 0
    while True:
        residual = 0.0
        floor = 0.0
        for i in range(m):
            q[i] = c[i] * a[i] ** p
            residual = max(residual, abs(a[i] * Ka[i] / q[i] - 1.0))
            s = 0.0
            for j in range(m):
                s += abs(Ks[i, j]) * a[j]
            floor = max(floor, a[i] * s / q[i])
        if not (np.isfinite(residual) and np.isfinite(floor)):
            status = BREAKDOWN
            break
        if residual < best:
            best = residual
            best_a[:] = a
        if residual <= tol:
            status = CONVERGED
            break
        if residual <= 8.0 * m * eps * floor:  # at the round-off floor: a few more steps, keep the best
            polish += 1
            if polish > POLISH_STEPS:
                status = CONVERGED
                break
        if it >= max_iter:
            break
        it += 1
        # Newton: (D K' D + diag(q)/α) u = q − a∘K'a, Δa = a∘u
        for i in range(m):
            rhs[i] = q[i] - a[i] * Ka[i]
            for j in range(i + 1):
                M[i, j] = a[i] * Ks[i, j] * a[j]
            M[i, i] += q[i] / alpha
        cholesky(M, L, 1e-300)
        chol_solve(L, m, rhs, u)
        lam2 = 0.0
        step = 1.0
        for i in range(m):
            lam2 += u[i] * rhs[i]
            Du[i] = a[i] * u[i]
            if u[i] < 0.0:
                step = min(step, -0.99 / u[i])
        _matvec(Ks, Du, KDu)
        curvature = 0.0
        for i in range(m):
            curvature += Du[i] * KDu[i]
        while step >= 1e-12:  # Armijo on the exact decrease of f
            change = -step * lam2 + 0.5 * step * step * curvature
            for i in range(m):
                change -= q[i] * _phi_minus_x(step * u[i], p)
            if change <= -0.25 * step * lam2:
                break
            step *= 0.5
        for i in range(m):
            a[i] *= 1.0 + step * u[i]
        _matvec(Ks, a, Ka)
    if best == np.inf:
        return w, it, BREAKDOWN, 1.0
    for i in range(m):
        w[i] = t[i] * best_a[i]
    return w, it, status, best


def hull_distance(K: np.ndarray) -> float:
    """μ = ‖d_min‖²: the squared norm of the min-norm point of conv{g_i/‖g_i‖}, from the
    normalised Gramian (0 when a gradient is zero, for then 0 ∈ conv{g_i})."""
    K = as_kernel_array(K)
    return float(_hull_distance(K, RIDGE, default_max_iter(K.shape[0])))


@kernel
def _hull_distance(K, ridge, max_iter):
    m = K.shape[0]
    n = row_norms(K)
    if not n.min() > 0.0:
        return 0.0
    Kn = np.empty((m, m))
    for i in range(m):
        for j in range(m):
            Kn[i, j] = K[i, j] / n[i] / n[j]
    w, _, _ = _simplex_qp(Kn, np.zeros(m), ridge, max_iter)
    return max(w @ (Kn @ w), 0.0)


def no_solution_threshold(m: int, roundoff: float) -> float:
    """μ at or below which 0 ∈ conv{g_i} within round-off: the rank cut-off 4·m·ρ of the normalised
    Gramian (an entry-wise error ρ moves μ by at most ρ), and at least ``HULL_FLOOR``."""
    return max(rank_threshold(m, roundoff), HULL_FLOOR)


def no_solution_reason(K: np.ndarray, roundoff: float) -> tuple[str, dict]:
    """Why a step has no solution (0 ∈ conv{g_i} within round-off), and its diagnostics."""
    mu, threshold = hull_distance(K), no_solution_threshold(len(K), roundoff)
    reason = f"{STATUS[NO_SOLUTION]} within round-off (‖d_min‖² = {mu:.3g} ≤ {threshold:.3g} for unit gradients)"
    return reason, {"hull_distance": mu, "no_solution": True}


def uncertified_reason(status: int, residual: float, tolerance: float) -> str:
    """Why a solve that ended with ``status`` is not returned: its certificate failed."""
    return f"{STATUS[status]} but not certified: " + (
        f"residual {residual:.3g} above tolerance {tolerance:.3g}"
        if np.isfinite(residual)
        else "some g_i·d is not positive beyond the Gramian's round-off"
    )


def fallback_step(name: str, symbol: str, previous, m: int, reason: str, tolerance: float, diagnostics: dict):
    """(weights, diagnostics) of a step without a certified solve (FairGrad, Nash-MTL): the previous
    weights when there are any, else zero weights (d = 0); never silent (``converged`` False)."""
    if previous is not None:
        weights, fallback, kept = np.array(previous), "previous weights", f"kept the previous {symbol}"
    else:
        weights, fallback, kept = np.zeros(m), "zero update", f"returned {symbol} = 0 (d = 0)"
    return weights, {
        **diagnostics,
        "converged": False,
        "fallback": fallback,
        "residual": float("inf"),
        "tolerance": tolerance,
        "message": f"{name}: {reason}; {kept}",
    }


def default_roundoff(m: int) -> float:
    """ρ of a float64 Gramian given as it is: 2·(1 + m)·ε (as :attr:`GradientSystem.roundoff`)."""
    return 2.0 * (1 + m) * float(np.finfo(np.float64).eps)


def fairgrad_weights(
    K: np.ndarray,
    w0: np.ndarray | None = None,
    *,
    alpha: float = 1.0,
    tol: float = 1e-10,
    max_iter: int = 100,
    roundoff: float | None = None,
):
    """w > 0 with Kw = w^{−1/α} for the Gramian K (m x m, symmetric PSD) and α > 0, from the warm
    start ``w0`` (positive, length m; otherwise the cold start, exact for orthogonal gradients).
    ``roundoff``: ρ of K (default that of a float64 Gramian given as it is), for the existence test.

    Returns (w, iterations, status, residual): status 0 converged (to ``tol`` or to the round-off
    floor of the residual), 1 iteration cap or (3) a breakdown (w is the best iterate), 2 no
    solution (0 ∈ conv{g_i} within round-off; w is all zeros); residual =
    max_i |w_i^{1/α}(Kw)_i/c_i − 1| of the returned w in the kernel's scaling (1 for w = 0).
    """
    if not (np.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a positive number, got {alpha!r}")
    K = as_kernel_array(K)
    m = K.shape[0]
    rho = default_roundoff(m) if roundoff is None else float(roundoff)
    if hull_distance(K) <= no_solution_threshold(m, rho):
        return np.zeros(m), 0, NO_SOLUTION, 1.0
    start = np.zeros(0) if w0 is None else np.ascontiguousarray(w0, dtype=np.float64).ravel().copy()
    w, it, status, residual = _fairgrad(K, start, float(alpha), float(tol), int(max_iter))
    return w, int(it), int(status), float(residual)


def certified_fairgrad(
    K: np.ndarray, w0: np.ndarray | None, *, alpha: float, tol: float, max_iter: int, roundoff: float
) -> tuple[np.ndarray, int, int, float, float, bool]:
    """:func:`fairgrad_weights` followed by :func:`fairgrad_certificate`, in one compiled call (the
    per-step path of FairGrad and Nash-MTL): (w, iterations, status, residual, tolerance, certified);
    w is all zeros and the residual inf when status is ``NO_SOLUTION``."""
    K = as_kernel_array(K)
    m = K.shape[0]
    start = np.zeros(0) if w0 is None else np.ascontiguousarray(w0, dtype=np.float64).ravel().copy()
    w, iterations, status, residual, scale = _certified_fairgrad(
        K,
        start,
        float(alpha),
        float(tol),
        int(max_iter),
        no_solution_threshold(m, roundoff),
        float(roundoff),
        default_max_iter(m),
    )
    tolerance = max(tol, float(certificate_tolerance(roundoff, max(scale, 1.0))))
    return w, int(iterations), int(status), float(residual), tolerance, bool(residual <= tolerance)


@kernel
def _certified_fairgrad(K, w0, alpha, tol, max_iter, threshold, roundoff, hull_max_iter):
    m = K.shape[0]
    if _hull_distance(K, RIDGE, hull_max_iter) <= threshold:
        return np.zeros(m), 0, NO_SOLUTION, np.inf, 1.0
    w, iterations, status, _ = _fairgrad(K, w0, alpha, tol, max_iter)
    for i in range(m):
        if not (w[i] > 0.0 and np.isfinite(w[i])):
            return w, iterations, status, np.inf, 1.0
    residual, scale = _fairgrad_certificate(K, w, alpha, roundoff)
    return w, iterations, status, residual, scale


def fairgrad_residual(K: np.ndarray, w: np.ndarray, alpha: float) -> float:
    """max_i |w_i^{1/α}(Kw)_i − 1|: the relative residual of Kw = w^{−1/α}."""
    return float(np.abs(w ** (1.0 / alpha) * (K @ w) - 1.0).max())


def fairgrad_certificate(K: np.ndarray, w: np.ndarray, alpha: float, roundoff: float, tol: float = 0.0):
    """Check Kw = w^{−1/α} on K (float64): returns (residual, tolerance, certified), certified
    exactly when residual ≤ tolerance.

    residual = max_i |w_i^{1/α}(Kw)_i − 1|, or inf unless w > 0 and every g_i·d = (Kw)_i lies
    above its own round-off 4ρ‖g_i‖Σ_j‖g_j‖w_j (so that no task conflicts with d for any
    Gramian within the round-off of K); tolerance = max(``tol``, certificate_tolerance(ρ)·S),
    S = max_i w_i^{1/α}‖g_i‖Σ_j‖g_j‖w_j ≥ 1 (an entry-wise error ρ‖g_i‖‖g_j‖ of K moves the
    residual by up to ρS: nearly opposed gradients make S large).
    """
    w = np.asarray(w, dtype=np.float64)
    if w.size == 0 or not (np.isfinite(w).all() and (w > 0).all()):
        return np.inf, max(tol, float(certificate_tolerance(roundoff))), False
    residual, scale = _fairgrad_certificate(as_kernel_array(K), as_kernel_array(w), float(alpha), float(roundoff))
    tolerance = max(tol, float(certificate_tolerance(roundoff, max(scale, 1.0))))
    return residual, tolerance, bool(residual <= tolerance)


@kernel
def _fairgrad_certificate(K, w, alpha, roundoff):
    """(residual, S) of :func:`fairgrad_certificate` for w > 0, on the unit gradients u_i:
    d = Σ b_i u_i with b = n∘w, (Kw)_i = n_i (K̂b)_i."""
    m = K.shape[0]
    n = row_norms(K)
    b = n * w
    total = b.sum()
    residual = 0.0
    scale = 0.0
    conflict = False
    for i in range(m):
        cosine = 0.0  # u_i·d
        for j in range(m):
            if n[i] > 0.0 and n[j] > 0.0:
                cosine += K[i, j] / n[i] / n[j] * b[j]
        power = w[i] ** (1.0 / alpha)
        scale = max(scale, power * n[i] * total)
        residual = max(residual, abs(power * n[i] * cosine - 1.0))
        if not cosine > 4.0 * roundoff * total:
            conflict = True
    if conflict or not np.isfinite(residual):
        residual = np.inf
    return residual, scale


# ------------------------------------------------------------ cvxpy reference
@_cvx.cached
def _reference_problem(m: int, alpha: float):
    import cvxpy as cp

    F = cp.Parameter((m, m), name="F")
    c = cp.Parameter(m, name="c", nonneg=True)
    a = cp.Variable(m, name="a")
    p = 1.0 - 1.0 / alpha
    if alpha == 1.0:
        concave = cp.sum(cp.log(a))
    else:  # Σ c_i a_i^p/p: concave for p < 1 (p ∈ (0, 1): concave power; p < 0: minus a convex one)
        concave = (c @ cp.power(a, p)) / p
    problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(F @ a) - concave))
    assert problem.is_dpp()
    return problem, F, c, a


def reference_fairgrad_weights(K: np.ndarray, alpha: float = 1.0, *, polish: bool = True) -> np.ndarray:
    """cvxpy (Clarabel) minimiser of ½‖Fa‖² − Σ c_i h(a_i) (FᵀF = K' = TKT, the kernel's scaling
    w = t∘a, t_i = K_ii^{−α/(α+1)}, c_i = K'_ii), built once per (m, α).

    Raises :class:`~mtlsolve.errors.SolverError` when there is no minimiser (0 ∈ conv{g_i}).
    ``polish``: Clarabel's exponential- and power-cone solutions stop at relative errors of
    about 1e-6, so plain Newton steps a ← a − (K' + diag(c a^{p−2}/α))⁻¹(K'a − c a^{−1/α})
    (``numpy.linalg.solve``) follow, and the iterate with the smallest residual is returned.
    """
    K = np.asarray(K, dtype=np.float64)
    t = np.diag(K) ** (-alpha / (alpha + 1.0))
    Ks = K * np.outer(t, t)
    problem, F, c, a = _reference_problem(K.shape[0], float(alpha))
    F.value = _cvx.psd_factor(Ks)
    c.value = np.diag(Ks).copy()
    _cvx.solve(problem)
    a = np.asarray(a.value, dtype=np.float64)
    return t * (_polish(Ks, np.diag(Ks), a, alpha) if polish else a)


def _polish(Ks: np.ndarray, c: np.ndarray, a: np.ndarray, alpha: float) -> np.ndarray:
    p = 1.0 - 1.0 / alpha

    def residual(x):
        return np.abs(x * (Ks @ x) / (c * x**p) - 1.0).max()

    best, best_residual = a, residual(a)
    for _ in range(20):
        try:
            a = a - np.linalg.solve(Ks + np.diag(c * a ** (p - 2.0) / alpha), Ks @ a - c * a ** (p - 1.0))
        except np.linalg.LinAlgError:  # K' + diag(c·a^{p−2}/α) is positive definite unless a diverged
            raise SolverError("no minimiser: the conic solution diverges (0 ∈ conv{g_i})") from None
        if not (a > 0).all():
            break
        r = residual(a)
        if r < best_residual:
            best, best_residual = a, r
        if r < 1e-14:
            break
    return best

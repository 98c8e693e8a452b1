"""Convex QPs over the probability simplex: min ½wᵀQw + qᵀw s.t. w ≥ 0, Σw = 1.

The min-norm point of the convex hull of the task gradients (MGDA, Sener &
Koltun 2018, arXiv 1810.04650, eq. 3) is the case q = 0, Q = K. The kernel runs the
active-set core of :mod:`mtlsolve.kernels._dense` (Nocedal & Wright, *Numerical
Optimization*, Alg. 16.3, with a Cholesky factor of the free block that is updated, not
recomputed, when an index enters or leaves the free set, so one iteration costs O(m·|F|)).

Scale: it runs on the Jacobi-scaled problem. With s_i = √Q_ii (max(√Q_ii, |q_i|/max_j √Q_jj)
with a linear term, so a row that q dominates is scaled by q; a zero row gets the smallest
other s_i) and v = s⊙w, the QP is min ½vᵀQ̃v + q̃ᵀv over v ≥ 0, aᵀv = 1, with
Q̃ = S⁻¹QS⁻¹ (unit diagonal for the min-norm problem), q̃ = q/s and a = 1/s, so row norms
spanning any number of decades are priced alike. The core factors the free block with the
shift c·aaᵀ (the same minimiser on the feasible set), which keeps a free block that is singular
only along a direction changing aᵀv (a zero gradient, 0 in the affine hull of the free
gradients) well conditioned. A ridge δ = ``ridge`` (default 1e-14) on the unit diagonal, and
Cholesky pivots clamped at δ, keep dependent free sets (duplicated gradients, n < m, the
round-off eigenvalues of a float32 Gramian) well posed; it moves the KKT conditions by at most
δ in the scale-free measure below. Where the minimiser is not unique (duplicated tasks) the one
returned is the one the active-set path reaches; d = Gᵀw and the objective are unique.

Certificate (:func:`kkt_residual`): with g = Qw + q, λ = wᵀg, n_i = √Q_ii and
ν = Σ_j n_j w_j (≥ ‖Gᵀw‖), the KKT conditions are g_i ≥ λ for every i with
equality where w_i > 0; the residual is the largest violation of row i divided
by n_i·ν + ν² + |q_i| + |q|ᵀw, the size of the round-off an entry-wise relative
perturbation of Q and q makes in that row (a backward error: the weights are
exact for data perturbed by about residual·n_i·n_j). For the min-norm problem
it reads |g_i·d − ‖d‖²| / (‖g_i‖ν + ν²).
"""

from __future__ import annotations

import warnings

import numpy as np

from mtlsolve.gramian import psd_repair
from mtlsolve.kernels import _cvx
from mtlsolve.kernels._dense import RIDGE, active_set, as_kernel_array, simplex_violation
from mtlsolve.kernels._numba import kernel


@kernel
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
    # start at the best vertex v = e_j/a_j
    j0 = 0
    best = np.inf
    for i in range(m):
        f = 0.5 * Qs[i, i] / (a[i] * a[i]) + qs[i] / a[i]
        if f < best:
            best = f
            j0 = i
    v = np.zeros(m)
    free = np.zeros(m, np.bool_)
    v[j0] = 1.0 / a[j0]
    free[j0] = True
    _, it, converged = active_set(
        Qs, qs, np.abs(qs), a, ridge, max_iter, v, free, np.empty((m, m)), np.empty(m, np.int64), np.empty((5, m))
    )
    w = np.empty(m)
    total = 0.0
    for i in range(m):
        w[i] = v[i] * a[i]
        total += w[i]
    for i in range(m):
        w[i] /= total
    return w, it, converged


@kernel
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
    worst = simplex_violation(w)
    for i in range(m):
        t = q[i]
        for j in range(m):
            t += Q[i, j] * w[j]
        g[i] = t
        lam += w[i] * t
        nu += scales[i] * abs(w[i])
        qw += abs(q[i] * w[i])
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


def certified_min_norm(K: np.ndarray, roundoff: float, *, scales: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """:func:`min_norm_simplex` with its certificate: (w, diagnostics).

    The active-set solve runs on K, or on its PSD part where K is indefinite beyond the ridge
    (:func:`mtlsolve.gramian.psd_repair`; float32 Gramians); the certificate is K's.
    ``diagnostics``: ``iterations``, ``residual`` (:func:`kkt_residual`), ``tolerance``
    (:func:`mtlsolve.gramian.certificate_tolerance` of ``roundoff``, the bound ρ on K's
    entry-wise round-off relative to n_i·n_j) and ``converged`` (residual ≤ tolerance). When
    the active-set weights are not certified the cvxpy reference (:func:`reference_min_norm_simplex`)
    is solved too and the weights with the smaller residual are returned; if those are not
    certified either, ``converged`` is False and ``fallback`` names that reference solve.
    """
    from mtlsolve.gramian import certificate_tolerance

    K = as_kernel_array(K)
    m = K.shape[0]
    q = np.zeros(m)
    scales = _NO_SCALES if scales is None else as_kernel_array(scales)
    # a K indefinite beyond the ridge (a Gramian accumulated in float32) makes the QP nonconvex:
    # solve on its PSD part, certify on K itself
    w, iterations, _ = _simplex_qp(psd_repair(K, RIDGE)[0], q, RIDGE, default_max_iter(m))
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

"""Nash-MTL's bargaining solution (Navon et al., ICML 2022, arXiv 2202.01017, eq. (3)–(4)).

The weights α > 0 solve α_i(Kα)_i = 1 for every i (Gᵀα·g_i = 1/α_i), the
stationarity condition of the strictly convex

    f(α) = ½αᵀKα − Σ_i log α_i.

f has a minimiser iff no v ≥ 0, v ≠ 0 has Kv = 0, i.e. iff 0 ∉ conv{g_i}
(a zero gradient, exactly opposite gradients, n < m with a conflict that
cancels out); otherwise f is unbounded below along such a v and no weights
solve the fixed point.

This is FairGrad's system Kw = w^{−1/α} at α = 1, and the kernel is
FairGrad's (:mod:`mtlsolve.kernels.fairgrad`): existence is decided first by the min-norm
point of conv{g_i/‖g_i‖} (μ = ‖d_min‖² above the round-off cut-off 4·m·ρ; "no solution",
status 2, only when 0 ∈ conv{g_i} within round-off, or a gradient is zero), then Newton's
method on f in the Jacobi-scaled variable a = s∘α (s_i = ‖g_i‖, unit-diagonal
K̂ = D⁻¹KD⁻¹, so the iterates are O(1/√μ) whatever the gradient norms), with the step
Δa = D u, (DK̂D + I)u = 1 − a∘K̂a, and an Armijo line search on the exact decrease of f.
It stops when max_i |a_i(K̂a)_i − 1| ≤ ``tol``, or at the round-off floor of evaluating it,
8·m·ε·max_i a_i(|K̂|a)_i (nearly opposed gradients, where a is large), and status 1 at the
iteration cap. :func:`nash_certificate` checks the result on K.
"""

from __future__ import annotations

import numpy as np

from mtlsolve.kernels.fairgrad import (  # noqa: F401 - the status codes are part of this module's API
    BREAKDOWN,
    CONVERGED,
    MAX_ITER,
    NO_SOLUTION,
    STATUS,
    fairgrad_certificate,
    fairgrad_weights,
    hull_distance,
    no_solution_threshold,
    reference_fairgrad_weights,
)


def nash_weights(
    K: np.ndarray,
    alpha0: np.ndarray | None = None,
    *,
    tol: float = 1e-10,
    max_iter: int = 100,
    roundoff: float | None = None,
):
    """α > 0 with α_i(Kα)_i = 1 for the Gramian K (m x m, symmetric PSD), from the warm start
    ``alpha0`` (positive, length m; otherwise a cold start): FairGrad's solve at α = 1.
    ``roundoff``: ρ of K for the existence test (default: a float64 Gramian given as it is).

    Returns (alpha, iterations, status, residual): status 0 converged (to ``tol`` or the
    round-off floor), 1 iteration cap or 3 breakdown (alpha is the best iterate), 2 no solution
    (0 ∈ conv{g_i} within round-off; alpha is all zeros); residual = max_i |α_i(Kα)_i − 1| of
    the returned alpha.
    """
    return fairgrad_weights(K, alpha0, alpha=1.0, tol=tol, max_iter=max_iter, roundoff=roundoff)


def nash_certificate(K: np.ndarray, alpha: np.ndarray, roundoff: float, tol: float = 0.0):
    """(residual, tolerance, certified) of α_i(Kα)_i = 1 on K: residual max_i |α_i(Kα)_i − 1|,
    tolerance max(``tol``, certificate_tolerance(ρ)·max_i a_i·Σ_j a_j) with a = ‖g‖∘α, and
    α > 0, g_i·d > 0 (:func:`mtlsolve.kernels.fairgrad.fairgrad_certificate` at α = 1)."""
    return fairgrad_certificate(K, alpha, 1.0, roundoff, tol)


def nash_objective(K: np.ndarray, alpha: np.ndarray) -> float:
    """f(α) = ½αᵀKα − Σ log α_i."""
    return float(0.5 * alpha @ K @ alpha - np.log(alpha).sum())


def reference_nash_weights(K: np.ndarray, *, polish: bool = True) -> np.ndarray:
    """The cvxpy (Clarabel) minimiser of f, polished by Newton steps: FairGrad's reference at α = 1
    (:func:`mtlsolve.kernels.fairgrad.reference_fairgrad_weights`). Raises
    :class:`~mtlsolve.errors.SolverError` when f is unbounded below (0 ∈ conv{g_i})."""
    return reference_fairgrad_weights(K, 1.0, polish=polish)

"""Preference-based MGDA (docs/methods.md#pmgda)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from mtlsolve.gramian import norms as gradient_norms
from mtlsolve.kernels import _cvx
from mtlsolve.plugins.pareto._common import optional_vector, preference_and_ideal
from mtlsolve.solver import Need, Weighting
from mtlsolve.system import GradientSystem
from mtlsolve.validation import in_range, non_negative


def ray_distance(losses: np.ndarray, preference: np.ndarray) -> tuple[float, np.ndarray]:
    """h(L) = ‖L − (Lᵀλ̂)λ̂‖, the distance of L from the preference ray (LibMOON's PBI d₂
    constraint), and its gradient ∂h/∂L (zero where h = 0)."""
    unit = preference / np.linalg.norm(preference)
    v = losses - (losses @ unit) * unit
    h = float(np.linalg.norm(v))
    return h, (v / h if h > 0 else np.zeros_like(v))


def correction_problem(K: np.ndarray, jhf: np.ndarray, sigma: float):
    """The correction LP of PMGDA (Zhang, Lin & Zhang 2024, eq. 20) on the Gramian.

    The m task gradients and ∇h = Σ_i (∂h/∂L_i) g_i are the rows of G̃ = [G; jhfᵀG], whose
    Gramian is E K Eᵀ with E = [I; jhfᵀ]. With ñ_i = ‖g̃_i‖ and B = G̃ (G̃/ñ)ᵀ, i.e.
    B_ji = g̃_j·g̃_i/ñ_i:

        max t  s.t.  (Bμ)_j ≥ t (tasks j < m),  (Bμ)_m ≥ σ·ñ_m,  μ ∈ Δ_{m+1},

    so d̃ = Σ μ_i g̃_i/ñ_i descends h at rate ≥ σ‖∇h‖ and every task as fast as possible.
    Columns of zero vectors are zero. Returns (B, norms ñ).
    """
    m = K.shape[0]
    E = np.vstack([np.eye(m), jhf[None, :]])
    Kt = E @ K @ E.T
    norms = gradient_norms(Kt)
    inverse = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    return Kt * inverse[None, :], norms


def solve_correction(B: np.ndarray, norms: np.ndarray, sigma: float) -> tuple[np.ndarray, bool]:
    """μ of :func:`correction_problem` and whether the LP was feasible (see :func:`certified_correction`)."""
    mu, ok, _ = certified_correction(B, norms, sigma)
    return mu, ok


def certified_correction(B: np.ndarray, norms: np.ndarray, sigma: float) -> tuple[np.ndarray, bool, float]:
    """μ of :func:`correction_problem` by the simplex-method kernel of
    :func:`mtlsolve.kernels.epo.simplex_lp`, which maximises over a simplex with rows Aα ≥ b.

    The free variable t is removed by a Charnes–Cooper change of variables: with
    lo = min B[:m], s = max B[:m] − lo (or 1), t = lo + s·y, y ≥ 0, and β = (μ, y)/(1 + y) ∈ Δ_{m+2},
    the constraints are homogeneous: ((B[:m] − lo)/s)β_μ − β_y ≥ 0, (B_m − σñ_m)β_μ ≥ 0, and
    y = β_y/(1 − β_y) grows with β_y, so the LP is max β_y. Returns (μ, feasible, residual): the
    LP-duality certificate of that LP (:func:`mtlsolve.kernels.epo.certified_simplex_lp`; its
    rows measured relative to the terms they were computed from)."""
    from mtlsolve.kernels.epo import certified_simplex_lp

    m = B.shape[0] - 1
    tasks = B[:m]
    lo = float(tasks.min())
    span = float(tasks.max()) - lo
    span = span if span > 0 else 1.0
    A = np.zeros((m + 1, m + 2))
    A[:m, : m + 1] = (tasks - lo) / span
    A[:m, m + 1] = -1.0
    A[m, : m + 1] = B[m] - sigma * norms[m]
    rowmag = np.append((np.abs(tasks).max(axis=1) + abs(lo)) / span, np.abs(B[m]).max() + sigma * norms[m])
    c = np.zeros(m + 2)
    c[m + 1] = 1.0
    beta, ok, _, residual = certified_simplex_lp(c, A, np.zeros(m + 1), rowmag=rowmag)
    mu = beta[: m + 1]
    total = mu.sum()
    feasible = bool(ok and total > 0)
    return (mu / total if feasible else np.zeros(m + 1)), feasible, residual


@_cvx.cached
def _reference_problem(m: int):
    import cvxpy as cp

    B = cp.Parameter((m + 1, m + 1), name="B")
    floor = cp.Parameter(name="floor")
    mu = cp.Variable(m + 1, name="mu")
    t = cp.Variable(name="t")
    constraints = [mu >= 0, cp.sum(mu) == 1, B[:m] @ mu >= t, B[m] @ mu >= floor]
    problem = cp.Problem(cp.Maximize(t), constraints)
    assert problem.is_dpp()
    return problem, B, floor, mu


def reference_correction(B: np.ndarray, norms: np.ndarray, sigma: float) -> tuple[np.ndarray, bool]:
    """cvxpy (Clarabel) solution of the LP of :func:`correction_problem` as LibMOON writes it
    (variables μ and t), with B divided by its largest entry. Returns (μ, feasible)."""
    import cvxpy as cp

    m = B.shape[0] - 1
    scale = float(np.abs(B).max()) or 1.0
    problem, B_p, floor, mu = _reference_problem(m)
    B_p.value = B / scale
    floor.value = sigma * norms[m] / scale
    problem.solve(solver=cp.CLARABEL, **_cvx.CLARABEL_OPTIONS)
    if problem.status in (cp.INFEASIBLE, cp.INFEASIBLE_INACCURATE):
        return np.zeros(m + 1), False
    if problem.status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
        raise _cvx.SolverError(f"cvxpy reference LP ended with status {problem.status!r}")
    value = np.asarray(mu.value, dtype=np.float64).clip(0.0, None)
    return value / value.sum(), True


def pmgda_weights(
    K: np.ndarray,
    losses: np.ndarray,
    preference: np.ndarray,
    sigma: float,
    h_tol: float,
    *,
    reference: bool = False,
    roundoff: float = 0.0,
) -> tuple[np.ndarray, dict[str, Any]]:
    """PMGDA's weights for one step: the MGDA min-norm weights while h(L) < h_tol, else the
    correction LP's μ mapped back to the task gradients (eq. 18):
    w_i = μ_i/‖g_i‖ + (μ_m/‖∇h‖)·∂h/∂L_i, so that d = Gᵀw = Σ μ_i g̃_i/ñ_i.
    ``reference=True`` solves the LP with cvxpy (no certificate). Certificate (``residual``,
    ``tolerance`` = certificate_tolerance(``roundoff``), ``converged``): the min-norm KKT
    residual (:func:`mtlsolve.kernels.simplex_qp.certified_min_norm`) or the LP-duality
    residual (:func:`certified_correction`). The LP is feasible in exact arithmetic (μ = e_m);
    one found infeasible falls back to μ = e_m, a pure descent on h (``fallback``)."""
    from mtlsolve.gramian import certificate_tolerance
    from mtlsolve.kernels.simplex_qp import certified_min_norm

    m = K.shape[0]
    h, jhf = ray_distance(losses, preference)
    info: dict[str, Any] = {"h": h, "mode": "mgda"}
    if h < h_tol or m == 1:
        w, certificate = certified_min_norm(K, roundoff)
        return w, {**info, **certificate}
    B, norms = correction_problem(K, jhf, sigma)
    if reference:
        mu, ok = reference_correction(B, norms, sigma)
        residual = None
    else:
        mu, ok, residual = certified_correction(B, norms, sigma)
    info["mode"] = "correction"
    if residual is not None:
        tolerance = certificate_tolerance(roundoff)
        info.update(residual=residual, tolerance=float(tolerance), converged=bool(ok and residual <= tolerance))
        if not info["converged"]:
            info["fallback"] = "none: the uncertified LP vertex is returned"
    if not ok:
        mu = np.zeros(m + 1)
        mu[m] = 1.0
        info.update(fallback="μ = e_m: a pure descent on h", converged=False)
        if residual is not None:
            info["residual"] = float("inf")  # the LP has no solution to certify
    scaled = np.divide(mu, norms, out=np.zeros_like(mu), where=norms > 0)
    return scaled[:m] + scaled[m] * jhf, info


@attrs.define(kw_only=True, eq=False)
class PMGDA(Weighting):
    """PMGDA, Zhang, Lin & Zhang, "PMGDA: A Preference-based Multiple Gradient Descent
    Algorithm", IEEE TETCI 2024 (arXiv 2402.09492), as LibMOON ``pmgda_solver.py``: MGDA with
    the preference constraint h(L) = 0, h the distance of L from the ray through the
    preference λ (PBI's d₂). While h(L) < ``h_tol`` the step is MGDA's; otherwise the
    correction LP (eq. 20, :func:`correction_problem`) picks a direction that decreases h at
    rate ≥ ``sigma``·‖∇h‖ and descends the tasks as much as it can. The LP is solved exactly
    by a simplex-method kernel, checked against cvxpy.

    λ > 0 (``preference``, ``system.extras["preference"]`` first, default uniform) is the
    direction of the target: L ∥ λ (not 1/λ as in EPO). Defaults σ = 0.1, h_tol = 1e-2
    (LibMOON ``PMGDASolver``). LibMOON divides by ‖g̃_i‖ + 1e-4; here by ‖g̃_i‖, with zero
    vectors left out. ``diagnostics``: ``h``, ``mode`` ("mgda"/"correction"), and the
    certificate of the inner problem solved (:func:`pmgda_weights`): ``residual``,
    ``tolerance``, ``converged``, ``fallback`` when not certified.
    """

    name: ClassVar[str] = "pmgda"
    family: ClassVar[str] = "PA"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.GRAMIAN, Need.LOSSES})
    paper: ClassVar[str] = "Zhang, Lin, Zhang — IEEE TETCI 2024 — arXiv 2402.09492"

    sigma: float = attrs.field(default=0.1, converter=float, validator=in_range(0.0, 1.0))
    h_tol: float = attrs.field(default=1e-2, converter=float, validator=non_negative)
    preference: tuple[float, ...] | None = attrs.field(default=None, converter=optional_vector)

    def weights(self, system: GradientSystem) -> tuple[np.ndarray, Mapping[str, Any]]:
        pref, _ = preference_and_ideal(system, self.preference, None, self.name, strictly_positive=True)
        return pmgda_weights(system.gramian64, system.losses64, pref, self.sigma, self.h_tol, roundoff=system.roundoff)

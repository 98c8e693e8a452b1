"""FairGrad: α-fair resource allocation among the tasks (docs/methods.md#fairgrad)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from mtlsolve.solver import GramianWeighting
from mtlsolve.system import GradientSystem
from mtlsolve.validation import count, in_range, positive


@attrs.define(kw_only=True, eq=False)
class FairGrad(GramianWeighting):
    """Fair resource allocation in multi-task learning, Ban & Ji — ICML 2024 — arXiv 2402.15638,
    eq. (4): weights w > 0 solving Kw = w^{−1/α} element-wise, i.e. g_i·d = w_i^{−1/α} for
    d = Gᵀw (weights unnormalised); α = 1 is Nash-MTL's bargaining solution.

    The system is solved by Newton's method on its convex potential
    (:func:`mtlsolve.kernels.fairgrad.fairgrad_weights`), warm-started from the previous
    step's w, in place of the reference's bounded least squares from w = 1/m (LibMTL,
    TorchJD); the solution is unique, so only the iteration count depends on the warm start.
    A zero gradient has no finite weight (its equation reads 0 = w_i^{−1/α}; the reference
    drives w_i → ∞): such tasks get weight 0, which leaves d unchanged, and the others are
    solved alone.

    Certificate (``diagnostics``): ``residual`` = max_i |w_i^{1/α}(Kw)_i − 1| on K in float64,
    ``tolerance`` = max(``tol``, certificate_tolerance(ρ)·max_i w_i^{1/α}‖g_i‖Σ_j‖g_j‖w_j) (the
    effect of K's round-off on the residual), w > 0 and g_i·d above its round-off (residual inf
    otherwise); ``converged`` exactly when residual ≤ tolerance. No weights exist when
    0 ∈ conv{g_i} of the non-zero gradients (exactly opposite gradients, n < m with a
    cancelling combination): that verdict is certified by the min-norm point of the unit
    gradients' hull, ‖d_min‖² ≤ 4·m·ρ (``hull_distance``). Then, and when a solve is not
    certified, the previous step's w is returned (fallback "previous weights", as Nash-MTL) or,
    when there is none, w = 0 (fallback "zero update", d = 0), with ``converged`` False,
    residual inf (no weights solved the step) and a ``message``.

    Guarantees: permutation equivariance and g_i·d = w_i^{−1/α} > 0 (non-conflicting).
    Under G → cG, w → c^{−2α/(α+1)}w and d(cG) = c^{(1−α)/(1+α)}·d(G): scale-invariant at
    α = 1 only, and positively homogeneous for no α > 0 (α → 0 tends to linear scalarisation;
    use ``ls(reduction="mean")``, TorchJD's α = 0), so neither is claimed for the class.
    COST uses α = 2.
    """

    name: ClassVar[str] = "fairgrad"
    # "FairGrad", "fair_grad" resolve without aliases: the lookup ignores case, "-" and "_"
    properties: ClassVar[frozenset[str]] = frozenset({"permutation_equivariant", "non_conflicting"})
    stateful: ClassVar[bool] = True
    #: docs/methods.md#missing-tasks
    task_state: ClassVar[Mapping[str, Any]] = {"w": None}
    paper: ClassVar[str] = "Ban & Ji — ICML 2024 — arXiv 2402.15638"
    state_schema: ClassVar[Mapping[str, Any]] = {"w": ("m",)}

    alpha: float = attrs.field(default=1.0, converter=float, validator=positive)
    max_iter: int = attrs.field(default=100, validator=count)
    tol: float = attrs.field(default=1e-10, converter=float, validator=in_range(0.0, 1.0, closed="neither"))

    def weights_from_gramian(self, gramian: np.ndarray, system: GradientSystem) -> tuple[np.ndarray, Mapping[str, Any]]:
        from mtlsolve.gramian import certificate_tolerance
        from mtlsolve.kernels.fairgrad import (
            NO_SOLUTION,
            certified_fairgrad,
            fallback_step,
            no_solution_reason,
            uncertified_reason,
        )

        m = gramian.shape[0]
        state = self._state_for(m)
        keep = np.diag(gramian) > 0
        rho = system.roundoff
        if not keep.any():
            tolerance = max(self.tol, certificate_tolerance(rho))
            diagnostics = {"iterations": 0, "no_solution": True}
            return fallback_step("fairgrad", "w", state.get("w"), m, "every gradient is zero", tolerance, diagnostics)
        K = gramian if keep.all() else gramian[np.ix_(keep, keep)]
        previous = state.get("w")
        start = None if previous is None else np.array(previous)[keep]
        solved, iterations, status, residual, tolerance, certified = certified_fairgrad(
            K, start, alpha=self.alpha, tol=self.tol, max_iter=self.max_iter, roundoff=rho
        )
        diagnostics = {"iterations": iterations, "zero_tasks": int(m - keep.sum())}
        if certified:
            w = np.zeros(m)
            w[keep] = solved
            if keep.all():  # a warm start for the next step (only a full solution is a valid one)
                state["w"] = w.tolist()
            return w, {**diagnostics, "residual": residual, "tolerance": tolerance, "converged": True}
        if status != NO_SOLUTION:
            reason = uncertified_reason(status, residual, tolerance)
        else:
            reason, found = no_solution_reason(K, rho)
            diagnostics.update(found)
        return fallback_step("fairgrad", "w", state.get("w"), m, reason, tolerance, diagnostics)

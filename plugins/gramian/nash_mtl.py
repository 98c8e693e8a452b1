"""Nash-MTL: the Nash bargaining solution of the tasks (docs/methods.md#nash_mtl)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from mtlsolve.solver import GramianWeighting
from mtlsolve.system import GradientSystem
from mtlsolve.validation import count, in_range


@attrs.define(kw_only=True, eq=False)
class NashMTL(GramianWeighting):
    """Multi-task learning as a bargaining game, Navon, Shamsian, Achituve, Maron, Kawaguchi,
    Chechik, Fetaya — ICML 2022 — arXiv 2202.01017, eq. (3)–(4): weights α > 0 with
    α_i(Kα)_i = 1, i.e. g_i·d = 1/α_i for d = Gᵀα (weights unnormalised).

    The fixed point is solved by Newton's method on ½αᵀKα − Σ log α
    (:func:`mtlsolve.kernels.nash.nash_weights`) on the normalised Gramian D⁻¹KD⁻¹, warm-started
    from the previous α, in place of the reference's CCCP with ECOS (AvivNavon/nash-mtl; docs/methods.md#nash_mtl). α is
    recomputed every ``update_weights_every`` calls and reused in between (a reused step
    solves nothing and reports no certificate).

    Certificate (``diagnostics``): ``residual`` = max_i |α_i(Kα)_i − 1| on K in float64,
    ``tolerance`` = max(``tol``, certificate_tolerance(ρ)·max_i a_i Σ_j a_j), a = ‖g‖∘α (the
    effect of K's round-off ρ·‖g_i‖‖g_j‖ on the residual, large for nearly opposed gradients),
    and α > 0, g_i·d above its round-off (residual inf otherwise); ``converged`` exactly when
    residual ≤ tolerance (a fallback reports residual inf: no α solved this step). No α exists when 0 ∈ conv{g_i}
    (a zero gradient, gradients that cancel out): that verdict is itself certified by the
    min-norm point of the unit gradients' hull, ‖d_min‖² ≤ 4·m·ρ (``hull_distance``). Such a
    step, or one whose solve is not certified, falls back to the previous α (fallback
    "previous weights") or, when there is none, to α = 0 (fallback "zero update", d = 0, the
    bargaining disagreement point), with ``converged`` False and a ``message``. The update is
    scale-invariant, d(cG) = d(G), and non-conflicting (g_i·d = 1/α_i > 0) for every solved
    step and for the α = 0 fallback; a step that keeps a previous α inherits that α's
    products. Max-norm clipping of d (the reference's ``max_norm=1.0``) is an adapter option.
    """

    name: ClassVar[str] = "nash_mtl"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {"nash": {}}
    properties: ClassVar[frozenset[str]] = frozenset({"permutation_equivariant", "scale_invariant", "non_conflicting"})
    stateful: ClassVar[bool] = True
    #: docs/methods.md#missing-tasks
    task_state: ClassVar[Mapping[str, Any]] = {"alpha": None}
    paper: ClassVar[str] = "Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik, Fetaya — ICML 2022 — arXiv 2202.01017"
    state_schema: ClassVar[Mapping[str, Any]] = {"step": (), "alpha": ("m",)}

    update_weights_every: int = attrs.field(default=1, validator=count)
    max_iter: int = attrs.field(default=100, validator=count)
    tol: float = attrs.field(default=1e-10, converter=float, validator=in_range(0.0, 1.0, closed="neither"))

    def weights_from_gramian(self, gramian: np.ndarray, system: GradientSystem) -> tuple[np.ndarray, Mapping[str, Any]]:
        from mtlsolve.kernels.fairgrad import (
            NO_SOLUTION,
            certified_fairgrad,
            fallback_step,
            no_solution_reason,
            uncertified_reason,
        )

        m = gramian.shape[0]
        state = self._state_for(m)
        step = state.get("step", 0)
        state["step"] = step + 1
        previous = state.get("alpha")
        if previous is not None and step % self.update_weights_every != 0:
            return np.array(previous), {"updated": False}  # reused by design: no solve, no certificate
        rho = system.roundoff
        # FairGrad's solve and certificate at α = 1 (mtlsolve.kernels.nash.nash_weights, nash_certificate)
        alpha, iterations, status, residual, tolerance, certified = certified_fairgrad(
            gramian, previous, alpha=1.0, tol=self.tol, max_iter=self.max_iter, roundoff=rho
        )
        diagnostics: dict[str, Any] = {"updated": True, "iterations": iterations}
        if certified:
            state["alpha"] = alpha.tolist()
            return alpha, {**diagnostics, "residual": residual, "tolerance": tolerance, "converged": True}
        if status != NO_SOLUTION:
            reason = uncertified_reason(status, residual, tolerance)
        else:
            reason, found = no_solution_reason(gramian, rho)
            diagnostics.update(found)
        return fallback_step("nash_mtl", "α", previous, m, reason, tolerance, diagnostics)

"""Nash-MTL: the Nash bargaining solution of the tasks (catalogue §3.2, row ``nash_mtl``)."""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import attrs
import numpy as np

from mtlsolve.solver import GramianWeighting
from mtlsolve.system import GradientSystem

_COUNT = [attrs.validators.instance_of(int), attrs.validators.ge(1)]


@attrs.define(kw_only=True, eq=False)
class NashMTL(GramianWeighting):
    """Multi-task learning as a bargaining game, Navon, Shamsian, Achituve, Maron, Kawaguchi,
    Chechik, Fetaya — ICML 2022 — arXiv 2202.01017, eq. (3)–(4): weights α > 0 with
    α_i(Kα)_i = 1, i.e. g_i·d = 1/α_i for d = Gᵀα (weights unnormalised).

    The fixed point is solved to ``tol`` by Newton's method on ½αᵀKα − Σ log α
    (:func:`mtlsolve.kernels.nash.nash_weights`), warm-started from the previous α, in place
    of the reference's CCCP with ECOS (catalogue §2). α is recomputed every
    ``update_weights_every`` calls and reused in between. No α exists when 0 ∈ conv{g_i}
    (a zero gradient, gradients that cancel out); such a step, or one that does not converge
    within ``max_iter`` Newton steps, keeps the previous α, or gives α = 0 (d = 0, the
    bargaining disagreement point) when there is none, and says so in
    ``diagnostics["converged"]`` / ``["message"]``. The update is scale-invariant,
    d(cG) = d(G), and non-conflicting (g_i·d = 1/α_i > 0) for every solved step and for the
    α = 0 fallback; a step that keeps a previous α inherits that α's products. Max-norm
    clipping of d (the reference's ``max_norm=1.0``) is an adapter option.
    """

    name: ClassVar[str] = "nash_mtl"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {"nash": {}}
    properties: ClassVar[frozenset[str]] = frozenset({"permutation_equivariant", "scale_invariant", "non_conflicting"})
    stateful: ClassVar[bool] = True
    paper: ClassVar[str] = (
        "Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik, Fetaya — ICML 2022 — arXiv 2202.01017"
    )

    update_weights_every: int = attrs.field(default=1, validator=_COUNT)
    max_iter: int = attrs.field(default=100, validator=_COUNT)
    tol: float = attrs.field(
        default=1e-10, converter=float, validator=[attrs.validators.gt(0.0), attrs.validators.lt(1.0)]
    )

    def weights_from_gramian(
        self, gramian: np.ndarray, system: GradientSystem
    ) -> tuple[np.ndarray, Mapping[str, Any]]:
        from mtlsolve.kernels.nash import CONVERGED, STATUS, nash_weights

        state = self._state_for(gramian.shape[0])
        step = state.get("step", 0)
        state["step"] = step + 1
        previous = state.get("alpha")
        if previous is not None and step % self.update_weights_every != 0:
            return np.array(previous), {"updated": False, "converged": True}
        alpha, iterations, status, residual = nash_weights(
            gramian, None if previous is None else np.array(previous), tol=self.tol, max_iter=self.max_iter
        )
        diagnostics: dict[str, Any] = {"updated": True, "iterations": iterations, "residual": residual}
        if status == CONVERGED:
            state["alpha"] = alpha.tolist()
            return alpha, {**diagnostics, "converged": True}
        kept = "kept the previous α" if previous is not None else "returned α = 0 (d = 0)"
        diagnostics.update(converged=False, message=f"nash_mtl: {STATUS[status]}; {kept}")
        return (np.zeros(gramian.shape[0]) if previous is None else np.array(previous)), diagnostics

"""FairGrad: α-fair resource allocation among the tasks (catalogue §3.2, row ``fairgrad``)."""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import attrs
import numpy as np

from mtlsolve.solver import GramianWeighting
from mtlsolve.system import GradientSystem

_COUNT = [attrs.validators.instance_of(int), attrs.validators.ge(1)]


def _positive(_instance: Any, attribute: attrs.Attribute, value: float) -> None:
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name} must be a positive number, got {value!r}")


@attrs.define(kw_only=True, eq=False)
class FairGrad(GramianWeighting):
    """Fair resource allocation in multi-task learning, Ban & Ji — ICML 2024 — arXiv 2402.15638,
    eq. (4): weights w > 0 solving Kw = w^{−1/α} element-wise, i.e. g_i·d = w_i^{−1/α} for
    d = Gᵀw (weights unnormalised); α = 1 is Nash-MTL's bargaining solution.

    The system is solved to ``tol`` (max_i |w_i^{1/α}(Kw)_i − 1|) by Newton's method on its
    convex potential (:func:`mtlsolve.kernels.fairgrad.fairgrad_weights`), warm-started from
    the previous step's w, in place of the reference's bounded least squares from w = 1/m
    (LibMTL, TorchJD); the solution is unique, so only the iteration count depends on the
    warm start. A zero gradient has no finite weight (its equation reads 0 = w_i^{−1/α}; the
    reference drives w_i → ∞): such tasks get weight 0, which leaves d unchanged, and the
    others are solved alone. No weights exist when 0 ∈ conv{g_i} of the non-zero gradients
    (exactly opposite gradients, n < m with a cancelling combination), and then w = 0 (d = 0)
    is returned; that, and a step not converged within ``max_iter``, is reported in
    ``diagnostics["converged"]`` / ``["message"]``.

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
    paper: ClassVar[str] = "Ban & Ji — ICML 2024 — arXiv 2402.15638"

    alpha: float = attrs.field(default=1.0, converter=float, validator=_positive)
    max_iter: int = attrs.field(default=100, validator=_COUNT)
    tol: float = attrs.field(
        default=1e-10, converter=float, validator=[attrs.validators.gt(0.0), attrs.validators.lt(1.0)]
    )

    def weights_from_gramian(
        self, gramian: np.ndarray, system: GradientSystem
    ) -> tuple[np.ndarray, Mapping[str, Any]]:
        from mtlsolve.kernels.fairgrad import CONVERGED, STATUS, fairgrad_weights

        m = gramian.shape[0]
        state = self._state_for(m)
        keep = np.diag(gramian) > 0
        w = np.zeros(m)
        if not keep.any():
            return w, {"converged": False, "iterations": 0, "message": "fairgrad: every gradient is zero; w = 0"}
        previous = state.get("w")
        start = None if previous is None else np.array(previous)[keep]
        solved, iterations, status, residual = fairgrad_weights(
            gramian[np.ix_(keep, keep)], start, alpha=self.alpha, tol=self.tol, max_iter=self.max_iter
        )
        diagnostics: dict[str, Any] = {"iterations": iterations, "residual": residual, "zero_tasks": int(m - keep.sum())}
        if status != CONVERGED:
            diagnostics.update(converged=False, message=f"fairgrad: {STATUS[status]}; returned w = 0 (d = 0)")
            return w, diagnostics
        w[keep] = solved
        if keep.all():  # a warm start for the next step (only a full solution is a valid one)
            state["w"] = w.tolist()
        return w, {**diagnostics, "converged": True}

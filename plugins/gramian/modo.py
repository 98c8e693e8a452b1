"""MoDo: multi-objective gradient with double sampling (docs/methods.md#modo)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from mtlsolve.solver import GramianWeighting
from mtlsolve.system import GradientSystem
from mtlsolve.validation import non_negative, positive


def simplex_residual(x: np.ndarray) -> float:
    """max(|Σx − 1|, max_i −x_i): how far x is from the probability simplex."""
    return float(max(abs(x.sum() - 1.0), -x.min(initial=0.0)))


@attrs.define(kw_only=True, eq=False)
class MoDo(GramianWeighting):
    """MoDo, Chen, Fernando, Ying, Chen, "Three-Way Trade-Off in Multi-Objective Learning",
    NeurIPS 2023 / JMLR 2024, arXiv 2305.20057, Algorithm 1 (eqs. 2.9a–b) with three
    independent batches, as LibMTL ``MoDo`` and torchjd 0.18.0 ``MoDoWeighting``.

    The system stacks the task gradients of three batches (``batches = 3``: rows
    [G₁; G₂; G₃], 3m of them), so its Gramian holds the cross block G₁G₂ᵀ. Each call takes
    one projected step λ ← Π_Δ(λ − γ(G₁G₂ᵀλ + ρλ)) from λ₀ = 1/m and returns the stacked
    weights (0, 0, λ), i.e. d = G₃ᵀλ. ``gamma=0.1`` gives the torchjd 0.18.0 defaults
    (LibMTL: 1e-3). The state holds λ; ``diagnostics["lambda"]`` is λ.

    The method is one projected step per call by definition (Algorithm 1): no inner problem is
    solved to a tolerance, so ``converged`` does not apply and is not reported. What holds is
    λ ∈ Δ_m (the Euclidean projection is exact); ``diagnostics["simplex_residual"]`` is
    max(|Σλ − 1|, max_i −λ_i).
    """

    name: ClassVar[str] = "modo"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    # simplex weights: λ ∈ Δ_m sits on the third batch's rows. Not claimed: permutation
    # equivariance (the conformance check permutes stacked rows across batches)
    properties: ClassVar[frozenset[str]] = frozenset({"simplex_weights"})
    stateful: ClassVar[bool] = True
    #: docs/methods.md#missing-tasks
    task_state: ClassVar[Mapping[str, Any]] = {"lambda": "simplex"}
    batches: ClassVar[int] = 3
    paper: ClassVar[str] = "Chen, Fernando, Ying, Chen — NeurIPS 2023 (JMLR 2024) — arXiv 2305.20057"
    state_schema: ClassVar[Mapping[str, Any]] = {"lambda": ("m",)}

    gamma: float = attrs.field(default=1e-3, converter=float, validator=positive)
    rho: float = attrs.field(default=0.1, converter=float, validator=non_negative)

    def weights_from_gramian(self, gramian: np.ndarray, system: GradientSystem) -> tuple[np.ndarray, Mapping[str, Any]]:
        from mtlsolve.kernels.simplex_projection import project_simplex

        m = gramian.shape[0] // 3
        state = self._state_for(m)
        lam = state.get("lambda", np.full(m, 1.0 / m))
        cross = gramian[:m, m : 2 * m]
        lam = project_simplex(lam - self.gamma * (cross @ lam + self.rho * lam))
        state["lambda"] = lam
        w = np.zeros(3 * m)
        w[2 * m :] = lam
        return w, {"lambda": lam.copy(), "simplex_residual": simplex_residual(lam)}

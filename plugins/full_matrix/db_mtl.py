"""DB-MTL: dual-balancing multi-task learning (docs/methods.md#db_mtl)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from mtlsolve.errors import InvalidSystemError
from mtlsolve.plugins.full_matrix._common import (
    combine_rows,
    fit_to,
    largest,
    match,
    reject_representation,
    row_norms,
    safe_divide,
    scale_rows,
    state_for,
    working,
)
from mtlsolve.plugins.loss_weighting._common import checked_counts
from mtlsolve.solver import Need, Result, Solver
from mtlsolve.system import GradientSystem
from mtlsolve.validation import in_range, non_negative

#: LibMTL's shift inside the log: h_i = ∇log(L_i + 1e-8)
LOG_EPS = 1e-8


@attrs.define(kw_only=True, eq=False)
class DBMTL(Solver):
    """DB-MTL, Lin, Jiang, Ye, Zhang, Chen, Chen, Liu, Tsang, Kwok, "Dual-Balancing for
    Multi-Task Learning", arXiv 2308.12029, Algorithm 1 (loss-scale balancing by the log
    transform, gradient-magnitude balancing by the largest norm), as LibMTL ``DB_MTL``.

    h_i = ∇log(L_i + 1e-8) = g_i/(L_i + 1e-8); the buffer follows
    ĥ_i ← h_i + β_k(ĥ_i − h_i), β_k = β/k^{β_σ}, ĥ₀ = 0; d = Σ_i (max_j‖ĥ_j‖/‖ĥ_i‖)·ĥ_i,
    so every term has norm max_j‖ĥ_j‖ (a zero ĥ_i contributes nothing). β ∈ [0, 1) and
    β_σ ≥ 0. The buffer (m x n, in G's array type and device; in G's dtype, or float32 for a
    half-precision G, where h of a zero loss, g/1e-8, would overflow) and k are the state;
    another m or n raises until :meth:`reset`. A direction too large for G's dtype (|d| may
    reach m·max_j‖ĥ_j‖) is scaled down to fit (``diagnostics["scaled_to_fit"]``, otherwise 1),
    so finite input gives a finite direction.
    Representation gradients are rejected, as LibMTL does.
    ``diagnostics``: ``alpha`` (the factors on the buffer rows), ``step``, ``scaled_to_fit``.
    """

    name: ClassVar[str] = "db_mtl"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {"dual_balancing": {}}
    family: ClassVar[str] = "FM"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.MATRIX, Need.LOSSES})
    properties: ClassVar[frozenset[str]] = frozenset({"permutation_equivariant", "positive_homogeneous"})
    stateful: ClassVar[bool] = True
    #: docs/methods.md#missing-tasks
    task_state: ClassVar[Mapping[str, Any]] = {"buffer": 0.0}
    paper: ClassVar[str] = "Lin, Jiang, Ye, Zhang, Chen, Chen, Liu, Tsang, Kwok — arXiv 2308.12029"
    state_schema: ClassVar[Mapping[str, Any]] = {"n": (), "step": (), "buffer": ("m", "n")}

    beta: float = attrs.field(default=0.9, converter=float, validator=in_range(0.0, 1.0, closed="left"))
    beta_sigma: float = attrs.field(default=0.0, converter=float, validator=non_negative)

    def check(self, system: GradientSystem) -> None:
        reject_representation(system, self.name)
        super().check(system)

    def solve(self, system: GradientSystem) -> Result:
        G = system.matrix
        m, n = G.shape
        shifted = system.losses64 + LOG_EPS
        if (shifted <= 0).any():
            raise InvalidSystemError(f"db_mtl takes log(L + 1e-8) and needs L > -1e-8, got {system.losses64.tolist()}")
        state = state_for(self, m, n)
        k = state.get("step", 0) + 1
        W = working(G)
        H = scale_rows(W, 1.0 / shifted)
        previous = match(state["buffer"], W) if "buffer" in state else 0.0
        buffer = H + (self.beta / k**self.beta_sigma) * (previous - H)
        norms = row_norms(buffer)
        top = norms.max()
        alpha = safe_divide(np.full(m, top), norms)
        # every term α_i ĥ_i has norm max_j‖ĥ_j‖, so |d| ≤ m·max_j‖ĥ_j‖: scaled down when that could overflow
        fit = 1.0 if m * top <= 0.5 * largest(buffer) else 0.5 * largest(buffer) / (m * top)
        direction, factor = fit_to(combine_rows(fit * alpha, buffer), G)
        state.update(step=k, buffer=buffer)
        return Result(direction=direction, diagnostics={"alpha": alpha, "step": k, "scaled_to_fit": fit * factor})

    def _checked_state(self, state: Any) -> dict[str, Any]:
        return checked_counts(super()._checked_state(state), self.name, "step")

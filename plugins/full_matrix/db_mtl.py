"""DB-MTL: dual-balancing multi-task learning (catalogue §3.3, row ``db_mtl``)."""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import attrs
import numpy as np

from mtlsolve.errors import InvalidSystemError
from mtlsolve.plugins.full_matrix._common import (
    combine_rows,
    match,
    reject_representation,
    row_norms,
    safe_divide,
    scale_rows,
    state_for,
)
from mtlsolve.solver import Need, Result, Solver
from mtlsolve.system import GradientSystem

#: LibMTL's shift inside the log: h_i = ∇log(L_i + 1e-8)
LOG_EPS = 1e-8


def _non_negative(_instance: Any, attribute: attrs.Attribute, value: float) -> None:
    if not (np.isfinite(value) and value >= 0):
        raise ValueError(f"{attribute.name} must be a non-negative number, got {value!r}")


@attrs.define(kw_only=True, eq=False)
class DBMTL(Solver):
    """DB-MTL, Lin, Jiang, Ye, Zhang, Chen, Chen, Liu, Tsang, Kwok, "Dual-Balancing for
    Multi-Task Learning", arXiv 2308.12029, Algorithm 1 (loss-scale balancing by the log
    transform, gradient-magnitude balancing by the largest norm), as LibMTL ``DB_MTL``.

    h_i = ∇log(L_i + 1e-8) = g_i/(L_i + 1e-8); the buffer follows
    ĥ_i ← h_i + β_k(ĥ_i − h_i), β_k = β/k^{β_σ}, ĥ₀ = 0; d = Σ_i (max_j‖ĥ_j‖/‖ĥ_i‖)·ĥ_i,
    so every term has norm max_j‖ĥ_j‖ (a zero ĥ_i contributes nothing). The buffer
    (m x n, in G's array type, device and dtype) and k are the state; they reset when
    m or n changes. Representation gradients are rejected, as LibMTL does.
    ``diagnostics``: ``alpha`` (the factors on the buffer rows) and ``step``.
    """

    name: ClassVar[str] = "db_mtl"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {"dual_balancing": {}}
    family: ClassVar[str] = "FM"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.MATRIX, Need.LOSSES})
    properties: ClassVar[frozenset[str]] = frozenset({"permutation_equivariant", "positive_homogeneous"})
    stateful: ClassVar[bool] = True
    paper: ClassVar[str] = "Lin, Jiang, Ye, Zhang, Chen, Chen, Liu, Tsang, Kwok — arXiv 2308.12029"

    beta: float = attrs.field(default=0.9, converter=float, validator=_non_negative)
    beta_sigma: float = attrs.field(default=0.0, converter=float, validator=_non_negative)

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
        H = scale_rows(G, 1.0 / shifted)
        previous = match(state["buffer"], G) if "buffer" in state else 0.0
        buffer = H + (self.beta / k**self.beta_sigma) * (previous - H)
        norms = row_norms(buffer)
        alpha = safe_divide(np.full(m, norms.max()), norms)
        state.update(step=k, buffer=buffer)
        return Result(direction=combine_rows(alpha, buffer), diagnostics={"alpha": alpha, "step": k})

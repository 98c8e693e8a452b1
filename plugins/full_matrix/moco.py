"""MoCo: stochastic multi-objective gradient correction (catalogue §3.3, row ``moco``)."""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import attrs
import numpy as np

from mtlsolve._array import to_numpy64
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

LAMBDA_UPDATES = ("softmax", "project")


def _non_negative(_instance: Any, attribute: attrs.Attribute, value: float) -> None:
    if not (np.isfinite(value) and value >= 0):
        raise ValueError(f"{attribute.name} must be a non-negative number, got {value!r}")


def project_simplex(v: np.ndarray) -> np.ndarray:
    """The Euclidean projection of ``v`` onto the probability simplex (sort-based, exact)."""
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1.0
    k = np.arange(1, v.size + 1)
    rho = np.flatnonzero(u - css / k > 0)[-1]
    return np.maximum(v - css[rho] / (rho + 1), 0.0)


def _softmax(v: np.ndarray) -> np.ndarray:
    e = np.exp(v - v.max())
    return e / e.sum()


@attrs.define(kw_only=True, eq=False)
class MoCo(Solver):
    """MoCo, Fernando, Shen, Liu, Chaudhury, Murugesan, Chen, "Mitigating Gradient Bias in
    Multi-objective Learning: A Provably Convergent Approach", ICLR 2023, arXiv 2210.12624,
    Algorithm 1 (gradient tracking, then the λ update), as in LibMTL ``MoCo``.

    At step k: ĝ_i = L_i·g_i/‖g_i‖ (0 for a zero gradient); Y ← Y − β_k(Y − Ĝ) with
    β_k = β/k^{β_σ}; λ ← softmax(λ − γ_k(YYᵀ + ρI)λ) with γ_k = γ/k^{γ_σ}
    (``lambda_update="project"``: Euclidean projection onto Δ_m instead); d = Yᵀλ.
    Y₀ = 0, λ₀ = 1/m. The state holds Y (m x n, in G's array type, device and dtype),
    λ and k; it resets when m or n changes. Representation gradients are rejected,
    as LibMTL does. ``diagnostics``: ``lambda`` (the weights on the rows of Y) and ``step``.
    """

    name: ClassVar[str] = "moco"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    family: ClassVar[str] = "FM"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.MATRIX, Need.LOSSES})
    properties: ClassVar[frozenset[str]] = frozenset({"permutation_equivariant", "scale_invariant"})
    stateful: ClassVar[bool] = True
    paper: ClassVar[str] = "Fernando, Shen, Liu, Chaudhury, Murugesan, Chen — ICLR 2023 — arXiv 2210.12624"

    beta: float = attrs.field(default=0.5, converter=float, validator=_non_negative)
    beta_sigma: float = attrs.field(default=0.5, converter=float, validator=_non_negative)
    gamma: float = attrs.field(default=0.1, converter=float, validator=_non_negative)
    gamma_sigma: float = attrs.field(default=0.5, converter=float, validator=_non_negative)
    rho: float = attrs.field(default=0.0, converter=float, validator=_non_negative)
    lambda_update: str = attrs.field(default="softmax", validator=attrs.validators.in_(LAMBDA_UPDATES))

    def check(self, system: GradientSystem) -> None:
        reject_representation(system, self.name)
        super().check(system)

    def solve(self, system: GradientSystem) -> Result:
        G = system.matrix
        m, n = G.shape
        state = state_for(self, m, n)
        k = state.get("step", 0) + 1
        Y = match(state["y"], G) if "y" in state else 0.0
        lam = np.array(state.get("lambda", np.full(m, 1.0 / m)), dtype=np.float64)
        tracked = scale_rows(G, safe_divide(system.losses64, row_norms(G)))
        Y = Y - (self.beta / k**self.beta_sigma) * (Y - tracked)
        YY = to_numpy64(Y @ Y.T)
        step = lam - (self.gamma / k**self.gamma_sigma) * ((YY + self.rho * np.eye(m)) @ lam)
        lam = _softmax(step) if self.lambda_update == "softmax" else project_simplex(step)
        state.update(step=k, y=Y, **{"lambda": lam})
        return Result(direction=combine_rows(lam, Y), diagnostics={"lambda": lam.copy(), "step": k})

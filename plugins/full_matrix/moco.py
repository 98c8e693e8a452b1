"""MoCo: stochastic multi-objective gradient correction (docs/methods.md#moco)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from mtlsolve._array import to_numpy64
from mtlsolve.errors import NonFiniteError, StateError
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
from mtlsolve.validation import in_range, non_negative, one_of

LAMBDA_UPDATES = ("softmax", "project")


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
    Y₀ = 0, λ₀ = 1/m; β ∈ (0, 1] (so Y stays a convex combination of tracked gradients),
    β_σ, γ, γ_σ, ρ ≥ 0. The state holds Y (m x n, in G's array type and device; in G's dtype,
    or float32 for a half-precision G), λ and k; another m or n raises until :meth:`reset`.
    YYᵀ is formed on the rows scaled by their largest norm s (s²·ŶŶᵀ in float64), and where
    γ_k s² overflows float64 the λ step takes its limit (λ on the rows minimising (YYᵀλ)_i),
    so huge losses give a finite λ. A direction too large for a half-precision G's dtype is
    scaled down to fit (``diagnostics["scaled_to_fit"]``). Representation gradients are
    rejected, as LibMTL does. ``diagnostics``: ``lambda`` (the weights on the rows of Y),
    ``step``, ``scaled_to_fit``.
    """

    name: ClassVar[str] = "moco"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    family: ClassVar[str] = "FM"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.MATRIX, Need.LOSSES})
    properties: ClassVar[frozenset[str]] = frozenset({"permutation_equivariant", "scale_invariant"})
    stateful: ClassVar[bool] = True
    #: docs/methods.md#missing-tasks
    task_state: ClassVar[Mapping[str, Any]] = {"y": 0.0, "lambda": "simplex"}
    paper: ClassVar[str] = "Fernando, Shen, Liu, Chaudhury, Murugesan, Chen — ICLR 2023 — arXiv 2210.12624"
    state_schema: ClassVar[Mapping[str, Any]] = {"n": (), "step": (), "y": ("m", "n"), "lambda": ("m",)}

    beta: float = attrs.field(default=0.5, converter=float, validator=in_range(0.0, 1.0, closed="right"))
    beta_sigma: float = attrs.field(default=0.5, converter=float, validator=non_negative)
    gamma: float = attrs.field(default=0.1, converter=float, validator=non_negative)
    gamma_sigma: float = attrs.field(default=0.5, converter=float, validator=non_negative)
    rho: float = attrs.field(default=0.0, converter=float, validator=non_negative)
    lambda_update: str = attrs.field(default="softmax", validator=one_of(*LAMBDA_UPDATES))

    def check(self, system: GradientSystem) -> None:
        reject_representation(system, self.name)
        super().check(system)

    def solve(self, system: GradientSystem) -> Result:
        G = system.matrix
        m, n = G.shape
        L = system.losses64
        state = state_for(self, m, n)
        k = state.get("step", 0) + 1
        W = working(G)
        if np.abs(L).max() >= 0.5 * largest(W):
            raise NonFiniteError(
                f"moco tracks L_i·g_i/‖g_i‖, and losses up to {np.abs(L).max():.3g} exceed the range of the "
                f"dtype it computes in ({W.dtype}); scale the losses down"
            )
        Y = match(state["y"], W) if "y" in state else 0.0
        lam = np.array(state.get("lambda", np.full(m, 1.0 / m)), dtype=np.float64)
        Y = Y - (self.beta / k**self.beta_sigma) * (Y - self._tracked(W, L))
        lam = self._lambda_step(lam, Y, k)
        state.update(step=k, y=Y, **{"lambda": lam})
        direction, factor = fit_to(combine_rows(lam, Y), G)
        return Result(direction=direction, diagnostics={"lambda": lam.copy(), "step": k, "scaled_to_fit": factor})

    def _checked_state(self, state: Any) -> dict[str, Any]:
        checked = checked_counts(super()._checked_state(state), self.name, "step")
        lam = checked.get("lambda")
        if lam is not None and not ((lam >= 0).all() and abs(lam.sum() - 1.0) < 1e-6):
            raise StateError(f"moco state entry 'lambda' must lie on the simplex, got {lam.tolist()}")
        return checked

    @staticmethod
    def _tracked(W: Any, L: np.ndarray) -> Any:
        """The rows L_i·g_i/‖g_i‖ (0 for a zero g_i); via g_i/max|g_i| when L_i/‖g_i‖ would overflow."""
        norms = row_norms(W)
        factor = safe_divide(np.abs(L), norms)
        if factor.max(initial=0.0) < 0.5 * largest(W):
            return scale_rows(W, np.sign(L) * factor)
        top = np.array([float(abs(W[i]).max()) for i in range(len(L))])
        unit = scale_rows(W, safe_divide(np.ones(len(L)), top))  # entries <= 1, norms ‖g_i‖/top_i in [1, √n]
        return scale_rows(unit, L * safe_divide(top, norms))

    def _lambda_step(self, lam: np.ndarray, Y: Any, k: int) -> np.ndarray:
        """λ ← softmax (or simplex projection) of λ − γ_k(YYᵀ + ρI)λ, overflow-safe."""
        m = len(lam)
        gamma = self.gamma / k**self.gamma_sigma
        s = float(row_norms(Y).max())
        if s * s < 0.5 * largest(Y) / m:
            unit = YY = to_numpy64(Y @ Y.T)
        else:  # rows scaled by s: ŶŶᵀ cannot overflow, s² is applied in float64
            Ys = scale_rows(Y, np.full(m, 1.0 / s))
            unit = to_numpy64(Ys @ Ys.T)
            with np.errstate(over="ignore", invalid="ignore"):
                YY = unit * (s * s)
        with np.errstate(over="ignore", invalid="ignore"):
            step = lam - gamma * ((YY + self.rho * np.eye(m)) @ lam)
        if not np.isfinite(step).all():  # γ_k·YYᵀλ beyond float64: the step's limit puts λ on the minimisers
            u = unit @ lam
            mask = u <= u.min()
            return mask / mask.sum()
        return _softmax(step) if self.lambda_update == "softmax" else project_simplex(step)

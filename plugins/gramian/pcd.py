"""PCD: priority-constrained descent (docs/methods.md#pcd)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from mtlsolve.errors import InvalidSystemError, StateError
from mtlsolve.gramian import certificate_tolerance, rank_threshold
from mtlsolve.solver import GramianWeighting
from mtlsolve.system import GradientSystem
from mtlsolve.validation import Requirement, in_range, is_number, non_negative, vector_converter

_tau_vector = vector_converter("tau", non_negative=True)


def _tau(value: Any) -> float | tuple[float, ...]:
    """One fraction shared by the secondary objectives, or one per secondary objective."""
    return float(value) if is_number(value) else _tau_vector(value)


def _fractions(value: Any) -> bool:
    values = (value,) if isinstance(value, float) else value
    return all(0.0 <= v <= 1.0 for v in values)


@attrs.define(kw_only=True, eq=False)
class PCD(GramianWeighting):
    """Priority-Constrained Descent, "Not All Objectives Are Born Equal: Priority-Constrained
    Descent for Hierarchical Multi-Objective Optimization", TMLR 2026, arXiv 2606.29521 (TorchJD
    0.18's ``PCD``). Task 1 (the first row of G) is the primary objective:

        d̃ = argmin_d ½‖d − g̃_1‖²  s.t.  g̃_jᵀd ≥ τ_j‖g̃_j‖²  for j = 2, …, m,

    with g̃_i = s_i g_i, s_i = 1/√(v̂_i + ``eps``), v̂_i the bias-corrected EMA (decay ``beta``)
    of ‖g_i‖² over the calls; d = d̃·‖g_1‖/‖d̃‖. ``tau`` is one fraction in [0, 1] or one per
    secondary task (m − 1 values).

    Weight form: d̃ = g̃_1 + Σ_j μ_j g̃_j with μ = argmin_{μ ≥ 0} ½μᵀK̃_Sμ − bᵀμ, K̃ = SKS, S the
    secondary rows, b_j = τ_jK̃_jj − K̃_j1; solved exactly by the active-set core of
    :mod:`mtlsolve.kernels._dense` on the Jacobi-scaled dual, and w = (1, μ)∘s·‖g_1‖/‖d̃‖.
    Special cases (as TorchJD): g_1 = 0 gives w = 0; d̃ = 0 up to the round-off of K̃ gives
    w = 0; constraints that cannot hold together (e.g. two opposite secondary gradients, τ > 0)
    give d = g_1, ``diagnostics["infeasible"] = True``.

    Certificate: ``residual`` = the largest scale-free violation of the KKT conditions μ ≥ 0,
    g̃_jᵀd̃ ≥ τ_j‖g̃_j‖², μ_j(g̃_jᵀd̃ − τ_j‖g̃_j‖²) = 0, relative to ‖g̃_j‖ and
    S = ‖g̃_1‖ + Σ_j μ_j‖g̃_j‖; infeasibility is certified first, by μ ≥ 0 with
    ‖Σ_j μ_j g̃_j‖² ≤ tolerance·(Σ_j μ_j‖g̃_j‖)² and Σ_j μ_jτ_j‖g̃_j‖² > 0 (Farkas; then
    ``residual`` is that ratio). ``converged`` when either holds within ``tolerance`` =
    certificate_tolerance(ρ); otherwise the fallback d = g_1 runs.
    The EMA lives in the solver state (``sq_norm_ema``, ``steps``) and is updated only by calls
    that return. No property is claimed: the first task is special, and the normalisation
    makes d(cG) = c·d(G) hold only up to ``eps``. Steps with missing tasks are refused (the
    primary task and the shared step count).
    """

    name: ClassVar[str] = "pcd"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {"priority_constrained_descent": {}}
    stateful: ClassVar[bool] = True
    paper: ClassVar[str] = "Priority-Constrained Descent — TMLR 2026 — arXiv 2606.29521"
    state_schema: ClassVar[Mapping[str, Any]] = {"sq_norm_ema": ("m",), "steps": ()}
    task_state: ClassVar[str] = (
        "its first task is the primary objective, and one step count debiases every task's moving average"
    )

    tau: float | tuple[float, ...] = attrs.field(
        default=0.02, converter=_tau, validator=Requirement("a number or vector of numbers in [0, 1]", _fractions)
    )
    beta: float = attrs.field(default=0.999, converter=float, validator=in_range(0.0, 1.0, "left"))
    eps: float = attrs.field(default=1e-8, converter=float, validator=non_negative)

    def taus(self, m: int) -> np.ndarray:
        if isinstance(self.tau, float):
            return np.full(m - 1, self.tau)
        if len(self.tau) != m - 1:
            raise InvalidSystemError(f"pcd tau has {len(self.tau)} entries for {m - 1} secondary tasks (m = {m})")
        return np.array(self.tau)

    def _checked_state(self, state: Any) -> dict[str, Any]:
        checked = super()._checked_state(state)
        steps = checked.get("steps")
        if steps is not None:
            if not (float(steps).is_integer() and steps >= 1):
                raise StateError(f"pcd state entry 'steps' must be a count >= 1, got {steps!r}")
            checked["steps"] = int(steps)
        if "sq_norm_ema" in checked and (checked["sq_norm_ema"] < 0).any():
            raise StateError("pcd state entry 'sq_norm_ema' holds squared gradient norms, which must be >= 0")
        if ("steps" in checked) != ("sq_norm_ema" in checked):
            raise StateError("pcd state needs both 'sq_norm_ema' and 'steps'")
        return checked

    def scales(self, sq_norms: np.ndarray) -> np.ndarray:
        """Update the EMA of ‖g_i‖² with this call's and return s_i = 1/√(v̂_i + eps) (0 where that is ∞)."""
        state = self._state_for(len(sq_norms))
        ema = self.beta * state.get("sq_norm_ema", np.zeros(len(sq_norms))) + (1.0 - self.beta) * sq_norms
        steps = state.get("steps", 0) + 1
        state["sq_norm_ema"], state["steps"] = ema, steps
        denominators = np.sqrt(ema / (1.0 - self.beta**steps) + self.eps)
        return np.divide(1.0, denominators, out=np.zeros_like(denominators), where=denominators > 0)

    def weights_from_gramian(self, gramian: np.ndarray, system: GradientSystem) -> tuple[np.ndarray, Mapping[str, Any]]:
        m = gramian.shape[0]
        taus = self.taus(m)
        s = self.scales(np.diag(gramian).copy())
        tolerance = float(certificate_tolerance(system.roundoff))
        diagnostics: dict[str, Any] = {"residual": 0.0, "tolerance": tolerance, "converged": True, "infeasible": False}
        if not gramian[0, 0] > 0.0:
            return np.zeros(m), {**diagnostics, "iterations": 0}
        Kt = gramian * np.outer(s, s)
        mu, iterations = _dual(Kt, taus)
        diagnostics["iterations"] = iterations
        w = np.concatenate(([1.0], mu))
        farkas = _farkas_residual(Kt, taus, mu, tolerance)
        if farkas <= tolerance:  # no d meets every constraint: μ grew along a proof of it
            diagnostics.update(infeasible=True, residual=farkas)
            w = np.eye(m)[0]
        else:
            diagnostics["residual"] = _kkt_residual(Kt, taus, mu)
            if not diagnostics["residual"] <= tolerance:
                diagnostics["converged"] = False
                diagnostics["fallback"] = "d = g_1, the primary gradient"
                diagnostics["message"] = "pcd: KKT residual of the constrained projection above tolerance"
                w = np.eye(m)[0]
        d_sq = w @ Kt @ w
        magnitude = (np.abs(w) @ np.sqrt(np.diag(Kt))) ** 2
        if not d_sq > rank_threshold(m, system.roundoff) * magnitude:
            return np.zeros(m), diagnostics
        return w * s * np.sqrt(gramian[0, 0] / d_sq), diagnostics


def _dual(Kt: np.ndarray, taus: np.ndarray) -> tuple[np.ndarray, int]:
    """μ = argmin_{μ ≥ 0} ½μᵀK̃_Sμ − bᵀμ (b_j = τ_jK̃_jj − K̃_j1) on the Jacobi-scaled problem."""
    from mtlsolve.kernels._dense import RIDGE, active_set, as_kernel_array, unit_diagonal
    from mtlsolve.kernels.simplex_qp import default_max_iter

    k = Kt.shape[0] - 1
    if k == 0:
        return np.zeros(0), 0
    Q, s = unit_diagonal(as_kernel_array(Kt[1:, 1:]))
    diag = np.diag(Kt)[1:]
    b = taus * diag - Kt[1:, 0]
    q = as_kernel_array(-b / s)
    qmag = as_kernel_array((taus * diag + np.abs(Kt[1:, 0])) / s)
    y = np.zeros(k)
    free = np.zeros(k, dtype=np.bool_)
    work = (np.empty((k, k)), np.empty(k, np.int64), np.empty((5, k)))
    _, iterations, _ = active_set(Q, q, qmag, np.empty(0), RIDGE, default_max_iter(k), y, free, *work)
    return y / s, int(iterations)


def _kkt_residual(Kt: np.ndarray, taus: np.ndarray, mu: np.ndarray) -> float:
    """The scale-free KKT violation of μ (see :class:`PCD`)."""
    if len(mu) == 0:
        return 0.0
    norms = np.sqrt(np.diag(Kt))
    w = np.concatenate(([1.0], mu))
    S = norms[0] + mu @ norms[1:]
    slack = (Kt[1:] @ w) - taus * norms[1:] ** 2
    safe = np.where(norms[1:] > 0, norms[1:], 1.0)
    return float(
        max(
            np.max(np.maximum(-mu, 0.0) * norms[1:] / S),
            np.max(np.maximum(-slack, 0.0) / (safe * S)),
            np.max(np.maximum(mu, 0.0) * np.abs(slack) / S**2),
        )
    )


def _farkas_residual(Kt: np.ndarray, taus: np.ndarray, mu: np.ndarray, tolerance: float) -> float:
    """How far μ ≥ 0 is from proving the constraints infeasible (Farkas): ‖Σ_j μ_j g̃_j‖² relative
    to (Σ_j μ_j‖g̃_j‖)², or ∞ unless Σ_j μ_jτ_j‖g̃_j‖² exceeds its round-off,
    ``tolerance``·Σ_j μ_j‖g̃_j‖·max‖g̃_j‖."""
    norms = np.sqrt(np.diag(Kt))[1:]
    size = mu @ norms
    if not size > 0.0 or not mu @ (taus * norms**2) > tolerance * size * norms.max():
        return float("inf")
    return float(max(mu @ Kt[1:, 1:] @ mu, 0.0) / size**2)

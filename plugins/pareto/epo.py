"""Exact Pareto optimal search (docs/methods.md#epo)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from mtlsolve.errors import InvalidSystemError
from mtlsolve.plugins.pareto._common import optional_vector, preference_and_ideal
from mtlsolve.solver import Need, Weighting
from mtlsolve.system import GradientSystem
from mtlsolve.validation import non_negative


@attrs.define(kw_only=True, eq=False)
class EPO(Weighting):
    """EPO search, Mahapatra & Rajan, "Multi-Task Learning with User Preferences: Gradient
    Descent with Controlled Ascent in Pareto Optimization", ICML 2020 (PMLR 119), §4:
    moves toward the point of the Pareto front where r_iL_i is equal for every task.

    With l̂ = r⊙L/Σ(r⊙L) and the non-uniformity μ = KL(l̂ ‖ 1/m): while μ > ``eps`` the
    "balance" LP on the Gramian aligns d = Gᵀα with the direction that decreases μ,
    letting some tasks ascend at a controlled rate and never the one of largest r_iL_i;
    otherwise the "descent" LP maximises the total descent Σ_j g_j·d with g_j·d ≥ 0 for
    every task (LibMOON's restricted form). α ∈ Δ_m are the weights; the LPs
    (:func:`mtlsolve.kernels.epo.epo_problem`) are solved exactly by a simplex kernel,
    checked against cvxpy. The preference r > 0 (``preference``, default uniform 1/m;
    ``system.extras["preference"]`` first) is the paper's r, i.e. the target is
    L ∝ 1/r (LibMOON passes r = 1/pref). The losses must be ≥ 0.
    ``diagnostics``: ``mu``, ``mode`` ("balance"/"descent"), ``relaxed`` (the restricted
    descent LP was infeasible), ``pivots``, and the LP certificate
    (:func:`mtlsolve.kernels.epo.certified_simplex_lp`: primal and dual feasibility and a zero
    duality gap at α and the final basis's dual solution, rows relative to their largest
    coefficient; plus the Farkas certificate of the restricted LP's infeasibility when
    ``relaxed``): ``residual``, ``tolerance`` (from the system's round-off bound ρ),
    ``converged``. An LP found infeasible (possible in "balance" mode) or not certified gives
    ``converged`` False and a ``fallback``: the MGDA min-norm weights, or the uncertified vertex.
    """

    name: ClassVar[str] = "epo"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {"exact_pareto": {}}
    family: ClassVar[str] = "PA"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.GRAMIAN, Need.LOSSES})
    # no properties claimed: the LP optimum may be non-unique (then a vertex is returned)
    paper: ClassVar[str] = "Mahapatra & Rajan — ICML 2020 (PMLR 119)"

    eps: float = attrs.field(default=1e-4, converter=float, validator=non_negative)
    preference: tuple[float, ...] | None = attrs.field(default=None, converter=optional_vector)

    def weights(self, system: GradientSystem) -> tuple[np.ndarray, Mapping[str, Any]]:
        from mtlsolve.kernels.epo import epo_weights

        r, _ = preference_and_ideal(system, self.preference, None, self.name, strictly_positive=True)
        losses = system.losses64
        if (losses < 0).any():
            raise InvalidSystemError(f"epo needs non-negative losses, got {losses.tolist()}")
        return epo_weights(system.gramian64, losses, r, self.eps, roundoff=system.roundoff)

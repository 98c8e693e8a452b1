"""Penalty-based boundary intersection (docs/methods.md#pbi)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from mtlsolve.plugins.pareto._common import optional_vector, preference_and_ideal
from mtlsolve.solver import Need, Weighting
from mtlsolve.system import GradientSystem
from mtlsolve.validation import non_negative

#: added under the root of d₂ so that its gradient stays finite at d₂ = 0 (as TorchJD)
PBI_EPS = 1e-12


@attrs.define(kw_only=True, eq=False)
class PBI(Weighting):
    """PBI, Zhang & Li, "MOEA/D", IEEE TEVC 2007, §II-C (penalty-based boundary intersection):
    with F = L − z and λ̂ = λ/‖λ‖, d₁ = Fᵀλ̂, p = F − d₁λ̂, d₂ = √(pᵀp + 1e-12), value d₁ + θd₂ (TorchJD ``PBI``).

    The weights are its gradient in L: w = λ̂ + θ·p/d₂. ``theta`` defaults to 5 (MOEA/D,
    TorchJD; LibMOON uses 1); θ = 0 is the projection on λ̂. λ (``preference``, default
    uniform) and z (``ideal``, default 0) are read from the system extras first, then from
    the fields. ``diagnostics``: ``value``, ``d1``, ``d2``.
    """

    name: ClassVar[str] = "pbi"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {"agg_pbi": {}}
    family: ClassVar[str] = "PA"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.LOSSES})
    properties: ClassVar[frozenset[str]] = frozenset({"positive_homogeneous", "linear"})
    paper: ClassVar[str] = "Zhang & Li — MOEA/D — IEEE TEVC 2007"

    theta: float = attrs.field(default=5.0, converter=float, validator=non_negative)
    preference: tuple[float, ...] | None = attrs.field(default=None, converter=optional_vector)
    ideal: tuple[float, ...] | None = attrs.field(default=None, converter=optional_vector)

    def weights(self, system: GradientSystem) -> tuple[np.ndarray, Mapping[str, Any]]:
        lam, z = preference_and_ideal(system, self.preference, self.ideal, "pbi")
        direction = lam / np.linalg.norm(lam)
        F = system.losses64 - z
        d1 = float(F @ direction)
        p = F - d1 * direction
        d2 = float(np.sqrt(p @ p + PBI_EPS))
        w = direction + self.theta * p / d2
        return w, {"value": d1 + self.theta * d2, "d1": d1, "d2": d2}

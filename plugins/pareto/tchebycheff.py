"""Tchebycheff and modified Tchebycheff scalarisations (docs/methods.md#tchebycheff, docs/methods.md#mtche)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from mtlsolve.plugins.pareto._common import optional_vector, preference_and_ideal
from mtlsolve.solver import Need, Weighting
from mtlsolve.system import GradientSystem
from mtlsolve.validation import flag


@attrs.define(kw_only=True, eq=False)
class Tchebycheff(Weighting):
    """Weighted Tchebycheff, Zhang & Li, "MOEA/D", IEEE TEVC 2007, §II-B (the Tchebycheff approach):
    value max_i λ_i(L_i − z_i); its (sub)gradient is λ_{i*} g_{i*} at the arg-max i*
    (the first one on ties), so only that task has a non-zero weight.

    ``weighted_value=False`` follows LibMOON, which returns the unweighted L_{i*}: the
    weight is then 1 on i* (same direction, other scale). λ (``preference``, default
    uniform 1/m) and z (``ideal``, default 0) are read from the system extras first,
    then from the fields. ``diagnostics["value"]`` is the scalarisation's value.
    """

    name: ClassVar[str] = "tchebycheff"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {"tche": {}, "agg_tche": {}}
    family: ClassVar[str] = "PA"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.LOSSES})
    properties: ClassVar[frozenset[str]] = frozenset({"positive_homogeneous", "linear"})
    paper: ClassVar[str] = "Zhang & Li — MOEA/D — IEEE TEVC 2007"

    preference: tuple[float, ...] | None = attrs.field(default=None, converter=optional_vector)
    ideal: tuple[float, ...] | None = attrs.field(default=None, converter=optional_vector)
    weighted_value: bool = attrs.field(default=True, validator=flag)

    def _scale(self, lam: np.ndarray) -> np.ndarray:
        """The per-task factor a_i of the value max_i a_i(L_i − z_i)."""
        return lam

    def weights(self, system: GradientSystem) -> tuple[np.ndarray, Mapping[str, Any]]:
        lam, z = preference_and_ideal(system, self.preference, self.ideal, self.name, self.name == "mtche")
        a = self._scale(lam)
        y = a * (system.losses64 - z)
        top = int(np.argmax(y))
        w = np.zeros(system.m)
        w[top] = a[top] if self.weighted_value else 1.0
        value = y[top] if self.weighted_value else system.losses64[top]
        return w, {"value": float(value), "argmax": top}


@attrs.define(kw_only=True, eq=False)
class ModifiedTchebycheff(Tchebycheff):
    """Modified Tchebycheff, Ma et al. 2017 (IEEE; as in LibMOON ``mTche``): value
    max_i (L_i − z_i)/λ_i with weight 1/λ_{i*} on the arg-max (λ must be > 0). Its
    minimiser on a convex front has (f_i − z_i)/λ_i equal for every task: the front point
    on the ray z + tλ. Options as :class:`Tchebycheff`.
    """

    name: ClassVar[str] = "mtche"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {"agg_mtche": {}, "modified_tchebycheff": {}}
    paper: ClassVar[str] = "Ma et al. — IEEE 2017 (modified Tchebycheff; cited by LibMOON)"

    def _scale(self, lam: np.ndarray) -> np.ndarray:
        return 1.0 / lam

"""COSMOS: linear scalarisation with a cosine penalty toward the preference (docs/methods.md#cosmos)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from mtlsolve.plugins.pareto._common import optional_vector, preference_and_ideal
from mtlsolve.solver import Need, Weighting
from mtlsolve.system import GradientSystem
from mtlsolve.validation import non_negative, one_of, optional_seed, positive

FORMS = ("paper", "libmoon")


@attrs.define(kw_only=True, eq=False)
class COSMOS(Weighting):
    """COSMOS, Ruchte & Grabocka, "Scalable Pareto Front Approximation for Deep Multi-Objective
    Learning", ICDM 2021 (arXiv 2103.13392), eq. (4): value rᵀL − λ_c·cos(r, L) (TorchJD ``COSMOS``).

    The weights are its gradient in L: w = r − λ_c(r̂ − cos(r, L)·L̂)/‖L‖ (r̂, L̂ the unit
    vectors), so λ_c = 0 is linear scalarisation with weights r, and the cosine term's
    gradient vanishes when L ∥ r. ``penalty`` (λ_c ≥ 0) is required: the paper tunes it per
    data set (0.01 to 8) and names no default (LibMOON uses 8.0). ``form="libmoon"`` uses
    r̂ᵀL − λ_c·cos(r, L) (LibMOON ``agg_cosmos``). All-zero losses have no cosine; there the
    penalty's gradient is taken as 0.

    The preference r: ``system.extras["preference"]`` if given, else the ``preference`` field,
    else a fresh draw from Dirichlet(``concentration``) (paper: Dirichlet(1)) from the solver's
    generator (``seed``). The model must also see r (COSMOS conditions the input on it): a
    training loop can draw it with :meth:`sample_preference` before the forward pass, and the
    next call then uses that draw. ``diagnostics``: ``value``, ``cosine``, ``preference``.
    """

    name: ClassVar[str] = "cosmos"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {"agg_cosmos": {}}
    family: ClassVar[str] = "PA"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.LOSSES})
    properties: ClassVar[frozenset[str]] = frozenset({"positive_homogeneous", "linear"})
    randomized: ClassVar[bool] = True
    paper: ClassVar[str] = "Ruchte & Grabocka — ICDM 2021 — arXiv 2103.13392"
    state_schema: ClassVar[Mapping[str, Any]] = {"rng": None, "pending": ("m",)}
    #: docs/methods.md#missing-tasks
    task_state: ClassVar[Mapping[str, Any]] = {"pending": "simplex"}

    penalty: float = attrs.field(converter=float, validator=non_negative)
    preference: tuple[float, ...] | None = attrs.field(default=None, converter=optional_vector)
    concentration: float = attrs.field(default=1.0, converter=float, validator=positive)
    form: str = attrs.field(default="paper", validator=one_of(*FORMS))
    seed: int | None = attrs.field(default=None, validator=optional_seed)

    def sample_preference(self, m: int) -> np.ndarray:
        """Draw the preference the next call will use (when neither the extras nor the field give one)."""
        state = self._state_for(m)
        gen = self._rng(self.seed)
        r = gen.dirichlet(np.full(m, self.concentration))
        self._save_rng(gen)
        state["pending"] = r.tolist()
        return r

    def _preference(self, system: GradientSystem) -> np.ndarray:
        if system.extras.get("preference") is not None or self.preference is not None:
            return preference_and_ideal(system, self.preference, None, self.name)[0]
        pending = self._state_for(system.m).pop("pending", None)
        return np.array(pending) if pending is not None else self.sample_preference(system.m)

    def weights(self, system: GradientSystem) -> tuple[np.ndarray, Mapping[str, Any]]:
        L = system.losses64
        r = self._preference(system)
        self._state_for(system.m).pop("pending", None)  # a draw is used once, or dropped when r was given
        r_unit = r / np.linalg.norm(r)
        norm = float(np.linalg.norm(L))
        linear = r_unit if self.form == "libmoon" else r
        if norm > 0.0:
            L_unit = L / norm
            cosine = float(r_unit @ L_unit)
            w = linear - self.penalty * (r_unit - cosine * L_unit) / norm
        else:
            cosine = 0.0
            w = linear.copy()
        value = float(linear @ L) - self.penalty * cosine
        return w, {"value": value, "cosine": cosine, "preference": r.tolist()}

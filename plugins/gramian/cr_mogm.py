"""CR-MOGM: moving-average smoothing of any weighting's weights (catalogue §3.2, row ``cr_mogm``)."""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import attrs
import numpy as np

from mtlsolve.solver import Need, Solver, Weighting
from mtlsolve.system import GradientSystem


def _as_weighting(value: Any) -> Weighting:
    """A solver name, a config mapping (``{"name": ..., **kwargs}``) or a Weighting instance."""
    from mtlsolve import registry

    if isinstance(value, str):
        solver = registry.get(value)
    elif isinstance(value, Mapping):
        solver = registry.from_config(value)
    else:
        solver = value
    if not isinstance(solver, Weighting):
        kind = type(solver).__name__ if isinstance(solver, Solver) else repr(solver)
        raise ValueError(f"cr_mogm wraps a weighting (a solver returning weights), got {kind}")
    return solver


def _unit_interval(_instance: Any, attribute: attrs.Attribute, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be in [0, 1], got {value!r}")


@attrs.define(kw_only=True, eq=False)
class CRMOGM(Weighting):
    """CR-MOGM, Zhou, Zhang, Jiang, Zhong, Gu, Zhu, "On the Convergence of Stochastic
    Multi-Objective Gradient Manipulation and Beyond", NeurIPS 2022: the composite
    weights are averaged exponentially over steps (as TorchJD ``CRMOGMWeighting``),
    λ_k = αλ_{k−1} + (1−α)λ̂_k, where λ̂_k are the weights of the wrapped weighting
    ``base`` at step k and λ₀ = λ̂_1, so the first output is the wrapped output;
    d = Gᵀλ_k.

    ``base`` is a solver name, a config mapping (``{"name": "mgda"}``) or a Weighting
    instance; it defaults to ``"mgda"``, one of the manipulations the paper covers. The wrapper
    reads what ``base`` reads. ``alpha`` may be reassigned between steps, e.g.
    α_k = 1 − lr_k/lr_0 for the schedule of Corollary 1 (as TorchJD). The state
    holds λ_{k−1} and the wrapped solver's state; both reset when m changes or on
    :meth:`reset`. ``diagnostics``: the wrapped solver's, and ``base_weights`` λ̂_k.
    """

    name: ClassVar[str] = "cr_mogm"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    family: ClassVar[str] = "GW"
    needs: ClassVar[frozenset[Need]] = frozenset()
    stateful: ClassVar[bool] = True
    paper: ClassVar[str] = "Zhou, Zhang, Jiang, Zhong, Gu, Zhu — NeurIPS 2022"

    base: Weighting = attrs.field(default="mgda", converter=_as_weighting)
    alpha: float = attrs.field(default=0.9, converter=float, validator=_unit_interval)

    @property
    def post_step(self) -> bool:  # type: ignore[override]
        return self.base.post_step

    def requirements(self) -> frozenset[Need]:
        return self.needs | self.base.requirements()

    def check(self, system: GradientSystem) -> None:
        self.base.check(system)

    def weights(self, system: GradientSystem) -> tuple[np.ndarray, Mapping[str, Any]]:
        state = self._state_for(system.m)
        lam_hat, diagnostics = self.base.weights(system)
        lam_hat = np.asarray(lam_hat, dtype=np.float64)
        previous = state.get("lambda")
        lam = lam_hat.copy() if previous is None else self.alpha * previous + (1.0 - self.alpha) * lam_hat
        state["lambda"] = lam
        return lam.copy(), {**diagnostics, "base_weights": lam_hat}

    # the wrapped solver's hooks and state travel with the wrapper
    def parameters(self) -> list[Any]:
        return self.base.parameters()

    def after_step(self, losses: Any) -> None:
        self.base.after_step(losses)

    def end_epoch(self) -> None:
        self.base.end_epoch()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "base": self.base.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        own = dict(state)
        self.base.load_state_dict(own.pop("base", {}))
        super().load_state_dict(own)

    def reset(self) -> None:
        super().reset()
        self.base.reset()

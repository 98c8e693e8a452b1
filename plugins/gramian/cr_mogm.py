"""CR-MOGM: moving-average smoothing of any weighting's weights (docs/methods.md#cr_mogm)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from mtlsolve.errors import StateError
from mtlsolve.solver import DECLARATIONS, Capabilities, Need, Result, Solver, Weighting, _lock_of
from mtlsolve.system import GradientSystem
from mtlsolve.validation import in_range


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


class _FromBase:
    """A class attribute declaration read on an instance from its wrapped solver: ``default``
    on the class (what the registry, the CLI and the conformance suite read), the base's value
    on an instance."""

    def __init__(self, name: str, default: Any) -> None:
        self.name, self.default = name, default

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        return self.default if instance is None else getattr(instance.base, self.name)


def _declared_by_base(cls: type) -> type:
    """Every training-loop declaration (:data:`mtlsolve.solver.DECLARATIONS`) but ``stateful``,
    read on an instance, is its base's, for code that reads the attributes rather than
    ``solver.capabilities``."""
    for name in DECLARATIONS:
        if name != "stateful":
            setattr(cls, name, _FromBase(name, getattr(cls, name)))
    return cls


@_declared_by_base
@attrs.define(kw_only=True, eq=False)
class CRMOGM(Weighting):
    """CR-MOGM, Zhou, Zhang, Jiang, Zhong, Gu, Zhu, "On the Convergence of Stochastic
    Multi-Objective Gradient Manipulation and Beyond", NeurIPS 2022: the composite
    weights are averaged exponentially over steps (as TorchJD ``CRMOGMWeighting``),
    λ_k = αλ_{k−1} + (1−α)λ̂_k, where λ̂_k are the weights of the wrapped weighting
    ``base`` at step k and λ₀ = λ̂_1, so the first output is the wrapped output;
    d = Gᵀλ_k.

    ``base`` is a solver name, a config mapping (``{"name": "mgda"}``) or a Weighting
    instance; it defaults to ``"mgda"``, one of the manipulations the paper covers. The
    wrapper behaves as ``base`` in every protocol respect: an instance's
    ``capabilities`` record is ``base``'s whole but ``stateful`` (the average is state), it
    reads what ``base`` reads (:meth:`requirements`, :meth:`check`), its declaration
    attributes (``needs``, ``batches``, ``grads``, ...) are ``base``'s, and it forwards
    :meth:`parameters`, :meth:`after_step`, :meth:`end_epoch` and :meth:`reset` (the class
    itself declares the defaults). ``alpha`` may be reassigned between steps, e.g.
    α_k = 1 − lr_k/lr_0 for the schedule of Corollary 1 (as TorchJD). The state holds
    λ_{k−1} and, under ``"base"``, the wrapped solver's state; a system with another number
    of rows raises until :meth:`reset`, and a call that raises leaves both as they were.
    ``diagnostics``: the wrapped solver's, and ``base_weights`` λ̂_k.
    """

    name: ClassVar[str] = "cr_mogm"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    family: ClassVar[str] = "GW"
    stateful: ClassVar[bool] = True
    #: docs/methods.md#missing-tasks
    task_state: ClassVar[str] = "the wrapped solver keeps its own state over all tasks"
    paper: ClassVar[str] = "Zhou, Zhang, Jiang, Zhong, Gu, Zhu — NeurIPS 2022"
    state_schema: ClassVar[Mapping[str, Any]] = {"lambda": ("m",)}  # and "base": the wrapped solver's state

    base: Weighting = attrs.field(default="mgda", converter=_as_weighting)
    alpha: float = attrs.field(default=0.9, converter=float, validator=in_range(0.0, 1.0))

    def __call__(self, *args: Any, **kwargs: Any) -> Result:
        # the base's state changes inside this call too: restore it as well when the call raises
        with _lock_of(self):
            saved = self.base._snapshot()
            try:
                return super().__call__(*args, **kwargs)
            except BaseException:
                self.base._state = saved
                raise

    def requirements(self) -> frozenset[Need]:
        return self.base.requirements()

    def instance_capabilities(self) -> Capabilities:
        return attrs.evolve(self.base.capabilities, stateful=True)

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

    def objective(self, losses: Any) -> Any:
        """Σ λ_i L_i with λ detached; for a base with learnable scales (uw, imtl_l) plus the
        base's objective on the detached losses, so one backward also trains its scales."""
        from mtlsolve.plugins.loss_weighting._learnable import LearnableScales

        value = super().objective(losses)
        if isinstance(self.base, LearnableScales):
            value = value + self.base.objective(losses.detach())
        return value

    def after_step(self, losses: Any) -> None:
        self.base.after_step(losses)

    def end_epoch(self) -> None:
        self.base.end_epoch()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "base": self.base.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore both the average and the wrapped solver's state; when either does not fit,
        raise StateError and change neither."""
        if not isinstance(state, Mapping):
            raise StateError(f"cr_mogm.load_state_dict takes a mapping, got {type(state).__name__}")
        own = dict(state)
        base = own.pop("base", {})
        checked = self._checked_state(own)  # raises before anything changes
        known = self.base._checked_state(base)
        rows = checked.get("m")
        tasks = known.get("m") if isinstance(known, Mapping) else None
        if rows is not None and tasks is not None and rows != tasks * self.base.capabilities.batches:
            raise StateError(
                f"cr_mogm state averages weights over {rows} rows, but its base state is for {tasks} tasks"
            )
        self.base.load_state_dict(base)
        super().load_state_dict(own)

    def reset(self) -> None:
        super().reset()
        self.base.reset()

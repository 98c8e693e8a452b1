"""The shared machinery of UW, IMTL-L and IMTL (hybrid): one learnable log-scale s_i per task."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from mtlsolve._array import is_torch, to_numpy64
from mtlsolve.plugins.loss_weighting._common import keep_dtypes, objective_losses
from mtlsolve.solver import Need, Weighting
from mtlsolve.system import GradientSystem
from mtlsolve.validation import finite


class LearnableScales:
    """Mixin for a solver with a learnable ``torch.nn.Parameter`` s ∈ ℝ^m (initial value ``self.init``).

    s is created on the first call, when m is known, with the dtype and device of the
    system's arrays (CPU for numpy); :meth:`parameters` returns it for the user's optimiser
    and :meth:`objective` is ``self.value(s, losses)``, the method's differentiable scalar.
    s lives in ``self._state["s"]``; checkpoints carry a plain tensor, and loading writes into
    the existing Parameter so that the optimiser holding it keeps stepping it.
    """

    __slots__ = ()

    #: s, loaded into the existing Parameter (see :attr:`mtlsolve.Solver.parameter_state`)
    state_schema: ClassVar[Mapping[str, Any]] = {"s": ("m",)}
    parameter_state: ClassVar[frozenset[str]] = frozenset({"s"})

    def _checked_state(self, state: Any) -> dict[str, Any]:
        return keep_dtypes(super()._checked_state(state), state, "s")  # type: ignore[misc]

    def value(self, s: Any, losses: Any) -> Any:
        """The scalar the method minimises over the model and s (torch tensors)."""
        raise NotImplementedError(f"{type(self).__name__} must implement value()")

    def _parameter(self, m: int, reference: Any) -> Any:
        state = self._state_for(m)
        if "s" not in state:
            import torch

            if is_torch(reference):
                where = {"device": reference.device, "dtype": reference.dtype}
            else:  # numpy arrays: a CPU parameter of their dtype
                where = {"dtype": torch.from_numpy(np.zeros(0, dtype=reference.dtype)).dtype}
            state["s"] = torch.nn.Parameter(torch.full((m,), self.init, **where))
        return state["s"]

    def scales(self, system: GradientSystem) -> np.ndarray:
        """s for this system's m (created on first use), as float64 numpy."""
        return to_numpy64(self._parameter(system.m, system.reference))

    def parameters(self) -> list[Any]:
        s = self._full_state().get("s")  # type: ignore[attr-defined]
        return [] if s is None else [s]

    def prepare_tasks(self, m: int, reference: Any) -> None:
        """s over all m tasks, before a step that restricts it to the present ones."""
        self._parameter(m, reference)

    def objective(self, losses: Any) -> Any:
        # detached losses are fine: the scalar then trains s alone
        objective_losses(losses, self.name, needs_grad=False)
        s = self._parameter(int(losses.shape[-1]), losses)
        if s.device != losses.device or s.dtype != losses.dtype:
            s = s.to(device=losses.device, dtype=losses.dtype)  # differentiable: the gradient reaches the parameter
        return self.value(s, losses)


@attrs.define(kw_only=True, eq=False)
class LogScaleWeighting(LearnableScales, Weighting):
    """A loss weighting with learnable log-scales s (:class:`LearnableScales`, initial value ``init``).

    :meth:`objective` is the method's differentiable scalar, so one backward reaches the model
    and s; ``solver(losses=L).weights`` are the effective weights ∂objective/∂L at the current
    s. Subclasses define :meth:`value` and :meth:`effective_weights`.
    """

    family: ClassVar[str] = "LW"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.LOSSES})
    properties: ClassVar[frozenset[str]] = frozenset({"positive_homogeneous", "linear"})
    stateful: ClassVar[bool] = True
    parameter_state: ClassVar[frozenset[str]] = frozenset({"s"})

    init: float = attrs.field(default=0.0, converter=float, validator=finite)

    def effective_weights(self, s: np.ndarray) -> np.ndarray:
        """∂value/∂L_i at s (float64 numpy)."""
        raise NotImplementedError(f"{type(self).__name__} must implement effective_weights()")

    def weights(self, system: GradientSystem) -> tuple[np.ndarray, Mapping[str, Any]]:
        system.losses64  # noqa: B018 - the weights do not depend on L, but NaN or Inf losses must raise
        return self.effective_weights(self.scales(system)), {}

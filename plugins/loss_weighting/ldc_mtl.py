"""LDC-MTL: loss discrepancy control (docs/methods.md#ldc_mtl)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from mtlsolve._array import to_numpy64
from mtlsolve.errors import InvalidSystemError, StateError
from mtlsolve.plugins.loss_weighting._common import softmax
from mtlsolve.plugins.loss_weighting._learnable import LearnableScales
from mtlsolve.solver import Need, Weighting
from mtlsolve.system import GradientSystem
from mtlsolve.validation import finite, non_negative, one_of

PRENORMS = ("none", "initial", "log")


@attrs.define(kw_only=True, eq=False)
class LDCMTL(LearnableScales, Weighting):
    """LDC-MTL, Xiao, Dong, Zou, Ji, arXiv 2502.08585 (2025): a bilevel loss balancing whose
    single-loop first-order form, in the authors' released code (OptMN-Lab/LDC-MTL), trains the
    model and the router together on one scalar,

        f = Σ_i σ_i ℓ_i / Σ_i σ_i + λ Σ_{i<m} |σ_i ℓ_i − σ_{i+1} ℓ_{i+1}|,

    the weighted loss (the lower level) plus λ times the loss discrepancy of adjacent tasks (the
    upper level), σ = softmax(s) the router's weights and λ = ``lamb``. The router here is a
    learnable logit vector s (one ``torch.nn.Parameter``, ``init`` 0: σ = 1/m; the released
    models compute it from the shared features, which a loss-only solver does not see); add
    :meth:`parameters` to the optimiser. ``prenorm`` is the loss pre-normalisation ℓ_i:
    ``"none"`` (L_i, the paper's v3), ``"initial"`` (L_i/r_i, r = L(0)/min L(0): the NYUv2 code
    and v2's coarse pre-normalisation) or ``"log"`` (log(L_i/L_i(0)): the QM9 code); L(0) is the
    first call's losses, kept in the state (``initial``).

    :meth:`objective` returns f, so one backward reaches the model and s; ``solver(losses=L)``
    returns the effective weights ∂f/∂L_i = σ_i(1 + λ(sgn(a_i − a_{i+1}) − sgn(a_{i−1} − a_i)))·ℓ'_i
    with a_i = σ_iℓ_i, the missing neighbour terms dropped at the ends, sgn(0) = 0 (torch's
    subgradient of |·|) and ℓ'_i = dℓ_i/dL_i. They are positive for λ < ½. The adjacent pairs
    follow the task order, so permuting the tasks changes f: no permutation property is claimed.
    A step with missing tasks uses the present tasks' logits (σ is their softmax); an L(0) first
    recorded on such a step is not kept.
    """

    name: ClassVar[str] = "ldc_mtl"
    family: ClassVar[str] = "LW"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.LOSSES})
    properties: ClassVar[frozenset[str]] = frozenset({"positive_homogeneous", "linear"})
    stateful: ClassVar[bool] = True
    paper: ClassVar[str] = "Xiao, Dong, Zou, Ji — 2025 — arXiv 2502.08585"
    state_schema: ClassVar[Mapping[str, Any]] = {"s": ("m",), "initial": ("m",)}
    task_state: ClassVar[Mapping[str, Any]] = {"initial": None}

    lamb: float = attrs.field(default=0.05, converter=float, validator=non_negative)
    prenorm: str = attrs.field(default="none", validator=one_of(*PRENORMS))
    init: float = attrs.field(default=0.0, converter=float, validator=finite)

    def _checked_state(self, state: Any) -> dict[str, Any]:
        checked = super()._checked_state(state)
        if "initial" in checked and not (checked["initial"] > 0).all():
            raise StateError("ldc_mtl state entry 'initial' holds the first losses, which must be > 0")
        return checked

    def _initial(self, losses: np.ndarray) -> np.ndarray | None:
        """L(0) (recorded on the first call) when ``prenorm`` needs it, checked positive."""
        if self.prenorm == "none":
            return None
        state = self._state_for(len(losses))
        if "initial" not in state:
            if not (losses > 0).all():
                raise InvalidSystemError(
                    f"ldc_mtl(prenorm={self.prenorm!r}) divides by the first losses, which must be > 0; "
                    f"got {losses.tolist()}"
                )
            state["initial"] = losses.copy()
        if self.prenorm == "log" and not (losses > 0).all():
            raise InvalidSystemError(
                f"ldc_mtl(prenorm='log') takes log L, so the losses must be > 0; got {losses.tolist()}"
            )
        return state["initial"]

    def _normalised(self, losses: Any, initial: np.ndarray | None, log: Any) -> tuple[Any, Any]:
        """(ℓ, dℓ/dL) for losses given as numpy or torch (``log`` is np.log or torch.log)."""
        if self.prenorm == "none":
            return losses, 1.0
        if self.prenorm == "initial":
            ratios = initial / initial.min()
            return losses / ratios, 1.0 / ratios
        return log(losses / initial), 1.0 / losses

    def value(self, s: Any, losses: Any) -> Any:
        import torch

        initial = self._initial(to_numpy64(losses.detach()))
        if initial is not None:
            initial = torch.as_tensor(initial, dtype=losses.dtype, device=losses.device)
        ell, _ = self._normalised(losses, initial, torch.log)
        sigma = torch.softmax(s, dim=0)
        weighted = sigma * ell
        return weighted.sum() / sigma.sum() + self.lamb * (weighted[:-1] - weighted[1:]).abs().sum()

    def weights(self, system: GradientSystem) -> tuple[np.ndarray, Mapping[str, Any]]:
        L = system.losses64
        sigma = softmax(self.scales(system))
        ell, slope = self._normalised(L, self._initial(L), np.log)
        a = sigma * ell
        signs = np.sign(a[:-1] - a[1:])
        balance = np.zeros(len(L))
        balance[:-1] += signs
        balance[1:] -= signs
        return sigma * (1.0 + self.lamb * balance) * slope, {"router": sigma}

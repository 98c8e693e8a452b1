"""FAMO: fast adaptive multitask optimisation (docs/methods.md#famo)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from mtlsolve.errors import InvalidSystemError, SolverError, StateError
from mtlsolve.plugins.loss_weighting._common import (
    checked_counts,
    checked_non_negative,
    losses_vector,
    objective_losses,
    positive_losses,
    softmax,
    vector_converter,
    vector_for,
)
from mtlsolve.solver import Need, Weighting
from mtlsolve.system import GradientSystem
from mtlsolve.validation import non_negative, positive

#: torch.optim.Adam's defaults, used by the reference implementations for the logits
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def logit_gradient(xi: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """J_softmax(ξ)ᵀδ = z ⊙ (δ − zᵀδ), z = softmax(ξ): the ξ-gradient of FAMO's update."""
    z = softmax(xi)
    return z * (delta - z @ delta)


@attrs.define(kw_only=True, eq=False)
class FAMO(Weighting):
    """FAMO, Liu, Feng, Stone, Liu, NeurIPS 2023 (arXiv 2306.03792), Algorithm 1 / Eqs. (9)–(11),
    as in Cranial-XIX/FAMO and LibMTL.

    With z = softmax(ξ) and D_i = L_i − ℓ*_i + ε, the model minimises Σ z_i log D_i / c with
    c = Σ_j z_j/D_j held constant (:meth:`objective`), whose gradient is Σ w_i g_i with the
    effective weights w_i = (z_i/D_i)/c > 0, Σ w = 1 (what ``solver(losses=L)`` returns).
    After ``optimizer.step()`` the training loop calls :meth:`after_step` with the losses L′
    recomputed on the same batch: δ_i = log D_i − log D′_i, the ξ-gradient is J_softmax(ξ)ᵀδ,
    and the solver's own Adam (lr ``w_lr``, betas (0.9, 0.999), eps 1e-8, L2 weight decay
    ``gamma`` as in ``torch.optim.Adam``) takes one step on ξ (ξ₀ = 0). Calling the weighting
    twice without :meth:`after_step` in between raises :class:`~mtlsolve.errors.SolverError`.
    ``min_losses`` is ℓ* (default 0), ``eps`` is ε.
    """

    name: ClassVar[str] = "famo"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    family: ClassVar[str] = "LW"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.LOSSES})
    properties: ClassVar[frozenset[str]] = frozenset({"simplex_weights"})
    stateful: ClassVar[bool] = True
    #: docs/methods.md#missing-tasks
    #: (an absent task's pending D is 0, never a shifted loss: after_step then needs the mask)
    task_state: ClassVar[Mapping[str, Any]] = {"xi": 0.0, "adam_m": 0.0, "adam_v": 0.0, "pending": 0.0}
    post_step: ClassVar[bool] = True
    paper: ClassVar[str] = "Liu, Feng, Stone, Liu — NeurIPS 2023 — arXiv 2306.03792"
    #: the logits ξ, Adam's moments and step count, and D of a call still waiting for after_step
    state_schema: ClassVar[Mapping[str, Any]] = {
        "xi": ("m",),
        "adam_m": ("m",),
        "adam_v": ("m",),
        "adam_t": (),
        "pending": ("m",),
    }

    w_lr: float = attrs.field(default=0.025, converter=float, validator=non_negative)
    gamma: float = attrs.field(default=1e-3, converter=float, validator=non_negative)
    min_losses: tuple[float, ...] | None = attrs.field(default=None, converter=vector_converter("min_losses"))
    eps: float = attrs.field(default=1e-8, converter=float, validator=positive)

    def _shifted(self, losses: np.ndarray) -> np.ndarray:
        floor = vector_for(self.min_losses, len(losses), "famo min_losses", 0.0)
        return positive_losses(losses + self.eps, "famo", floor)

    def weights(self, system: GradientSystem) -> tuple[np.ndarray, Mapping[str, Any]]:
        m = system.m
        state = self._state_for(m)
        if state.get("pending") is not None:
            raise SolverError(
                "famo was called twice without after_step(new_losses) in between: after optimizer.step(), "
                "call solver.after_step(losses) with the losses recomputed on the same batch"
            )
        D = self._shifted(system.losses64)
        xi = state.get("xi", np.zeros(m))
        z = softmax(xi)
        # w = (z/D)/Σ(z/D) = softmax(ξ − log D): no overflow for a tiny D
        w = softmax(xi - np.log(D))
        with np.errstate(over="ignore"):
            c = float((z / D).sum())
        state["pending"] = D
        return w, {"z": z, "c": c}

    def objective(self, losses: Any) -> Any:
        """Σ z_i log D_i / c with z and c constant: its gradient is Σ w_i ∇L_i."""
        import torch

        objective_losses(losses, self.name)
        result = self(losses=losses.detach())
        z = torch.as_tensor(result.diagnostics["z"]).to(device=losses.device, dtype=losses.dtype)
        floor = vector_for(self.min_losses, int(losses.shape[-1]), "famo min_losses", 0.0)
        D = losses - torch.as_tensor(floor).to(device=losses.device, dtype=losses.dtype) + self.eps
        return (z * torch.log(D)).sum() / result.diagnostics["c"]

    def after_step(self, losses: Any) -> None:
        """The logit update from the losses L′ recomputed on the same batch after the model step."""
        before = self._state.get("pending")
        if before is None:
            raise SolverError("famo.after_step() needs a preceding call of the weighting on this step's losses")
        after = losses_vector(losses, "famo.after_step needs the m losses recomputed after the model step")
        if after.shape != before.shape:
            raise InvalidSystemError(f"famo.after_step got {after.size} losses for {before.size} tasks")
        if (before == 0).any():
            raise SolverError(
                "famo's last step had missing tasks: call after_step inside solver.tasks(present) "
                "with the present tasks' losses"
            )
        delta = np.log(before) - np.log(self._shifted(after))
        self._adam_step(logit_gradient(self._state.get("xi", np.zeros(len(before))), delta))
        self._state["pending"] = None

    def _adam_step(self, grad: np.ndarray) -> None:
        """One ``torch.optim.Adam`` step on ξ (L2 weight decay ``gamma`` added to the gradient)."""
        state = self._state
        xi = state.get("xi", np.zeros_like(grad))
        g = grad + self.gamma * xi
        b1, b2 = ADAM_BETAS
        t = state.get("adam_t", 0) + 1
        m1 = b1 * state.get("adam_m", np.zeros_like(g)) + (1 - b1) * g
        m2 = b2 * state.get("adam_v", np.zeros_like(g)) + (1 - b2) * g * g
        step = self.w_lr / (1 - b1**t)
        denom = np.sqrt(m2) / np.sqrt(1 - b2**t) + ADAM_EPS
        state.update(xi=xi - step * m1 / denom, adam_m=m1, adam_v=m2, adam_t=t)

    def _checked_state(self, state: Any) -> dict[str, Any]:
        checked = checked_counts(super()._checked_state(state), self.name, "adam_t")
        if "adam_v" in checked and (checked["adam_v"] < 0).any():
            raise StateError("famo state entry 'adam_v' holds squared-gradient averages, which must be >= 0")
        # 0 marks a task absent from the pending call (docs/methods.md#missing-tasks)
        return checked_non_negative(checked, self.name, "the shifted losses D of the pending call", "pending")

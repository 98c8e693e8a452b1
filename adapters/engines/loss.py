"""The loss engine: one backward of the solver's objective, Σ w_i L_i for a loss weighting; no per-task gradients.

Serves solvers that read losses or nothing. Every parameter the losses reach,
task-specific ones included, gets the gradient of the objective, and
learnable solver parameters (the s of Kendall, Gal & Cipolla, CVPR 2018,
arXiv:1705.07115, Eq. 7) get theirs.
"""

from __future__ import annotations

import numpy as np
import torch

from mtlsolve._array import to_numpy64
from mtlsolve.adapters import _grads
from mtlsolve.adapters.engines.base import Batch, Engine, Pipeline, Staged
from mtlsolve.errors import InvalidSystemError
from mtlsolve.solver import Solver


class LossEngine(Engine):
    """``objective(L) / k`` back-propagated once per micro-batch (k: accumulation steps)."""

    name = "losses"
    autocast = True  # Σ w_i L_i: nothing autocast would change

    @classmethod
    def fits(cls, pipe: Pipeline) -> bool:
        return pipe.path == "losses"

    def compute(self, pipe: Pipeline, batch: Batch) -> Staged:
        local = batch.losses
        losses = local
        if pipe._reducer is not None:
            # the global value with the local gradient: the solver sees the same losses on every rank
            losses = local + (pipe._reducer.mean(local) - local.detach())
        pipe._add_losses(losses)
        L = to_numpy64(losses)  # global on every rank, so every rank takes the same branch
        mean = to_numpy64(pipe._losses) if batch.last else None
        if not np.isfinite(L).all():
            pipe._skip_or_raise(f"the task losses {L.tolist()} hold NaN or Inf")
            return Staged(poison=pipe._model_params(local), losses=mean)
        objective, weights = self._objective(pipe, losses, local, L, batch.last)
        k = pipe.accumulation_steps
        total = objective / k if k > 1 else objective
        if pipe._scaling:
            total = pipe.scaler.scale(total)
        leaves = list(_grads.reachable_leaves([total]).values())
        if not leaves:
            raise InvalidSystemError("the losses reach no tensor that requires grad")
        grads = torch.autograd.grad(total, leaves, retain_graph=batch.retain_graph, allow_unused=True)
        writes = [(p, g) for p, g in zip(leaves, grads) if g is not None]
        if pipe._scaling and not pipe._finite([g for _, g in writes]):
            return Staged(poison=pipe._model_params(local), losses=mean)
        own = {id(p) for p in pipe.solver.parameters()}
        model_params = [p for p in leaves if id(p) not in own] if batch.last else []
        return Staged(writes=writes, reduce=model_params, losses=mean, weights=weights)

    @staticmethod
    def _objective(
        pipe: Pipeline, losses: torch.Tensor, local: torch.Tensor, L: np.ndarray, last: bool
    ) -> tuple[torch.Tensor, np.ndarray | None]:
        """The solver's objective and, on the last micro-batch, the effective weights ∂objective/∂L_i."""
        if type(pipe.solver).objective is Solver.objective:
            # Σ w_i L_i with w detached: the solver runs on the host copy of the losses
            weights = to_numpy64(pipe.solver(losses=L).weights)
            return (torch.as_tensor(weights, dtype=losses.dtype).to(losses.device) * losses).sum(), weights
        objective = pipe.solver.objective(losses)  # learnable parameters
        if not last:
            return objective, None
        (w,) = torch.autograd.grad(objective, local, retain_graph=True, allow_unused=True)
        return objective, None if w is None else to_numpy64(w)

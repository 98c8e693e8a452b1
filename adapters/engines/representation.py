"""The representation engine: the solver combines the m gradients of the losses with respect to shared features H.

The heads are differentiated once for all tasks, the solver combines the
feature gradients Z (m x |H|), and the combination ẑ is back-propagated
through the encoder once (Sener & Koltun's MGDA-UB, NeurIPS 2018,
arXiv:1810.04650, Sec. 3.3). Across ranks, Gramian solvers read
K = (1/R²) Σ_r Z_r Z_rᵀ and matrix solvers the gathered Z (see
:mod:`mtlsolve.adapters.ddp`).
"""

from __future__ import annotations

import attrs
import numpy as np
import torch

from mtlsolve._array import to_numpy64
from mtlsolve.adapters import _grads
from mtlsolve.adapters.engines.base import Batch, GradientEngine, Gradients, Pipeline, Update, gramian_norm
from mtlsolve.adapters.engines.tapped import head_consumer
from mtlsolve.errors import InvalidSystemError
from mtlsolve.solver import Result
from mtlsolve.system import GradientSystem


@attrs.define(kw_only=True, eq=False)
class Features:
    """One step's feature gradients Z (unscaled), the features, the encoder's and heads' parameters, the losses,
    the loss scale, and whether Z was gathered across ranks."""

    Z: torch.Tensor
    H: torch.Tensor
    encoder: list[torch.Tensor]
    heads: list[torch.Tensor]
    losses: torch.Tensor
    scale: float
    gathered: bool


class RepresentationEngine(GradientEngine):
    """Per-task gradients of the features ``backward(losses, features=H)`` receives."""

    name = "representation"

    @classmethod
    def fits(cls, pipe: Pipeline) -> bool:
        return pipe.path != "losses" and pipe.grads == "representation"

    def gradients(self, pipe: Pipeline, batch: Batch) -> Gradients:
        H, losses = batch.features, batch.losses
        if H is None:
            raise InvalidSystemError("representation mode needs backward(losses, features=H)")
        if not H.requires_grad:
            raise InvalidSystemError("features must be the tensor the losses were computed from (requires grad)")
        m = losses.shape[0]
        heads = pipe._heads(_grads.reachable_leaves([losses], stop=[H]))
        own = {id(p) for p in pipe.solver.parameters()}
        encoder = [t for key, t in _grads.reachable_leaves([H]).items() if key not in own]
        scale = pipe._scale
        scaled = pipe.scaler.scale(losses) if pipe._scaling else losses
        head_sums: dict[int, torch.Tensor] = {}
        consumers = [head_consumer(h, head_sums) for h in heads]
        retain = batch.retain_graph
        (Z,), engine = pipe._per_task(scaled, [H], heads, consumers, retain_graph=retain, reset=head_sums.clear)
        writes = [(h, head_sums[id(h)]) for h in heads if id(h) in head_sums]
        dtype = pipe.matrix_dtype or torch.promote_types(H.dtype, torch.float32)
        Z = Z.reshape(m, -1).to(dtype) / scale
        L = losses.detach().to(torch.float64)
        system, L, gathered = self._system(pipe, Z, L, H.detach().reshape(-1).to(dtype))
        step = Features(Z=Z, H=H, encoder=encoder, heads=heads, losses=L, scale=scale, gathered=gathered)
        return Gradients(
            system=system, writes=writes, poison=encoder + heads, losses=to_numpy64(L), engine=engine, context=step
        )

    @staticmethod
    def _system(
        pipe: Pipeline, Z: torch.Tensor, L: torch.Tensor, feats: torch.Tensor
    ) -> tuple[GradientSystem, torch.Tensor, bool]:
        """The solver's system, the (cross-rank mean) losses, and whether Z was gathered across ranks."""
        if pipe._reducer is None:
            return GradientSystem(Z, losses=L.to(Z.dtype), kind="representation", extras={"features": feats}), L, False
        reducer = pipe._reducer
        L = reducer.mean_(L)
        if pipe.path == "matrix":
            system = GradientSystem(
                reducer.gather_columns(Z) / reducer.world_size,
                losses=L.to(Z.dtype),
                kind="representation",
                extras={"features": reducer.gather_columns(feats[None])[0]},
            )
            return system, L, True
        K = reducer.mean_((Z @ Z.T).to(torch.float64)) / reducer.world_size
        roundoff = pipe._roundoff(Z.shape[1] * reducer.world_size, Z.dtype)
        system = GradientSystem(gramian=to_numpy64(K), losses=to_numpy64(L), kind="representation", roundoff=roundoff)
        return system, L, False

    def update(self, pipe: Pipeline, batch: Batch, found: Gradients, result: Result, gramian: np.ndarray) -> Update:
        step: Features = found.context
        weights = None if result.weights is None else to_numpy64(result.weights)
        zhat, norm = self._direction(pipe, step, result, weights, gramian)
        writes = []
        if step.encoder:
            H = step.H
            grad = (zhat * step.scale).reshape(H.shape).to(H.dtype)
            update = torch.autograd.grad(H, step.encoder, grad, retain_graph=batch.retain_graph, allow_unused=True)
            writes = [(p, g) for p, g in zip(step.encoder, update) if g is not None]
        pipe._add_losses(step.losses)
        return Update(writes=writes, reduce=step.encoder + step.heads, weights=weights, norm=norm)

    @staticmethod
    def _direction(
        pipe: Pipeline, step: Features, result: Result, weights: np.ndarray | None, gramian: np.ndarray
    ) -> tuple[torch.Tensor, float]:
        """This rank's combined feature gradient ẑ and the norm of the global one."""
        if step.gathered:
            size, rank = step.Z.shape[1], pipe._reducer.rank
            zhat = result.direction[rank * size : (rank + 1) * size] * pipe._reducer.world_size
            return zhat, float(torch.linalg.vector_norm(result.direction))
        if result.direction is not None:
            return result.direction, float(torch.linalg.vector_norm(result.direction))
        zhat = torch.as_tensor(weights, dtype=step.Z.dtype, device=step.Z.device) @ step.Z
        return zhat, gramian_norm(weights, gramian)

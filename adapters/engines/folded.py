"""The folded Gramian engine: each parameter block of the per-task gradients is folded into K = G Gᵀ and dropped.

Serves Gramian weightings where the factored engine (:mod:`.gramian`) does
not: across ranks (each block is averaged before it is folded, see
:mod:`mtlsolve.adapters.ddp`) and for ``grads="last_shared"``. G is never
held; one backward of Σ w_i L_i writes d = Gᵀw.
"""

from __future__ import annotations

import torch

from mtlsolve._array import to_numpy64
from mtlsolve.adapters import _grads
from mtlsolve.adapters.engines.base import Batch, Gradients, Pipeline, Update
from mtlsolve.adapters.engines.tapped import Tapped, TappedEngine
from mtlsolve.solver import Result
from mtlsolve.system import GradientSystem


class FoldedGramianEngine(TappedEngine):
    """K accumulated in float64 from the (cross-rank mean) blocks; the update is one more backward."""

    name = "folded gramian"

    @classmethod
    def fits(cls, pipe: Pipeline) -> bool:
        return pipe.path == "gramian" and pipe.accumulation_steps == 1 and pipe.grads != "representation"

    def weighted(self, pipe: Pipeline) -> bool:
        return True

    def buffer(self, pipe: Pipeline, m: int) -> torch.Tensor:
        return torch.zeros(m, m, dtype=torch.float64, device=pipe.shared[0].device)

    def sink(self, pipe: Pipeline, step: Tapped, m: int, offset: int, size: int) -> _grads.Consumer:
        def fold(block: torch.Tensor) -> None:
            flat = block.reshape(m, -1)
            if pipe._reducer is not None:
                flat = pipe._reducer.mean(flat)
            if flat.dtype != torch.float64:
                flat = flat.float()
            step.buffer.add_((flat @ flat.T).to(torch.float64))

        return fold

    def system(self, pipe: Pipeline, step: Tapped, losses: torch.Tensor) -> GradientSystem:
        return GradientSystem(
            gramian=to_numpy64(step.buffer) / step.scale**2,
            losses=to_numpy64(losses),
            roundoff=pipe._roundoff(pipe._width),
        )

    def update(self, pipe: Pipeline, batch: Batch, found: Gradients, result: Result, gramian) -> Update:
        weights = None if result.weights is None else to_numpy64(result.weights)
        return self.weighted_update(pipe, batch, found.context, weights, gramian)

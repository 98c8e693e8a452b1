"""The matrix engine: G (m x n) held, filled block by block by one batched backward, the solver's direction written.

Serves solvers that read G, and Gramian weightings with gradient accumulation:
the m x n buffer then holds the mean over the micro-batches of the per-task
gradients (in ``matrix_dtype``) until the last one, and with ``distributed``
it is averaged across ranks once (see :mod:`mtlsolve.adapters.ddp`).
"""

from __future__ import annotations

import torch

from mtlsolve._array import to_numpy64
from mtlsolve.adapters import _grads
from mtlsolve.adapters.engines.base import Batch, Gradients, Pipeline, Update
from mtlsolve.adapters.engines.tapped import Tapped, TappedEngine
from mtlsolve.errors import InvalidSystemError
from mtlsolve.solver import Result
from mtlsolve.system import GradientSystem


class MatrixEngine(TappedEngine):
    """G held: the direction d (or Gᵀw) is written from it, no second backward (except for ``grads="last_shared"``)."""

    name = "matrix"

    @classmethod
    def fits(cls, pipe: Pipeline) -> bool:
        return pipe.path != "losses" and (pipe.path == "matrix" or pipe.accumulation_steps > 1)

    def weighted(self, pipe: Pipeline) -> bool:
        return pipe.grads == "last_shared"  # the weights apply to the full losses

    def buffer(self, pipe: Pipeline, m: int) -> torch.Tensor:
        """This micro-batch's share of the mean gradients; the pipeline adds it to the held sum once the call succeeded."""
        if pipe._matrix is not None and pipe._matrix.shape[0] != m:
            raise InvalidSystemError(f"the accumulated gradients have {pipe._matrix.shape[0]} tasks, not {m}")
        ref = pipe.shared[0]
        return torch.zeros(m, pipe._width, dtype=pipe.matrix_dtype or ref.dtype, device=ref.device)

    def sink(self, pipe: Pipeline, step: Tapped, m: int, offset: int, size: int) -> _grads.Consumer:
        alpha = 1.0 / (pipe.accumulation_steps * step.scale)

        def consume(block: torch.Tensor) -> None:
            # blocks arrive in the scaler's units: store this micro-batch's share of the unscaled mean
            step.buffer[:, offset : offset + size].add_(block.reshape(m, size), alpha=alpha)

        return consume

    def system(self, pipe: Pipeline, step: Tapped, losses: torch.Tensor) -> GradientSystem:
        G = step.buffer if pipe._matrix is None else step.buffer.add_(pipe._matrix)
        if pipe._reducer is not None:
            pipe._reducer.mean_(G)
        return GradientSystem(G, losses=losses.to(G.dtype))

    def update(self, pipe: Pipeline, batch: Batch, found: Gradients, result: Result, gramian) -> Update:
        step: Tapped = found.context
        weights = None if result.weights is None else to_numpy64(result.weights)
        if self.weighted(pipe):
            return self.weighted_update(pipe, batch, step, weights, gramian)
        G = step.buffer
        d = result.direction
        if d is None:
            d = torch.as_tensor(weights, dtype=G.dtype, device=G.device) @ G
        d = d * step.scale if step.scale != 1.0 else d
        writes = [(p, d[offset : offset + size]) for p, (offset, size) in step.used]
        norm = float(torch.linalg.vector_norm(d)) / step.scale
        return Update(writes=writes, reduce=step.heads, weights=weights, norm=norm)

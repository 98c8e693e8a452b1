"""The reduce-scatter Gramian engine: the DDP schedule that keeps only each rank's columns of the mean gradients.

Each parameter block of the per-task gradients (m x |p|) is reduce-scattered
as autograd produces it: rank r keeps its ⌈|p|/R⌉ columns of the cross-rank
mean, G_r, and folds G_r G_rᵀ into its partial Gramian. One m x m all-reduce
gives K = Σ_r G_r G_rᵀ; every rank solves the same system, forms its columns
of the update G_rᵀw and one all-gather assembles d = Gᵀw on every rank (no
second backward). Chosen by ``distributed=ReduceScatter(group)``; see
:mod:`mtlsolve.adapters.ddp` for the communication of both schedules.
"""

from __future__ import annotations

import torch

from mtlsolve._array import to_numpy64
from mtlsolve.adapters import _grads
from mtlsolve.adapters.engines.base import Batch, Gradients, Pipeline, Update, Writes, gramian_norm
from mtlsolve.adapters.engines.tapped import Tapped, TappedEngine
from mtlsolve.errors import SolverError
from mtlsolve.solver import Result
from mtlsolve.system import GradientSystem


class ScatteredGramianEngine(TappedEngine):
    """Partial Gramians on the reduce-scattered columns, summed by one m x m all-reduce; the update all-gathered."""

    name = "scattered gramian"

    @classmethod
    def fits(cls, pipe: Pipeline) -> bool:
        return (
            pipe.path == "gramian"
            and pipe.grads == "shared"
            and pipe.accumulation_steps == 1
            and getattr(pipe._reducer, "schedule", None) == "reduce_scatter"
        )

    def weighted(self, pipe: Pipeline) -> bool:
        return False

    def buffer(self, pipe: Pipeline, m: int) -> torch.Tensor:
        self.columns: dict[int, torch.Tensor] = {}  # this step's own columns, by the block's offset
        return torch.zeros(m, m, dtype=torch.float64, device=pipe.shared[0].device)

    def sink(self, pipe: Pipeline, step: Tapped, m: int, offset: int, size: int) -> _grads.Consumer:
        def fold(block: torch.Tensor) -> None:
            own = pipe._reducer.scatter_mean(block.reshape(m, size))
            self.columns[offset] = own
            flat = own if own.dtype == torch.float64 else own.float()
            step.buffer.add_((flat @ flat.T).to(torch.float64))

        return fold

    def system(self, pipe: Pipeline, step: Tapped, losses: torch.Tensor) -> GradientSystem:
        K = pipe._reducer.sum_(step.buffer)
        return GradientSystem(
            gramian=to_numpy64(K) / step.scale**2, losses=to_numpy64(losses), roundoff=pipe._roundoff(pipe._width)
        )

    def update(self, pipe: Pipeline, batch: Batch, found: Gradients, result: Result, gramian) -> Update:
        step: Tapped = found.context
        if result.weights is None:
            raise SolverError(f"{pipe.solver.name} returned no weights on the gramian path")
        weights = to_numpy64(result.weights)
        own = [self.columns[offset] for _, (offset, _) in step.used]
        if not own:
            return Update(writes=[], reduce=step.heads, weights=weights, norm=gramian_norm(weights, gramian))
        w = torch.as_tensor(weights, dtype=own[0].dtype, device=own[0].device)
        gathered = pipe._reducer.gather(torch.cat([w @ cols for cols in own]))  # (R, Σ ⌈|p|/R⌉)
        writes: Writes = []
        start = 0
        for (p, (_, size)), cols in zip(step.used, own):
            width = cols.shape[1]
            writes.append((p, gathered[:, start : start + width].reshape(-1)[:size].reshape(p.shape)))
            start += width
        return Update(writes=writes, reduce=step.heads, weights=weights, norm=gramian_norm(weights, gramian))

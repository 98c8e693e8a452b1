"""What the matrix engine and the folded Gramian engine share: one per-task backward whose parameter blocks go to a sink.

Every shared parameter the solver sees (all of them, or the last shared block
for ``grads="last_shared"``, Liu et al.'s GradNorm choice, ICML 2018,
arXiv:1711.02257, Sec. 3) is a tapped leaf of :mod:`mtlsolve.adapters._grads`:
its (m, |p|) gradient block is handed to the engine's sink as autograd
produces it. Parameters outside ``shared`` get the plain gradient of their own
tasks' losses from the same backward.
"""

from __future__ import annotations

import abc

import attrs
import numpy as np
import torch

from mtlsolve._array import to_numpy64
from mtlsolve.adapters import _grads
from mtlsolve.adapters.engines.base import Batch, GradientEngine, Gradients, Pipeline, Update, Writes, gramian_norm
from mtlsolve.errors import SolverError
from mtlsolve.system import GradientSystem


@attrs.define(kw_only=True, eq=False)
class Tapped:
    """One step's tapped leaves with their (offset, size) in the flattened gradient, heads, reach and loss scale."""

    used: list[tuple[torch.Tensor, tuple[int, int]]]
    heads: list[torch.Tensor]
    reach: dict[int, torch.Tensor]
    scale: float
    buffer: torch.Tensor | None = None


class TappedEngine(GradientEngine):
    """Per-task gradients of the tapped leaves into :meth:`buffer`; subclasses say how blocks are kept and the update written."""

    @abc.abstractmethod
    def weighted(self, pipe: Pipeline) -> bool:
        """Whether the update is one more backward of Σ w_i L_i (else it is written from the held G)."""

    @abc.abstractmethod
    def buffer(self, pipe: Pipeline, m: int) -> torch.Tensor:
        """Where this micro-batch's blocks go (zeroed again if the batched engine fails)."""

    @abc.abstractmethod
    def sink(self, pipe: Pipeline, step: Tapped, m: int, offset: int, size: int) -> _grads.Consumer:
        """What receives the block of the tapped leaf at ``offset`` (``size`` coordinates)."""

    @abc.abstractmethod
    def system(self, pipe: Pipeline, step: Tapped, losses: torch.Tensor) -> GradientSystem:
        """The solver's system from the filled buffer and the (cross-rank mean) losses."""

    def gradients(self, pipe: Pipeline, batch: Batch) -> Gradients:
        losses = batch.losses
        m = losses.shape[0]
        reach = _grads.reachable_leaves([losses])
        used = [(p, span) for p, span in zip(pipe._tapped, pipe._layout) if id(p) in reach]
        step = Tapped(used=used, heads=pipe._heads(reach), reach=reach, scale=pipe._scale)
        step.buffer = self.buffer(pipe, m)
        head_sums: dict[int, torch.Tensor] = {}

        def reset() -> None:
            head_sums.clear()
            step.buffer.zero_()

        consumers = [self.sink(pipe, step, m, *span) for _, span in used]
        consumers += [head_consumer(h, head_sums) for h in step.heads]
        scaled = pipe.scaler.scale(losses) if pipe._scaling else losses
        retain = batch.retain_graph or self.weighted(pipe)
        tapped = [p for p, _ in used] + step.heads
        _, engine = pipe._per_task(scaled, [], tapped, consumers, retain_graph=retain, reset=reset)
        share = pipe.accumulation_steps * pipe.capabilities.batches
        writes = [(h, head_sums[id(h)] / share) for h in step.heads if id(h) in head_sums]
        pipe._add_losses(losses)
        if not batch.last:  # checked before it is kept, so that a bad micro-batch cannot spoil the cycle
            return Gradients(system=None, writes=writes, check=[losses, step.buffer], matrix=step.buffer)
        L = pipe._losses if pipe._reducer is None else pipe._reducer.mean_(pipe._losses)
        return Gradients(
            system=self.system(pipe, step, L),
            writes=writes,
            poison=pipe.shared + step.heads,
            losses=to_numpy64(L),
            engine=engine,
            context=step,
        )

    @staticmethod
    def weighted_update(
        pipe: Pipeline, batch: Batch, step: Tapped, weights: np.ndarray | None, gramian: np.ndarray
    ) -> Update:
        """d = Σ w_i ∇L_i by one backward of Σ w_i L_i (over every shared parameter for ``grads="last_shared"``)."""
        if weights is None:
            raise SolverError(f"{pipe.solver.name} returned no weights on the gramian path")
        losses = batch.losses
        c = torch.as_tensor(weights * step.scale, dtype=losses.dtype, device=losses.device)
        if pipe.grads == "last_shared":
            params = [p for p in pipe.shared if id(p) in step.reach]
        else:
            params = [p for p, _ in step.used]
        update = torch.autograd.grad((c * losses).sum(), params, retain_graph=batch.retain_graph)
        writes: Writes = list(zip(params, update))
        norm = gramian_norm(weights, gramian)
        if pipe.grads == "last_shared":
            norm = _written_norm(update, step.scale)
        return Update(writes=writes, reduce=params + step.heads, weights=weights, norm=norm)


def head_consumer(head: torch.Tensor, sums: dict[int, torch.Tensor]) -> _grads.Consumer:
    """Keeps the sum over tasks of a task-specific parameter's gradient block."""

    def consume(block: torch.Tensor) -> None:
        sums[id(head)] = block.sum(0)

    return consume


def _written_norm(update: tuple[torch.Tensor, ...], scale: float):
    """‖d‖ of every shared parameter's update as written (and averaged across ranks), unscaled."""

    def norm() -> float:
        norms = torch.stack([torch.linalg.vector_norm(g) for g in update])
        return float(torch.linalg.vector_norm(norms)) / scale

    return norm

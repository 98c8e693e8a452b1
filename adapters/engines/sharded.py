"""The sharded engine: models whose shared parameters are DTensors (FSDP2's ``fully_shard``, tensor parallelism).

Every rank holds one shard s of each shared parameter. For a solver that reads
the Gramian, K = G Gᵀ = Σ_s G_s G_sᵀ: each rank takes the per-task gradients
of its own shards, G_s (m x n/R), by one backward per task over the retained
graph (FSDP2 reduce-scatters each, so G_s is already the mean over the data
ranks), forms its partial Gramian, and one all-reduce of m x m numbers gives
the global K. Every rank solves the identical system and writes its own
shards' update d_s = G_sᵀw: no full gradient is ever gathered, and a rank
holds O(m·n/R) gradient numbers.

A shard that several ranks hold alike (a parameter placed ``Replicate`` on a
mesh dimension, such as a norm weight inside a tensor-parallel group, or a
plain tensor among ``shared``, which must then get the same gradient on every
rank) is counted once: by the rank at coordinate 0 of those mesh dimensions.

Loss weightings keep their one backward of the solver's objective evaluated
at the global (cross-rank mean) losses. Parameters outside ``shared`` (task
heads) take their gradient from the backward passes themselves, as with
``loss.backward()``: FSDP2 writes it, so they are written even when the step
then raises.

Solvers that read G column by column (``Capabilities.shards == "coordinate"``,
such as the coordinate-wise trimmed mean) run on each rank's own columns G_s
and return its shard of the direction: nothing of G is gathered, and the
result is exact because coordinate j of d depends on column j of G alone.

Solvers that read G itself (``Capabilities.shards == "matrix"``) are refused
unless the adapter opts in to gathering (``MultiTaskBackward(..., gather_shards=True)``): the
per-task shards are then gathered into the full G (m x n on every rank), every
rank runs the solver on it and keeps its own shard of the direction.
Gramian solvers in representation mode (``grads="representation"``) read
K = (1/R²) Σ_r Z_r Z_rᵀ of the per-task feature gradients (one m x m
all-reduce, as under DDP) and back-propagate each rank's rows of the
combination once. Matrix solvers in representation mode, ``grads="last_shared"``,
and solvers reading several batches a step are refused
(:func:`mtlsolve.compatibility.sharded_refusal`).

Gradient accumulation (``accumulation_steps=k``): each micro-batch's per-task
backward passes run on L/k, so the heads' ``.grad`` (written by the passes)
and this rank's per-task shards are the means over the micro-batches; the
pipeline holds the shards (m·n/R numbers) until the last micro-batch, whose
K is formed from their sum: the Gramian of the accumulated G, not the sum of
the micro-batches' Gramians. Loss weightings back-propagate their objective
divided by k, as on one process.
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np
import torch
import torch.distributed as dist

from mtlsolve._array import to_numpy64
from mtlsolve.adapters.engines.base import (
    Batch,
    GradientEngine,
    Gradients,
    Pipeline,
    Staged,
    Update,
    gramian_norm,
)
from mtlsolve.adapters.engines.loss import LossEngine
from mtlsolve.compatibility import sharded_refusal
from mtlsolve.errors import InvalidConfigError, InvalidSystemError, SolverError
from mtlsolve.solver import Result
from mtlsolve.system import GradientSystem

try:
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard
except ImportError:  # a torch build without torch.distributed: no parameter is a DTensor

    class DTensor:  # type: ignore[no-redef]
        """Stands for the DTensor class, of which no tensor is an instance."""

    Partial = Replicate = Shard = DTensor  # type: ignore[misc]


def is_sharded(params: list[torch.Tensor]) -> bool:
    """Whether any of ``params`` is a DTensor."""
    return any(isinstance(p, DTensor) for p in params)


def owns(p: torch.Tensor, rank: int) -> bool:
    """Whether this rank counts p's local shard: for a DTensor, the rank at coordinate 0 of every mesh
    dimension p is replicated on; a plain tensor (the same on every rank) is counted by rank 0."""
    if not isinstance(p, DTensor):
        return rank == 0
    coordinate = p.device_mesh.get_coordinate()
    if coordinate is None:  # this rank is outside p's mesh
        return False
    return all(c == 0 for c, placement in zip(coordinate, p.placements) if isinstance(placement, Replicate))


def local(grad: torch.Tensor | None, p: torch.Tensor) -> torch.Tensor:
    """This rank's shard of p's gradient as a flat plain tensor (zeros for None), in p's placements."""
    if grad is None:
        shard = p.to_local() if isinstance(p, DTensor) else p
        return torch.zeros(shard.numel(), dtype=shard.dtype, device=shard.device)
    if isinstance(grad, DTensor):
        if any(isinstance(placement, Partial) for placement in grad.placements):
            grad = grad.redistribute(grad.device_mesh, p.placements)
        grad = grad.to_local()
    return grad.reshape(-1)


def as_param(p: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """A flat local shard as a gradient of p: a DTensor with p's mesh, placements and global shape."""
    if not isinstance(p, DTensor):
        return flat.reshape(p.shape)
    shard = flat.reshape(p.to_local().shape)
    return DTensor.from_local(shard, p.device_mesh, p.placements, run_check=False, shape=p.shape, stride=p.stride())


def full_rows(p: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """The m rows of p's full per-task gradients (m x |p|) from every rank's local rows ``block``."""
    if not isinstance(p, DTensor):
        return block
    m = block.shape[0]
    placements = [Shard(pl.dim + 1) if isinstance(pl, Shard) else pl for pl in p.placements]
    shape = (m, *p.shape)
    stride = torch.empty(shape, device="meta").stride()
    rows = block.reshape(m, *p.to_local().shape)
    tensor = DTensor.from_local(rows, p.device_mesh, placements, run_check=False, shape=shape, stride=stride)
    return tensor.full_tensor().reshape(m, -1)


def shard_of(p: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """A full gradient of p (the same on every rank) as a DTensor in p's placements: each rank keeps its shard."""
    if not isinstance(p, DTensor):
        return full
    mesh = p.device_mesh
    replicated = DTensor.from_local(full, mesh, [Replicate()] * mesh.ndim, run_check=False)
    return replicated.redistribute(mesh, p.placements)


class Group:
    """The process group the engine reduces over (the world unless the adapter names one)."""

    def __init__(self, pipe: Pipeline) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise InvalidConfigError("sharded (DTensor) parameters need an initialised torch.distributed process group")
        self.group = None if pipe._reducer is None else pipe._reducer.group
        self.size = dist.get_world_size(self.group)
        self.rank = dist.get_rank(self.group)

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group)
        return tensor

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.sum_(tensor.detach().clone(memory_format=torch.contiguous_format)).div_(self.size)


@attrs.define(kw_only=True, eq=False)
class Shards:
    """One step's per-task gradient shards (m x local size, in the scaler's units), by parameter, and the scale."""

    rows: list[torch.Tensor]
    scale: float


class ShardedGramianEngine(GradientEngine):
    """Per-task gradient shards, a partial Gramian all-reduced (m x m), each rank's own update d_s = G_sᵀw."""

    name = "sharded"

    @classmethod
    def fits(cls, pipe: Pipeline) -> bool:
        return is_sharded(pipe.shared)

    def __init__(self, pipe: Pipeline, shared: Any) -> None:
        gather = pipe.gather_shards
        refusal = sharded_refusal(pipe.capabilities, pipe.grads, gather)
        if refusal is not None:
            raise InvalidConfigError(f"{pipe.solver.name} {refusal}")
        self.group = Group(pipe)
        #: written by the engine itself: torch cannot check an empty shard finite, and every rank
        #: must hand the pipeline the same DTensors, whose finiteness check is a collective
        self.direct = empty_somewhere(pipe.shared, self.group)
        self.losses_only = pipe.path == "losses"
        self.coordinate = pipe.capabilities.shards == "coordinate"
        self.representation = pipe.grads == "representation"
        self.gathered = gather and pipe.path == "matrix" and not self.coordinate

    def compute(self, pipe: Pipeline, batch: Batch) -> Staged:
        if self.losses_only:
            return self._loss_step(pipe, batch)
        if self.coordinate:
            return self._coordinate_step(pipe, batch)
        if self.representation:
            return self._representation_step(pipe, batch)
        return super().compute(pipe, batch)

    # ------------------------------------------------------------------ Gramian path
    def gradients(self, pipe: Pipeline, batch: Batch) -> Gradients:
        losses = batch.losses
        m = losses.shape[0]
        scale, k = pipe._scale, pipe.accumulation_steps
        scaled = pipe.scaler.scale(losses) if pipe._scaling else losses
        rows = self._per_task(pipe, scaled / k if k > 1 else scaled, batch.retain_graph)
        pipe._add_losses(losses)
        if k > 1:
            held = torch.cat(rows, dim=1)
            if not batch.last:  # checked before it is kept, so that a bad micro-batch cannot spoil the cycle
                return Gradients(system=None, check=[losses, held], matrix=held)
            if pipe._matrix is not None:
                if pipe._matrix.shape[0] != m:
                    raise InvalidSystemError(f"the accumulated gradients have {pipe._matrix.shape[0]} tasks, not {m}")
                held.add_(pipe._matrix)
            rows = list(torch.split(held, [block.shape[1] for block in rows], dim=1))
        L = self.group.sum_(pipe._losses).div_(self.group.size)  # the pipeline's mean over the micro-batches
        if self.gathered:
            return self._gathered(pipe, L, rows, scale)
        K = torch.zeros(m, m, dtype=torch.float64, device=losses.device)
        for p, block in zip(pipe.shared, rows):
            if block.shape[1] and owns(p, self.group.rank):
                flat = block if block.dtype == torch.float64 else block.float()
                K += (flat @ flat.T).to(torch.float64)
        self.group.sum_(K)
        system = GradientSystem(
            gramian=to_numpy64(K) / scale**2, losses=to_numpy64(L), roundoff=pipe._roundoff(pipe._width)
        )
        step = Shards(rows=rows, scale=scale)
        return Gradients(system=system, poison=list(pipe.shared), losses=to_numpy64(L), engine="loop", context=step)

    def _per_task(self, pipe: Pipeline, losses: torch.Tensor, retain_graph: bool) -> list[torch.Tensor]:
        """One backward per task; each shared parameter's local gradient shards stacked (m x local size).

        The shared parameters' ``.grad`` is set aside while the passes run and put back after.
        """
        m = losses.shape[0]
        saved = [p.grad for p in pipe.shared]
        rows: list[list[torch.Tensor]] = [[] for _ in pipe.shared]
        try:
            for p in pipe.shared:
                p.grad = None
            for i in range(m):
                losses[i].backward(retain_graph=retain_graph or i < m - 1)
                for slot, p in enumerate(pipe.shared):
                    rows[slot].append(local(p.grad, p))
                    p.grad = None
        finally:
            for p, g in zip(pipe.shared, saved):
                p.grad = g
        return [torch.stack(r) for r in rows]

    def update(self, pipe: Pipeline, batch: Batch, found: Gradients, result: Result, gramian: np.ndarray) -> Update:
        step: Shards = found.context
        weights = None if result.weights is None else to_numpy64(result.weights)
        if self.gathered:
            return self._gathered_update(pipe, step, result, weights)
        if weights is None:
            raise SolverError(f"{pipe.solver.name} returned no weights on the gramian path")
        updates = []
        for p, block in zip(pipe.shared, step.rows):
            w = torch.as_tensor(weights, dtype=block.dtype, device=block.device)
            updates.append(as_param(p, w @ block))
        return Update(writes=self._writes(pipe.shared, updates), weights=weights, norm=gramian_norm(weights, gramian))

    # ------------------------------------------------------------------ coordinate-wise solvers
    def _coordinate_step(self, pipe: Pipeline, batch: Batch) -> Staged:
        """The solver on this rank's own columns G_s (``Capabilities.shards == "coordinate"``), its d_s written.

        K is still all-reduced (m x m): the diagnostics report it, and every rank checks the same
        K finite, so all ranks raise or skip together. A shard held alike by several ranks gets
        the same columns, hence the same update, on each; ‖d‖ sums the owned shards (one scalar
        all-reduce).
        """
        found = self.gradients(pipe, batch)
        if found.system is None:  # a micro-batch before the last: its share of the per-task shards is held
            return Staged(check=found.check, matrix=found.matrix)
        gramian = pipe._gramian_or_skip(found.system)
        if gramian is None:
            return Staged(poison=found.poison, losses=found.losses, engine=found.engine)
        step: Shards = found.context
        G = torch.cat(step.rows, dim=1)
        G = G / step.scale if step.scale != 1.0 else G
        losses = torch.as_tensor(found.losses, dtype=G.dtype, device=G.device)
        result = pipe.solver(GradientSystem(G, losses=losses))
        weights = None if result.weights is None else to_numpy64(result.weights)
        d = result.direction
        if d is None:
            d = torch.as_tensor(weights, dtype=G.dtype, device=G.device) @ G
        d = d.reshape(-1)
        updates, owned, offset = [], torch.zeros((), dtype=torch.float64, device=G.device), 0
        for p, block in zip(pipe.shared, step.rows):
            part = d[offset : offset + block.shape[1]]
            offset += block.shape[1]
            if owns(p, self.group.rank):
                owned += part.to(torch.float64).square().sum()
            updates.append(as_param(p, part * step.scale if step.scale != 1.0 else part))
        norm = float(self.group.sum_(owned).sqrt())
        return Staged(
            writes=self._writes(pipe.shared, updates),
            losses=found.losses,
            weights=weights,
            gramian=gramian,
            update_norm=norm,
            engine=found.engine,
            solver=dict(result.diagnostics),
        )

    # ------------------------------------------------------------------ representation mode
    def _representation_step(self, pipe: Pipeline, batch: Batch) -> Staged:
        """A Gramian solver on the feature gradients (MGDA-UB, Sener & Koltun, NeurIPS 2018, arXiv:1810.04650).

        The features H are this rank's batch rows, so the global Z is the concatenation of the
        ranks' Z_r scaled by 1/R and K = (1/R²) Σ_r Z_r Z_rᵀ: one m x m all-reduce, as under DDP.
        Each rank then runs one backward of Σ_i L_i with the gradient reaching H replaced by its
        rows of the combination, ẑ_r = Σ_i w_i Z_r,i: the heads get Σ_i ∇L_i, the encoder J_rᵀẑ_r,
        and FSDP2's reduce-scatter averages both over the ranks.
        """
        H, losses = batch.features, batch.losses
        if H is None:
            raise InvalidSystemError("representation mode needs backward(losses, features=H)")
        if not H.requires_grad:
            raise InvalidSystemError("features must be the tensor the losses were computed from (requires grad)")
        self._own_rows(H)
        m, R, scale = losses.shape[0], self.group.size, pipe._scale
        scaled = pipe.scaler.scale(losses) if pipe._scaling else losses
        Z = torch.stack(
            [
                torch.zeros_like(H) if g is None else g
                for i in range(m)
                for g in torch.autograd.grad(scaled[i], H, retain_graph=True, allow_unused=True)
            ]
        )  # in the scaler's units
        flat = Z.reshape(m, -1).to(torch.promote_types(H.dtype, torch.float32))
        K = self.group.sum_((flat @ flat.T).to(torch.float64)) / (R * scale) ** 2
        L = self.group.mean(losses.to(torch.float64))
        pipe._add_losses(L)
        roundoff = pipe._roundoff(flat.shape[1] * R, flat.dtype)
        system = GradientSystem(gramian=to_numpy64(K), losses=to_numpy64(L), kind="representation", roundoff=roundoff)
        gramian = pipe._gramian_or_skip(system)
        if gramian is None:
            return Staged(poison=list(pipe.shared), losses=to_numpy64(L), engine=self.name)
        result = pipe.solver(system)
        if result.weights is None:
            raise SolverError(f"{pipe.solver.name} returned no weights on the gramian path")
        weights = to_numpy64(result.weights)
        zhat = torch.tensordot(torch.as_tensor(weights, dtype=Z.dtype, device=Z.device), Z, dims=1)
        handle = H.register_hook(lambda _grad: zhat)
        try:
            scaled.sum().backward(retain_graph=batch.retain_graph)
        finally:
            handle.remove()
        return Staged(
            losses=to_numpy64(L),
            weights=weights,
            gramian=gramian,
            update_norm=gramian_norm(weights, gramian),
            engine=self.name,
            solver=dict(result.diagnostics),
        )

    def _own_rows(self, H: torch.Tensor) -> None:
        """Refuse features that two ranks hold alike (a batch replicated across a tensor-parallel
        group): K = (1/R²) Σ_r Z_r Z_rᵀ holds only when every rank has its own batch rows. Two
        float64 fingerprints per rank, all-gathered."""
        flat = H.detach().reshape(-1).to(torch.float64)
        ramp = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device)
        mine = torch.stack([flat.sum(), (flat * ramp).sum()])
        prints = [torch.empty_like(mine) for _ in range(self.group.size)]
        dist.all_gather(prints, mine, group=self.group.group)
        seen = {tuple(p.tolist()) for p in prints}
        if len(seen) < len(prints):
            raise InvalidConfigError(
                "representation mode on sharded (DTensor) parameters needs every rank to hold its own batch rows "
                "(FSDP2, data parallel); some ranks hold the same features, as in tensor parallelism"
            )

    # ------------------------------------------------------------------ G gathered (opt-in)
    def _gathered(self, pipe: Pipeline, L: torch.Tensor, rows: list[torch.Tensor], scale: float) -> Gradients:
        """The full G (m x n, unscaled) on every rank, from every rank's per-task shards; L the global losses."""
        G = torch.cat([full_rows(p, block) for p, block in zip(pipe.shared, rows)], dim=1) / scale
        system = GradientSystem(G, losses=L.to(G.dtype))
        step = Shards(rows=rows, scale=scale)
        return Gradients(system=system, poison=list(pipe.shared), losses=to_numpy64(L), engine="loop", context=step)

    def _gathered_update(self, pipe: Pipeline, step: Shards, result: Result, weights: np.ndarray | None) -> Update:
        """Each rank's shard of the solver's direction d (or Gᵀw), in the scaler's units."""
        d = result.direction
        if d is None:
            G = torch.cat([full_rows(p, block) for p, block in zip(pipe.shared, step.rows)], dim=1)
            d = torch.as_tensor(weights, dtype=G.dtype, device=G.device) @ G / step.scale
        norm = float(torch.linalg.vector_norm(d))
        d = d * step.scale if step.scale != 1.0 else d
        updates, offset = [], 0
        for p in pipe.shared:
            updates.append(shard_of(p, d[offset : offset + p.numel()].reshape(p.shape)))
            offset += p.numel()
        return Update(writes=self._writes(pipe.shared, updates), weights=weights, norm=norm)

    def _writes(
        self, params: list[torch.Tensor], updates: list[torch.Tensor]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The (parameter, update) writes; the parameters in :attr:`direct` get their update added here
        (after the solve, from a finite K and finite weights)."""
        writes = []
        for p, d in zip(params, updates):
            if id(p) not in self.direct:
                writes.append((p, d))
            elif p.grad is None:
                p.grad = d
            else:
                p.grad.add_(d)
        return writes

    # ------------------------------------------------------------------ loss path
    def _loss_step(self, pipe: Pipeline, batch: Batch) -> Staged:
        """One backward of the objective at the global losses (FSDP2 averages the gradients across ranks)."""
        local_losses = batch.losses
        mean = self.group.mean(local_losses)
        losses = mean + (local_losses - local_losses.detach())  # the global value, the local gradient
        pipe._add_losses(mean)
        L = to_numpy64(mean)
        cycle = to_numpy64(pipe._losses) if batch.last else None  # the mean over the micro-batches
        if not np.isfinite(L).all():
            pipe._skip_or_raise(f"the task losses {L.tolist()} hold NaN or Inf")
            return Staged(poison=list(pipe.shared), losses=cycle)
        objective, weights = LossEngine._objective(pipe, losses, local_losses, L, batch.last)
        k = pipe.accumulation_steps
        total = objective / k if k > 1 else objective
        total = pipe.scaler.scale(total) if pipe._scaling else total
        total.backward(retain_graph=batch.retain_graph)
        return Staged(losses=cycle, weights=weights, engine=self.name)


def empty_somewhere(params: list[torch.Tensor], group: Group) -> set[int]:
    """The ids of the DTensors whose local shard is empty on some rank (more ranks than rows): one MIN all-reduce."""
    numels = [p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in params]
    least = torch.tensor(numels, dtype=torch.int64, device=params[0].device)
    dist.all_reduce(least, op=dist.ReduceOp.MIN, group=group.group)
    return {id(p) for p, n in zip(params, least.tolist()) if n == 0}

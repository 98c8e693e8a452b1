"""torch.distributed data parallelism for :class:`~mtlsolve.adapters.MultiTaskBackward`.

Pass ``distributed=True`` (the default process group) or a process group to
the adapter. Each of the R ranks holds an equal share of the global batch and
computes per-task losses as means over its share, so the loss of the
concatenated batch is L_i = (1/R) Σ_r L_i^r and its per-task gradient is
g_i = (1/R) Σ_r g_i^r. A solver is non-linear in G, so averaging each rank's
*combined* update (what DDP does) is not the combination of the global
gradients; the adapter therefore reduces what the solver reads *before* it
runs, and every rank then solves the identical system and applies the
identical update:

* the m losses: averaged (the solver, and a loss weighting's values, see the
  global losses on every rank);
* Gramian path: each parameter block of the per-task gradients (m x |p|) is
  averaged inside the batched backward, before it is folded into K; then the
  update Σ_i w_i ∇L_i of the one extra backward is averaged (n numbers);
* matrix path, and Gramian path when G is held: G (m x n) averaged once;
* representation mode: the per-task feature gradients live on each rank's
  own samples, so the global matrix is their concatenation scaled by 1/R;
  Gramian solvers need only K = (1/R²) Σ_r Z_r Z_rᵀ (an m x m all-reduce),
  matrix solvers get the gathered Z; the encoder gradients are then averaged;
* loss path: each rank back-propagates the solver's objective evaluated at
  the global losses (L_i^r − L_i^r.detach() + L_i carries the local gradient
  with the global value), then the gradients are averaged;
* task-specific parameters (the plain sum of their tasks' gradients) are
  averaged.

Learnable solver parameters are not reduced: they only see the global losses,
so their gradients are already equal on every rank.

Two exact schedules serve Gramian weightings on the shared gradients:

* ``distributed=True`` (or a group), the low-memory default: each parameter
  block (m x |p|) is all-reduced and folded into K, then the update
  Σ_i w_i ∇L_i of one extra backward is all-reduced (n numbers). A ring
  all-reduce sends 2(R−1)/R of its buffer per rank: about 2(m + 1)·n
  numbers per rank and step, with one block alive at a time.
* ``distributed=ReduceScatter(group)``: each block is reduce-scattered, so a
  rank keeps only its own ⌈|p|/R⌉ columns of the mean block, G_r (m·n/R
  numbers in all); the partial Gramians G_r G_rᵀ are summed by one m x m
  all-reduce, and each rank's columns of the update, G_rᵀw, are all-gathered
  (no second backward). A ring reduce-scatter and all-gather send (R−1)/R of
  the buffer per rank: about (m + 1)·n numbers, half of the default.

:mod:`mtlsolve.adapters.comm` counts the bytes of every collective.

DDP's own gradient all-reduce must not run as well: run the forward and
:meth:`~mtlsolve.adapters.MultiTaskBackward.backward` inside
``ddp_model.no_sync()`` (or use the plain module after broadcasting its
parameters once). The per-step collectives happen inside the backward pass in
the graph's execution order, which is the same on every rank for the same
model.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist


class ReduceScatter:
    """``distributed=ReduceScatter(group)``: the reduce-scatter schedule on ``group`` (None: the default group)."""

    def __init__(self, group: Any = None) -> None:
        self.group = group


class Reducer:
    """Averaging, scattering and gathering across the ranks of one process group.

    ``schedule`` is "all_reduce" (the default) or "reduce_scatter" (when built
    from a :class:`ReduceScatter`).
    """

    def __init__(self, group: Any = None) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("distributed=... needs an initialised torch.distributed process group")
        self.schedule = "all_reduce"
        if isinstance(group, ReduceScatter):
            self.schedule, group = "reduce_scatter", group.group
        self.group = group
        self.world_size = dist.get_world_size(group)

    def mean_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Average ``tensor`` across ranks in place (and return it)."""
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group)
        return tensor.div_(self.world_size)

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The cross-rank average of ``tensor`` as a new contiguous tensor."""
        return self.mean_(tensor.detach().clone(memory_format=torch.contiguous_format))

    def mean_grads_(self, params: Iterable[torch.Tensor]) -> None:
        """Average the ``.grad`` of ``params`` across ranks with one collective."""
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.mean_(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def gather_columns(self, matrix: torch.Tensor) -> torch.Tensor:
        """The (m, R·k) concatenation of every rank's (m, k) ``matrix``, in rank order."""
        matrix = matrix.contiguous()
        parts = [torch.empty_like(matrix) for _ in range(self.world_size)]
        dist.all_gather(parts, matrix, group=self.group)
        return torch.cat(parts, dim=1)

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` across ranks in place (and return it)."""
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group)
        return tensor

    def scatter_mean(self, block: torch.Tensor) -> torch.Tensor:
        """This rank's ⌈k/R⌉ columns (zero-padded past k) of the cross-rank mean of an (m, k) ``block``."""
        m, k = block.shape
        R = self.world_size
        c = -(-k // R)
        padded = block.new_zeros(m, R * c)
        padded[:, :k] = block
        out = block.new_empty(m * c)
        dist.reduce_scatter_single(out, padded.reshape(m, R, c).transpose(0, 1).reshape(-1), group=self.group)
        return out.view(m, c).div_(R)

    def gather(self, part: torch.Tensor) -> torch.Tensor:
        """The (R, k) stack of every rank's 1-D ``part`` of k numbers, in rank order."""
        out = part.new_empty(self.world_size * part.numel())
        dist.all_gather_single(out, part.contiguous(), group=self.group)
        return out.view(self.world_size, -1)

    @property
    def rank(self) -> int:
        return dist.get_rank(self.group)

"""The Gramian engine: K = G Gᵀ on one batch without forming G, with factored Linear layers (see :mod:`.._layers`).

The ``nn.Linear`` layers of the shared module that see at most d_in + 1 rows
are never differentiated per task: their Gramian blocks and their share of
Gᵀw come from the layer inputs X and output gradients δ_i. The other shared
parameters are tapped leaves whose gradient blocks are folded into K and,
when they hold at most a quarter of the shared parameters, kept to write
their update (else one more backward of Σ w_i L_i restricted to them writes
it). Heads get the gradient of their own tasks' losses from one backward of
Σ L_i that stops at them. Serves Gramian weightings on one process without
gradient accumulation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import numpy as np
import torch

from mtlsolve._array import to_numpy64
from mtlsolve.adapters import _grads, _layers
from mtlsolve.adapters.engines.base import Batch, GradientEngine, Gradients, Pipeline, Update, gramian_norm
from mtlsolve.errors import SolverError
from mtlsolve.solver import Result
from mtlsolve.system import GradientSystem


@attrs.define(kw_only=True, eq=False)
class Factored:
    """One step's factored layers, tapped leaves and heads; whether the tapped blocks are kept; the loss scale."""

    layers: list[_layers.Layer]
    tapped: list[torch.Tensor]
    heads: list[torch.Tensor]
    hold: bool
    scale: float
    blocks: dict[int, torch.Tensor] = attrs.field(factory=dict)


class GramianEngine(GradientEngine):
    """Factored Linear layers plus tapped leaves, by one batched backward or one backward per task."""

    name = "gramian"

    @classmethod
    def fits(cls, pipe: Pipeline) -> bool:
        return (
            pipe.path == "gramian" and pipe.grads == "shared" and pipe.accumulation_steps == 1 and pipe._reducer is None
        )

    def __init__(self, pipe: Pipeline, shared: Any) -> None:
        """Forward hooks on the Linear/conv layers of ``shared``, removed when the adapter is collected."""
        self.factors = _layers.install(pipe, shared)

    def batched_by_default(self, device: torch.device, tapped_numel: int, hold: bool, n: int) -> bool:
        """The per-task backward when ``batched=None``.

        A batched pass holds about m x A activation gradients (A: the outputs
        of the shared Linear/conv layers in the forward pass). When the tapped
        blocks are kept anyway (``hold``), the loop costs no more memory and
        is the faster one on CPU (``asv_benchmarks/compare_adapters.py``);
        elsewhere the batched one is used unless m x A exceeds the m x n of G.
        Otherwise the loop must keep m x ``tapped_numel`` rows until K can be
        formed, and the one holding less is used.
        """
        activations = self.factors.activations
        if hold:
            return device.type != "cpu" and activations <= n
        return activations <= tapped_numel

    def gradients(self, pipe: Pipeline, batch: Batch) -> Gradients:
        losses = batch.losses
        m = losses.shape[0]
        graph = _grads.census([losses])
        layers = _layers.plan(self.factors, graph, pipe._shared_ids, m)
        factored = {id(p) for layer in layers for p in layer.params}
        tapped = [p for p in pipe.shared if id(p) in graph.leaves and id(p) not in factored]
        hold = 4 * sum(p.numel() for p in tapped) <= pipe.n
        step = Factored(layers=layers, tapped=tapped, heads=pipe._heads(graph.leaves), hold=hold, scale=pipe._scale)
        if pipe._scaling:
            pipe.scaler.scale(losses)  # starts the scaler's bookkeeping, as scaling the loss would
        K, head_grads, batched = self._per_task(pipe, batch, step)
        writes = [(h, g / pipe.capabilities.batches) for h, g in zip(step.heads, head_grads) if g is not None]
        for layer in layers:
            K += layer.gramian().to(torch.float64)
        for buf in step.blocks.values():
            K += (buf @ buf.T).to(torch.float64)
        pipe._add_losses(losses)
        L = to_numpy64(pipe._losses)
        system = GradientSystem(gramian=to_numpy64(K) / step.scale**2, losses=L, roundoff=pipe._roundoff(pipe._width))
        engine = "batched" if batched else "loop"
        return Gradients(
            system=system, writes=writes, poison=pipe.shared + step.heads, losses=L, engine=engine, context=step
        )

    def _per_task(self, pipe: Pipeline, batch: Batch, step: Factored) -> tuple[torch.Tensor, list, bool]:
        """K of the tapped blocks folded as they arrive, the heads' gradients, and whether the pass was batched.

        While the choice is undecided (``batched=None`` resolved to batched)
        a failing batched pass falls back to the loop for good.
        """
        batched = pipe._batched
        if batched is None:
            numel = sum(p.numel() for p in step.tapped)
            batched = self.batched_by_default(pipe.shared[0].device, numel, step.hold, pipe.n)
        second = bool(step.tapped) and not step.hold  # the tapped leaves' update needs the graph again
        retain = batch.retain_graph or second
        if batched and pipe._batched is None:
            try:
                return (*self._attempt(pipe, batch, step, True, True), True)
            except Exception as exc:  # a backward that vmap cannot batch
                pipe._give_up_batching(exc)
                batched = False
        return (*self._attempt(pipe, batch, step, batched, retain), batched)

    def _attempt(
        self, pipe: Pipeline, batch: Batch, step: Factored, batched: bool, retain: bool
    ) -> tuple[torch.Tensor, list]:
        """One per-task pass: K of the folded blocks (the kept ones go to ``step.blocks``) and the heads' gradients."""
        m = batch.losses.shape[0]
        K = torch.zeros(m, m, dtype=torch.float64, device=pipe.shared[0].device)
        step.blocks = {}

        def fold(block: torch.Tensor, start: int) -> None:
            flat = block.reshape(m, -1)
            flat = flat if flat.dtype == torch.float64 else flat.float()
            K.add_((flat @ flat.T).to(torch.float64))

        # the loop delivers one row at a time: rows are kept until K can be formed
        keep = step.hold or not batched
        consumers = [_keeper(p, m, step.blocks) if keep else fold for p in step.tapped]
        for layer in step.layers:
            layer.delta.zero_()
        head_grads = _layers.per_task(
            batch.losses,
            step.scale,
            self.factors,
            step.layers,
            step.tapped,
            consumers,
            step.heads,
            batched=batched,
            retain_graph=retain,
        )
        return K, head_grads

    def update(self, pipe: Pipeline, batch: Batch, found: Gradients, result: Result, gramian: np.ndarray) -> Update:
        step: Factored = found.context
        if result.weights is None:
            raise SolverError(f"{pipe.solver.name} returned no weights on the gramian path")
        weights = to_numpy64(result.weights)
        w = torch.as_tensor(weights, device=pipe.shared[0].device)
        writes = []
        for layer in step.layers:
            writes += list(zip(layer.params, layer.update(w)))
        if step.hold:
            writes += [(p, w.to(step.blocks[id(p)].dtype) @ step.blocks[id(p)]) for p in step.tapped]
        elif step.tapped:
            losses = batch.losses
            c = torch.as_tensor(weights * step.scale, dtype=losses.dtype, device=losses.device)
            grads = torch.autograd.grad((c * losses).sum(), step.tapped, retain_graph=batch.retain_graph)
            writes += list(zip(step.tapped, grads))
        return Update(writes=writes, weights=weights, norm=gramian_norm(weights, gramian))


def _keeper(p: torch.Tensor, m: int, blocks: dict[int, torch.Tensor]) -> Callable[[torch.Tensor, int], None]:
    """A consumer keeping p's m x |p| block, row by row from the loop (zeros where a task does not reach p)."""
    buf = torch.zeros(m, p.numel(), dtype=torch.promote_types(p.dtype, torch.float32), device=p.device)
    blocks[id(p)] = buf

    def keep(block: torch.Tensor, start: int) -> None:
        buf[start : start + block.shape[0]] = block.reshape(block.shape[0], -1)

    return keep

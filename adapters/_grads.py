"""Per-task gradients from one autograd graph, with as few backward passes as torch allows.

The batched engine runs a single backward pass for all m tasks: it vmaps
``torch.autograd.grad`` over the rows of the identity (a batched
vector-Jacobian product, what ``is_grads_batched=True`` does, but through
``torch.func.vmap`` so that custom autograd functions see the batch). A
tensor hook on every tapped leaf hands that leaf's m-row gradient block to a
consumer the moment autograd produces it and returns a zero-stride
placeholder, so a consumer that folds the block into a Gramian and drops it
keeps only one block alive: the full m x n matrix never exists. The loop
engine (one backward per task) is the fallback for models whose backward
cannot be vmapped.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import torch

Consumer = Callable[[torch.Tensor], None]
#: attribute marking the dummy leaves of :mod:`._layers`, which the walk does not report as leaves
ANCHOR = "_mtlsolve_anchor"


class _Tap(torch.autograd.Function):
    """Identity on a gradient under vmap that passes the physical (m, ...) block to a consumer.

    Only its ``vmap`` rule is ever used: the rule receives the batched tensor
    with its batch dimension explicit, which is what a consumer needs to form
    cross-task products such as the Gramian.
    """

    @staticmethod
    def forward(grad: torch.Tensor, consume: Consumer) -> torch.Tensor:
        raise RuntimeError("the gradient tap only runs inside the batched engine")

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        return None

    @staticmethod
    def vmap(info, in_dims, grad: torch.Tensor, consume: Consumer):
        bdim = in_dims[0]
        block = grad.movedim(bdim, 0) if bdim is not None else grad.expand(info.batch_size, *grad.shape)
        consume(block)
        return block.new_zeros(()).expand(block.shape), 0


def _tap_hook(grad: torch.Tensor, consume: Consumer) -> torch.Tensor:
    return _Tap.apply(grad, consume)


class Census(NamedTuple):
    """What a walk of the autograd graph found (see :func:`census`)."""

    leaves: dict[int, torch.Tensor]
    uses: dict[int, int]
    custom: list[Any]


def census(roots: Iterable[torch.Tensor], stop: Iterable[torch.Tensor] = ()) -> Census:
    """The leaves that require grad reachable from ``roots``, how many graph edges enter each, and the custom nodes.

    ``leaves`` (anchors excluded) and ``uses`` are keyed by ``id(tensor)``; ``custom`` holds the
    nodes of ``torch.autograd.Function`` calls (their ``ctx``). The walk does
    not descend below the tensors in ``stop`` (the shared features in
    representation mode).
    """
    stop_nodes = {t.grad_fn for t in stop if t.grad_fn is not None}
    stop_leaves = {id(t) for t in stop if t.grad_fn is None}
    stack = [r.grad_fn for r in roots]
    seen = set()
    leaves: dict[int, torch.Tensor] = {}
    uses: dict[int, int] = {}
    custom: list[Any] = []
    while stack:
        node = stack.pop()
        if node is None or node in seen or node in stop_nodes:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if variable is not None and id(variable) not in stop_leaves and not hasattr(variable, ANCHOR):
            leaves[id(variable)] = variable
        if isinstance(node, torch.autograd.function.BackwardCFunction):
            custom.append(node)
        for child, _ in node.next_functions:
            if child is None:
                continue
            leaf = getattr(child, "variable", None)
            if leaf is not None:
                uses[id(leaf)] = uses.get(id(leaf), 0) + 1
            stack.append(child)
    return Census(leaves, uses, custom)


def reachable_leaves(roots: Iterable[torch.Tensor], stop: Iterable[torch.Tensor] = ()) -> dict[int, torch.Tensor]:
    """The leaf tensors that require grad and are reachable from ``roots`` (keys: ``id(tensor)``)."""
    return census(roots, stop).leaves


def batched(
    losses: torch.Tensor,
    direct: Sequence[torch.Tensor],
    tapped: Sequence[torch.Tensor],
    consumers: Sequence[Consumer],
    *,
    retain_graph: bool,
) -> list[torch.Tensor]:
    """One batched backward: returns the (m, ...) gradients of ``direct``; ``tapped`` blocks go to ``consumers``.

    Every tensor in ``direct`` and ``tapped`` must be reachable from ``losses``.
    """
    m = losses.shape[0]
    eye = torch.eye(m, dtype=losses.dtype, device=losses.device)
    inputs = list(direct) + list(tapped)
    handles = [t.register_hook(functools.partial(_tap_hook, consume=c)) for t, c in zip(tapped, consumers)]
    try:
        out = torch.func.vmap(lambda v: torch.autograd.grad(losses, inputs, v, retain_graph=retain_graph))(eye)
    finally:
        for h in handles:
            h.remove()
    return list(out[: len(direct)])


def task_outputs(losses: torch.Tensor) -> list[Any]:
    """What to differentiate for task i alone: the i-th input edge of ``torch.stack`` when ``losses`` is one.

    Differentiating ``losses[i]`` sends zeros back through every other task's
    loss (stack's backward fills all of its inputs); the edge does not.
    """
    node = losses.grad_fn
    if node is not None and type(node).__name__ == "StackBackward0":
        edges = node.next_functions
        if len(edges) == losses.shape[0] and all(fn is not None for fn, _ in edges):
            return [torch.autograd.graph.GradientEdge(fn, nr) for fn, nr in edges]
    return [losses[i] for i in range(losses.shape[0])]


def loop(
    losses: torch.Tensor,
    direct: Sequence[torch.Tensor],
    tapped: Sequence[torch.Tensor],
    consumers: Sequence[Consumer],
    *,
    retain_graph: bool,
) -> list[torch.Tensor]:
    """The same as :func:`batched` with one backward per task (the rows are stacked for the consumers)."""
    m = losses.shape[0]
    inputs = list(direct) + list(tapped)
    rows: list[list[torch.Tensor]] = [[] for _ in inputs]
    one = torch.ones((), dtype=losses.dtype, device=losses.device)
    for i, out in enumerate(task_outputs(losses)):
        keep = retain_graph or i < m - 1
        grads = torch.autograd.grad(out, inputs, one, retain_graph=keep, allow_unused=True)
        for slot, (g, t) in enumerate(zip(grads, inputs)):
            rows[slot].append(torch.zeros_like(t) if g is None else g)
    for slot, consume in enumerate(consumers, start=len(direct)):
        block, rows[slot] = torch.stack(rows[slot]), []
        consume(block)
    return [torch.stack(r) for r in rows[: len(direct)]]

"""The Gramian path without per-task gradients of ``nn.Linear`` layers, and its per-task backward driver.

A linear layer y = x Wᵀ + b applied to R rows x_r (the batch and any leading
dimensions flattened) gives task i the gradient g_i = δ_iᵀ [X 1], where
δ_i = ∂L_i/∂y (R x d_out) and X is R x d_in. Hence, with M = X Xᵀ + 1 1ᵀ (R x R),

    ⟨g_i, g_j⟩ = Σ_{r,s} M_rs δ_i[r]·δ_j[s]   and   Σ_i w_i g_i = (Σ_i w_i δ_i)ᵀ [X 1].

When R ≤ d_in + 1 this costs R² d_in + m R² d_out + m² R d_out flops and
m R d_out floats of memory, against m R d_out d_in flops to form the g_i and
m² d_out d_in more for their Gramian. The factors also give the update
directly, so no second backward is needed.

How δ_i is obtained: a forward hook puts an identity node (:class:`_Anchor`)
on the output of every such layer of the shared module. The per-task backward
asks for the gradient of one dummy leaf fed to every anchor, so autograd
propagates through the layers (computing their input gradients) but never
computes their weight gradients; each anchor hands its δ block to a sink.
Every other shared parameter (convolutions, norms, a Linear that sees more
than d_in + 1 rows or whose weight is also used outside its own calls) is
tapped as a leaf, as in :mod:`mtlsolve.adapters._grads`.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from mtlsolve.adapters import _grads


class _Call:
    """One anchored call of a Linear layer: its input and the input's version at the time."""

    __slots__ = ("owner", "module", "x", "version")

    def __init__(self, owner: LinearFactors, module: nn.Linear, x: torch.Tensor) -> None:
        self.owner, self.module, self.x, self.version = owner, module, x.detach(), x._version


class _Anchor(torch.autograd.Function):
    """Identity on a layer output whose backward hands ∂L/∂y to the owner's sink (when one is set)."""

    @staticmethod
    def forward(ctx, out: torch.Tensor, anchor: torch.Tensor, call: _Call) -> torch.Tensor:
        ctx.call = call
        return out.detach()  # not a view: in-place ops after the layer (ReLU(inplace=True)) stay legal

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        sink = ctx.call.owner.sink
        if sink is not None:
            sink(ctx.call, grad)
        return grad, None, None


class LinearFactors:
    """Forward hooks on a shared module's ``nn.Linear`` and convolution layers.

    Linear outputs get an :class:`_Anchor` (when the call has at most
    d_in + 1 rows); both kinds add their output size to :attr:`activations`,
    the size of one task's activation gradients used to pick the engine.
    """

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self.anchor = torch.zeros((), requires_grad=True)
        setattr(self.anchor, _grads.ANCHOR, True)
        self.sink: Callable[[_Call, torch.Tensor], None] | None = None
        self.activations = 0
        self._handles = []
        for mod in modules:
            if isinstance(mod, nn.Linear):
                self._handles.append(mod.register_forward_hook(self._on_linear))
            elif isinstance(mod, nn.modules.conv._ConvNd):
                self._handles.append(mod.register_forward_hook(self._on_conv))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _on_conv(self, module: nn.Module, args: tuple, out: Any) -> None:
        if torch.is_grad_enabled() and isinstance(out, torch.Tensor) and out.requires_grad:
            self.activations += out.numel()

    def _on_linear(self, module: nn.Linear, args: tuple, out: Any) -> Any:
        if not (torch.is_grad_enabled() and isinstance(out, torch.Tensor) and out.requires_grad):
            return None
        self.activations += out.numel()
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or not module.weight.requires_grad:
            return None
        if torch.compiler.is_compiling() or torch._C._functorch.is_functorch_wrapped_tensor(out):
            return None  # inside torch.compile or a torch.func transform: the layer stays a plain leaf
        if x.numel() > (x.shape[-1] + 1) * x.shape[-1]:
            return None  # more rows R than d_in + 1: forming the per-task gradients is cheaper
        return _Anchor.apply(out, self.anchor, _Call(self, module, x))


def install(adapter: Any, shared: Any) -> LinearFactors:
    """Hooks on the Linear/conv submodules of the modules in ``shared``, removed when ``adapter`` is collected."""
    items = [shared] if isinstance(shared, (nn.Module, torch.Tensor)) else list(shared)
    modules = [sub for item in items if isinstance(item, nn.Module) for sub in item.modules()]
    factors = LinearFactors(list(dict.fromkeys(modules)))
    weakref.finalize(adapter, factors.remove)
    return factors


def _params(module: nn.Linear) -> list[torch.Tensor]:
    return [module.weight] + ([module.bias] if module.bias is not None else [])


class Layer:
    """One factored Linear layer in one step: its calls, their rows, and the δ buffer (m x R x d_out, zeroed by its user)."""

    def __init__(self, module: nn.Linear, calls: list[_Call], m: int, dtype: torch.dtype) -> None:
        self.module, self.calls = module, calls
        self.params = _params(module)
        self.offsets: dict[int, int] = {}
        rows = 0
        for call in calls:
            self.offsets[id(call)] = rows
            rows += call.x.numel() // call.x.shape[-1]
        self.delta = torch.empty(m, rows, module.out_features, dtype=dtype, device=module.weight.device)
        self._x: torch.Tensor | None = None

    def store(self, call: _Call, block: torch.Tensor, start: int) -> None:
        off, c = self.offsets[id(call)], block.shape[0]
        rows = block.numel() // (c * self.module.out_features)
        self.delta[start : start + c, off : off + rows] = block.reshape(c, rows, -1)

    def inputs(self) -> torch.Tensor:
        """X: the layer's input rows of every call, in the δ buffer's row order and dtype."""
        if self._x is None:
            xs = [call.x.reshape(-1, call.x.shape[-1]) for call in self.calls]
            self._x = (xs[0] if len(xs) == 1 else torch.cat(xs)).to(self.delta.dtype)
        return self._x

    def gramian(self) -> torch.Tensor:
        """Σ_{r,s} M_rs δ_i[r]·δ_j[s] with M = X Xᵀ (+ 1 1ᵀ for the bias)."""
        X = self.inputs()
        M = X @ X.T
        if self.module.bias is not None:
            M += 1.0
        D = self.delta
        m = D.shape[0]
        return D.reshape(m, -1) @ torch.matmul(M, D).reshape(m, -1).T

    def update(self, w: torch.Tensor) -> list[torch.Tensor]:
        """The layer's part of Σ_i w_i g_i: (Σ_i w_i δ_i)ᵀ X for the weight, its row sum for the bias."""
        D = self.delta
        Dw = (w.to(D.dtype) @ D.reshape(D.shape[0], -1)).reshape(D.shape[1:])
        out = [Dw.T @ self.inputs()]
        if self.module.bias is not None:
            out.append(Dw.sum(0))
        return out


def plan(factors: LinearFactors, census: _grads.Census, shared_ids: set[int], m: int) -> list[Layer]:
    """The layers whose every use in this graph went through an anchored call, with unchanged inputs."""
    calls: dict[nn.Module, list[_Call]] = {}
    for node in census.custom:
        call = getattr(node, "call", None)
        if isinstance(call, _Call) and call.owner is factors:
            calls.setdefault(call.module, []).append(call)
    layers = []
    for module, found in calls.items():
        params = _params(module)
        if all(id(p) in shared_ids and census.uses.get(id(p)) == len(found) for p in params) and all(
            c.x._version == c.version for c in found
        ):
            dtype = torch.promote_types(module.weight.dtype, torch.float32)
            layers.append(Layer(module, found, m, dtype))
    return layers


class _Router:
    """Hands each δ block and tapped-leaf block of a per-task backward to its consumer, with the index of its first task.

    In a batched pass a block reaches its consumer through the vmap rule of
    :class:`~mtlsolve.adapters._grads._Tap` (all m tasks, ``start`` 0); in
    the loop each backward delivers task ``start``'s row at once.
    """

    def __init__(self, layers: Sequence[Layer], batched: bool) -> None:
        self.by_call = {id(call): layer for layer in layers for call in layer.calls}
        self.batched = batched
        self.start = 0

    def deliver(self, grad: torch.Tensor, consume: Callable[[torch.Tensor], None]) -> torch.Tensor | None:
        if self.batched:
            return _grads._Tap.apply(grad, consume)
        consume(grad.unsqueeze(0))
        return None

    def to_layer(self, call: _Call, grad: torch.Tensor) -> None:
        layer = self.by_call.get(id(call))
        if layer is not None:
            self.deliver(grad, lambda block: layer.store(call, block, self.start))

    def to_leaf(self, consume: Callable[[torch.Tensor, int], None]) -> Callable[[torch.Tensor], None]:
        return lambda block: consume(block, self.start)


def per_task(
    losses: torch.Tensor,
    scale: float,
    factors: LinearFactors,
    layers: Sequence[Layer],
    tapped: Sequence[torch.Tensor],
    consumers: Sequence[Callable[[torch.Tensor, int], None]],
    heads: Sequence[torch.Tensor],
    *,
    batched: bool,
    retain_graph: bool,
) -> list[torch.Tensor | None]:
    """Per-task backward passes of ``scale`` x losses: one vmapped pass, or one plain pass per task.

    The δ blocks of ``layers`` go to their buffers and each ``tapped`` leaf's
    (c, ...) gradient block (c = m batched, 1 in the loop) to its consumer,
    with the index of its first task. Returns the gradient of
    ``scale`` x Σ_i L_i for each of ``heads`` (None where it does not reach):
    the loop takes it from the per-task passes; a batched pass would give
    each head m rows, most of them zero, so the heads get one plain backward.
    """
    inputs = [factors.anchor, *tapped]
    router = _Router(layers, batched)
    handles = [
        t.register_hook(functools.partial(router.deliver, consume=router.to_leaf(c))) for t, c in zip(tapped, consumers)
    ]
    factors.sink = router.to_layer
    try:
        if batched:
            return _batched_pass(losses, scale, inputs, heads, retain_graph)
        return _looped_passes(losses, scale, inputs, heads, router, retain_graph)
    finally:
        factors.sink = None
        factors.activations = 0
        for h in handles:
            h.remove()


def _batched_pass(
    losses: torch.Tensor, scale: float, inputs: list[torch.Tensor], heads: Sequence[torch.Tensor], retain_graph: bool
) -> list[torch.Tensor | None]:
    """One plain backward for the heads, then one vmapped backward over the m tasks for ``inputs``."""
    out = []
    if heads:
        out = list(torch.autograd.grad(losses.sum() * scale, heads, retain_graph=True, allow_unused=True))
    rows = torch.eye(losses.shape[0], dtype=losses.dtype, device=losses.device) * scale
    torch.func.vmap(
        lambda v: torch.autograd.grad(losses, inputs, v, retain_graph=retain_graph, materialize_grads=True)
    )(rows)
    return out


def _looped_passes(
    losses: torch.Tensor,
    scale: float,
    inputs: list[torch.Tensor],
    heads: Sequence[torch.Tensor],
    router: _Router,
    retain_graph: bool,
) -> list[torch.Tensor | None]:
    """One backward per task for ``inputs`` and the heads; the heads' gradients summed over the tasks."""
    m = losses.shape[0]
    out: list[torch.Tensor | None] = [None] * len(heads)
    seed = torch.full((), scale, dtype=losses.dtype, device=losses.device)
    for start, task in enumerate(_grads.task_outputs(losses)):
        router.start = start
        keep = retain_graph or start + 1 < m
        grads = torch.autograd.grad(task, [*inputs, *heads], seed, retain_graph=keep, allow_unused=True)
        for j, g in enumerate(grads[len(inputs) :]):
            if g is not None:
                out[j] = g if out[j] is None else out[j] + g
    return out

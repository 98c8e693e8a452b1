"""Low-rank adapters on existing Linear/Conv weights through ``torch.nn.utils.parametrize``.

``inject`` adds W ← W + s·(B A).view_as(W) to each layer's ``weight`` (A: r x fan_in, B: out x r,
s = alpha / r; for a convolution fan_in = in/groups·k_h·k_w, which gives the same merged weight as
peft's conv LoRA), ``merge`` writes W + s·BA back into the original parameter (same tensor object,
so optimisers and their state keep pointing at it) and removes the adapter, and ``discard`` removes
it leaving W untouched; both keep the layer's parameter order. A is initialised as peft does
(kaiming-uniform with a = √5, i.e. U(−1/√fan_in, 1/√fan_in)) and B with zeros, so the adapted model
starts equal to the original.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

#: layer types that take an adapter on their ``weight``
LAYERS = (nn.Linear, nn.modules.conv._ConvNd)


class LoRA(nn.Module):
    """The parametrization W ↦ W + scale·(B A).view_as(W); ``enabled = False`` makes it the identity."""

    def __init__(self, weight: torch.Tensor, rank: int, scale: float, generator: torch.Generator) -> None:
        super().__init__()
        fan_in = weight[0].numel()
        bound = 1.0 / math.sqrt(fan_in)
        a = torch.rand(rank, fan_in, generator=generator, device=weight.device, dtype=weight.dtype)
        self.A = nn.Parameter((2.0 * a - 1.0) * bound)
        self.B = nn.Parameter(torch.zeros(weight.shape[0], rank, device=weight.device, dtype=weight.dtype))
        self.scale = float(scale)
        self.enabled = True

    def delta(self) -> torch.Tensor:
        return (self.B @ self.A) * self.scale

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return weight
        return weight + self.delta().view_as(weight)


def inject(layers: Sequence[nn.Module], rank: int, scale: float, generator: torch.Generator) -> list[LoRA]:
    """Attach one fresh adapter to the ``weight`` of every layer; returns the adapters in order."""
    adapters = []
    try:
        for layer in layers:
            if not isinstance(layer, LAYERS):
                raise TypeError(f"LoRA targets must be Linear or Conv layers, got {type(layer).__name__}")
            if parametrize.is_parametrized(layer, "weight"):
                raise ValueError(f"{type(layer).__name__}.weight already carries a parametrization")
            adapter = LoRA(layer.weight, rank, scale, generator)
            adapter.order = list(layer._parameters)
            parametrize.register_parametrization(layer, "weight", adapter)
            adapters.append(adapter)
    except BaseException:
        discard(layers[: len(adapters)])
        raise
    return adapters


def merge(layers: Sequence[nn.Module]) -> None:
    """Fold every adapter into its layer's weight (in place, same Parameter object) and remove it."""
    _remove(layers, leave_parametrized=True)


def discard(layers: Sequence[nn.Module]) -> None:
    """Remove every adapter and leave the original weights as they were."""
    _remove(layers, leave_parametrized=False)


def _remove(layers: Sequence[nn.Module], leave_parametrized: bool) -> None:
    # removing a parametrization re-registers ``weight`` after the other parameters; put it back in its
    # place so that ``parameters()`` and ``named_parameters()`` keep their order (optimisers built later
    # and checkpoints matched by position see the same model)
    for layer in layers:
        if not parametrize.is_parametrized(layer, "weight"):
            continue
        order = getattr(layer.parametrizations.weight[0], "order", None) or [*layer._parameters, "weight"]
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=leave_parametrized)
        params = dict(layer._parameters)
        layer._parameters.clear()
        for name in order:
            if name in params:
                layer._parameters[name] = params.pop(name)
        layer._parameters.update(params)


@contextlib.contextmanager
def disabled(adapters: Sequence[LoRA]) -> Iterator[None]:
    """Evaluate the model as if no adapter were attached."""
    for a in adapters:
        a.enabled = False
    try:
        yield
    finally:
        for a in adapters:
            a.enabled = True

"""A counter of torch.distributed collectives: how many bytes each collective moves in a step.

>>> with count() as counter:                                    # doctest: +SKIP
...     adapter.backward(losses)
>>> counter.totals()                                            # doctest: +SKIP
{'all_reduce': 96}

Inside :func:`count` the collectives of ``torch.distributed`` called through
the module (the adapters' own, and FSDP2's all-gathers and reduce-scatters)
are recorded with the bytes of the buffer this rank contributes: the tensor
of an all-reduce or broadcast, this rank's input of an all-gather, and the
whole input of a reduce-scatter. :meth:`Call.wire` is what a ring
algorithm sends per rank for it: 2(R−1)/R·B for an all-reduce, (R−1)/R·B for
a reduce-scatter, (R−1)·B for an all-gather. DTensor's functional collectives
(tensor parallelism's redistributions) are not seen.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import torch
import torch.distributed as dist

#: the collectives counted, with the argument holding what this rank contributes
_INPUTS: dict[str, str] = {
    "all_reduce": "tensor",
    "broadcast": "tensor",
    "all_gather": "tensor",
    "all_gather_into_tensor": "input_tensor",
    "all_gather_single": "input_tensor",
    "reduce_scatter": "input_list",
    "reduce_scatter_tensor": "input",
    "reduce_scatter_single": "input",
    "all_to_all_single": "input",
}
#: the share of B a ring algorithm sends per rank, as a function of the world size R
_RING: dict[str, Callable[[int], float]] = {
    "all_reduce": lambda R: 2 * (R - 1) / R,
    "reduce_scatter": lambda R: (R - 1) / R,
    "all_gather": lambda R: R - 1,
    "all_to_all": lambda R: (R - 1) / R,
    "broadcast": lambda R: 1.0,
}


@attrs.frozen
class Call:
    """One collective: its name, the bytes this rank contributed, the group's size."""

    name: str
    bytes: int
    world: int

    @property
    def kind(self) -> str:
        """all_reduce, all_gather, reduce_scatter, all_to_all or broadcast."""
        return next(k for k in _RING if self.name.startswith(k))

    def wire(self) -> float:
        """The bytes a ring algorithm sends per rank for this call."""
        return _RING[self.kind](self.world) * self.bytes


@attrs.define
class Counter:
    """The collectives recorded inside :func:`count`, in call order."""

    calls: list[Call] = attrs.field(factory=list)

    def totals(self, by: str = "name") -> dict[str, int]:
        """Bytes contributed, summed by collective ``name`` (or by ``kind``)."""
        out: dict[str, int] = {}
        for call in self.calls:
            key = getattr(call, by)
            out[key] = out.get(key, 0) + call.bytes
        return out

    def wire(self) -> float:
        """The bytes a ring algorithm sends per rank for all the calls."""
        return sum(call.wire() for call in self.calls)


def _nbytes(value: torch.Tensor | list[torch.Tensor]) -> int:
    tensors = value if isinstance(value, (list, tuple)) else [value]
    return sum(t.numel() * t.element_size() for t in tensors)


@contextlib.contextmanager
def count() -> Iterator[Counter]:
    """Record the torch.distributed collectives called inside the block (see the module docstring)."""
    counter = Counter()
    originals = {name: getattr(dist, name) for name in _INPUTS if hasattr(dist, name)}

    def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def counted(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs).arguments
            size = dist.get_world_size(bound.get("group"))
            counter.calls.append(Call(name, _nbytes(bound[_INPUTS[name]]), size))
            return fn(*args, **kwargs)

        return counted

    for name, fn in originals.items():
        setattr(dist, name, wrap(name, fn))
    try:
        yield counter
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)

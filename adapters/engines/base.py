"""The interface every engine implements, and what it hands back to the pipeline.

An engine turns one (micro-)batch of m task losses into a :class:`Staged`
step: the gradients to add to ``.grad``, computed and checked but not
written. :class:`~mtlsolve.adapters.MultiTaskBackward` (the pipeline) then
commits them, and owns everything engines share: GradScaler scaling and
skipping, gradient accumulation, cross-rank reduction, clipping, diagnostics,
and putting everything back when a step raises. Engines never write
``.grad``.

Engines that read per-task gradients derive from :class:`GradientEngine`:
they state the solver's input (:meth:`GradientEngine.gradients`, a
:class:`Gradients` holding a :class:`~mtlsolve.system.GradientSystem`), the
pipeline checks it and runs the solver, and the engine turns the solver's
result into gradients (:meth:`GradientEngine.update`).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Protocol

import attrs
import numpy as np
import torch

from mtlsolve.solver import Result, Solver
from mtlsolve.system import GradientSystem

Writes = list[tuple[torch.Tensor, torch.Tensor]]


class Pipeline(Protocol):
    """What engines read from :class:`~mtlsolve.adapters.MultiTaskBackward`."""

    solver: Solver
    shared: list[torch.Tensor]
    n: int
    path: str
    grads: str
    accumulation_steps: int
    matrix_dtype: torch.dtype | None
    gather_shards: bool
    scaler: Any
    _reducer: Any
    _shared_ids: set[int]
    _tapped: list[torch.Tensor]
    _layout: list[tuple[int, int]]
    _width: int
    _matrix: torch.Tensor | None
    _losses: torch.Tensor | None
    _batched: bool | None

    @property
    def _scaling(self) -> bool: ...

    @property
    def _scale(self) -> float: ...

    def _add_losses(self, losses: torch.Tensor) -> None: ...

    def _heads(self, reach: Mapping[int, torch.Tensor]) -> list[torch.Tensor]: ...

    def _model_params(self, losses: torch.Tensor) -> list[torch.Tensor]: ...

    def _roundoff(self, n: int, dtype: torch.dtype | None = None) -> float: ...

    def _per_task(self, losses, direct, tapped, consumers, *, retain_graph: bool, reset: Callable[[], None]): ...

    def _give_up_batching(self, exc: Exception) -> None: ...

    def _skip_or_raise(self, what: str) -> None: ...

    def _finite(self, tensors: Sequence[torch.Tensor]) -> bool: ...

    def _gramian_or_skip(self, system: GradientSystem) -> np.ndarray | None: ...


@attrs.define(kw_only=True, eq=False)
class Batch:
    """One call of ``backward``: the (stacked) loss vector, the features in representation mode, and the call's flags."""

    losses: torch.Tensor
    features: torch.Tensor | None = None
    last: bool = True
    retain_graph: bool = False


@attrs.define(kw_only=True, eq=False)
class Staged:
    """A computed step, not yet written.

    ``writes`` are added to ``.grad`` after ``writes`` and ``check`` are found
    finite; ``reduce`` are the parameters whose ``.grad`` is then averaged
    across ranks; ``matrix`` is a micro-batch's share of the accumulated
    per-task gradients. ``poison`` (not None) marks a step a GradScaler skips:
    nothing is written and these parameters get NaN. The other fields feed
    :class:`~mtlsolve.adapters.StepDiagnostics` on the last micro-batch; an
    ``update_norm`` given as a callable is read after the writes are
    committed (and averaged).
    """

    writes: Writes = attrs.field(factory=list)
    reduce: list[torch.Tensor] = attrs.field(factory=list)
    check: list[torch.Tensor] = attrs.field(factory=list)
    matrix: torch.Tensor | None = None
    poison: list[torch.Tensor] | None = None
    losses: np.ndarray | None = None
    weights: np.ndarray | None = None
    gramian: np.ndarray | None = None
    update_norm: float | Callable[[], float] | None = None
    engine: str | None = None
    solver: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.define(kw_only=True, eq=False)
class Gradients:
    """What a :class:`GradientEngine` found: the solver's system (None between micro-batches) and its own context.

    ``writes`` (task-specific parameters' gradients), ``check``, ``matrix``
    and ``poison`` are as in :class:`Staged`; ``losses`` the losses the
    solver sees; ``engine`` how the per-task gradients were taken
    ("batched" or "loop"); ``context`` whatever :meth:`GradientEngine.update`
    needs to write the update.
    """

    system: GradientSystem | None
    writes: Writes = attrs.field(factory=list)
    check: list[torch.Tensor] = attrs.field(factory=list)
    matrix: torch.Tensor | None = None
    poison: list[torch.Tensor] = attrs.field(factory=list)
    losses: np.ndarray | None = None
    engine: str | None = None
    context: Any = None


@attrs.define(kw_only=True, eq=False)
class Update:
    """The solver's combination as gradients: the writes, the parameters to average across ranks, w and ‖d‖."""

    writes: Writes
    reduce: list[torch.Tensor] = attrs.field(factory=list)
    weights: np.ndarray | None = None
    norm: float | Callable[[], float] | None = None


class Engine(abc.ABC):
    """One way to get from m task losses to a :class:`Staged` step.

    ``fits`` says whether the engine serves an adapter's configuration
    (:func:`~mtlsolve.adapters.engines.choose` takes the first engine that
    does); ``autocast`` whether ``compute`` may run under the caller's
    autocast (the per-task gradient engines turn it off); an engine is built
    once per adapter, from its configuration and the ``shared`` argument as
    the user gave it.
    """

    name: ClassVar[str] = ""
    autocast: ClassVar[bool] = False

    @classmethod
    @abc.abstractmethod
    def fits(cls, pipe: Pipeline) -> bool:
        """Whether this engine serves the adapter's configuration."""

    def __init__(self, pipe: Pipeline, shared: Any) -> None:  # noqa: B027 - optional setup, not abstract
        """Nothing to set up by default."""

    @abc.abstractmethod
    def compute(self, pipe: Pipeline, batch: Batch) -> Staged:
        """One micro-batch's step, computed and not yet written."""


class GradientEngine(Engine):
    """An engine that hands the solver per-task gradients (or their Gramian): the solver runs between its two phases."""

    @abc.abstractmethod
    def gradients(self, pipe: Pipeline, batch: Batch) -> Gradients:
        """What the solver reads: its system, and what the update needs besides."""

    @abc.abstractmethod
    def update(self, pipe: Pipeline, batch: Batch, found: Gradients, result: Result, gramian: np.ndarray) -> Update:
        """The writes of the combined update, from the solver's result."""

    def compute(self, pipe: Pipeline, batch: Batch) -> Staged:
        found = self.gradients(pipe, batch)
        if found.system is None:  # a micro-batch before the last: nothing to solve yet
            return Staged(writes=found.writes, check=found.check, matrix=found.matrix)
        gramian = pipe._gramian_or_skip(found.system)
        if gramian is None:
            return Staged(poison=found.poison, losses=found.losses, engine=found.engine)
        result = pipe.solver(found.system)
        update = self.update(pipe, batch, found, result, gramian)
        return Staged(
            writes=found.writes + update.writes,
            reduce=update.reduce,
            losses=found.losses,
            weights=update.weights,
            gramian=gramian,
            update_norm=update.norm,
            engine=found.engine,
            solver=dict(result.diagnostics),
        )


def gramian_norm(weights: np.ndarray, gramian: np.ndarray) -> float:
    """‖Gᵀw‖ = √(wᵀKw), clipped at 0 against round-off."""
    return float(np.sqrt(max(weights @ gramian @ weights, 0.0)))

"""The engines of :class:`~mtlsolve.adapters.MultiTaskBackward`: how m task losses become the solver's input and the update.

* :class:`ShardedGramianEngine`: shared parameters that are DTensors (FSDP2, tensor parallelism);
* :class:`LossEngine`: ``path="losses"``, one backward of Σ w_i L_i;
* :class:`RepresentationEngine`: ``grads="representation"``, feature gradients;
* :class:`MatrixEngine`: ``path="matrix"``, and gradient accumulation: G held;
* :class:`GramianEngine`: ``path="gramian"`` on one process, factored Linear layers;
* :class:`ScatteredGramianEngine`: ``path="gramian"`` with ``distributed=ReduceScatter(...)``;
* :class:`FoldedGramianEngine`: ``path="gramian"`` otherwise, blocks folded into K.

:func:`choose` takes the first engine in :data:`ENGINES` whose ``fits``
accepts the adapter's configuration. A new engine is a module with an
:class:`~.base.Engine` subclass and one entry in :data:`ENGINES`, ahead of
the engines it takes work from.
"""

from __future__ import annotations

from mtlsolve.adapters.engines.base import Batch, Engine, GradientEngine, Gradients, Pipeline, Staged, Update
from mtlsolve.adapters.engines.folded import FoldedGramianEngine
from mtlsolve.adapters.engines.gramian import GramianEngine
from mtlsolve.adapters.engines.loss import LossEngine
from mtlsolve.adapters.engines.matrix import MatrixEngine
from mtlsolve.adapters.engines.representation import RepresentationEngine
from mtlsolve.adapters.engines.scattered import ScatteredGramianEngine
from mtlsolve.adapters.engines.sharded import ShardedGramianEngine

#: the engines in the order :func:`choose` tries them
ENGINES: tuple[type[Engine], ...] = (
    ShardedGramianEngine,
    LossEngine,
    RepresentationEngine,
    MatrixEngine,
    GramianEngine,
    ScatteredGramianEngine,
    FoldedGramianEngine,
)


def choose(pipe: Pipeline, engines: tuple[type[Engine], ...] | None = None) -> type[Engine]:
    """The first of ``engines`` (default: :data:`ENGINES`) that fits the adapter's path, gradients,
    accumulation and distribution."""
    for engine in ENGINES if engines is None else engines:
        if engine.fits(pipe):
            return engine
    raise ValueError(f"no engine serves path={pipe.path!r} with grads={pipe.grads!r}")


__all__ = [
    "ENGINES",
    "Batch",
    "Engine",
    "FoldedGramianEngine",
    "GradientEngine",
    "Gradients",
    "GramianEngine",
    "LossEngine",
    "MatrixEngine",
    "Pipeline",
    "RepresentationEngine",
    "ScatteredGramianEngine",
    "ShardedGramianEngine",
    "Staged",
    "Update",
    "choose",
]

"""The solver protocol: what every solver declares, takes and returns."""

from __future__ import annotations

import copy
import enum
from types import MappingProxyType
from typing import Any, ClassVar, Mapping

import attrs
import numpy as np

from mtlsolve._array import combine, is_torch, like
from mtlsolve.errors import InvalidSystemError, NonFiniteError
from mtlsolve.system import GradientSystem, as_system


class Need(str, enum.Enum):
    """What a solver reads from the gradient system."""

    LOSSES = "losses"
    GRAMIAN = "gramian"
    MATRIX = "matrix"


#: The mathematical properties a solver may claim; the conformance suite
#: (tests/test_conformance.py) checks exactly the ones each solver claims.
PROPERTIES: Mapping[str, str] = MappingProxyType(
    {
        "permutation_equivariant": "permuting the tasks permutes the weights and leaves d unchanged",
        "positive_homogeneous": "d(cG) = c·d(G) for every c > 0",
        "scale_invariant": "d(cG) = d(G) for every c > 0",
        "non_conflicting": "d·g_i ≥ 0 for every task i",
        "simplex_weights": "the weights are non-negative and sum to 1",
        "linear": "d is a fixed linear combination of the rows of G",
    }
)

FAMILIES: Mapping[str, str] = MappingProxyType(
    {
        "LW": "loss weighting",
        "GW": "gradient weighting on the Gramian",
        "FM": "direction needing the full matrix",
        "RV": "representation-level variant",
        "TL": "training-loop strategy",
        "PA": "Pareto",
    }
)


@attrs.frozen(kw_only=True)
class Result:
    """What a solver returns.

    ``direction`` is the combined update d (gradient-like: the optimiser steps
    along −d) in G's array type, dtype and device, or None when the system had
    no G; ``weights`` the task weights w with d = Gᵀw, or None for solvers
    that are not weightings; ``diagnostics`` a read-only mapping of cheap
    figures (iterations, residuals, warnings).
    """

    direction: Any = None
    weights: Any = None
    diagnostics: Mapping[str, Any] = attrs.field(factory=dict, converter=lambda d: MappingProxyType(dict(d)))


@attrs.define(kw_only=True, eq=False)
class Solver:
    """Base class of every solver.

    Subclasses are attrs classes whose fields are the hyperparameters (with
    the paper's defaults and validators) and set the class attributes below.
    They implement :meth:`solve`. State that lives across steps goes in
    ``self._state`` (a dict), which :meth:`state_dict` and
    :meth:`load_state_dict` round-trip.
    """

    #: canonical name, lower case with underscores
    name: ClassVar[str] = ""
    #: other accepted names, each with the keyword arguments it presets
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    #: a key of FAMILIES
    family: ClassVar[str] = ""
    #: what the solver reads from the system
    needs: ClassVar[frozenset[Need]] = frozenset()
    #: keys of PROPERTIES this solver guarantees
    properties: ClassVar[frozenset[str]] = frozenset()
    #: True when the output depends on a random generator (seeded by ``seed``)
    randomized: ClassVar[bool] = False
    #: True when the output depends on previous calls
    stateful: ClassVar[bool] = False
    #: the paper, as "Authors — venue year — arXiv id"
    paper: ClassVar[str] = ""
    #: the gradients the method is defined on: "representation" for the representation-level
    #: variants (MGDA-UB, Aligned-MTL-UB), which the adapter then feeds feature gradients;
    #: None when any kind will do
    grads: ClassVar[str | None] = None
    #: independent mini-batches one step reads (MoDo, SDMGrad: 3). A solver with b > 1 reads a
    #: system whose rows are the m task gradients of batch 1, then of batch 2, ..., batch b
    #: (b·m rows, losses likewise); its Gramian holds every cross-batch block G_s G_tᵀ, and
    #: its weights apply to the stacked rows, so d = Gᵀw still holds
    batches: ClassVar[int] = 1

    _state: dict = attrs.field(init=False, factory=dict, repr=False)

    def __call__(
        self,
        matrix: Any = None,
        *,
        gramian: Any = None,
        losses: Any = None,
        kind: str = "shared",
        **extras: Any,
    ) -> Result:
        """Solve one step: ``solver(G)``, ``solver(gramian=K)``, ``solver(losses=L)`` or ``solver(system)``."""
        system = as_system(matrix, gramian=gramian, losses=losses, kind=kind, **extras)
        self.check(system)
        return self.solve(system)

    def requirements(self) -> frozenset[Need]:
        """What this instance reads (may add to the class's ``needs``, e.g. losses for a loss transform)."""
        return self.needs

    def check(self, system: GradientSystem) -> None:
        """Raise a clear error if ``system`` lacks what this solver reads."""
        if system.m % self.batches:
            raise InvalidSystemError(
                f"{self.name} reads {self.batches} batches of task gradients stacked batch after batch; "
                f"got {system.m} rows, not a multiple of {self.batches}"
            )
        needs = self.requirements()
        if Need.MATRIX in needs:
            system.check_matrix()
        elif Need.GRAMIAN in needs and not system.has_gramian:
            raise InvalidSystemError(f"{self.name} needs the task gradients or their Gramian")
        if Need.LOSSES in needs and not system.has_losses:
            raise InvalidSystemError(f"{self.name} needs the task losses: call it with losses=...")

    def solve(self, system: GradientSystem) -> Result:
        """Combine one step's system into a :class:`Result`."""
        raise NotImplementedError(f"{type(self).__name__} must implement solve()")

    # ------------------------------------------------------- training hooks
    # A training-loop adapter drives every solver through these four methods,
    # so no adapter needs a per-method special case.

    def parameters(self) -> list[Any]:
        """Learnable torch parameters the solver owns (e.g. UW's log-variances).

        The user adds them to an optimiser (or the solver steps them itself);
        empty for most solvers.
        """
        return []

    def objective(self, losses: Any) -> Any:
        """The scalar a loss-only step back-propagates: Σ w_i L_i with w detached.

        Solvers with learnable parameters override it so that one backward
        also reaches those parameters.
        """
        weights = self(losses=losses.detach()).weights
        return (weights * losses).sum()

    def after_step(self, losses: Any) -> None:
        """Called once after ``optimizer.step()`` with the new losses on the same batch.

        Only for solvers whose class sets ``post_step = True`` (e.g. FAMO).
        """

    def end_epoch(self) -> None:
        """Called at each epoch end by the training loop (DWA, STCH use it)."""

    #: True when the adapter must call :meth:`after_step` after every optimiser step
    post_step: ClassVar[bool] = False
    #: False when :meth:`after_step` ignores its losses (GradNorm's renormalisation): the adapter
    #: then calls ``after_step(None)`` and needs no closure
    post_step_losses: ClassVar[bool] = True

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """A deep copy of the state carried across steps (empty for stateless solvers)."""
        return copy.deepcopy(self._state)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self._state = copy.deepcopy(dict(state))

    def reset(self) -> None:
        """Forget all state, as a freshly constructed solver."""
        self._state = {}

    def _state_for(self, m: int) -> dict[str, Any]:
        """The state dict, cleared first when the number of tasks changed."""
        if self._state.get("m") != m:
            self._state = {"m": m}
        return self._state

    def _rng(self, seed: int | None) -> np.random.Generator:
        """This solver's random generator; its state lives in ``_state`` so it checkpoints."""
        state = self._state.get("rng")
        gen = np.random.Generator(np.random.PCG64(seed))
        if state is not None:
            gen.bit_generator.state = state
        return gen

    def _save_rng(self, gen: np.random.Generator) -> None:
        self._state["rng"] = gen.bit_generator.state


@attrs.define(kw_only=True, eq=False)
class Weighting(Solver):
    """A solver whose update is d = Gᵀw: subclasses implement :meth:`weights`."""

    def weights(self, system: GradientSystem) -> tuple[np.ndarray, Mapping[str, Any]]:
        """The weights as a float64 numpy vector of length m, and diagnostics."""
        raise NotImplementedError(f"{type(self).__name__} must implement weights()")

    def solve(self, system: GradientSystem) -> Result:
        w, diagnostics = self.weights(system)
        if not np.isfinite(w).all():
            raise NonFiniteError(f"{self.name} produced non-finite weights {w.tolist()}")
        weights = like(w, system.reference)
        direction = None
        if system.has_matrix:
            direction = combine(weights, system.matrix)
            # NaN and Inf in any row of G propagate into d (0·NaN is NaN), so checking
            # the n-vector d catches them without another pass over G; a checked Gramian
            # of this G settles it without looking at d.
            if not system.direction_surely_finite(w) and not _all_finite(direction):
                raise NonFiniteError("the task-gradient matrix holds NaN or Inf (or wᵀG overflows)")
        return Result(direction=direction, weights=weights, diagnostics=diagnostics)


def _all_finite(x: Any) -> bool:
    """Whether every entry of ``x`` is finite. A sum is non-finite when an entry is NaN or Inf,
    so one cheap reduction settles the common case; only a non-finite sum (a bad entry, or
    finite entries whose sum overflows) pays for the elementwise check."""
    if is_torch(x):
        return bool(x.sum().isfinite()) or bool(x.isfinite().all())
    return bool(np.isfinite(x.sum())) or bool(np.isfinite(x).all())


REDUCTIONS = ("sum", "mean")


@attrs.define(kw_only=True, eq=False)
class GramianWeighting(Weighting):
    """A weighting computed from the Gramian K alone (G is never needed).

    Subclasses implement :meth:`weights_from_gramian` on a float64 numpy K.
    ``loss_transform="log"`` uses ∇log L_i = g_i/L_i in place of g_i: the
    Gramian becomes D K D with D = diag(1/L) and the weights are mapped back
    to the raw gradients (catalogue §1, "Loss transform").
    """

    family: ClassVar[str] = "GW"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.GRAMIAN})

    loss_transform: str | None = attrs.field(default=None, validator=attrs.validators.in_((None, "log")))

    def requirements(self) -> frozenset[Need]:
        extra = {Need.LOSSES} if self.loss_transform == "log" else set()
        return self.needs | extra

    def weights_from_gramian(
        self, gramian: np.ndarray, system: GradientSystem
    ) -> tuple[np.ndarray, Mapping[str, Any]]:
        raise NotImplementedError(f"{type(self).__name__} must implement weights_from_gramian()")

    def weights(self, system: GradientSystem) -> tuple[np.ndarray, Mapping[str, Any]]:
        K = system.gramian64
        if self.loss_transform != "log":
            return self.weights_from_gramian(K, system)
        L = system.losses64
        if (L <= 0).any():
            raise InvalidSystemError(f"loss_transform='log' needs positive losses, got {L.tolist()}")
        scale = 1.0 / L
        w, diagnostics = self.weights_from_gramian(K * np.outer(scale, scale), system)
        return w * scale, diagnostics


def reduce_weights(w: np.ndarray, reduction: str) -> np.ndarray:
    """Mean-scale weights ``w`` scaled by m when ``reduction == "sum"`` (catalogue §1, "Weight scale")."""
    return w * len(w) if reduction == "sum" else w

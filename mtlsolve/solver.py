"""The solver protocol: what every solver declares, takes and returns."""

from __future__ import annotations

import contextlib
import copy
import enum
import threading
import warnings
import weakref
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any, ClassVar

import attrs
import numpy as np

from mtlsolve._array import combine, is_torch, like
from mtlsolve.errors import (
    ConvergenceWarning,
    InvalidConfigError,
    InvalidSystemError,
    NonFiniteError,
    SolverError,
    StateError,
)
from mtlsolve.system import GradientSystem, as_system, dtype_max, restrict_entries, task_mask
from mtlsolve.validation import Requirement, count, flag, one_of


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

#: the gradients a solver may be defined on (:attr:`Capabilities.grads`)
GRADIENTS = ("shared", "representation", "last_shared")
#: what a sharded engine gathers from the parameter shards before a solve, least to most
#: (:attr:`Capabilities.shards`); "coordinate" gathers nothing of G: the solver reads G column
#: by column, so each rank runs it on its own columns
SHARDS = ("none", "losses", "gramian", "coordinate", "matrix")
#: the class attributes a solver declares its training-loop capabilities with
#: (:meth:`Capabilities.declared_by` reads them; ``learnable`` comes from ``parameter_state``)
DECLARATIONS = ("needs", "grads", "batches", "stateful", "randomized", "post_step", "post_step_losses", "shards")


#: the per-task hyperparameters and extras of the built-in solvers, by name, and how a step with
#: missing tasks restricts them (:func:`mtlsolve.system.restrict_entries`; docs/methods.md#missing-tasks)
TASK_FIELDS: Mapping[str, str] = MappingProxyType(
    {
        "preference": "preference",
        "pref": "preference",
        "ideal": "entries",
        "reference": "entries",
        "weights_": "entries",
        "task_weights": "entries",
        "min_losses": "entries",
        "leak": "entries",
        "preferences": "columns",
        "population": "columns",
        "main_task": "index",
    }
)


def shards_for(needs: frozenset[Need]) -> str:
    """The least a sharded engine must gather for a solver reading ``needs``: "matrix" when it
    reads G, else "gramian" when it reads K, else "losses" when it reads the losses, else "none"."""
    for need, shards in ((Need.MATRIX, "matrix"), (Need.GRAMIAN, "gramian"), (Need.LOSSES, "losses")):
        if need in needs:
            return shards
    return "none"


def _frozen_needs(value: Any) -> frozenset:
    if isinstance(value, str) or not hasattr(value, "__iter__"):
        value = [value]  # a lone Need (a str subclass) or a stray value, refused by the validator
    return frozenset(value)


def _valid_needs(_instance: Any, _attribute: attrs.Attribute, value: frozenset) -> None:
    bad = sorted(repr(n) for n in value if not isinstance(n, Need))
    if bad:
        raise InvalidConfigError(f"needs must be mtlsolve.Need values, got {', '.join(bad)}")


def _config_error(requirement: Requirement) -> Requirement:
    """``requirement`` raising InvalidConfigError: a record is built outside the registry, which
    turns the validators' ValueError into one elsewhere."""
    return attrs.evolve(requirement, error=InvalidConfigError)


@attrs.frozen(kw_only=True)
class Capabilities:
    """What a solver declares to the training loop, in one record: what it reads, which
    gradients, how many batches a step, whether it keeps state, draws random numbers or owns
    learnable parameters, its post-step hook, and what a sharded engine gathers for it.

    ``SolverClass.capabilities`` builds it from the class attributes (:data:`DECLARATIONS`,
    documented on :class:`Solver`); ``solver.capabilities`` is the instance's, whose ``needs``
    are :meth:`Solver.requirements` (hyperparameters may add to what the class reads) and which
    a wrapper takes whole from its base (``attrs.evolve(self.base.capabilities, ...)``). The
    adapters read only this record.

    ``shards`` says what an engine that splits the shared parameters into shards G = [G_1 … G_S]
    gathers before the solve: "matrix" the full rows of G; "gramian" only the partial Gramians
    G_s G_sᵀ, summed into K, each shard then applying d_s = G_sᵀw; "losses" only the loss vector
    (the update is one backward of Σ w_i L_i); "none" nothing. "coordinate" is a promise of a
    solver reading G (and not K): coordinate j of its direction depends on column j of G
    alone, deterministically, and its state (if any) is per coordinate too; each rank then runs
    it on its own columns G_s and writes the d_s it returns, with no gather. By default the
    least that ``needs`` allows (:func:`shards_for`); a declaration gathering less than that is
    refused.
    Invalid values raise :class:`~mtlsolve.errors.InvalidConfigError`.
    """

    #: what the solver reads from the system
    needs: frozenset = attrs.field(default=frozenset(), converter=_frozen_needs, validator=_valid_needs)
    #: the gradients the method is defined on (one of GRADIENTS), None when any kind will do
    grads: str | None = attrs.field(default=None, validator=_config_error(one_of(None, *GRADIENTS)))
    #: independent mini-batches one step reads (MoDo, SDMGrad: 3)
    batches: int = attrs.field(default=1, validator=_config_error(count))
    #: the output depends on previous calls
    stateful: bool = attrs.field(default=False, validator=_config_error(flag))
    #: the output depends on a random generator (seeded by ``seed``)
    randomized: bool = attrs.field(default=False, validator=_config_error(flag))
    #: the solver owns learnable torch parameters (:meth:`Solver.parameters`) an optimiser steps
    learnable: bool = attrs.field(default=False, validator=_config_error(flag))
    #: the training loop calls :meth:`Solver.after_step` after every optimiser step
    post_step: bool = attrs.field(default=False, validator=_config_error(flag))
    #: :meth:`Solver.after_step` reads the losses recomputed after the step (else it gets None)
    post_step_losses: bool = attrs.field(default=True, validator=_config_error(flag))
    #: what a sharded engine gathers (one of SHARDS); by default the least ``needs`` allows
    shards: str = attrs.field(
        default=attrs.Factory(lambda self: shards_for(self.needs), takes_self=True),
        validator=_config_error(one_of(*SHARDS)),
    )

    def __attrs_post_init__(self) -> None:
        least = shards_for(self.needs)
        if self.shards == "coordinate":
            if Need.MATRIX not in self.needs or Need.GRAMIAN in self.needs or self.randomized:
                raise InvalidConfigError(
                    "shards='coordinate' declares a deterministic solver that reads G column by column: it "
                    "needs the matrix, not the Gramian, and draws no random numbers"
                )
        elif SHARDS.index(self.shards) < SHARDS.index(least):
            needs = sorted(n.value for n in self.needs)
            raise InvalidConfigError(
                f"shards={self.shards!r} gathers too little for a solver reading {needs}: at least {least!r}"
            )
        if self.batches > 1 and self.grads == "representation":
            raise InvalidConfigError(
                f"a solver reading {self.batches} batches a step cannot be defined on representation "
                "gradients, which come from one batch"
            )

    @classmethod
    def declared_by(cls, solver: Any) -> Capabilities:
        """The record of a solver class's declarations (:data:`DECLARATIONS`, with ``learnable``
        when ``parameter_state`` names a key), or of an instance's, whose ``needs`` are its
        ``requirements()``. ``shards = None``, and on a class a declaration that is a property
        (decided per instance, as GradNorm's ``grads``), take the record's default."""
        values = {name: getattr(solver, name) for name in DECLARATIONS}
        if not isinstance(solver, type):
            values["needs"] = solver.requirements()
        if values["shards"] is None:
            del values["shards"]
        values = {name: value for name, value in values.items() if not isinstance(value, property)}
        return cls(**values, learnable=bool(solver.parameter_state))


class _CapabilitiesOf:
    """``SolverClass.capabilities``: the record of the class's declarations;
    ``solver.capabilities``: the instance's, from :meth:`Solver.instance_capabilities`."""

    def __get__(self, instance: Any, owner: type | None = None) -> Capabilities:
        if instance is None:
            return Capabilities.declared_by(owner)
        return instance.instance_capabilities()


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

    #: the entries a stateful solver keeps in ``_state``, by key: a shape tuple whose entries are
    #: "m" (the tasks, ``_state["m"]``), "n" (the coordinates, ``_state["n"]``), an int or None
    #: (any length), () for a number, or None for an opaque value (a random generator's state).
    #: ``load_state_dict`` accepts exactly these keys with these shapes; "m" is always allowed.
    state_schema: ClassVar[Mapping[str, Any]] = {}
    #: keys of ``_state`` that hold learnable ``torch.nn.Parameter`` objects (see :meth:`parameters`):
    #: saved as plain tensors, loaded into the existing parameter so an optimiser keeps it
    parameter_state: ClassVar[frozenset[str]] = frozenset()
    #: what a sharded engine gathers for the solver (a key of SHARDS); None: the least ``needs``
    #: allows (:func:`shards_for`)
    shards: ClassVar[str | None] = None
    #: the training-loop declarations above, with ``post_step`` and ``post_step_losses``, as one
    #: :class:`Capabilities` record: on the class, the class's; on an instance, the instance's
    #: (:meth:`instance_capabilities`). Adapters read this record, not the attributes.
    capabilities = _CapabilitiesOf()
    #: hyperparameters and extras holding one value per task, by name, with the rule that
    #: restricts them to the present tasks on a step with missing tasks (:meth:`tasks`); a name
    #: the solver does not have, or a value that is not a vector over the m tasks, is left alone
    task_fields: ClassVar[Mapping[str, str]] = TASK_FIELDS
    #: how the per-task entries of ``_state`` (an "m" axis in ``state_schema``) follow a step with
    #: missing tasks (:meth:`tasks`), by key: a number (the value absent tasks take when the step
    #: creates the entry), or a callable giving it from the state before the step; None (an entry
    #: the step creates is dropped, as a warm start); or "simplex" (a distribution over the tasks:
    #: restricted to the present ones renormalised, merged back with their mass kept; a new one
    #: starts uniform). Entries without an "m" axis
    #: (step counters, random generators) take the step's value; learnable parameters are indexed,
    #: so absent entries get a zero gradient. A string instead says why the state cannot follow
    #: missing tasks: the solver then refuses them.
    task_state: ClassVar[Mapping[str, Any] | str] = {}

    _state: dict = attrs.field(init=False, factory=dict, repr=False)
    _restricted: Any = attrs.field(init=False, default=None, repr=False)

    def __call__(
        self,
        matrix: Any = None,
        *positional: Any,
        gramian: Any = None,
        losses: Any = None,
        kind: str = "shared",
        present: Any = None,
        **extras: Any,
    ) -> Result:
        """Solve one step: ``solver(G)``, ``solver(gramian=K)``, ``solver(losses=L)`` or ``solver(system)``.

        ``present`` (a boolean mask over the m tasks) solves the system of the present tasks
        only; the weights have length m, 0 for an absent task (docs/methods.md#missing-tasks).

        The result is guarded: non-finite weights or directions raise NonFiniteError, and a step
        whose certificate failed (``diagnostics["converged"] is False``) issues one
        :class:`~mtlsolve.errors.ConvergenceWarning` per instance and reason. When anything
        raises, the solver's state is what it was before the call.
        """
        if positional:
            raise InvalidSystemError(
                f"{self.name}(...) takes one positional argument (G or a GradientSystem); pass gramian=..., "
                f"losses=... and extras by keyword, not {len(positional)} more positional argument(s)"
            )
        system = as_system(matrix, gramian=gramian, losses=losses, kind=kind, **extras)
        if present is not None:
            return self._solve_present(system, present)
        self.check(system)
        if not (self.stateful or self.randomized):
            return self._guarded(self.solve(system), system)
        with _lock_of(self):
            saved = self._snapshot()
            try:
                return self._guarded(self.solve(system), system)
            except BaseException:
                self._state = saved
                raise

    def _solve_present(self, system: GradientSystem, present: Any) -> Result:
        """``solver(system, present=mask)``: the solve on the present tasks, weights scattered to m."""
        if system.m % self.batches:
            self.check(system)  # the error naming the batches
        mask = task_mask(present, system.m // self.batches)
        if mask.all():
            return self(system)
        with self.tasks(mask, reference=system.reference):
            result = self(system.restrict(mask, batches=self.batches, rules=self.task_fields))
        diagnostics = {**result.diagnostics, "present": np.flatnonzero(mask).tolist()}
        if result.weights is None:
            return attrs.evolve(result, diagnostics=diagnostics)
        w = np.zeros(system.m)
        w[np.tile(mask, self.batches)] = _numpy64(result.weights)
        return attrs.evolve(result, weights=like(w, result.weights), diagnostics=diagnostics)

    def missing_tasks_refusal(self) -> str | None:
        """Why this solver cannot serve a step with missing tasks, or None when it can."""
        if isinstance(self.task_state, str):
            return f"{self.name} does not support missing tasks: {self.task_state}"
        if self.stateful and not self.state_schema:
            return f"{self.name} does not support missing tasks: it declares no state_schema to restrict"
        undeclared = sorted(
            key
            for key, spec in self.state_schema.items()
            if spec and "m" in spec and key not in self.task_state and key not in self.parameter_state
        )
        if undeclared:
            return f"{self.name} does not support missing tasks: no rule for its per-task state {undeclared}"
        return None

    def prepare_tasks(self, m: int, reference: Any) -> None:
        """Create what the state needs for all m tasks before a step that sees some of them
        (a learnable parameter over the m tasks); nothing by default."""

    @contextlib.contextmanager
    def tasks(self, present: Any, reference: Any = None) -> Iterator[np.ndarray]:
        """Within the block the solver serves the present tasks only (docs/methods.md#missing-tasks).

        ``present`` is a boolean mask over the m tasks. The per-task state and hyperparameters
        (``task_state``, ``task_fields``) are restricted to the present tasks on entry and the
        state merged back on exit; absent tasks' state is left as it was. A block that raises
        leaves the state as before it. ``reference`` (an array of the step's type, dtype and
        device) lets :meth:`prepare_tasks` create state over all m tasks first. Yields the mask.
        An all-True mask changes nothing. Blocks do not nest; the instance is locked meanwhile.
        """
        with _lock_of(self):
            if self._restricted is not None:
                raise SolverError(f"{self.name}.tasks() blocks cannot nest")
            known = self._state.get("m")
            mask = task_mask(present, known if known is not None else _length(present))
            if mask.all():
                yield mask
                return
            refusal = self.missing_tasks_refusal()
            if refusal is not None:
                raise SolverError(refusal)
            original = self._state
            fields = {}
            for name, rule in self.task_fields.items():
                value = getattr(self, name, None) if name in attrs.fields_dict(type(self)) else None
                if value is not None and (rule == "index") == isinstance(value, (int, np.integer)):
                    fields[name] = restrict_entries(value, mask, rule, f"{self.name} {name}")
            saved = {name: getattr(self, name) for name in fields}
            try:
                if reference is not None:
                    self.prepare_tasks(len(mask), reference)
                full = self._state
                self._state = self._restricted_state(full, mask)
                self._restricted = (mask, full)
                for name, value in fields.items():
                    object.__setattr__(self, name, value)  # restricted from validated values
                yield mask
                merged = self._merged_state(full, self._state, mask)
            except BaseException:
                self._state = original
                raise
            else:
                self._state = merged
            finally:
                self._restricted = None
                for name, value in saved.items():
                    object.__setattr__(self, name, value)

    def _full_state(self) -> dict[str, Any]:
        """The state over all m tasks, also inside a :meth:`tasks` block."""
        return self._state if self._restricted is None else self._restricted[1]

    def _restricted_state(self, full: Mapping[str, Any], mask: np.ndarray) -> dict[str, Any]:
        index = np.flatnonzero(mask)
        sub: dict[str, Any] = {}
        for key, value in full.items():
            spec = self.state_schema.get(key)
            if key == "m":
                sub[key] = len(index)
            elif value is None or not spec or "m" not in spec:
                sub[key] = _copied(value, {})
            elif key in self.parameter_state:  # differentiable: a gradient reaches the parameter
                import torch

                sub[key] = value[torch.as_tensor(index, device=value.device)]
            else:
                part = np.array(np.asarray(value)[_task_index(index, spec, np.shape(value))], dtype=np.float64)
                if self.task_state.get(key) == "simplex":
                    total = part.sum()
                    part = part / total if total > 0 else np.full(part.shape, 1.0 / len(index))
                sub[key] = part.tolist() if isinstance(value, list) else part
        return sub

    def _merged_state(self, full: Mapping[str, Any], sub: Mapping[str, Any], mask: np.ndarray) -> dict[str, Any]:
        index, m = np.flatnonzero(mask), len(mask)
        merged: dict[str, Any] = {}
        for key, new in sub.items():  # an entry the step removed is removed for every task
            spec = self.state_schema.get(key)
            old = full.get(key)
            if key == "m" or new is None or not spec or "m" not in spec:
                merged[key] = m if key == "m" else new
                continue
            if key in self.parameter_state:
                if old is None:
                    raise SolverError(f"{self.name} created its parameter {key!r} on a step with missing tasks")
                merged[key] = old
                continue
            rule = self.task_state.get(key)
            new_array = np.asarray(new, dtype=np.float64)
            if old is None:
                if rule is None:
                    continue  # a warm start of the present tasks only: dropped
                shape = [m if size == "m" else new_array.shape[axis] for axis, size in enumerate(spec)]
                fill = rule(full) if callable(rule) else rule
                base = np.full(shape, 1.0 / m if rule == "simplex" else float(fill))
            else:
                base = np.array(old, dtype=np.float64)
            where = _task_index(index, spec, base.shape)
            if base[where].shape != new_array.shape:
                raise SolverError(
                    f"{self.name} state entry {key!r} changed shape on a step with missing tasks: "
                    f"{new_array.shape} for the present part {base[where].shape}"
                )
            base[where] = new_array * base[where].sum() if rule == "simplex" else new_array
            merged[key] = base.tolist() if isinstance(new, list) or isinstance(old, list) else base
        return merged

    def requirements(self) -> frozenset[Need]:
        """What this instance reads (may add to the class's ``needs``, e.g. losses for a loss transform)."""
        return self.needs

    def instance_capabilities(self) -> Capabilities:
        """This instance's :class:`Capabilities` (what ``solver.capabilities`` returns): the class's
        declarations with the needs of :meth:`requirements`. A solver wrapping another overrides it
        to take its base's record whole, ``attrs.evolve(self.base.capabilities, ...)``."""
        return Capabilities.declared_by(self)

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

    def _guarded(self, result: Any, system: GradientSystem) -> Result:
        """The output guard every solver's result passes, built-in or third-party."""
        if not isinstance(result, Result):
            raise SolverError(f"{self.name}.solve() returned {type(result).__name__}, not a mtlsolve.Result")
        noted = system._cache.get("weights64")  # Weighting.solve's float64 weights, checked finite there
        if noted is not None and noted[0] is result.weights:
            w = noted[1]
        else:
            w = None if result.weights is None else _numpy64(result.weights)
            if w is not None and not np.isfinite(w.sum()) and not np.isfinite(w).all():
                raise NonFiniteError(f"{self.name} produced non-finite weights {w.tolist()}")
        d = result.direction
        if d is not None and not (w is not None and system.direction_surely_finite(w)) and not _all_finite(d):
            raise NonFiniteError(
                f"{self.name} produced a direction holding NaN or Inf: G holds NaN or Inf, "
                "wᵀG overflows its dtype, or the solver is faulty"
            )
        diagnostics = result.diagnostics
        if not isinstance(diagnostics.get("converged", False), bool):  # numpy's bool_ is not `is True`
            diagnostics = {**diagnostics, "converged": bool(diagnostics["converged"])}
            result = attrs.evolve(result, diagnostics=diagnostics)
        residual, tolerance = diagnostics.get("residual"), diagnostics.get("tolerance")
        if diagnostics.get("converged") is True and residual is not None and tolerance is not None:
            if not residual <= tolerance:  # a claim the certificate does not back
                diagnostics = {**diagnostics, "converged": False}
                diagnostics.setdefault("fallback", "none: the uncertified result is returned")
                result = attrs.evolve(result, diagnostics=diagnostics)
        if diagnostics.get("converged") is False:
            self._warn_once(
                str(diagnostics.get("fallback", "none")),
                f"{self.name}: the solve did not certify its defining condition "
                f"(residual {residual}, tolerance {tolerance}); fallback: {diagnostics.get('fallback', 'none')}. "
                f"{diagnostics.get('message', '')}".rstrip(),
            )
        return result

    def _warn_once(self, reason: str, message: str) -> None:
        """Issue a ConvergenceWarning the first time this instance meets ``reason``."""
        seen = _WARNED.setdefault(self, set())
        if reason not in seen:
            seen.add(reason)
            warnings.warn(message, ConvergenceWarning, stacklevel=4)

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
        if not is_torch(losses) or losses.ndim != 1 or not losses.is_floating_point():
            raise InvalidSystemError(
                f"{self.name}.objective takes the m task losses as a 1-D floating torch tensor, "
                f"got {type(losses).__name__}"
            )
        if not losses.requires_grad:
            raise InvalidSystemError(
                f"{self.name}.objective needs losses that require grad: these were computed under "
                "torch.no_grad() or detached, so the returned scalar could not be back-propagated"
            )
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
        """The state carried across steps as plain tensors and Python values, tagged with the
        solver's name (``torch.load(weights_only=True)`` reads it back); empty for stateless solvers."""
        if not self._state:
            return {}
        return {"solver": self.name, **{k: _portable(v) for k, v in self._state.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned; raise StateError for a state of another
        solver, unknown keys, or entries whose shapes do not fit ``state_schema``."""
        checked = self._checked_state(state)
        for key in self.parameter_state & checked.keys():  # the saved tensor, in its own dtype
            checked[key] = _into_parameter(self._state.get(key), state[key])
        self._state = checked

    def reset(self) -> None:
        """Forget all state, as a freshly constructed solver."""
        self._state = {}

    def _state_for(self, m: int) -> dict[str, Any]:
        """The state dict for a system of m tasks; raises when the state was built for another m."""
        known = self._state.get("m")
        if known is None:
            self._state = {**self._state, "m": m}
        elif known != m:
            raise InvalidSystemError(
                f"{self.name} holds state for {known} tasks and got a system of {m}; "
                "call reset() to start over with another number of tasks"
            )
        return self._state

    def _snapshot(self) -> dict[str, Any]:
        """A copy of the state to restore on error (learnable parameters keep their identity)."""
        if not self._state:
            return {}
        own = [*self.parameters(), *(self._state.get(key) for key in self.parameter_state)]
        memo = {id(p): p for p in own if p is not None}
        return {key: _copied(value, memo) for key, value in self._state.items()}

    def _checked_state(self, state: Any) -> dict[str, Any]:
        if not isinstance(state, Mapping):
            raise StateError(f"{self.name}.load_state_dict takes a mapping, got {type(state).__name__}")
        state = dict(state)
        if not state:
            return {}
        owner = state.pop("solver", None)
        if owner != self.name:
            raise StateError(f"this state belongs to solver {owner!r}, not to {self.name!r}")
        if not self.state_schema:  # a solver that declares no schema gets its state back as saved
            return {k: _restored(v) for k, v in state.items()}
        unknown = sorted(set(state) - set(self.state_schema) - {"m"})
        if unknown:
            raise StateError(
                f"{self.name} state has unknown keys {unknown}; valid: {sorted({'m', *self.state_schema})}"
            )
        sizes = self._state_sizes(state)
        checked = {key: self._checked_state_entry(key, value, sizes) for key, value in state.items()}
        for size in ("m", "n"):  # sizes read off the shapes belong to the state, so a kernel sees them
            if sizes[size] is not None and (size == "m" or size in self.state_schema):
                checked[size] = sizes[size]
        return checked

    def _state_sizes(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """The task and parameter counts ``m`` and ``n`` a saved state names (None where it names none)."""
        sizes = {"m": state.get("m"), "n": state.get("n")}
        for size in ("m", "n"):
            if sizes[size] is not None and not (isinstance(sizes[size], int) and sizes[size] >= 1):
                raise StateError(f"{self.name} state entry {size!r} must be a positive int, got {sizes[size]!r}")
        return sizes

    def _checked_state_entry(self, key: str, value: Any, sizes: dict[str, Any]) -> Any:
        """One saved state entry checked against ``state_schema``; shapes it fixes fill ``sizes``."""
        spec = self.state_schema.get(key, ())
        if key == "rng" and value is not None:
            _check_rng(self.name, value)
        return value if spec is None or value is None else _checked_entry(self.name, key, value, spec, sizes)

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
        reference = system.reference
        if not np.abs(w).max(initial=0.0) < dtype_max(reference):  # before wᵀG is formed (NaN fails too)
            if not np.isfinite(w).all():
                raise NonFiniteError(f"{self.name} produced non-finite weights {w.tolist()}")
            raise NonFiniteError(  # inf once cast, and 0·inf = NaN in wᵀG
                f"{self.name} produced non-finite weights in {reference.dtype}: {w.tolist()} exceed its largest value"
            )
        weights = like(w, reference)
        direction = combine(weights, system.matrix) if system.has_matrix else None
        system._cache["weights64"] = (weights, w)
        return Result(direction=direction, weights=weights, diagnostics=diagnostics)


_WARNED: weakref.WeakKeyDictionary[Solver, set[str]] = weakref.WeakKeyDictionary()
_LOCKS: weakref.WeakKeyDictionary[Solver, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def _lock_of(solver: Solver) -> Any:
    """One lock per stateful or randomized instance: calls from several threads take turns, so
    random draws and state updates are never interleaved."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(solver)
        if lock is None:
            lock = _LOCKS[solver] = threading.RLock()
        return lock


def _length(present: Any) -> int:
    """The number of entries of a mask (0 for a scalar, which task_mask then refuses)."""
    shape = np.shape(present) if not is_torch(present) else tuple(present.shape)
    return int(shape[0]) if len(shape) else 0


def _task_index(index: np.ndarray, spec: tuple, shape: tuple) -> Any:
    """The open-mesh index of the present tasks on every "m" axis of a state entry of ``shape``."""
    return np.ix_(*[index if size == "m" else np.arange(shape[axis]) for axis, size in enumerate(spec)])


def _copied(value: Any, memo: dict[int, Any]) -> Any:
    """A deep copy of one state entry; numbers, strings, numpy arrays, lists of floats and dicts of
    those take the short way."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if type(value) is np.ndarray:
        return value.copy()
    if type(value) is list and all(type(v) is float for v in value):
        return list(value)
    if type(value) is dict:  # e.g. a random generator's state
        return {key: _copied(entry, memo) for key, entry in value.items()}
    return copy.deepcopy(value, memo)


def _numpy64(x: Any) -> np.ndarray:
    if is_torch(x):
        return x.detach().to("cpu").double().numpy()
    return np.asarray(x, dtype=np.float64)


def _portable(value: Any) -> Any:
    """A state entry as plain tensors and Python values (numpy arrays become CPU tensors)."""
    if is_torch(value):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, np.ndarray):
        import torch

        return torch.from_numpy(np.array(value))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {k: _portable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_portable(v) for v in value)
    return copy.deepcopy(value)


def _restored(value: Any) -> Any:
    """A loaded state entry as the solvers keep it: tensors back to numpy arrays."""
    if is_torch(value):
        return value.detach().cpu().numpy().copy()
    if isinstance(value, Mapping):
        return {k: _restored(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_restored(v) for v in value]
    return copy.deepcopy(value)


def _checked_entry(solver: str, key: str, value: Any, spec: tuple, sizes: dict[str, Any]) -> Any:
    """``value`` checked against its shape ``spec`` (numbers and arrays of finite reals)."""
    try:
        array = _numpy64(value) if is_torch(value) else np.asarray(value)
    except Exception:
        raise StateError(f"{solver} state entry {key!r} is not an array of numbers") from None
    if array.dtype.kind not in "biuf" or array.ndim != len(spec):
        raise StateError(
            f"{solver} state entry {key!r} must be a real {len(spec)}-D value, got dtype {array.dtype} "
            f"with shape {array.shape}"
        )
    for axis, (size, want) in enumerate(zip(array.shape, spec)):
        if isinstance(want, str):
            if sizes.get(want) is None:
                sizes[want] = size
            want = sizes[want]
        if want is not None and size != want:
            raise StateError(f"{solver} state entry {key!r} has shape {array.shape}; axis {axis} must be {want}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise StateError(f"{solver} state entry {key!r} holds NaN or Inf")
    if not spec:
        return array.item()
    return array.astype(np.float64) if array.dtype.kind == "f" else array


def _check_rng(solver: str, value: Any) -> None:
    try:
        np.random.PCG64().state = value
    except Exception:
        raise StateError(f"{solver} state entry 'rng' is not a PCG64 generator state") from None


def _into_parameter(current: Any, values: Any) -> Any:
    """Loaded values for a learnable parameter: copied into ``current`` when the shapes match."""
    import torch

    values = torch.as_tensor(values)
    if current is not None and tuple(current.shape) == tuple(values.shape):
        with torch.no_grad():
            current.copy_(values)
        return current
    return torch.nn.Parameter(values.detach().clone())


def _all_finite(x: Any) -> bool:
    """Whether every entry of ``x`` is finite. A sum is non-finite when an entry is NaN or Inf,
    so one cheap reduction settles the common case; only a non-finite sum (a bad entry, or
    finite entries whose sum overflows) pays for the elementwise check."""
    if is_torch(x):
        return bool(x.sum().isfinite()) or bool(x.isfinite().all())
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(x.sum())) or bool(np.isfinite(x).all())


REDUCTIONS = ("sum", "mean")


@attrs.define(kw_only=True, eq=False)
class GramianWeighting(Weighting):
    """A weighting computed from the Gramian K alone (G is never needed).

    Subclasses implement :meth:`weights_from_gramian` on a float64 numpy K.
    ``loss_transform="log"`` uses ∇log L_i = g_i/L_i in place of g_i: the
    Gramian becomes D K D with D = diag(1/L) and the weights are mapped back
    to the raw gradients (docs/methods.md#loss-transform).
    """

    family: ClassVar[str] = "GW"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.GRAMIAN})

    loss_transform: str | None = attrs.field(default=None, validator=one_of(None, "log"))

    def requirements(self) -> frozenset[Need]:
        extra = {Need.LOSSES} if self.loss_transform == "log" else set()
        return self.needs | extra

    def weights_from_gramian(self, gramian: np.ndarray, system: GradientSystem) -> tuple[np.ndarray, Mapping[str, Any]]:
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
    """Mean-scale weights ``w`` scaled by m when ``reduction == "sum"`` (docs/methods.md#weight-scale)."""
    return w * len(w) if reduction == "sum" else w

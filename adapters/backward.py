"""The training-loop adapter: m task losses in, the combined update in ``.grad`` out.

>>> adapter = MultiTaskBackward("upgrad", shared=model.trunk)      # doctest: +SKIP
>>> for x, y in loader:                                             # doctest: +SKIP
...     diagnostics = adapter.backward(task_losses(model(x), y))
...     adapter.step(optimizer, closure=lambda: task_losses(model(x), y))

The solver's declared needs pick the path (:attr:`MultiTaskBackward.path`):
``"losses"`` for solvers that read losses or nothing (one backward of
``solver.objective(losses)``, no per-task gradients), ``"gramian"`` for
Gramian weightings (G is never held), ``"matrix"`` for solvers that read G.
The path, the gradients the solver sees and the accumulation/distribution
settings then pick one engine of :mod:`mtlsolve.adapters.engines`, once:
the engine computes the step (per-task gradients, the solver's system, the
update), and :class:`MultiTaskBackward` is the pipeline every engine shares
(GradScaler scaling and skipping, gradient accumulation, cross-rank
reduction, clipping, diagnostics, and writing ``.grad`` last so that a
failing step changes nothing).

On the gradient paths every parameter outside ``shared`` that the losses
reach (heads, task-specific layers) gets the plain gradient of its own tasks'
losses (a head used by several tasks gets the sum), taken from the same
batched backward.

``grads="representation"`` runs the gradient paths on the gradients with
respect to a shared feature tensor H (passed as ``features``): the heads are
differentiated once for all tasks, the solver combines the m feature
gradients, and that combination is back-propagated through the encoder once.

``grads="last_shared"`` (GradNorm's choice) lets the solver see the per-task
gradients of the last shared parameter block only (see
:func:`last_shared_block`); the weights it returns are applied to the full
losses, so one backward of Σ w_i L_i updates every shared parameter. It needs
a solver that returns weights.

Solvers that read several independent batches a step (``solver.batches = 3``:
MoDo, SDMGrad) take ``backward([losses_1, losses_2, losses_3])``, one loss
vector per batch (each from its own forward pass). The adapter stacks them
into 3m "tasks", so the one batched backward yields the stacked gradients
[G₁; G₂; G₃] and, on the gramian path, the 3m x 3m Gramian whose blocks are
every G_s G_tᵀ (G is still never held); the solver returns weights on the 3m
rows, and one backward of Σ_j w_j L_j writes d = Gᵀw. Heads get the mean over
the batches of their tasks' gradients.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
import numpy as np
import torch

from mtlsolve.adapters import _grads, engines
from mtlsolve.adapters.engines import Batch, Staged
from mtlsolve.errors import InvalidSystemError, NonFiniteError, SolverError
from mtlsolve.gramian import cosines as pairwise_cosines
from mtlsolve.gramian import norms as gradient_norms
from mtlsolve.solver import GRADIENTS, Need, Solver, Weighting
from mtlsolve.system import GradientSystem, task_mask

PATHS = ("losses", "gramian", "matrix")
#: what :class:`MultiTaskBackward` does with a NaN task loss: raise, or treat the task as absent
MISSING = ("error", "nan")
GRADS = GRADIENTS
#: the gradients read from one forward pass's graph, which accumulation would need kept alive
_ONE_GRAPH = {
    "last_shared": "grads='last_shared' applies the weights to each micro-batch's losses; "
    "accumulation_steps > 1 would need every micro-batch's graph kept alive",
    "representation": "representation mode combines the feature gradients of one forward pass; "
    "accumulation_steps > 1 would need every micro-batch's encoder graph kept alive",
}
#: the folders whose frames a warning skips to point at the user's call
_OWN_FOLDERS = (os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.abspath(engines.__file__)))


@attrs.frozen(kw_only=True)
class StepDiagnostics:
    """What one combined step looked like; cheap figures derived from the m x m Gramian.

    ``losses`` are the task losses the solver saw (averaged over micro-batches
    and ranks); ``weights`` the task weights (for the loss path: the effective
    weights ∂objective/∂L_i); ``gramian`` the unscaled float64 Gramian of the
    per-task gradients (of the features in representation mode), None on the
    loss path; ``update_norm`` the norm of the combined update before
    clipping; ``clip_factor`` the factor max-norm clipping applied (1.0 when
    none); ``skipped`` is True when GradScaler found Inf/NaN gradients and the
    solver was not run (the optimiser step will be skipped too).
    """

    path: str
    kind: str
    losses: np.ndarray
    weights: np.ndarray | None = None
    gramian: np.ndarray | None = None
    update_norm: float | None = None
    clip_factor: float = 1.0
    skipped: bool = False
    engine: str | None = None
    solver: Mapping[str, Any] = attrs.field(factory=dict)
    #: the indices of the tasks present in this step, None when all were (docs/methods.md#missing-tasks);
    #: then ``losses`` holds NaN and ``weights`` 0 for an absent task, and ``gramian`` is that of the present ones
    present: np.ndarray | None = None

    @property
    def grad_norms(self) -> np.ndarray | None:
        """‖g_i‖ for every task."""
        return None if self.gramian is None else gradient_norms(self.gramian)

    @property
    def cosines(self) -> np.ndarray | None:
        """The m x m matrix of pairwise cosines cos(g_i, g_j) (0 where a gradient is 0)."""
        return None if self.gramian is None else pairwise_cosines(self.gramian)

    @property
    def condition_number(self) -> float | None:
        """κ(G) = √(λ_max/λ_min) of the Gramian; inf when the gradients are linearly dependent."""
        if self.gramian is None:
            return None
        eig = np.linalg.eigvalsh(self.gramian)
        top = eig[-1]
        if top <= 0:
            return math.inf
        if eig[0] <= top * len(eig) * np.finfo(np.float64).eps:
            return math.inf
        return float(np.sqrt(top / eig[0]))

    def scalars(self) -> dict[str, float]:
        """The step's figures as flat ``name -> float`` pairs for a logger.

        ``loss_i``, ``weight_i``, ``grad_norm_i``, ``cos_i_j`` (i < j),
        ``condition_number``, ``update_norm`` and ``clip_factor``; entries a
        path does not produce (no Gramian on the loss path) are left out.
        """
        out = {f"loss_{i}": float(v) for i, v in enumerate(self.losses) if not math.isnan(v)}
        if self.weights is not None:
            out.update({f"weight_{i}": float(v) for i, v in enumerate(self.weights)})
        if self.gramian is not None:
            task = list(range(len(self.gramian))) if self.present is None else [int(i) for i in self.present]
            out.update({f"grad_norm_{task[i]}": float(v) for i, v in enumerate(self.grad_norms)})
            cos = self.cosines
            out.update(
                {f"cos_{task[i]}_{task[j]}": float(cos[i, j]) for i in range(len(cos)) for j in range(i + 1, len(cos))}
            )
            out["condition_number"] = self.condition_number
        if self.update_norm is not None:
            out["update_norm"] = float(self.update_norm)
        out["clip_factor"] = float(self.clip_factor)
        return out


def _collect(shared: Any) -> list[torch.Tensor]:
    """The distinct tensors requiring grad in a module, a tensor, or an iterable of either."""
    if isinstance(shared, torch.nn.Module):
        items: Iterable[Any] = shared.parameters()
    elif isinstance(shared, torch.Tensor):
        items = [shared]
    else:
        items = shared
    out: list[torch.Tensor] = []
    seen: set[int] = set()
    for item in items:
        tensors = item.parameters() if isinstance(item, torch.nn.Module) else [item]
        for t in tensors:
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"shared must hold modules or tensors, got {type(t).__name__}")
            if t.requires_grad and id(t) not in seen:
                seen.add(id(t))
                out.append(t)
    if not out:
        raise ValueError("shared holds no tensor that requires grad")
    return out


def last_shared_block(shared: Any) -> list[torch.Tensor]:
    """The parameters ``grads="last_shared"`` hands to the solver.

    For a module: those of its last submodule (in registration order) that
    directly owns parameters, e.g. the last ``Linear`` of a ``Sequential``
    trunk; for a tensor: itself; for a list: everything in its last item.
    """
    if isinstance(shared, torch.nn.Module):
        owners = [mod for mod in shared.modules() if any(p.requires_grad for p in mod.parameters(recurse=False))]
        return _collect(list(owners[-1].parameters(recurse=False)) if owners else shared)
    if isinstance(shared, torch.Tensor):
        return _collect(shared)
    items = list(shared)
    if not items:
        raise ValueError("shared holds no tensor that requires grad")
    return _collect(items[-1])


def _loss_vector(losses: Any) -> torch.Tensor:
    if not isinstance(losses, torch.Tensor):
        losses = torch.stack([torch.as_tensor(l) for l in losses])
    if losses.ndim != 1 or losses.numel() == 0:
        raise InvalidSystemError(f"losses must be m scalars (a 1-D tensor or a list), got shape {tuple(losses.shape)}")
    if not losses.is_floating_point():
        raise InvalidSystemError(f"losses must be floating point, got {losses.dtype}")
    return losses


def _add_grad(t: torch.Tensor, g: torch.Tensor) -> None:
    if g.shape != t.shape:
        g = g.reshape(t.shape)
    if t.grad is None:
        if g is t or g.dtype != t.dtype or (not g.is_sparse and g.stride() != t.stride()):
            # t's dtype and layout, as backward() would give; never an expanded (self-overlapping) view
            g = torch.empty_like(t).copy_(g)
        t.grad = g
    else:
        t.grad.add_(g)


def _all_finite(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether every entry is finite: the max-norms (fused per device, never overflowing), one sync per device."""
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for t in tensors:
        t = t._values() if t.is_sparse else t
        if t.numel():
            by_device.setdefault(t.device, []).append(t)
    return all(bool(torch.stack(torch._foreach_norm(ts, math.inf)).isfinite().all()) for ts in by_device.values())


def _flat_layout(tensors: Sequence[torch.Tensor]) -> tuple[list[tuple[int, int]], int]:
    """The (offset, size) of each tensor in their concatenated flattening, and its length."""
    layout, offset = [], 0
    for t in tensors:
        layout.append((offset, t.numel()))
        offset += t.numel()
    return layout, offset


def _caller_level() -> int:
    """The ``stacklevel`` that points a warning issued by this function's caller at the first frame outside the adapter."""
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) in _OWN_FOLDERS:
        frame, level = frame.f_back, level + 1
    return level


def _resolve(solver: Any) -> Solver:
    if isinstance(solver, Solver):
        return solver
    import mtlsolve

    if isinstance(solver, str):
        return mtlsolve.get(solver)
    if isinstance(solver, Mapping):
        return mtlsolve.from_config(solver)
    raise TypeError(f"solver must be a Solver, a name or a config mapping, got {type(solver).__name__}")


class MultiTaskBackward:
    """Turn m task losses into one update written to ``.grad``, for any ``torch.nn.Module``.

    Parameters
    ----------
    solver:
        a :class:`~mtlsolve.Solver`, a registered name, or a config mapping.
    shared:
        the shared parameters: a module, a tensor, or an iterable of modules
        and tensors (in representation mode: the encoder below ``features``).
    grads:
        ``"shared"`` (per-task gradients of the shared parameters) or
        ``"representation"`` (of the ``features`` passed to :meth:`backward`);
        default: the solver's own ``grads`` (``"representation"`` for
        ``mgda_ub`` and ``aligned_mtl_ub``), else ``"shared"``.
    path:
        force ``"losses"``, ``"gramian"`` or ``"matrix"`` instead of the one the
        solver's needs select (e.g. ``"matrix"`` holds G so that a Gramian
        weighting needs no second backward; ``"gramian"`` runs a loss
        weighting on the Gramian to get cosine diagnostics).
    max_norm:
        clip the shared parameters' gradient to this total 2-norm after the
        update is written (as ``clip_grad_norm_``, in unscaled units).
    scaler:
        a ``torch.amp.GradScaler``: losses are scaled for the backward passes,
        per-task gradients unscaled before the solver, ``.grad`` left in the
        scaler's units so that ``scaler.step`` works as usual. A step whose
        losses or per-task gradients (on the loss path: gradients) hold
        Inf/NaN is skipped as GradScaler skips one: no error, the solver is not
        run (or its state is put back), NaN is added to the ``.grad`` of the
        model parameters the step reaches so that ``scaler.step`` skips the
        optimiser step and ``scaler.update`` lowers the scale, and the
        diagnostics say ``skipped``. Without a scaler, NaN/Inf losses or
        gradients raise :class:`~mtlsolve.NonFiniteError`.
    accumulation_steps:
        micro-batches per optimiser step; the combination runs once, on the
        mean over the micro-batches of the per-task gradients (held as an
        m x n buffer between micro-batches). On the loss path each
        micro-batch back-propagates ``objective(L)/k``, which is the same when
        the objective is affine in the losses (ls, uw, imtl_l, dwa).
    batched:
        how per-task gradients are taken: one vmapped backward for all tasks
        (True) or one backward per task (False). None decides: on the gramian
        path with one micro-batch, by speed and memory (see
        :meth:`GramianEngine.batched_by_default <mtlsolve.adapters.engines.GramianEngine.batched_by_default>`;
        on CPU usually the loop, measured faster
        there); on the other paths the batched engine. A batched engine that
        fails (a backward vmap cannot batch) falls back to the loop once and
        for good.
    matrix_dtype:
        dtype of G on the matrix path (default: the shared parameters'), and
        of the feature-gradient matrix in representation mode (default: the
        features' dtype, at least float32).
    distributed:
        True (default process group) or a process group: reduce across ranks
        as described in :mod:`mtlsolve.adapters.ddp`; ``ReduceScatter(group)``
        picks the reduce-scatter schedule for Gramian weightings. Shared
        parameters that are DTensors (FSDP2's ``fully_shard``, tensor
        parallelism) need no flag: the sharded engine all-reduces the m x m
        Gramian (docs/distributed.md).
    gather_shards:
        with DTensor shared parameters, gather the full G on every rank for
        solvers that read it (m x n numbers per rank); refused otherwise.
    callback:
        called with the :class:`StepDiagnostics` of every combined step (after
        the update is written).
    missing:
        ``"error"`` (default): a NaN task loss raises, as any non-finite value;
        ``"nan"``: a task whose loss is NaN is absent from the step, as if
        :meth:`backward` had been given ``present`` without it
        (docs/methods.md#missing-tasks).

    A :meth:`backward` that raises (non-finite values, a solver error, a bad
    loss vector) changes nothing: every ``.grad``, the solver's state and
    the adapter's counters are as before the call, because the update is
    computed and checked first and written last. The number of tasks m is
    fixed by the first step when the solver keeps state (``solver.stateful``
    or learnable parameters): another m raises
    :class:`~mtlsolve.InvalidSystemError` until :meth:`reset`; stateless
    solvers accept any m.
    """

    def __init__(
        self,
        solver: Any,
        shared: Any,
        *,
        grads: str | None = None,
        path: str | None = None,
        max_norm: float | None = None,
        scaler: Any = None,
        accumulation_steps: int = 1,
        batched: bool | None = None,
        matrix_dtype: torch.dtype | None = None,
        distributed: Any = False,
        gather_shards: bool = False,
        callback: Callable[[StepDiagnostics], None] | None = None,
        missing: str = "error",
    ) -> None:
        if missing not in MISSING:
            raise ValueError(f"missing must be one of {MISSING}, got {missing!r}")
        self.missing = missing
        self.solver = _resolve(solver)
        if not isinstance(shared, (torch.nn.Module, torch.Tensor)):
            shared = list(shared)  # a generator is read twice below
        self.shared = _collect(shared)
        #: the solver's training-loop record (:class:`mtlsolve.Capabilities`), read once: the
        #: gradients, the path and every step follow it
        self.capabilities = self.solver.capabilities
        self.grads = self._choose_grads(grads)
        self.path = self._choose_path(path)
        if max_norm is not None and not (max_norm > 0 and math.isfinite(max_norm)):
            raise ValueError(f"max_norm must be a positive number, got {max_norm!r}")
        self.max_norm = max_norm
        self.scaler = scaler
        self.accumulation_steps = self._check_accumulation(accumulation_steps)
        if batched not in (None, True, False):
            raise ValueError(f"batched must be None, True or False, got {batched!r}")
        self._batched = batched
        self.matrix_dtype = matrix_dtype
        self.callback = callback
        self._reducer = None
        if distributed is not False and distributed is not None:
            from mtlsolve.adapters.ddp import Reducer

            self._reducer = Reducer(None if distributed is True else distributed)
        self.gather_shards = bool(gather_shards)
        self._shared_ids = {id(p) for p in self.shared}
        #: the shared parameters whose per-task gradients the solver sees
        self._tapped = last_shared_block(shared) if self.grads == "last_shared" else self.shared
        #: (offset, size) of each tapped tensor in a flattened per-task gradient of ``_width`` entries
        self._layout, self._width = _flat_layout(self._tapped)
        self.n = sum(p.numel() for p in self.shared)
        #: the engine, chosen once from the configuration (see :mod:`mtlsolve.adapters.engines`)
        self._engine = engines.choose(self)(self, shared)
        self._micro = 0
        self._steps = 0
        self._pending = False
        self._matrix: torch.Tensor | None = None
        self._losses: torch.Tensor | None = None
        self._m: int | None = None  # tasks of the last step
        self._skip = False  # a micro-batch of this cycle was skipped (a GradScaler found Inf/NaN)
        self._solver_saved: tuple | None = None  # the solver's state and parameter grads while a backward runs
        self._present: np.ndarray | None = None  # the task mask of the pending step, None when all were present
        self._rewind_later = False  # a skipped step inside the solver's tasks() block: rewind after it

    # --------------------------------------------------------------- set-up
    def _choose_grads(self, grads: str | None) -> str:
        required = self.capabilities.grads
        grads = grads or required or "shared"
        if grads not in GRADS:
            raise ValueError(f"grads must be one of {GRADS}, got {grads!r}")
        if required is not None and grads != required:
            raise ValueError(f"{self.solver.name} is defined on {required} gradients, got grads={grads!r}")
        if self.capabilities.batches > 1 and grads == "representation":
            raise ValueError(
                f"{self.solver.name} reads {self.capabilities.batches} batches a step; representation mode reads one"
            )
        return grads

    def _choose_path(self, path: str | None) -> str:
        needs = self.capabilities.needs
        natural = "matrix" if Need.MATRIX in needs else "gramian" if Need.GRAMIAN in needs else "losses"
        if path is None:
            return natural
        if path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {path!r}")
        if PATHS.index(path) < PATHS.index(natural):
            raise ValueError(f"{self.solver.name} needs the {natural} path; {path!r} gives it too little")
        if path == "gramian" and not isinstance(self.solver, Weighting):
            raise ValueError(f"the gramian path needs a weighting; {self.solver.name} is not one")
        return path

    def _check_accumulation(self, steps: int) -> int:
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"accumulation_steps must be a positive integer, got {steps!r}")
        if steps == 1:
            return steps
        if self.capabilities.post_step and self.capabilities.post_step_losses:
            raise SolverError(
                f"{self.solver.name} updates itself from the losses before and after each step; "
                "gradient accumulation is not supported with it"
            )
        if self.path != "losses" and self.grads in _ONE_GRAPH:
            raise ValueError(_ONE_GRAPH[self.grads])
        return steps

    def __repr__(self) -> str:
        return (
            f"MultiTaskBackward(solver={self.solver.name!r}, path={self.path!r}, grads={self.grads!r}, "
            f"n_shared={self.n}, accumulation_steps={self.accumulation_steps})"
        )

    # ---------------------------------------------------------------- hooks
    def parameters(self) -> list[torch.Tensor]:
        """The solver's learnable parameters (UW's s); empty for most solvers.

        Solvers that create them once m is known (UW, IMTL-L) return them only
        after the first :meth:`backward`; :meth:`step` adds any that no
        optimiser holds yet (see :meth:`add_parameters_to`).
        """
        return list(self.solver.parameters())

    def add_parameters_to(self, optimizer: Any) -> list[torch.Tensor]:
        """Add the solver's parameters that ``optimizer`` lacks as one new param group; returns them.

        :meth:`step` calls it, so the usual loop needs nothing more. When
        restoring a checkpoint, call it after :meth:`load_state_dict` and
        before ``optimizer.load_state_dict`` so the param groups match.
        """
        optimizers = optimizer if isinstance(optimizer, (list, tuple)) else [optimizer]
        held = {id(p) for opt in optimizers for group in opt.param_groups for p in group["params"]}
        missing = [p for p in self.solver.parameters() if id(p) not in held]
        if missing:
            optimizers[0].add_param_group({"params": missing})
        return missing

    def end_epoch(self) -> None:
        """Tell the solver an epoch ended (DWA, STCH)."""
        self.solver.end_epoch()

    def step(
        self,
        optimizer: Any,
        closure: Callable[[], Any] | None = None,
        *,
        zero_grad: bool = True,
        scaler_step: bool = True,
    ) -> bool:
        """Step ``optimizer`` (one or a list) once a combined update is in ``.grad``.

        Returns False (and does nothing) between micro-batches. Steps through
        the GradScaler when there is one, calls the solver's ``after_step``
        with ``closure()`` (the task losses recomputed on the same batch,
        evaluated without grad) for post-step solvers such as FAMO (those whose
        ``post_step_losses`` is False, GradNorm, get ``after_step(None)`` and
        need no closure), and zeroes the gradients. Solver parameters no optimiser holds yet are added to
        the first one as a new param group before it steps.

        ``scaler_step=False`` is for optimisers whose own ``step()`` goes
        through the GradScaler (Lightning's ``LightningOptimizer`` under a
        16-bit precision plugin): the adapter then only calls ``step()``.
        """
        if not self._pending:
            return False
        if self.capabilities.post_step and self.capabilities.post_step_losses and closure is None:
            raise SolverError(f"{self.solver.name} needs closure=... returning the losses after the step")
        optimizers = optimizer if isinstance(optimizer, (list, tuple)) else [optimizer]
        self.add_parameters_to(optimizers)
        if self._scaling and scaler_step:
            for opt in optimizers:
                self.scaler.step(opt)
            self.scaler.update()
        else:
            for opt in optimizers:
                opt.step()
        self._pending = False
        self._steps += 1
        self._after_step(closure)
        if zero_grad:
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
        return True

    def _after_step(self, closure: Callable[[], Any] | None) -> None:
        """The solver's post-step hook, with the losses ``closure`` recomputes when it reads them."""
        if not self.capabilities.post_step:
            return
        if not self.capabilities.post_step_losses:
            self.solver.after_step(None)  # e.g. GradNorm's renormalisation: no losses needed
            return
        with torch.no_grad():
            new = _loss_vector(closure()).detach()
        if self._reducer is not None:
            new = self._reducer.mean(new)
        if self._present is None:
            self.solver.after_step(new)
            return
        with self.solver.tasks(self._present):
            index = torch.as_tensor(np.flatnonzero(self._present), device=new.device)
            self.solver.after_step(new.index_select(0, index))

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Solver state, learnable solver parameters, step counters and any mid-cycle buffers."""
        mid = self._micro > 0
        return {
            "solver": self.solver.state_dict(),
            "solver_parameters": [p.detach().clone() for p in self.solver.parameters()],
            "steps": self._steps,
            "micro": self._micro,
            "pending": self._pending,
            "batched": self._batched,
            "matrix": self._matrix.clone() if mid and self._matrix is not None else None,
            "losses": self._losses.clone() if mid and self._losses is not None else None,
            "m": self._m,
            "skipped": self._skip and mid,
            "present": None if self._present is None else self._present.tolist(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.solver.load_state_dict(state["solver"])
        params = self.solver.parameters()
        if len(params) != len(state["solver_parameters"]):
            raise ValueError("the checkpoint holds a different number of solver parameters")
        with torch.no_grad():
            for p, v in zip(params, state["solver_parameters"]):
                p.copy_(v)
        self._steps = int(state["steps"])
        self._micro = int(state["micro"])
        self._pending = bool(state["pending"])
        self._batched = state["batched"]
        self._matrix = None if state["matrix"] is None else state["matrix"].clone()
        self._losses = None if state["losses"] is None else state["losses"].clone()
        self._m = state.get("m")
        self._skip = bool(state.get("skipped", False))
        present = state.get("present")
        self._present = None if present is None else np.array(present, dtype=bool)

    def reset(self) -> None:
        """Start over, as a fresh adapter: the solver's state, the number of tasks, any unfinished cycle.

        The step counter is kept. Solvers that create their parameters once m
        is known create new ones (:meth:`step` adds them to the optimiser).
        """
        self.solver.reset()
        self._m = None
        self._micro, self._pending, self._skip = 0, False, False
        self._present = None
        self._matrix = self._losses = None

    # ------------------------------------------------------------- backward
    @property
    def _scaling(self) -> bool:
        return self.scaler is not None and self.scaler.is_enabled()

    def backward(
        self,
        losses: Any,
        features: torch.Tensor | None = None,
        *,
        retain_graph: bool = False,
        present: Any = None,
    ) -> StepDiagnostics | None:
        """Back-propagate one (micro-)batch's m task losses; returns diagnostics once the update is written.

        ``features`` is the shared representation H the losses were computed
        from (needed in representation mode). Gradients accumulate into
        ``.grad`` as with ``loss.backward()``; zero them once per optimiser
        step (:meth:`step` does). Returns None for micro-batches before the
        last of an accumulation cycle.

        For a solver reading b > 1 batches (``solver.batches``; MoDo, SDMGrad)
        ``losses`` is a list of b loss vectors (or a b x m tensor), one per
        independent batch; the solver, and the diagnostics, see them stacked
        into b·m entries.

        ``present`` (a boolean mask over the m tasks), or a NaN loss under
        ``missing="nan"``, leaves tasks out of this step (docs/methods.md#missing-tasks):
        only the present losses are back-propagated, the solver solves the
        system of the present tasks (``solver.tasks(present)``), and the
        diagnostics give weight 0 and loss NaN to an absent task. Passing the
        losses as a list keeps an absent task's graph out of every backward;
        from a stacked tensor they are selected by indexing, whose backward
        visits the absent entries with zero gradients.
        """
        given = losses
        losses = self._stacked(losses)
        tasks = self._check_tasks(losses)
        mask = self._present_mask(losses, present)
        if mask is not None:
            losses = self._present_losses(given, losses, mask)
        last = self._micro + 1 == self.accumulation_steps
        batch = Batch(losses=losses, features=features, last=last, retain_graph=retain_graph)
        # what a failing call puts back; .grad and self._matrix are only written once the step succeeded
        saved = (self._losses, self._skip, self._batched)
        if last or self.path == "losses":  # the solver runs: its state, and the .grad some solvers write (GradNorm)
            grads = [(p, None if p.grad is None else p.grad.clone()) for p in self.solver.parameters()]
            self._solver_saved = (self.solver.state_dict(), grads)
        if self._micro == 0:
            self._losses, self._skip = None, False
        try:
            if mask is None:
                diagnostics = self._run(batch)
            else:
                with self.solver.tasks(mask, reference=batch.losses):
                    diagnostics = self._run(batch)
                if self._rewind_later:
                    self._rewind_later = False
                    self._rewind_solver()
                diagnostics = diagnostics if diagnostics is None else self._padded(diagnostics, mask)
        except BaseException:
            self._rewind_later = False
            self._losses, self._skip, self._batched = saved
            self._rewind_solver()
            raise
        finally:
            self._solver_saved = None
        self._present = mask
        self._m = tasks
        self._micro = 0 if last else self._micro + 1
        if not last:
            return None
        self._pending = True
        if self.callback is not None:
            self.callback(diagnostics)
        return diagnostics

    def _present_mask(self, losses: torch.Tensor, present: Any) -> np.ndarray | None:
        """The mask of the tasks present in this step (``present``, and finite losses under
        ``missing="nan"``), None when every task is present."""
        b = self.capabilities.batches
        m = losses.shape[0] // b
        mask = None if present is None else task_mask(present, m)
        if self.missing == "nan":
            finite = ~torch.isnan(losses.detach()).reshape(b, m).any(dim=0).cpu().numpy()
            mask = finite if mask is None else mask & finite
        if mask is None or mask.all():
            return None
        if self.accumulation_steps > 1:
            raise InvalidSystemError("missing tasks are not supported with accumulation_steps > 1")
        if self._reducer is not None:
            raise InvalidSystemError("missing tasks are not supported across ranks (distributed)")
        return task_mask(mask, m)  # raises when no task is present

    def _present_losses(self, given: Any, losses: torch.Tensor, mask: np.ndarray) -> torch.Tensor:
        """The present tasks' losses: stacked anew from a list (no path to an absent loss), else indexed."""
        index = np.flatnonzero(np.tile(mask, self.capabilities.batches))
        if self.capabilities.batches == 1 and isinstance(given, (list, tuple)):
            return torch.stack([torch.as_tensor(given[i]) for i in index])
        return losses.index_select(0, torch.as_tensor(index, device=losses.device))

    def _padded(self, diagnostics: StepDiagnostics, mask: np.ndarray) -> StepDiagnostics:
        """Diagnostics over all m tasks: loss NaN and weight 0 for an absent one."""
        rows = np.tile(mask, self.capabilities.batches)
        losses = diagnostics.losses
        if losses is not None:
            losses = np.full(rows.shape, np.nan)
            losses[rows] = diagnostics.losses
        weights = None
        if diagnostics.weights is not None:
            weights = np.zeros(rows.shape)
            weights[rows] = diagnostics.weights
        return attrs.evolve(diagnostics, losses=losses, weights=weights, present=np.flatnonzero(rows))

    def _check_tasks(self, losses: torch.Tensor) -> int:
        """The number of tasks m of this call, checked against the solver's state and the cycle's micro-batches."""
        m = losses.shape[0]
        tasks = m // self.capabilities.batches
        if self._m is not None and tasks != self._m and self._fixed_tasks:
            raise InvalidSystemError(
                f"{self.solver.name} keeps state for the {self._m} tasks this adapter has seen and got {tasks} "
                "losses; call reset() (or build a new adapter) to change the number of tasks"
            )
        if self._micro > 0 and self._losses.shape[0] != m:
            raise InvalidSystemError(f"micro-batches disagree on the number of tasks: {self._losses.shape[0]} and {m}")
        return tasks

    # the pipeline every engine shares --------------------------------------
    def _run(self, batch: Batch) -> StepDiagnostics | None:
        """The engine computes the step, then it is written: first ``.grad``, then the diagnostics and clipping."""
        if self._engine.autocast:
            context: Any = contextlib.nullcontext()
        else:  # per-task gradients in the parameters' dtypes
            context = torch.autocast(batch.losses.device.type, enabled=False)
        with context:
            staged = self._engine.compute(self, batch)
            self._write(staged, batch.last)
            return self._diagnostics(staged) if batch.last else None

    def _write(self, staged: Staged, last: bool) -> None:
        """Commit a staged step, or mark a step a GradScaler skips: the solver as it was, NaN in the model's ``.grad``."""
        if staged.poison is not None:
            self._rewind_solver()
            self._skip = True
            self._matrix = None
            self._poison(staged.poison)
            return
        self._commit(staged.writes, also=staged.check, reduce=staged.reduce)
        if staged.matrix is not None:  # a micro-batch's share of the mean per-task gradients
            self._matrix = staged.matrix if self._matrix is None else self._matrix.add_(staged.matrix)
        elif last:
            self._matrix = None

    def _diagnostics(self, staged: Staged) -> StepDiagnostics:
        """The last micro-batch's :class:`StepDiagnostics`; clips the written update first."""
        if self._skip:
            return StepDiagnostics(
                path=self.path, kind=self.grads, losses=staged.losses, skipped=True, engine=staged.engine
            )
        norm = staged.update_norm() if callable(staged.update_norm) else staged.update_norm
        return StepDiagnostics(
            path=self.path,
            kind=self.grads,
            losses=staged.losses,
            weights=staged.weights,
            gramian=staged.gramian,
            update_norm=norm,
            clip_factor=self._clip(),
            engine=staged.engine,
            solver=dict(staged.solver),
        )

    # helpers ----------------------------------------------------------------
    def _add_losses(self, losses: torch.Tensor) -> None:
        """Add this micro-batch's share to the float64 mean of the losses over the accumulation cycle."""
        share = losses.detach().to(torch.float64, copy=True)
        k = self.accumulation_steps
        if k > 1:
            share /= k
        self._losses = share if self._losses is None else self._losses + share

    def _stacked(self, losses: Any) -> torch.Tensor:
        """The loss vector; for a solver reading b > 1 batches, the b batches' vectors concatenated."""
        b = self.capabilities.batches
        if b == 1:
            return _loss_vector(losses)
        if isinstance(losses, torch.Tensor) and losses.ndim == 2:
            losses = list(losses)
        several = isinstance(losses, (list, tuple)) and all(
            isinstance(x, (list, tuple)) or (isinstance(x, torch.Tensor) and x.ndim == 1) for x in losses
        )
        if not several or len(losses) != b:
            got = f"{len(losses)} loss vectors" if several else "one loss vector"
            raise InvalidSystemError(
                f"{self.solver.name} reads {b} independent batches a step: call "
                f"backward([losses_1, ..., losses_{b}]) with one loss vector per batch; got {got}"
            )
        batches = [_loss_vector(x) for x in losses]
        if len({x.shape[0] for x in batches}) > 1:
            raise InvalidSystemError(f"the batches disagree on the number of tasks: {[x.shape[0] for x in batches]}")
        return torch.cat(batches)

    def _heads(self, reach: Mapping[int, torch.Tensor]) -> list[torch.Tensor]:
        """Reachable leaves that are neither shared nor the solver's own parameters."""
        own = {id(p) for p in self.solver.parameters()}
        return [t for key, t in reach.items() if key not in self._shared_ids and key not in own]

    def _model_params(self, losses: torch.Tensor) -> list[torch.Tensor]:
        reach = _grads.reachable_leaves([losses])
        own = {id(p) for p in self.solver.parameters()}
        return [t for key, t in reach.items() if key not in own]

    def _roundoff(self, n: int, dtype: torch.dtype | None = None) -> float:
        """ρ of a Gramian accumulated here from per-task gradients of n coordinates: their own
        rounding plus float32 (or float64) products (mtlsolve.gramian's precision model)."""
        dtypes = [dtype] if dtype is not None else [p.dtype for p in self.shared]
        u = max(torch.finfo(t).eps for t in dtypes)
        u_acc = min(u, torch.finfo(torch.float32).eps)
        return 2.0 * u + 2.0 * math.sqrt(max(n, 1)) * u_acc

    @property
    def _scale(self) -> float:
        return float(self.scaler.get_scale()) if self._scaling else 1.0

    def _per_task(self, losses, direct, tapped, consumers, *, retain_graph: bool, reset: Callable[[], None]):
        """Per-task gradients with the batched engine or the loop; returns (direct gradients, engine name).

        While the engine is undecided the batched one is tried (keeping the
        graph); if it fails, ``reset`` undoes what its consumers stored and the
        loop takes over for good.
        """
        if self._batched is False:
            return _grads.loop(losses, direct, tapped, consumers, retain_graph=retain_graph), "loop"
        if self._batched is True:
            return _grads.batched(losses, direct, tapped, consumers, retain_graph=retain_graph), "batched"
        try:
            out = _grads.batched(losses, direct, tapped, consumers, retain_graph=True)
        except Exception as exc:  # a backward that vmap cannot batch
            self._give_up_batching(exc)
            reset()
            return _grads.loop(losses, direct, tapped, consumers, retain_graph=retain_graph), "loop"
        self._batched = True
        return out, "batched"

    def _give_up_batching(self, exc: Exception) -> None:
        """Warns (at the user's call) that the batched per-task backward failed; the loop runs from now on."""
        warnings.warn(
            f"batched per-task gradients failed ({type(exc).__name__}: {exc}); "
            "using one backward pass per task from now on",
            RuntimeWarning,
            stacklevel=_caller_level(),
        )
        self._batched = False

    def _gramian_or_skip(self, system: GradientSystem) -> np.ndarray | None:
        """The float64 Gramian, with the losses checked finite; None when not and a GradScaler will skip the step.

        A NaN or Inf anywhere in row i of G makes K_ii = Σ_j G_ij² non-finite,
        so checking K also checks G, without the temporaries of ``isfinite(G)``.
        """
        try:
            K = system.gramian64
            if system.has_losses:
                system.losses64  # noqa: B018 - raises on NaN/Inf losses (a head-only task's too)
            return K
        except NonFiniteError:
            if self._scaling:
                return None
            raise

    def _skip_or_raise(self, what: str) -> None:
        """Non-finite values: a GradScaler skips the step (the caller marks it), else NonFiniteError."""
        if not self._scaling:
            raise NonFiniteError(f"{what}; nothing was written to .grad")

    def _finite(self, tensors: Sequence[torch.Tensor]) -> bool:
        """Whether ``tensors`` are finite, on every rank when distributed (so all ranks raise together)."""
        ok = _all_finite(tensors)
        if self._reducer is not None:
            flag = torch.tensor(float(ok), device=self.shared[0].device)
            ok = bool(self._reducer.mean_(flag) == 1.0)
        return ok

    def _commit(self, writes: Sequence[tuple[torch.Tensor, torch.Tensor]], *, also=(), reduce=()) -> None:
        """Write a step's staged gradients to ``.grad``, the last thing a step does.

        Without a GradScaler they (and the tensors in ``also``) are checked
        finite first, so a failure writes nothing; then ``reduce`` is averaged
        across ranks.
        """
        if not self._scaling and not self._finite([*also, *(g for _, g in writes)]):
            raise NonFiniteError("the step's gradients or losses hold NaN or Inf; nothing was written to .grad")
        for p, g in writes:
            _add_grad(p, g)
        if self._reducer is not None and reduce:
            self._reducer.mean_grads_(reduce)

    def _rewind_solver(self) -> None:
        """Put back the solver's state and parameter grads saved when this backward began (a failed or skipped step)."""
        if self._solver_saved is not None and self.solver._restricted is not None:
            self._rewind_later = True  # inside the solver's tasks() block: once it has closed
            return
        if self._solver_saved is not None:
            state, grads = self._solver_saved
            self.solver.load_state_dict(state)
            for p, g in grads:
                p.grad = g

    @property
    def _fixed_tasks(self) -> bool:
        """Whether the solver's state ties it to one number of tasks."""
        return bool(self.capabilities.stateful or self.solver.parameters())

    @staticmethod
    def _poison(params: Sequence[torch.Tensor]) -> None:
        """Mark a step GradScaler skips (no error): NaN makes ``scaler.step`` skip and ``update`` lower the scale."""
        for p in params:
            _add_grad(p, torch.full_like(p, math.nan))

    def _clip(self) -> float:
        if self.max_norm is None:
            return 1.0
        scale = self._scale
        grads = [p.grad for p in self.shared if p.grad is not None]
        if not grads:
            return 1.0
        norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))) / scale
        if not math.isfinite(norm) or norm <= self.max_norm:
            return 1.0
        factor = self.max_norm / (norm + 1e-6)
        torch._foreach_mul_(grads, factor)
        return factor

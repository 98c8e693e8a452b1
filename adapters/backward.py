"""The training-loop adapter: m task losses in, the combined update in ``.grad`` out.

>>> adapter = MultiTaskBackward("upgrad", shared=model.trunk)      # doctest: +SKIP
>>> for x, y in loader:                                             # doctest: +SKIP
...     diagnostics = adapter.backward(task_losses(model(x), y))
...     adapter.step(optimizer, closure=lambda: task_losses(model(x), y))

The solver's declared needs pick the path (:attr:`MultiTaskBackward.path`):

``"losses"``
    solvers that read losses or nothing (loss weightings): one backward of
    ``solver.objective(losses)``; no per-task gradients. Every parameter,
    task-specific ones included, gets the gradient of that objective, and
    learnable solver parameters (UW's s) get theirs.
``"gramian"``
    Gramian weightings; G is never held. The ``nn.Linear`` layers of the
    shared module that see at most d_in + 1 rows are never differentiated
    per task: their Gramian blocks and their share of Gᵀw come from the
    layer inputs X and output gradients δ_i (see :mod:`._layers`), which
    costs less than forming their per-task gradients. The other shared
    parameters' gradient blocks are folded into K = G Gᵀ, and kept to write
    Gᵀw when they hold at most a quarter of the shared parameters, else one
    more backward of Σ w_i L_i writes it. With gradient accumulation or
    ``distributed``: one batched backward folds each parameter block into
    K and drops it, and one backward of Σ w_i L_i writes Gᵀw.
``"matrix"``
    solvers that read G: G (m x n, ``matrix_dtype``) is filled block by block
    by one batched backward and the solver's direction is written.

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

import math
import warnings
from typing import Any, Callable, Iterable, Mapping, Sequence

import attrs
import numpy as np
import torch

from mtlsolve._array import to_numpy64
from mtlsolve.errors import InvalidSystemError, NonFiniteError, SolverError
from mtlsolve.solver import Need, Solver, Weighting
from mtlsolve.system import GradientSystem

from mtlsolve.adapters import _grads, _layers

PATHS = ("losses", "gramian", "matrix")
GRADS = ("shared", "representation", "last_shared")


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

    @property
    def grad_norms(self) -> np.ndarray | None:
        """‖g_i‖ for every task."""
        return None if self.gramian is None else np.sqrt(np.clip(np.diag(self.gramian), 0.0, None))

    @property
    def cosines(self) -> np.ndarray | None:
        """The m x m matrix of pairwise cosines cos(g_i, g_j) (0 where a gradient is 0)."""
        if self.gramian is None:
            return None
        norms = self.grad_norms
        outer = np.outer(norms, norms)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(outer > 0, self.gramian / outer, 0.0)

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
        out = {f"loss_{i}": float(v) for i, v in enumerate(self.losses)}
        if self.weights is not None:
            out.update({f"weight_{i}": float(v) for i, v in enumerate(self.weights)})
        if self.gramian is not None:
            out.update({f"grad_norm_{i}": float(v) for i, v in enumerate(self.grad_norms)})
            cos = self.cosines
            out.update({f"cos_{i}_{j}": float(cos[i, j]) for i in range(len(cos)) for j in range(i + 1, len(cos))})
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
    g = g.reshape(t.shape).to(t.dtype)
    if t.grad is None:
        t.grad = g if g is not t else g.clone()
    else:
        t.grad.add_(g)


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
        scaler's units so that ``scaler.step`` works as usual, and a step whose
        per-task gradients hold Inf/NaN is skipped without running the solver.
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
        :meth:`_batched_by_default`; on CPU usually the loop, measured faster
        there); on the other paths the batched engine. A batched engine that
        fails (a backward vmap cannot batch) falls back to the loop once and
        for good.
    matrix_dtype:
        dtype of G on the matrix path (default: the shared parameters'), and
        of the feature-gradient matrix in representation mode (default: the
        features' dtype, at least float32).
    distributed:
        True (default process group) or a process group: reduce across ranks
        as described in :mod:`mtlsolve.adapters.ddp`.
    callback:
        called with the :class:`StepDiagnostics` of every combined step.
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
        callback: Callable[[StepDiagnostics], None] | None = None,
    ) -> None:
        self.solver = _resolve(solver)
        if not isinstance(shared, (torch.nn.Module, torch.Tensor)):
            shared = list(shared)  # a generator is read twice below
        self.shared = _collect(shared)
        required = self.solver.grads
        grads = grads or required or "shared"
        if grads not in GRADS:
            raise ValueError(f"grads must be one of {GRADS}, got {grads!r}")
        if required is not None and grads != required:
            raise ValueError(f"{self.solver.name} is defined on {required} gradients, got grads={grads!r}")
        self.grads = grads
        self.path = self._choose_path(path)
        if max_norm is not None and not (max_norm > 0 and math.isfinite(max_norm)):
            raise ValueError(f"max_norm must be a positive number, got {max_norm!r}")
        self.max_norm = max_norm
        self.scaler = scaler
        if not isinstance(accumulation_steps, int) or accumulation_steps < 1:
            raise ValueError(f"accumulation_steps must be a positive integer, got {accumulation_steps!r}")
        if self.solver.batches > 1 and grads == "representation":
            raise ValueError(
                f"{self.solver.name} reads {self.solver.batches} batches a step; representation mode reads one"
            )
        if accumulation_steps > 1 and self.solver.post_step and self.solver.post_step_losses:
            raise SolverError(
                f"{self.solver.name} updates itself from the losses before and after each step; "
                "gradient accumulation is not supported with it"
            )
        if accumulation_steps > 1 and grads == "last_shared" and self.path != "losses":
            raise ValueError(
                "grads='last_shared' applies the weights to each micro-batch's losses; "
                "accumulation_steps > 1 would need every micro-batch's graph kept alive"
            )
        if accumulation_steps > 1 and grads == "representation" and self.path != "losses":
            raise ValueError(
                "representation mode combines the feature gradients of one forward pass; "
                "accumulation_steps > 1 would need every micro-batch's encoder graph kept alive"
            )
        self.accumulation_steps = accumulation_steps
        if batched not in (None, True, False):
            raise ValueError(f"batched must be None, True or False, got {batched!r}")
        self._batched = batched
        self.matrix_dtype = matrix_dtype
        self.callback = callback
        self._reducer = None
        if distributed is not False and distributed is not None:
            from mtlsolve.adapters.ddp import Reducer

            self._reducer = Reducer(None if distributed is True else distributed)
        self._shared_ids = {id(p) for p in self.shared}
        #: the shared parameters whose per-task gradients the solver sees
        self._tapped = last_shared_block(shared) if grads == "last_shared" else self.shared
        self._factors = None
        if self.path == "gramian" and grads == "shared" and accumulation_steps == 1 and self._reducer is None:
            self._factors = _layers.install(self, shared)
        self._layout: list[tuple[int, int]] = []
        offset = 0
        for p in self._tapped:
            self._layout.append((offset, p.numel()))
            offset += p.numel()
        self._width = offset
        self.n = sum(p.numel() for p in self.shared)
        self._micro = 0
        self._steps = 0
        self._pending = False
        self._matrix: torch.Tensor | None = None
        self._losses: torch.Tensor | None = None

    # --------------------------------------------------------------- set-up
    def _choose_path(self, path: str | None) -> str:
        needs = self.solver.requirements()
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
        if self.solver.post_step and not self.solver.post_step_losses:
            self.solver.after_step(None)  # e.g. GradNorm's renormalisation: no losses needed
        elif self.solver.post_step:
            if closure is None:
                raise SolverError(f"{self.solver.name} needs closure=... returning the losses after the step")
            with torch.no_grad():
                new = _loss_vector(closure()).detach()
            if self._reducer is not None:
                new = self._reducer.mean(new)
            self.solver.after_step(new)
        if zero_grad:
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
        return True

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

    # ------------------------------------------------------------- backward
    @property
    def _scaling(self) -> bool:
        return self.scaler is not None and self.scaler.is_enabled()

    def backward(
        self, losses: Any, features: torch.Tensor | None = None, *, retain_graph: bool = False
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
        """
        losses = self._stacked(losses)
        m = losses.shape[0]
        last = self._micro + 1 == self.accumulation_steps
        if self._micro == 0:
            self._losses = None
        elif self._losses.shape[0] != m:
            raise InvalidSystemError(f"micro-batches disagree on the number of tasks: {self._losses.shape[0]} and {m}")
        if self.path == "losses":  # Σ w_i L_i: nothing autocast would change
            diagnostics = self._loss_path(losses, last, retain_graph)
        else:
            with torch.autocast(losses.device.type, enabled=False):
                if self.grads == "representation":
                    if features is None:
                        raise InvalidSystemError("representation mode needs backward(losses, features=H)")
                    diagnostics = self._representation_path(losses, features, retain_graph)
                elif self._factors is not None:
                    diagnostics = self._factored_path(losses, retain_graph)
                else:
                    diagnostics = self._gradient_path(losses, last, retain_graph)
        self._micro = 0 if last else self._micro + 1
        if not last:
            return None
        self._pending = True
        if self.callback is not None:
            self.callback(diagnostics)
        return diagnostics

    # the three paths --------------------------------------------------------
    def _loss_path(self, losses: torch.Tensor, last: bool, retain_graph: bool) -> StepDiagnostics | None:
        k = self.accumulation_steps
        local = losses
        if self._reducer is not None:
            # the global value with the local gradient: the solver sees the same losses on every rank
            losses = local + (self._reducer.mean(local) - local.detach())
        self._add_losses(losses)
        weights = None
        if type(self.solver).objective is Solver.objective:
            # Σ w_i L_i with w detached: the weights are the solver's, no autograd call needed
            # the solver runs on the host copy of the losses (read for the diagnostics anyway)
            weights = to_numpy64(self.solver(losses=to_numpy64(losses)).weights)
            objective = (torch.as_tensor(weights, dtype=losses.dtype).to(losses.device) * losses).sum()
        else:  # learnable parameters: the effective weights are ∂objective/∂L
            objective = self.solver.objective(losses)
            if last:
                (w,) = torch.autograd.grad(objective, local, retain_graph=True, allow_unused=True)
                weights = None if w is None else to_numpy64(w)
        model_params = self._model_params(local) if (last and self._reducer is not None) else []
        total = objective / k if k > 1 else objective
        if self._scaling:
            total = self.scaler.scale(total)
        total.backward(retain_graph=retain_graph)
        if not last:
            return None
        if self._reducer is not None:
            self._reducer.mean_grads_(model_params)
        clip = self._clip()
        return StepDiagnostics(
            path="losses", kind=self.grads, losses=to_numpy64(self._losses), weights=weights, clip_factor=clip
        )

    def _gradient_path(self, losses: torch.Tensor, last: bool, retain_graph: bool) -> StepDiagnostics | None:
        k = self.accumulation_steps
        m = losses.shape[0]
        reach = _grads.reachable_leaves([losses])
        used = [(p, span) for p, span in zip(self._tapped, self._layout) if id(p) in reach]
        heads = self._heads(reach)
        scale = self._scale
        scaled = self.scaler.scale(losses) if self._scaling else losses
        hold = self.path == "matrix" or k > 1
        ref = self.shared[0]
        if hold and self._matrix is None:
            self._matrix = torch.zeros(m, self._width, dtype=self.matrix_dtype or ref.dtype, device=ref.device)
        elif hold and self._matrix.shape[0] != m:
            raise InvalidSystemError(f"the accumulated gradients have {self._matrix.shape[0]} tasks, not {m}")
        gramian = None if hold else torch.zeros(m, m, dtype=torch.float64, device=ref.device)
        head_sums: dict[int, torch.Tensor] = {}
        backup = self._matrix.clone() if hold and self._batched is None and self._micro > 0 else None

        def into_matrix(offset: int, size: int) -> _grads.Consumer:
            def consume(block: torch.Tensor) -> None:
                # blocks arrive in the scaler's units: store this micro-batch's share of the unscaled mean
                self._matrix[:, offset : offset + size].add_(block.reshape(m, size), alpha=1.0 / (k * scale))

            return consume

        def into_gramian(block: torch.Tensor) -> None:
            flat = block.reshape(m, -1)
            if self._reducer is not None:
                flat = self._reducer.mean(flat)
            if flat.dtype != torch.float64:
                flat = flat.float()
            gramian.add_((flat @ flat.T).to(torch.float64))

        def reset() -> None:
            head_sums.clear()
            if gramian is not None:
                gramian.zero_()
            if hold:
                self._matrix.copy_(backup) if backup is not None else self._matrix.zero_()

        consumers = [into_matrix(*span) if hold else into_gramian for _, span in used]
        consumers += [self._head_consumer(h, head_sums) for h in heads]
        tapped = [p for p, _ in used] + heads
        weighted = not hold or self.grads == "last_shared"  # the update is one backward of Σ w_i L_i
        _, engine = self._per_task(scaled, [], tapped, consumers, retain_graph=retain_graph or weighted, reset=reset)
        for h in heads:
            if id(h) in head_sums:
                _add_grad(h, head_sums[id(h)] / (k * self.solver.batches))
        self._add_losses(losses)
        if not last:
            return None

        L = self._losses if self._reducer is None else self._reducer.mean_(self._losses)
        if hold:
            G, self._matrix = self._matrix, None
            if self._reducer is not None:
                self._reducer.mean_(G)
            system = GradientSystem(G, losses=L.to(G.dtype))
        else:
            system = GradientSystem(gramian=to_numpy64(gramian) / scale**2, losses=to_numpy64(L))
        K = self._gramian_or_skip(system)
        if K is None:
            self._poison(self.shared)
            return StepDiagnostics(path=self.path, kind=self.grads, losses=to_numpy64(L), skipped=True, engine=engine)
        result = self.solver(system)
        weights = None if result.weights is None else to_numpy64(result.weights)
        if not weighted:
            d = result.direction
            if d is None:
                d = torch.as_tensor(weights, dtype=G.dtype, device=G.device) @ G
            d = d * scale if scale != 1.0 else d
            for p, (offset, size) in used:
                _add_grad(p, d[offset : offset + size])
            norm = float(torch.linalg.vector_norm(d)) / scale
        else:
            if weights is None:
                raise SolverError(f"{self.solver.name} returned no weights on the gramian path")
            c = torch.as_tensor(weights * scale, dtype=losses.dtype, device=losses.device)
            if self.grads == "last_shared":
                params = [p for p in self.shared if id(p) in reach]
            else:
                params = [p for p, _ in used]
            update = torch.autograd.grad((c * losses).sum(), params, retain_graph=retain_graph)
            for p, g in zip(params, update):
                _add_grad(p, g)
            if self._reducer is not None:
                self._reducer.mean_grads_(params)
            if self.grads == "last_shared":
                norms = torch.stack([torch.linalg.vector_norm(g) for g in update])
                norm = float(torch.linalg.vector_norm(norms)) / scale
            else:
                norm = float(np.sqrt(max(weights @ K @ weights, 0.0)))
        if self._reducer is not None:
            self._reducer.mean_grads_(heads)
        clip = self._clip()
        return StepDiagnostics(
            path=self.path,
            kind=self.grads,
            losses=to_numpy64(L),
            weights=weights,
            gramian=K,
            update_norm=norm,
            clip_factor=clip,
            engine=engine,
            solver=dict(result.diagnostics),
        )

    def _factored_path(self, losses: torch.Tensor, retain_graph: bool) -> StepDiagnostics:
        """The gramian path on one batch without per-task gradients of Linear layers (see :mod:`._layers`).

        Factored Linear layers contribute their Gramian blocks and update from
        (X, δ); the other shared parameters are tapped leaves whose gradient
        blocks are folded into K and, when they hold at most a quarter of the
        shared parameters, kept to write their update (else one backward of
        Σ w_i L_i restricted to them writes it). Heads get the gradient of
        their own tasks' losses from one backward of ΣL_i that stops at them.
        """
        m = losses.shape[0]
        graph = _grads.census([losses])
        layers = _layers.plan(self._factors, graph, self._shared_ids, m)
        factored = {id(p) for layer in layers for p in layer.params}
        tapped = [p for p in self.shared if id(p) in graph.leaves and id(p) not in factored]
        heads = self._heads(graph.leaves)
        scale = self._scale
        if self._scaling:
            self.scaler.scale(losses)  # starts the scaler's bookkeeping, as scaling the loss would
        tapped_numel = sum(p.numel() for p in tapped)
        hold = 4 * tapped_numel <= self.n
        ref = self.shared[0]
        batched = self._batched
        if batched is None:
            batched = self._batched_by_default(ref.device, tapped_numel, hold)

        def attempt(batched: bool, retain: bool) -> tuple[torch.Tensor, dict[int, torch.Tensor], list]:
            K = torch.zeros(m, m, dtype=torch.float64, device=ref.device)
            blocks: dict[int, torch.Tensor] = {}

            def fold(block: torch.Tensor, start: int) -> None:
                flat = block.reshape(m, -1)
                flat = flat if flat.dtype == torch.float64 else flat.float()
                K.add_((flat @ flat.T).to(torch.float64))

            def keeper(p: torch.Tensor) -> Callable[[torch.Tensor, int], None]:
                buf = torch.empty(m, p.numel(), dtype=torch.promote_types(p.dtype, torch.float32), device=p.device)
                blocks[id(p)] = buf

                def keep(block: torch.Tensor, start: int) -> None:
                    buf[start : start + block.shape[0]] = block.reshape(block.shape[0], -1)

                return keep

            # the loop delivers one row at a time: rows are kept until K can be formed
            consumers = [keeper(p) if hold or not batched else fold for p in tapped]
            for layer in layers:
                layer.delta.zero_()
            head_grads = _layers.per_task(
                losses, scale, self._factors, layers, tapped, consumers, heads, batched=batched, retain_graph=retain
            )
            return K, blocks, head_grads

        second = bool(tapped) and not hold  # the tapped leaves' update needs the graph again
        if batched and self._batched is None:
            try:
                K, blocks, head_grads = attempt(True, True)
            except Exception as exc:  # a backward that vmap cannot batch
                self._give_up_batching(exc, stacklevel=4)
                batched = False
                K, blocks, head_grads = attempt(False, retain_graph or second)
        else:
            K, blocks, head_grads = attempt(batched, retain_graph or second)
        for h, g in zip(heads, head_grads):
            if g is not None:
                _add_grad(h, g / self.solver.batches)
        for layer in layers:
            K += layer.gramian().to(torch.float64)
        for buf in blocks.values():
            K += (buf @ buf.T).to(torch.float64)
        self._add_losses(losses)
        L = to_numpy64(self._losses)
        system = GradientSystem(gramian=to_numpy64(K) / scale**2, losses=L)
        engine = "batched" if batched else "loop"
        K = self._gramian_or_skip(system)
        if K is None:
            self._poison(self.shared)
            return StepDiagnostics(path=self.path, kind=self.grads, losses=L, skipped=True, engine=engine)
        result = self.solver(system)
        if result.weights is None:
            raise SolverError(f"{self.solver.name} returned no weights on the gramian path")
        weights = to_numpy64(result.weights)
        w = torch.as_tensor(weights, device=ref.device)
        for layer in layers:
            for p, g in zip(layer.params, layer.update(w)):
                _add_grad(p, g)
        if hold:
            for p in tapped:
                buf = blocks[id(p)]
                _add_grad(p, w.to(buf.dtype) @ buf)
        elif tapped:
            c = torch.as_tensor(weights * scale, dtype=losses.dtype, device=losses.device)
            for p, g in zip(tapped, torch.autograd.grad((c * losses).sum(), tapped, retain_graph=retain_graph)):
                _add_grad(p, g)
        clip = self._clip()
        return StepDiagnostics(
            path=self.path,
            kind=self.grads,
            losses=L,
            weights=weights,
            gramian=K,
            update_norm=float(np.sqrt(max(weights @ K @ weights, 0.0))),
            clip_factor=clip,
            engine=engine,
            solver=dict(result.diagnostics),
        )

    def _batched_by_default(self, device: torch.device, tapped_numel: int, hold: bool) -> bool:
        """The factored path's engine when ``batched=None``.

        A batched pass holds about m x A activation gradients (A: the outputs
        of the shared Linear/conv layers in the forward pass). When the tapped
        blocks are kept anyway (``hold``), the loop costs no more memory and
        is the faster engine on CPU (``asv_benchmarks/compare_adapters.py``);
        elsewhere the batched one is used unless m x A exceeds the m x n of G.
        Otherwise the loop must keep m x ``tapped_numel`` rows until K can be
        formed, and the engine holding less is used.
        """
        activations = self._factors.activations
        if hold:
            return device.type != "cpu" and activations <= self.n
        return activations <= tapped_numel

    def _representation_path(self, losses: torch.Tensor, H: torch.Tensor, retain_graph: bool) -> StepDiagnostics:
        if not H.requires_grad:
            raise InvalidSystemError("features must be the tensor the losses were computed from (requires grad)")
        m = losses.shape[0]
        heads = self._heads(_grads.reachable_leaves([losses], stop=[H]))
        own = {id(p) for p in self.solver.parameters()}
        encoder = [t for key, t in _grads.reachable_leaves([H]).items() if key not in own]
        scale = self._scale
        scaled = self.scaler.scale(losses) if self._scaling else losses
        head_sums: dict[int, torch.Tensor] = {}
        consumers = [self._head_consumer(h, head_sums) for h in heads]
        (Z,), engine = self._per_task(scaled, [H], heads, consumers, retain_graph=retain_graph, reset=head_sums.clear)
        for h in heads:
            if id(h) in head_sums:
                _add_grad(h, head_sums[id(h)])
        dtype = self.matrix_dtype or torch.promote_types(H.dtype, torch.float32)
        Z = Z.reshape(m, -1).to(dtype) / scale
        L = losses.detach().to(torch.float64)
        feats = H.detach().reshape(-1).to(dtype)
        gathered = False
        if self._reducer is not None:
            L = self._reducer.mean_(L)
            if self.path == "matrix":
                R = self._reducer.world_size
                system = GradientSystem(
                    self._reducer.gather_columns(Z) / R,
                    losses=L.to(dtype),
                    kind="representation",
                    extras={"features": self._reducer.gather_columns(feats[None])[0]},
                )
                gathered = True
            else:
                K = (Z @ Z.T).to(torch.float64)
                K = self._reducer.mean_(K) / self._reducer.world_size
                system = GradientSystem(gramian=to_numpy64(K), losses=to_numpy64(L), kind="representation")
        else:
            system = GradientSystem(Z, losses=L.to(dtype), kind="representation", extras={"features": feats})
        K = self._gramian_or_skip(system)
        if K is None:
            self._poison(encoder)
            return StepDiagnostics(
                path=self.path, kind="representation", losses=to_numpy64(L), skipped=True, engine=engine
            )
        result = self.solver(system)
        weights = None if result.weights is None else to_numpy64(result.weights)
        if gathered:
            size, rank = Z.shape[1], self._reducer.rank
            zhat = result.direction[rank * size : (rank + 1) * size] * self._reducer.world_size
            norm = float(torch.linalg.vector_norm(result.direction))
        elif result.direction is not None:
            zhat = result.direction
            norm = float(torch.linalg.vector_norm(zhat))
        else:
            zhat = torch.as_tensor(weights, dtype=Z.dtype, device=Z.device) @ Z
            norm = float(np.sqrt(max(weights @ K @ weights, 0.0)))
        torch.autograd.backward(
            H, (zhat * scale).reshape(H.shape).to(H.dtype), inputs=encoder or None, retain_graph=retain_graph
        )
        if self._reducer is not None:
            self._reducer.mean_grads_(encoder + heads)
        self._add_losses(L)
        clip = self._clip()
        return StepDiagnostics(
            path=self.path,
            kind="representation",
            losses=to_numpy64(L),
            weights=weights,
            gramian=K,
            update_norm=norm,
            clip_factor=clip,
            engine=engine,
            solver=dict(result.diagnostics),
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
        b = self.solver.batches
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

    @staticmethod
    def _head_consumer(head: torch.Tensor, sums: dict[int, torch.Tensor]) -> _grads.Consumer:
        def consume(block: torch.Tensor) -> None:
            sums[id(head)] = block.sum(0)

        return consume

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
            self._give_up_batching(exc, stacklevel=5)
            reset()
            return _grads.loop(losses, direct, tapped, consumers, retain_graph=retain_graph), "loop"
        self._batched = True
        return out, "batched"

    def _give_up_batching(self, exc: Exception, stacklevel: int) -> None:
        """Warns that the batched engine failed (at the user's call, ``stacklevel`` frames up); the loop runs from now on."""
        warnings.warn(
            f"batched per-task gradients failed ({type(exc).__name__}: {exc}); "
            "using one backward pass per task from now on",
            RuntimeWarning,
            stacklevel=stacklevel,
        )
        self._batched = False

    def _gramian_or_skip(self, system: GradientSystem) -> np.ndarray | None:
        """The float64 Gramian; None when it is non-finite and a GradScaler will skip the step.

        A NaN or Inf anywhere in row i of G makes K_ii = Σ_j G_ij² non-finite,
        so checking K also checks G, without the temporaries of ``isfinite(G)``.
        """
        try:
            return system.gramian64
        except NonFiniteError:
            if self._scaling:
                return None
            raise

    @staticmethod
    def _poison(params: Sequence[torch.Tensor]) -> None:
        """Mark a skipped step: NaN gradients make GradScaler skip the optimiser step and lower its scale."""
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

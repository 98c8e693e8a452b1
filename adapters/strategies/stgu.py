"""STGU — selective task group updates (docs/methods.md#stgu).

Jeong & Yoon, "Selective Task Group Updates for Multi-Task Optimization", ICLR 2025,
arXiv 2502.11986; the algorithm follows the official code (wooseong97/sel-update-mtl,
``train_phase_affinity`` and ``form_task_affinity``).

Each batch is used once per task group: a forward pass, a backward of the group's losses only,
one optimiser step, for every group in a shuffled order (a single group is stepped twice). The
relative loss change of every task across a group's step is the proximal inter-task affinity
a(s→t) = (1 − L_t^after/L_t^before)/|Gr| of each source s in the group; A[s, t] is its EMA
(weight β on the new observation). After warm-up the groups are re-formed by Affinity
Propagation on the column-normalised, symmetrised A.

>>> stgu = STGU(optimizer=opt, task_param_groups=model.heads)            # doctest: +SKIP
>>> for x, y in loader:                                                   # doctest: +SKIP
...     stgu.step(lambda: task_losses(model(x), y))   # the closure re-runs the forward pass
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import numpy as np
import torch

from mtlsolve._array import to_numpy64
from mtlsolve.adapters.backward import MultiTaskBackward, _loss_vector
from mtlsolve.adapters.strategies.settings import Groups, STGUSettings
from mtlsolve.errors import InvalidConfigError
from mtlsolve.strategy import settings_for


@attrs.frozen(kw_only=True)
class STGUStep:
    """One batch of STGU: the groups stepped in order, the losses of the first forward pass,
    whether this batch was in warm-up and whether Affinity Propagation produced new groups."""

    order: Groups
    losses: np.ndarray
    warmup: bool
    regrouped: bool

    @property
    def substeps(self) -> int:
        """Optimiser steps (and backward passes) taken on this batch."""
        return len(self.order)


def _tensors(item: Any) -> list[torch.Tensor]:
    if isinstance(item, torch.nn.Module):
        return [p for p in item.parameters() if p.requires_grad]
    if isinstance(item, torch.Tensor):
        return [item]
    return [t for sub in item for t in _tensors(sub)]


class STGU:
    """Selective task group updates as a training-loop strategy.

    Runtime objects: ``optimizer`` (required), ``model`` (its parameters minus the task-specific
    ones are the shared parameters; default: the optimizer's), ``task_param_groups`` (one entry per
    task: a module, tensor or iterable of them holding that task's own parameters, e.g.
    ``model.heads``), ``scheduler`` (stepped once per batch).

    Settings (``settings=``, a :class:`~mtlsolve.adapters.strategies.settings.STGUSettings`, or the same
    names as keywords; the official code's defaults; docs/methods.md#stgu): ``affinity_beta`` β (1e-3), ``warmup_iters`` (100
    batches of the initial groups), ``regroup_every`` (1), ``attribution`` (``"causal"``: a loss
    change is credited to the group stepped between the two forward passes; ``"official"``: to the
    group about to step, as the official code does), ``final_forward`` (causal only: one extra
    forward after the last group so its step is measured too), ``group_norm`` (divide a group's
    loss by its size), ``task_specific_lr_mult`` (default m; the optimizer's param groups are split
    so task parameters get lr × mult — build any LR scheduler after the strategy),
    ``inactive_task_params`` (what a sub-step does to the parameters of tasks outside its group:
    ``"frozen"``, default, leaves them untouched — their gradient is None, so the optimiser skips
    them; ``"momentum"`` gives every one the optimiser has stepped before a zero gradient, so Adam
    keeps moving it along its momentum and weight decay keeps acting, as in the official code, whose
    ``optimizer.zero_grad()`` under torch 1.13 zeroes gradients instead of removing them),
    ``initial_groups`` (default singletons), ``loss_weights`` (w_t inside L_Gr), the Affinity
    Propagation settings ``ap_preference`` (None: the median similarity), ``ap_damping`` (0.5),
    ``ap_convergence_iter`` (50), ``ap_max_iter`` (200), ``ap_retries`` (10, each with
    convergence_iter + 100; the previous groups are kept if all fail), ``ap_backend`` (``"auto"``:
    scikit-learn when installed, else a numba kernel of the same algorithm), ``seed``.

    ``solver`` combines the losses of a group with more than one task: ``"ls"`` (the sum, as in
    the paper) or any registered solver by name, config mapping or instance, run through a
    :class:`~mtlsolve.adapters.MultiTaskBackward` (one per group, so stateful solvers keep per-group
    state; an instance is shared by all groups) with ``backward_options``. Anything other than
    ``ls`` is an extension the paper does not have.
    """

    def __init__(
        self,
        *,
        optimizer: torch.optim.Optimizer,
        model: torch.nn.Module | None = None,
        task_param_groups: Any = None,
        scheduler: Any = None,
        settings: STGUSettings | None = None,
        **options: Any,
    ) -> None:
        self.settings: STGUSettings = settings_for(STGUSettings, settings, options)
        self.optimizer = optimizer
        self.model = model
        self.task_param_groups = task_param_groups
        self.scheduler = scheduler
        self._state: dict = {}
        self._adapters: dict = {}
        self._task_params: list = []
        self._shared: list = []
        config = self.settings
        if self.task_param_groups is not None:
            self._task_params = [_tensors(item) for item in self.task_param_groups]
            if any(not params for params in self._task_params):
                raise InvalidConfigError("every entry of task_param_groups must hold at least one parameter")
            m = len(self._task_params)
            for what, value in (("initial_groups", config.initial_groups), ("loss_weights", config.loss_weights)):
                size = None if value is None else (sum(map(len, value)) if what == "initial_groups" else len(value))
                if size is not None and size != m:
                    raise InvalidConfigError(f"{what} covers {size} tasks but task_param_groups has {m}")
            mult = float(m if config.task_specific_lr_mult is None else config.task_specific_lr_mult)
            self._split_param_groups(mult)
        elif config.inactive_task_params != "frozen":
            raise InvalidConfigError(
                f"inactive_task_params={config.inactive_task_params!r} needs task_param_groups (the tasks' own parameters)"
            )
        owned = {id(p) for params in self._task_params for p in params}
        source = (
            self.model.parameters()
            if self.model is not None
            else (p for group in self.optimizer.param_groups for p in group["params"])
        )
        seen: set[int] = set()
        for p in source:
            if p.requires_grad and id(p) not in owned and id(p) not in seen:
                seen.add(id(p))
                self._shared.append(p)
        if not self._shared:
            raise InvalidConfigError("STGU found no shared parameter (all are task-specific)")

    def _split_param_groups(self, mult: float) -> None:
        """Give the task-specific parameters lr × mult in param groups of their own."""
        if mult == 1.0:
            return
        if self.optimizer.state:
            raise InvalidConfigError("build STGU before the optimizer has stepped (it splits the param groups)")
        owned = {id(p) for params in self._task_params for p in params}
        held = set()
        for group in list(self.optimizer.param_groups):
            if "initial_lr" in group:
                raise InvalidConfigError("build the LR scheduler after STGU (it adds param groups to the optimizer)")
            task = [p for p in group["params"] if id(p) in owned]
            held.update(id(p) for p in task)
            if not task:
                continue
            if len(task) == len(group["params"]):
                group["lr"] = group["lr"] * mult
                continue
            group["params"] = [p for p in group["params"] if id(p) not in owned]
            settings = {k: v for k, v in group.items() if k != "params"}
            self.optimizer.add_param_group({**settings, "params": task, "lr": group["lr"] * mult})
        if held != owned:
            raise InvalidConfigError("some task-specific parameters are not held by the optimizer")

    # ------------------------------------------------------------ properties
    @property
    def affinity(self) -> np.ndarray | None:
        """The m x m affinity A (rows: source task, columns: target task), None before the first step."""
        A = self._state.get("affinity")
        return None if A is None else A.copy()

    @property
    def groups(self) -> Groups | None:
        """The current grouping (tuples of task indices)."""
        return self._state.get("groups")

    @property
    def batches(self) -> int:
        return int(self._state.get("batch", 0))

    # -------------------------------------------------------------- training
    def step(self, closure: Callable[[], Any]) -> STGUStep:
        """Train on one batch. ``closure()`` runs the forward pass on that batch (with grad) and
        returns the m task losses; it is called once per group (plus once with ``final_forward``)."""
        losses = _loss_vector(closure())
        m = losses.shape[0]
        state = self._init(m)
        gen = np.random.Generator(np.random.PCG64(self.settings.seed))
        if state.get("rng") is not None:
            gen.bit_generator.state = state["rng"]
        warm = state["batch"] < self.settings.warmup_iters
        regrouped = False
        if not warm and (state["batch"] - self.settings.warmup_iters) % self.settings.regroup_every == 0:
            regrouped = self._regroup(gen)
        groups = state["groups"]
        order = [groups[i] for i in gen.permutation(len(groups))]
        if len(order) == 1:
            order = order * 2
        first = to_numpy64(losses)
        before = None
        for k, group in enumerate(order):
            if k > 0:
                losses = _loss_vector(closure())
            now = to_numpy64(losses)
            if before is not None:
                self._observe(order[k - 1] if self.settings.attribution == "causal" else group, before, now)
            before = now
            self._substep(group, losses, closure)
        if self.settings.attribution == "causal" and self.settings.final_forward:
            with torch.no_grad():
                self._observe(order[-1], before, to_numpy64(_loss_vector(closure())))
        if self.scheduler is not None:
            self.scheduler.step()
        state["batch"] += 1
        state["rng"] = gen.bit_generator.state
        return STGUStep(order=tuple(order), losses=first, warmup=warm, regrouped=regrouped)

    def _init(self, m: int) -> dict:
        state = self._state
        if state.get("m") == m:
            return state
        if state.get("m") is not None:
            raise InvalidConfigError(f"STGU was started with {state['m']} tasks, the closure now returns {m}")
        if self._task_params and len(self._task_params) != m:
            raise InvalidConfigError(f"task_param_groups has {len(self._task_params)} entries for {m} tasks")
        if self.settings.loss_weights is not None and len(self.settings.loss_weights) != m:
            raise InvalidConfigError(f"loss_weights has {len(self.settings.loss_weights)} entries for {m} tasks")
        groups = self.settings.initial_groups or tuple((t,) for t in range(m))
        if sum(map(len, groups)) != m:
            raise InvalidConfigError(f"initial_groups covers {sum(map(len, groups))} tasks, the closure returns {m}")
        state.update(m=m, affinity=np.zeros((m, m)), groups=groups, batch=0, rng=None)
        return state

    def _adapter(self, group: tuple[int, ...]) -> MultiTaskBackward:
        adapter = self._adapters.get(group)
        if adapter is None:
            adapter = MultiTaskBackward(self.settings.solver, shared=self._shared, **self.settings.backward_options)
            self._adapters[group] = adapter
        return adapter

    def _group_losses(self, group: tuple[int, ...], losses: torch.Tensor) -> torch.Tensor:
        sub = losses[list(group)]
        if self.settings.loss_weights is not None:
            sub = sub * torch.tensor([self.settings.loss_weights[t] for t in group], dtype=sub.dtype, device=sub.device)
        return sub / len(group) if self.settings.group_norm else sub

    def _substep(self, group: tuple[int, ...], losses: torch.Tensor, closure: Callable[[], Any]) -> None:
        adapter = self._adapter(group)
        self.optimizer.zero_grad(set_to_none=True)  # parameters of other groups' tasks get no step
        adapter.backward(self._group_losses(group, losses))
        self._inactive_grads(group)
        after = None
        if adapter.capabilities.post_step:
            after = lambda: self._group_losses(group, _loss_vector(closure()))  # noqa: E731
        adapter.step(self.optimizer, closure=after)

    def _inactive_grads(self, group: tuple[int, ...]) -> None:
        """The gradients of the task parameters outside ``group``: None ("frozen": the optimiser skips them,
        even when the group's backward reached them with zeros, as through a concatenation of head
        outputs), or zero for those the optimiser has stepped before ("momentum": it steps them again,
        so momentum and weight decay go on, as ``zero_grad()`` without ``set_to_none`` does in the
        official code)."""
        momentum = self.settings.inactive_task_params == "momentum"
        for t, params in enumerate(self._task_params):
            if t in group:
                continue
            for p in params:
                if momentum and self.optimizer.state.get(p):
                    p.grad = torch.zeros_like(p)
                else:
                    p.grad = None

    # -------------------------------------------------------------- affinity
    def _observe(self, group: tuple[int, ...], before: np.ndarray, after: np.ndarray) -> None:
        """EMA update of the rows ``group`` of A from one step's relative loss changes (docs/methods.md#stgu)."""
        A = self._state["affinity"]
        m = A.shape[0]
        g = np.asarray(group)
        valid = before > 0  # a ratio needs a positive loss before the step (as the official code)
        r = np.where(valid, 1.0 - after / np.where(valid, before, 1.0), 0.0) / len(group)
        rs, rt = r[g][:, None], r[None, :]
        inside = np.zeros(m, dtype=bool)
        inside[g] = True
        is_self = g[:, None] == np.arange(m)[None, :]
        intra = inside[None, :] & ~is_self
        obs = np.where(intra & (rs * rt < 0), -np.maximum(rs, rt), np.broadcast_to(rt, intra.shape))
        mask = np.broadcast_to(valid[None, :], intra.shape).copy()
        mask &= ~((intra | is_self) & ~valid[g][:, None])  # intra-group pairs need the source's loss too
        mask &= ~(is_self & (rs < 0))  # self-affinity only improves
        beta = self.settings.affinity_beta
        rows = A[g]
        A[g] = np.where(mask, (1.0 - beta) * rows + beta * obs, rows)

    def similarity(self) -> np.ndarray:
        """The matrix Affinity Propagation clusters: A with column t divided by max(A[t,t], eps)
        (left as is where A[t,t] ≤ 0), symmetrised."""
        A = self._state["affinity"]
        d = np.diag(A)
        X = np.where(d[None, :] > 0, A / np.maximum(d, self.settings.eps)[None, :], A)
        return (X + X.T) / 2

    def _regroup(self, gen: np.random.Generator) -> bool:
        X = self.similarity()
        convergence_iter = self.settings.ap_convergence_iter
        for _ in range(self.settings.ap_retries):
            labels = affinity_propagation(
                X,
                preference=self.settings.ap_preference,
                damping=self.settings.ap_damping,
                convergence_iter=convergence_iter,
                max_iter=self.settings.ap_max_iter,
                seed=int(gen.integers(2**31 - 1)),
                backend=self.settings.ap_backend,
            )
            if labels is not None:
                self._state["groups"] = tuple(sorted(tuple(np.flatnonzero(labels == c).tolist()) for c in set(labels)))
                return True
            convergence_iter += 100
        return False

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """A, the groups, the batch counter, the generator and the in-group solvers' states.

        The model, optimizer and scheduler are checkpointed by their owners as usual."""
        state = copy.deepcopy(self._state)
        state["solvers"] = {group: a.state_dict() for group, a in self._adapters.items()}
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        state = copy.deepcopy(dict(state))
        solvers = state.pop("solvers", {})
        self._state = state
        self._adapters = {}
        for group, sub in solvers.items():
            self._adapter(tuple(group)).load_state_dict(sub)


def affinity_propagation(
    S: np.ndarray,
    *,
    preference: float | None = None,
    damping: float = 0.5,
    convergence_iter: int = 50,
    max_iter: int = 200,
    seed: int = 0,
    backend: str = "auto",
) -> np.ndarray | None:
    """Cluster labels from Affinity Propagation (Frey & Dueck, Science 2007) on a similarity matrix,
    or None when it ends without an exemplar ("no clusters"; an unconverged run that has exemplars
    returns them, as scikit-learn ≥ 1.0 does).

    ``backend="sklearn"`` calls ``sklearn.cluster.AffinityPropagation(affinity="precomputed")``;
    ``"numba"`` runs the same message passing, stopping rule, tie-breaking jitter and exemplar
    refinement in a compiled kernel (the fallback of ``"auto"`` when scikit-learn is not
    installed; much faster for the few tasks STGU clusters). ``preference`` None is the median of S.
    """
    S = np.asarray(S, dtype=np.float64)
    if backend in ("auto", "sklearn"):
        try:
            from sklearn.cluster import AffinityPropagation
        except ImportError:
            if backend == "sklearn":
                raise
        else:
            ap = AffinityPropagation(
                affinity="precomputed",
                preference=preference,
                damping=damping,
                convergence_iter=convergence_iter,
                max_iter=max_iter,
                random_state=seed,
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # non-convergence is reported as None; equal similarities are expected
                labels = ap.fit_predict(S)
            return None if len(ap.cluster_centers_indices_) == 0 else np.asarray(labels)
    n = S.shape[0]
    pref = float(np.median(S)) if preference is None else float(preference)
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    S = S.copy()
    np.fill_diagonal(S, pref)
    off = S[~np.eye(n, dtype=bool)]
    if np.all(off == off[0]):
        # every similarity equal: a preference above them makes every task its own exemplar
        return np.arange(n) if pref > off[0] else np.zeros(n, dtype=np.int64)
    # a tiny jitter breaks exact ties between candidate exemplars (the same draw as scikit-learn's)
    S += (np.finfo(float).eps * S + np.finfo(float).tiny * 100) * np.random.RandomState(seed).standard_normal((n, n))
    from mtlsolve.adapters.strategies._ap import messages

    exemplar, _ = messages(S, float(damping), int(convergence_iter), int(max_iter))
    if not exemplar.any():  # scikit-learn, too, returns the clusters of an unconverged run if it has any
        return None
    centers = np.flatnonzero(exemplar)
    labels = S[:, centers].argmax(axis=1)
    labels[centers] = np.arange(len(centers))
    # each cluster's exemplar becomes the member with the largest summed similarity; then reassign
    for c in range(len(centers)):
        members = np.flatnonzero(labels == c)
        centers[c] = members[S[np.ix_(members, members)].sum(axis=0).argmax()]
    labels = S[:, centers].argmax(axis=1)
    labels[centers] = np.arange(len(centers))
    return np.unique(centers[labels], return_inverse=True)[1]

"""MTGD-reconstructed — a Pareto set by multi-task gradient descent with parameter transfer
(seed-methods.md §4; catalogue row ``mtgd``).

Bai, Gupta, Ong, "Multi-Task Learning with Multi-Task Optimization", arXiv 2403.16162 (2024); the
update rule is reconstructed from its abstract and the predecessor's code (Bai et al., "Multi-task
gradient descent for multi-task learning", Memetic Computing 12:355–369, 2020, BaiLu-BL/MGD_MultiMNIST
``msgd.py``). It is provisional until checked against the paper, hence the label
"MTGD-reconstructed" (:data:`LABEL`) in every diagnostic.

K copies of a model, one per preference vector λ^k of a Das–Dennis grid, each minimise the
scalarisation f_k = Σ_i λ^k_i L_i (or Tchebycheff max_i λ^k_i(L_i − z_i)) on the same batch, and
after every step the parameters are mixed:

    θ_k ← Σ_j M_kj θ_j − η d_k,   M_kj = α·η·r_kj (j ≠ k),   M_kk = 1 − Σ_{j≠k} M_kj,

with r_kj = c/(1 + c), c = max(0, cos(λ^k, λ^j)), kept only for the ``neighbors`` preference vectors
nearest by angle. The strength follows the learning rate η, so M is row-stochastic and
non-negative as long as α·η·max_k Σ_j r_kj ≤ 1 (:meth:`MTGD.max_alpha`); larger α is refused.
"""

from __future__ import annotations

import copy
import itertools
import math
from typing import Any, Callable, ClassVar, Mapping

import attrs
import numpy as np
import torch

from mtlsolve._array import to_numpy64
from mtlsolve.adapters.backward import MultiTaskBackward, _loss_vector
from mtlsolve.errors import InvalidConfigError
from mtlsolve.metrics import hypervolume

LABEL = "MTGD-reconstructed"
SCALARIZATIONS = ("linear", "tchebycheff")


def das_dennis(tasks: int, divisions: int) -> np.ndarray:
    """The Das–Dennis simplex-lattice: every λ ≥ 0 with Σλ = 1 and entries in {0, 1/H, …, 1};
    C(H + m − 1, m − 1) rows, in lexicographic order of (λ_m, …, λ_1) increasing from e_1."""
    if tasks < 1 or divisions < 1:
        raise ValueError(f"das_dennis needs tasks ≥ 1 and divisions ≥ 1, got {tasks}, {divisions}")
    rows = []
    for bars in itertools.combinations(range(divisions + tasks - 1), tasks - 1):
        edges = np.array((-1,) + bars + (divisions + tasks - 1,))
        rows.append(np.diff(edges) - 1)
    return np.array(rows[::-1], dtype=np.float64).reshape(-1, tasks) / divisions


def grid_size(tasks: int, divisions: int) -> int:
    return math.comb(divisions + tasks - 1, tasks - 1)


def transfer_relation(preferences: np.ndarray, neighbors: int | None = 2) -> np.ndarray:
    """r_kj = c/(1 + c) with c = max(0, cos(λ^k, λ^j)); zero on the diagonal and, with
    ``neighbors``, outside the ``neighbors`` vectors nearest to λ^k by angle (ties: lower index)."""
    P = np.asarray(preferences, dtype=np.float64)
    K = P.shape[0]
    unit = P / np.linalg.norm(P, axis=1, keepdims=True)
    c = np.clip(unit @ unit.T, 0.0, None)
    r = c / (1.0 + c)
    np.fill_diagonal(r, 0.0)
    if neighbors is not None and neighbors < K - 1:
        angle = np.arccos(np.clip(unit @ unit.T, -1.0, 1.0))
        np.fill_diagonal(angle, np.inf)
        nearest = np.argsort(angle, axis=1, kind="stable")[:, :neighbors]
        keep = np.zeros((K, K), dtype=bool)
        keep[np.arange(K)[:, None], nearest] = True
        r = np.where(keep, r, 0.0)
    return r


def transfer_matrix(relation: np.ndarray, alpha: float, lr: float | np.ndarray) -> np.ndarray:
    """M with M_kj = α·η_k·r_kj off the diagonal and rows summing to 1; raises when a diagonal
    entry would be negative (α·η_k·Σ_j r_kj > 1: the bound on the transfer strength)."""
    lr = np.broadcast_to(np.asarray(lr, dtype=np.float64), (relation.shape[0],))
    M = alpha * lr[:, None] * relation
    diag = 1.0 - M.sum(axis=1)
    if (diag < 0).any():
        bound = 1.0 / float((lr * relation.sum(axis=1)).max())
        raise InvalidConfigError(
            f"{LABEL}: alpha·lr·Σ_j r_kj = {float((1 - diag).max()):.4g} > 1 makes the transfer matrix negative; "
            f"the bound at this learning rate is alpha ≤ {bound:.4g}"
        )
    np.fill_diagonal(M, diag)
    return M


@attrs.frozen(kw_only=True)
class MTGDStep:
    """One population step: the K x m losses each model had before it (on the shared batch) and
    the transfer matrix applied (None when α = 0)."""

    losses: np.ndarray
    transfer: np.ndarray | None
    method: str = LABEL


def _clone_optimizer(optimizer: Any, template: torch.nn.Module, model: torch.nn.Module) -> Any:
    """An optimizer of the same class and settings (and state) over ``model``'s matching parameters."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        return optimizer(model.parameters())
    index = {id(p): i for i, p in enumerate(template.parameters())}
    params = list(model.parameters())
    groups = []
    for group in optimizer.param_groups:
        missing = [p for p in group["params"] if id(p) not in index]
        if missing:
            raise InvalidConfigError(f"{LABEL}: the optimizer holds parameters that are not the model's")
        groups.append({**{k: v for k, v in group.items() if k != "params"},
                       "params": [params[index[id(p)]] for p in group["params"]]})
    clone = type(optimizer)(groups, **optimizer.defaults)
    clone.load_state_dict(optimizer.state_dict())
    return clone


def _preferences(value: Any) -> np.ndarray | None:
    if value is None:
        return None
    P = np.atleast_2d(np.asarray(value, dtype=np.float64))
    if P.ndim != 2 or not np.isfinite(P).all() or (P < 0).any() or not (P.sum(axis=1) > 0).all():
        raise ValueError(f"preferences must be K rows of non-negative, non-zero weights, got {value!r}")
    return P


@attrs.define(kw_only=True, eq=False)
class MTGD:
    """MTGD-reconstructed: K models trained on K scalarisations, coupled by parameter transfer.

    Runtime objects: ``model`` (the template; the K models are deep copies of it, so all start
    from its parameters), ``optimizer`` (an optimizer over the template's parameters, cloned with
    its settings for each model, or a callable ``params -> optimizer``), ``shared`` (optional: the
    template's shared trunk, a module or parameters; transfer acts on it by default and the inner
    solver sees it as the shared parameters), ``scheduler`` (optional callable ``optimizer ->
    scheduler``, stepped by :meth:`end_epoch`).

    Settings (seed-methods.md §4.3): ``num_tasks`` m, ``n_models`` K (a Das–Dennis grid size; default
    the smallest grid with K ≥ 5) or explicit ``preferences`` (K x m), ``scalarization``
    (``"linear"``, default, or ``"tchebycheff"`` with ``ideal`` z, default 0), ``alpha`` (1; 0 gives
    K independent runs), ``neighbors`` (2; None: every pair), ``transfer_layers`` (name prefixes of
    the parameters to mix, e.g. ``["trunk"]``; default the ``shared`` parameters, else all),
    ``reference`` (HV reference point; default 1.1 x the per-task maximum over the models of the
    first losses seen by :meth:`evaluate` or :meth:`step`, problems.md §5), ``backward_options``.

    ``solver`` (name, config mapping or instance) replaces the scalarisation as each model's inner
    combiner: a population solver with ``preferences`` and ``index`` (``pmtl``) gets the whole grid
    and index k, one with a ``preference`` field (``epo``, ``tchebycheff``, …) gets λ^k there (EPO
    needs every λ^k_i > 0: pass interior ``preferences``), one with ``weights`` or ``task_weights``
    (``ls``, ``aligned_mtl``) gets λ^k as weights, any other combines the preference-weighted
    losses λ^k_i L_i. With ``alpha=0`` and ``solver="pmtl"`` or ``"epo"`` the population is that
    Pareto method's K independent runs (the baseline of seed-methods.md §4.6).
    """

    name: ClassVar[str] = "mtgd"
    label: ClassVar[str] = LABEL
    paper: ClassVar[str] = "Bai, Gupta, Ong — arXiv 2403.16162 (2024); Bai et al. — Memetic Computing 12:355–369 (2020)"

    model: torch.nn.Module = attrs.field()
    optimizer: Any = attrs.field()
    shared: Any = None
    scheduler: Any = None
    num_tasks: int | None = None
    n_models: int | None = None
    preferences: np.ndarray | None = attrs.field(default=None, converter=_preferences, eq=False)
    scalarization: str = attrs.field(default="linear", validator=attrs.validators.in_(SCALARIZATIONS))
    ideal: tuple[float, ...] | None = attrs.field(
        default=None, converter=attrs.converters.optional(lambda v: tuple(float(x) for x in v))
    )
    solver: Any = None
    alpha: float = attrs.field(default=1.0, converter=float, validator=attrs.validators.ge(0.0))
    neighbors: int | None = attrs.field(default=2)
    transfer_layers: tuple[str, ...] | None = attrs.field(
        default=None, converter=attrs.converters.optional(lambda v: (v,) if isinstance(v, str) else tuple(v))
    )
    reference: tuple[float, ...] | None = attrs.field(
        default=None, converter=attrs.converters.optional(lambda v: tuple(float(x) for x in v))
    )
    backward_options: Mapping[str, Any] = attrs.field(factory=dict, converter=dict)

    models: list = attrs.field(init=False, factory=list)
    optimizers: list = attrs.field(init=False, factory=list)
    schedulers: list = attrs.field(init=False, factory=list)
    adapters: list = attrs.field(init=False, factory=list)
    relation: np.ndarray = attrs.field(init=False, default=None, repr=False)
    _weighted: list = attrs.field(init=False, factory=list, repr=False)
    _transfer_names: list = attrs.field(init=False, factory=list, repr=False)
    _steps: int = attrs.field(init=False, default=0, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.neighbors is not None and (not isinstance(self.neighbors, int) or self.neighbors < 1):
            raise InvalidConfigError(f"neighbors must be a positive integer or None, got {self.neighbors!r}")
        self.preferences = self._grid()
        K, m = self.preferences.shape
        if self.ideal is not None and len(self.ideal) != m:
            raise InvalidConfigError(f"ideal has {len(self.ideal)} entries for {m} tasks")
        names = [n for n, _ in self.model.named_parameters()]
        if self.shared is not None:
            shared_ids = {id(p) for p in _params(self.shared)}
            shared_names = [n for n, p in self.model.named_parameters() if id(p) in shared_ids]
            if not shared_names:
                raise InvalidConfigError(f"{LABEL}: shared holds none of the model's parameters")
        else:
            shared_names = names
        if self.transfer_layers is not None:
            chosen = [n for n in names if any(n == p or n.startswith(p + ".") for p in self.transfer_layers)]
            if not chosen:
                raise InvalidConfigError(f"{LABEL}: transfer_layers {self.transfer_layers} match no parameter of {names}")
        else:
            chosen = shared_names
        self._transfer_names = chosen
        self.relation = transfer_relation(self.preferences, self.neighbors)
        for k in range(K):
            model = copy.deepcopy(self.model)
            optimizer = _clone_optimizer(self.optimizer, self.model, model)
            params = dict(model.named_parameters())
            solver, weighted = self._inner(self.preferences[k])
            self.models.append(model)
            self.optimizers.append(optimizer)
            self.adapters.append(
                MultiTaskBackward(solver, shared=[params[n] for n in shared_names], **self.backward_options)
            )
            self._weighted.append(weighted)
            if self.scheduler is not None:
                self.schedulers.append(self.scheduler(optimizer))
        if self.alpha > 0:
            self.transfer_matrix()  # refuse, before any step, an α above the bound at the initial learning rates

    def _grid(self) -> np.ndarray:
        if self.preferences is not None:
            if self.num_tasks is not None and self.preferences.shape[1] != self.num_tasks:
                raise InvalidConfigError(f"preferences have {self.preferences.shape[1]} tasks, num_tasks is {self.num_tasks}")
            if self.n_models is not None and self.preferences.shape[0] != self.n_models:
                raise InvalidConfigError(f"{self.preferences.shape[0]} preferences given, n_models is {self.n_models}")
            return self.preferences
        m = self.num_tasks
        if not isinstance(m, int) or m < 2:
            raise InvalidConfigError(f"{LABEL} needs num_tasks (≥ 2) or explicit preferences")
        if self.n_models is None:
            H = next(h for h in itertools.count(1) if grid_size(m, h) >= 5)
        else:
            sizes = {grid_size(m, h): h for h in range(1, self.n_models + 1) if grid_size(m, h) <= self.n_models}
            if self.n_models not in sizes:
                raise InvalidConfigError(
                    f"no Das–Dennis grid for {m} tasks has {self.n_models} points; sizes: {sorted(sizes)} …"
                )
            H = sizes[self.n_models]
        return das_dennis(m, H)

    def _inner(self, lam: np.ndarray) -> tuple[Any, bool]:
        """The inner solver of the model with preference ``lam`` and whether it sees λ ⊙ L."""
        import mtlsolve
        from mtlsolve.registry import hyperparameters
        from mtlsolve.solver import Solver

        spec = self.solver
        if spec is None:
            spec = "ls" if self.scalarization == "linear" else "tchebycheff"
        elif self.scalarization != "linear":
            raise InvalidConfigError(
                f"{LABEL}: scalarization picks the default inner solver; with solver={spec!r} leave it 'linear'"
            )
        if isinstance(spec, Solver):
            return copy.deepcopy(spec), True
        config = {"name": spec} if isinstance(spec, str) else dict(spec)
        fields = hyperparameters(type(mtlsolve.from_config(config)))
        if {"preferences", "index"} <= set(fields) and "index" not in config:
            # a population solver (pmtl): model k is subproblem k of the whole preference set
            config.setdefault("preferences", tuple(map(tuple, self.preferences)))
            config["index"] = int(np.flatnonzero((self.preferences == lam).all(axis=1))[0])
            return mtlsolve.from_config(config), False
        if "preference" in fields and "preference" not in config:
            config["preference"] = tuple(lam)
            if self.ideal is not None and "ideal" in fields:
                config["ideal"] = self.ideal
            return mtlsolve.from_config(config), False
        for key in ("weights", "task_weights"):  # ls, si; aligned_mtl
            if key in fields and key not in config:
                config[key] = tuple(lam)
                return mtlsolve.from_config(config), False
        return mtlsolve.from_config(config), True

    # ------------------------------------------------------------------ API
    @property
    def steps(self) -> int:
        return self._steps

    def learning_rates(self) -> np.ndarray:
        """η_k: each model's current learning rate (its optimizer's first param group)."""
        return np.array([float(opt.param_groups[0]["lr"]) for opt in self.optimizers])

    def transfer_matrix(self) -> np.ndarray:
        """M at the current learning rates (row-stochastic, non-negative)."""
        return transfer_matrix(self.relation, self.alpha, self.learning_rates())

    def max_alpha(self) -> float:
        """The largest α for which M stays non-negative at the current learning rates."""
        worst = float((self.learning_rates() * self.relation.sum(axis=1)).max())
        return math.inf if worst == 0 else 1.0 / worst

    def step(self, closure: Callable[[torch.nn.Module], Any]) -> MTGDStep:
        """One step of every model on one batch: ``closure(model)`` returns that model's m losses."""
        rows = []
        for k, model in enumerate(self.models):
            losses = _loss_vector(closure(model))
            rows.append(to_numpy64(losses))
            self.adapters[k].backward(self._inner_losses(k, losses))
        L = np.stack(rows)
        self._set_reference(L)
        delta, M = None, None
        if self.alpha > 0:
            M = self.transfer_matrix()
            delta = self._mixing(M)
        for k, model in enumerate(self.models):
            after = None
            if self.adapters[k].solver.post_step:
                after = (lambda k=k, model=model: self._inner_losses(k, _loss_vector(closure(model))))
            self.adapters[k].step(self.optimizers[k], closure=after)
        if delta is not None:
            with torch.no_grad():
                for name, change in delta.items():
                    for k, model in enumerate(self.models):
                        model.get_parameter(name).add_(change[k])
        self._steps += 1
        return MTGDStep(losses=L, transfer=M)

    def _inner_losses(self, k: int, losses: torch.Tensor) -> torch.Tensor:
        if not self._weighted[k]:
            return losses
        return losses * torch.as_tensor(self.preferences[k], dtype=losses.dtype, device=losses.device)

    def _mixing(self, M: np.ndarray) -> dict[str, torch.Tensor]:
        """Σ_j M_kj θ_j − θ_k for every transferred parameter, from the parameters before the step."""
        D = M - np.eye(M.shape[0])
        out = {}
        for name in self._transfer_names:
            stacked = torch.stack([model.get_parameter(name).detach() for model in self.models])
            Dt = torch.as_tensor(D, dtype=stacked.dtype, device=stacked.device)
            out[name] = torch.tensordot(Dt, stacked, dims=1)
        return out

    def _set_reference(self, L: np.ndarray) -> None:
        if self.reference is None:
            self.reference = tuple(float(v) for v in 1.1 * L.max(axis=0))

    def evaluate(self, fn: Callable[[torch.nn.Module], Any]) -> np.ndarray:
        """The K x m losses ``fn(model)`` of every model, without grad (fixes the HV reference point
        on the first call when none was given)."""
        with torch.no_grad():
            L = np.stack([to_numpy64(_loss_vector(fn(model))) for model in self.models])
        self._set_reference(L)
        return L

    def hypervolume(self, losses: np.ndarray) -> float:
        """HV of a K x m loss array against :attr:`reference`."""
        if self.reference is None:
            raise InvalidConfigError(f"{LABEL}: no reference point yet (call evaluate or step first, or pass one)")
        return hypervolume(losses, self.reference)

    def end_epoch(self) -> None:
        """Step the schedulers and tell the inner solvers an epoch ended."""
        for sched in self.schedulers:
            sched.step()
        for adapter in self.adapters:
            adapter.end_epoch()

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "method": LABEL,
            "models": [copy.deepcopy(m.state_dict()) for m in self.models],
            "optimizers": [copy.deepcopy(o.state_dict()) for o in self.optimizers],
            "schedulers": [s.state_dict() for s in self.schedulers],
            "solvers": [a.state_dict() for a in self.adapters],
            "steps": self._steps,
            "reference": self.reference,
            "preferences": self.preferences.copy(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if len(state["models"]) != len(self.models) or not np.array_equal(state["preferences"], self.preferences):
            raise InvalidConfigError(f"{LABEL}: the checkpoint has another population (K or preferences differ)")
        for model, sd in zip(self.models, state["models"]):
            model.load_state_dict(sd)
        for opt, sd in zip(self.optimizers, state["optimizers"]):
            opt.load_state_dict(sd)
        for sched, sd in zip(self.schedulers, state["schedulers"]):
            sched.load_state_dict(sd)
        for adapter, sd in zip(self.adapters, state["solvers"]):
            adapter.load_state_dict(sd)
        self._steps = int(state["steps"])
        self.reference = None if state["reference"] is None else tuple(state["reference"])


def _params(item: Any) -> list[torch.Tensor]:
    if isinstance(item, torch.nn.Module):
        return list(item.parameters())
    if isinstance(item, torch.Tensor):
        return [item]
    return [t for sub in item for t in _params(sub)]

"""MTGD-reconstructed — a Pareto set by multi-task gradient descent with parameter transfer
(docs/methods.md#mtgd).

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

The models start apart by default (``init="independent"``, as the predecessor's code builds every
network anew); ``init="copy"`` starts all from the template, where the transfer term is zero until
the models drift apart.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import numpy as np
import torch

from mtlsolve._array import to_numpy64
from mtlsolve.adapters.backward import MultiTaskBackward, _loss_vector
from mtlsolve.adapters.strategies._population import ScoredPopulation
from mtlsolve.adapters.strategies.settings import LABEL, MTGDSettings, das_dennis, grid_size
from mtlsolve.errors import InvalidConfigError
from mtlsolve.strategy import settings_for

__all__ = ["LABEL", "MTGD", "MTGDStep", "das_dennis", "grid_size", "transfer_matrix", "transfer_relation"]


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
        groups.append(
            {
                **{k: v for k, v in group.items() if k != "params"},
                "params": [params[index[id(p)]] for p in group["params"]],
            }
        )
    clone = type(optimizer)(groups, **optimizer.defaults)
    clone.load_state_dict(optimizer.state_dict())
    return clone


class MTGD(ScoredPopulation):
    """MTGD-reconstructed: K models trained on K scalarisations, coupled by parameter transfer.

    Runtime objects: ``model`` (the template; model 0 is a deep copy of it, the others are copies
    re-initialised or not according to ``init``), ``optimizer`` (an optimizer over the template's parameters, cloned with
    its settings for each model, or a callable ``params -> optimizer``), ``shared`` (optional: the
    template's shared trunk, a module or parameters; transfer acts on it by default and the inner
    solver sees it as the shared parameters), ``scheduler`` (optional callable ``optimizer ->
    scheduler``, stepped by :meth:`end_epoch`).

    Settings (``settings=``, a :class:`~mtlsolve.adapters.strategies.settings.MTGDSettings`, or the same
    names as keywords; reconstructed defaults, docs/methods.md#mtgd): ``num_tasks`` m, ``n_models`` K (a Das–Dennis grid size; default
    the smallest grid with K ≥ 5) or explicit ``preferences`` (K x m), ``scalarization``
    (``"linear"``, default, or ``"tchebycheff"`` with ``ideal`` z, default 0), ``alpha`` (1; 0 gives
    K independent runs), ``neighbors`` (2; None: every pair), ``transfer_layers`` (name prefixes of
    the parameters to mix, e.g. ``["trunk"]``; default the ``shared`` parameters, else all),
    ``init`` (``"independent"``, default: models 1…K−1 draw fresh
    parameters with each module's ``reset_parameters`` from the global torch RNG, as the predecessor's
    code builds each network anew; ``"copy"``: all K start from the template's parameters, so the
    transfer term is zero until the models drift apart — the setting for a pre-trained template),
    ``reference`` (HV reference point; default 1.1 x the per-task maximum over the models of the
    first losses seen by :meth:`evaluate` or :meth:`step`, docs/problems.md#hypervolume), ``backward_options``.

    ``solver`` (name, config mapping or instance) replaces the scalarisation as each model's inner
    combiner: a population solver with ``preferences`` and ``index`` (``pmtl``) gets the whole grid
    and index k, one with a ``preference`` field (``epo``, ``tchebycheff``, …) gets λ^k there (EPO
    needs every λ^k_i > 0: pass interior ``preferences``), one with ``weights`` or ``task_weights``
    (``ls``, ``aligned_mtl``) gets λ^k as weights, any other combines the preference-weighted
    losses λ^k_i L_i. With ``alpha=0`` and ``solver="pmtl"`` or ``"epo"`` the population is that
    Pareto method's K independent runs (the independent-runs baseline, docs/methods.md#mtgd).
    """

    label = LABEL

    def __init__(
        self,
        *,
        model: torch.nn.Module,
        optimizer: Any,
        shared: Any = None,
        scheduler: Any = None,
        settings: MTGDSettings | None = None,
        **options: Any,
    ) -> None:
        self.settings: MTGDSettings = settings_for(MTGDSettings, settings, options)
        self.model = model
        self.optimizer = optimizer
        self.shared = shared
        self.scheduler = scheduler
        config = self.settings
        #: the K x m preference vectors, one row per model
        self.preferences: np.ndarray = config.preference_grid()
        #: the hypervolume reference point (fixed by the first losses seen when the settings give none)
        self.reference: tuple[float, ...] | None = config.reference
        self.models: list = []
        self.optimizers: list = []
        self.schedulers: list = []
        self.adapters: list = []
        self._weighted: list = []
        self._steps = 0
        K = self.preferences.shape[0]
        names = [n for n, _ in self.model.named_parameters()]
        if self.shared is not None:
            shared_ids = {id(p) for p in _params(self.shared)}
            shared_names = [n for n, p in self.model.named_parameters() if id(p) in shared_ids]
            if not shared_names:
                raise InvalidConfigError(f"{LABEL}: shared holds none of the model's parameters")
        else:
            shared_names = names
        if config.transfer_layers is not None:
            chosen = [n for n in names if any(n == p or n.startswith(p + ".") for p in config.transfer_layers)]
            if not chosen:
                raise InvalidConfigError(
                    f"{LABEL}: transfer_layers {config.transfer_layers} match no parameter of {names}"
                )
        else:
            chosen = shared_names
        self._transfer_names = chosen
        self.relation: np.ndarray = transfer_relation(self.preferences, config.neighbors)
        for k in range(K):
            model = copy.deepcopy(self.model)
            if k > 0 and config.init == "independent":
                _reinitialise(model)
            optimizer = _clone_optimizer(self.optimizer, self.model, model)
            params = dict(model.named_parameters())
            solver, weighted = self._inner(self.preferences[k])
            self.models.append(model)
            self.optimizers.append(optimizer)
            self.adapters.append(
                MultiTaskBackward(solver, shared=[params[n] for n in shared_names], **config.backward_options)
            )
            self._weighted.append(weighted)
            if self.scheduler is not None:
                self.schedulers.append(self.scheduler(optimizer))
        if config.alpha > 0:
            self.transfer_matrix()  # refuse, before any step, an α above the bound at the initial learning rates

    def _inner(self, lam: np.ndarray) -> tuple[Any, bool]:
        """The inner solver of the model with preference ``lam`` and whether it sees λ ⊙ L."""
        import mtlsolve
        from mtlsolve.registry import hyperparameters
        from mtlsolve.solver import Solver

        spec = self.settings.solver
        if spec is None:
            spec = "ls" if self.settings.scalarization == "linear" else "tchebycheff"
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
            if self.settings.ideal is not None and "ideal" in fields:
                config["ideal"] = self.settings.ideal
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
        return transfer_matrix(self.relation, self.settings.alpha, self.learning_rates())

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
        if self.settings.alpha > 0:
            M = self.transfer_matrix()
            delta = self._mixing(M)
        for k, model in enumerate(self.models):
            after = None
            if self.adapters[k].capabilities.post_step:

                def after(k=k, model=model):
                    return self._inner_losses(k, _loss_vector(closure(model)))

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


def _reinitialise(model: torch.nn.Module) -> None:
    """Draw every parameter of ``model`` afresh with its modules' own ``reset_parameters`` (global torch RNG)."""
    covered = set()
    for module in model.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
            covered.update(id(p) for p in module.parameters(recurse=False))
    missing = [n for n, p in model.named_parameters() if id(p) not in covered]
    if missing:
        raise InvalidConfigError(
            f"{LABEL}: init='independent' re-draws parameters with their module's reset_parameters; "
            f"{missing[:3]} have none (give the module one, or pass init='copy')"
        )


def _params(item: Any) -> list[torch.Tensor]:
    if isinstance(item, torch.nn.Module):
        return list(item.parameters())
    if isinstance(item, torch.Tensor):
        return [item]
    return [t for sub in item for t in _params(sub)]

"""MOO-SVGD — a particle approximation of the Pareto set by multi-objective Stein variational
gradient descent (docs/methods.md#moo_svgd).

Liu, Tong, Liu, "Profiling Pareto Front With Multi-Objective Stein Variational Gradient Descent",
NeurIPS 2021, §3 (eq. 7–9); the LibMOON implementation (``moosvgd_solver.py``) is the reference for
the kernel. K particles (copies of a model) each compute their multi-objective descent direction
g*_k = G_kᵀ w_k (MGDA by default, any registered solver) and move along

    φ_j = (1/K) Σ_k [ k(θ_k, θ_j) g*_k − α ∇_{θ_k} k(θ_k, θ_j) ],      θ_j ← θ_j − η φ_j,

the SVGD update with the common descent direction in place of the score: a kernel-weighted average
of the particles' directions plus a repulsion that keeps them apart. As in the paper's experiments
and LibMOON, the RBF kernel is taken on the loss vectors, k_kj = exp(−‖F_k − F_j‖²/h), so its
gradient reaches θ through the losses: −½ ∇_{θ_j} Σ_{k,l} k_kl = G_jᵀ c_j with
c_j = (2/h) Σ_k k_kj (F_j − F_k). h is ``bandwidth`` or the median heuristic median(‖F_k − F_j‖²)/log K.
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
from mtlsolve.adapters.backward import _loss_vector
from mtlsolve.adapters.strategies._population import ScoredPopulation
from mtlsolve.adapters.strategies.moo_svgd_settings import MOOSVGDSettings
from mtlsolve.adapters.strategies.mtgd import _clone_optimizer
from mtlsolve.errors import InvalidConfigError, InvalidSystemError
from mtlsolve.strategy import settings_for

__all__ = ["MOOSVGD", "MOOSVGDSettings", "MOOSVGDStep", "rbf_kernel"]


def rbf_kernel(F: torch.Tensor, bandwidth: float | None = None) -> tuple[torch.Tensor, float]:
    """k_kj = exp(−‖F_k − F_j‖²/h) on the K x m loss vectors and h (``bandwidth``, else the median of
    the K² squared distances over log K; 1 when every distance is 0)."""
    D = torch.cdist(F, F).pow(2)
    if bandwidth is None:
        h = float(np.median(to_numpy64(D))) / math.log(F.shape[0])
        h = h if h > 0 else 1.0
    else:
        h = float(bandwidth)
    return torch.exp(-D / h), h


@attrs.frozen(kw_only=True)
class MOOSVGDStep:
    """One population step: the K x m losses before it, the kernel matrix and its bandwidth h, and
    the K x m weights of each particle's descent direction."""

    losses: np.ndarray
    kernel: np.ndarray
    bandwidth: float
    weights: np.ndarray


class MOOSVGD(ScoredPopulation):
    """MOO-SVGD: K particles moved by the SVGD update with multi-objective descent directions.

    Runtime objects: ``model`` (the template; the K particles are deep copies of it, re-initialised
    with seeds ``seed + k`` through each module's ``reset_parameters`` when ``reinit`` so that they
    start apart), ``optimizer`` (over the template's parameters, cloned with its settings for each
    particle, or a callable ``params -> optimizer``; SGD gives the paper's update).

    Settings (``settings=``, a :class:`~mtlsolve.adapters.strategies.moo_svgd_settings.MOOSVGDSettings`,
    or the same names as keywords): ``num_tasks`` m, ``n_particles`` K (8), ``solver`` (each
    particle's direction, ``"mgda"``; a name, config mapping or instance), ``repulsion`` α (1; 0
    leaves the kernel-weighted average of the directions), ``bandwidth`` h (None: the median
    heuristic), ``reinit`` (True), ``seed`` (0), ``reference`` (the hypervolume reference point; default
    1.1 x the per-task maximum of the first losses seen, docs/problems.md#hypervolume).
    """

    label = "moo_svgd"

    def __init__(
        self,
        *,
        model: torch.nn.Module,
        optimizer: Any,
        settings: MOOSVGDSettings | None = None,
        **options: Any,
    ) -> None:
        import mtlsolve
        from mtlsolve.solver import Solver

        self.settings: MOOSVGDSettings = settings_for(MOOSVGDSettings, settings, options)
        config = self.settings
        self.model = model
        self.reference: tuple[float, ...] | None = config.reference
        self.models: list[torch.nn.Module] = []
        self.optimizers: list = []
        self.solvers: list = []
        for k in range(config.n_particles):
            particle = copy.deepcopy(model)
            if config.reinit:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(config.seed + k)
                    for module in particle.modules():
                        if hasattr(module, "reset_parameters"):
                            module.reset_parameters()
            self.models.append(particle)
            self.optimizers.append(_clone_optimizer(optimizer, model, particle))
            spec = config.solver
            if isinstance(spec, Solver):
                self.solvers.append(copy.deepcopy(spec))
            else:
                self.solvers.append(mtlsolve.from_config({"name": spec} if isinstance(spec, str) else dict(spec)))
        self._params = [[p for p in particle.parameters() if p.requires_grad] for particle in self.models]
        if not self._params[0]:
            raise InvalidConfigError("moo_svgd: the model has no parameter that requires grad")
        self._steps = 0

    @property
    def steps(self) -> int:
        return self._steps

    def step(self, closure: Callable[[torch.nn.Module], Any]) -> MOOSVGDStep:
        """One SVGD step of every particle on one batch: ``closure(model)`` returns its m losses."""
        m, K = self.settings.num_tasks, self.settings.n_particles
        Fs, Gs, W = [], [], []
        for k, model in enumerate(self.models):
            losses = _loss_vector(closure(model))
            if losses.numel() != m:
                raise InvalidSystemError(f"moo_svgd: {losses.numel()} losses for num_tasks={m}")
            G = self._jacobian(losses, self._params[k])
            result = self.solvers[k](G, losses=losses.detach())
            Fs.append(losses.detach())
            Gs.append(G)
            W.append(torch.as_tensor(result.weights, dtype=G.dtype, device=G.device))
        F = torch.stack(Fs).to(Gs[0].dtype)
        self._set_reference(to_numpy64(F))
        kernel, h = rbf_kernel(F, self.settings.bandwidth)
        directions = torch.stack([w @ G for w, G in zip(W, Gs)])  # g*_k, K x n
        repel = (2.0 / h) * (kernel[:, :, None] * (F[None, :, :] - F[:, None, :])).sum(dim=0)  # c_j, K x m
        for j in range(K):
            phi = kernel[:, j] @ directions - self.settings.repulsion * (repel[j] @ Gs[j])
            self._write(self._params[j], phi / K)
            self.optimizers[j].step()
            self.optimizers[j].zero_grad(set_to_none=True)
        self._steps += 1
        return MOOSVGDStep(
            losses=to_numpy64(F), kernel=to_numpy64(kernel), bandwidth=h, weights=to_numpy64(torch.stack(W))
        )

    @staticmethod
    def _jacobian(losses: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
        """The m x n matrix of the task gradients with respect to all of ``params``, flattened."""
        rows = []
        for i in range(losses.numel()):
            grads = torch.autograd.grad(losses[i], params, retain_graph=i < losses.numel() - 1, allow_unused=True)
            rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(params, grads)]))
        return torch.stack(rows)

    @staticmethod
    def _write(params: list[torch.Tensor], flat: torch.Tensor) -> None:
        offset = 0
        for p in params:
            p.grad = flat[offset : offset + p.numel()].view_as(p).to(p.dtype).clone()
            offset += p.numel()

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "models": [copy.deepcopy(m.state_dict()) for m in self.models],
            "optimizers": [copy.deepcopy(o.state_dict()) for o in self.optimizers],
            "solvers": [s.state_dict() for s in self.solvers],
            "steps": self._steps,
            "reference": self.reference,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if len(state["models"]) != len(self.models):
            raise InvalidConfigError(
                f"moo_svgd: the checkpoint has {len(state['models'])} particles, not {len(self.models)}"
            )
        for model, sd in zip(self.models, state["models"]):
            model.load_state_dict(sd)
        for opt, sd in zip(self.optimizers, state["optimizers"]):
            opt.load_state_dict(sd)
        for solver, sd in zip(self.solvers, state["solvers"]):
            solver.load_state_dict(sd)
        self._steps = int(state["steps"])
        self.reference = None if state["reference"] is None else tuple(state["reference"])

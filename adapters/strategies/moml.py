"""MoML — task weights as the upper level of a multi-objective bilevel problem (docs/methods.md#moml).

Ye, Lin, Yue, Guo, Xiao, Zhang, "Multi-Objective Meta Learning", NeurIPS 2021, arXiv 2102.07121,
§3–5; the multi-task instantiation follows the authors' trainer (Baijiong-Lin/FORUM,
``Trainer.train_MOML``). The task weights are λ = softmax(a) with logits a (initially 1/m, so λ is
uniform); the lower level trains θ on Σ_i λ_i L_i, unrolled by one SGD step
θ′ = θ − α ∇_θ Σ_i λ_i L_i(θ) as in :class:`~mtlsolve.adapters.strategies.auto_lambda.AutoLambda`.
Unlike Auto-Lambda the upper level is the *vector* of validation losses: its per-task
hypergradients with respect to the logits

    H_ij = ∂L_i^val(θ′)/∂a_j = −α Σ_k ∇L_i^val(θ′)ᵀ ∇L_k(θ) ∂λ_k/∂a_j

are combined by MGDA (the registered ``mgda`` solver on the rows of H, or another ``solver``), and a
takes one Adam step along the combined direction d = Hᵀw.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from mtlsolve._array import to_numpy64
from mtlsolve.adapters.strategies.auto_lambda import AutoLambda, AutoLambdaStep, Closure
from mtlsolve.adapters.strategies.moml_settings import MoMLSettings
from mtlsolve.errors import NonFiniteError

__all__ = ["AutoLambdaStep", "MoML", "MoMLSettings"]


class MoML(AutoLambda):
    """MoML: Σ_i λ_i L_i, λ = softmax(a), with a moved along the MGDA direction of the per-task
    validation hypergradients.

    Runtime objects as :class:`~mtlsolve.adapters.strategies.auto_lambda.AutoLambda` (``model``,
    ``optimizer``; ``step(train, val)``: ``train`` gives the lower-level batch's losses, ``val`` the
    upper-level batch's). Settings (``settings=``, a
    :class:`~mtlsolve.adapters.strategies.moml_settings.MoMLSettings`, or the same names as keywords):
    ``num_tasks`` m, ``solver`` (the upper-level combination, ``"mgda"``), ``outer_lr`` (Adam's learning
    rate for a, 1e-3, the authors' code), ``inner_lr`` α (0.1; None: the optimizer's learning rate),
    ``update_every`` (1). The step record's ``hypergradient`` is d (with respect to a);
    :attr:`last_hypergradients` holds H and :attr:`last_solver_weights` the combination's weights w.
    """

    settings_class: ClassVar[type] = MoMLSettings

    def __init__(self, **kwargs: Any) -> None:
        import mtlsolve
        from mtlsolve.solver import Solver

        super().__init__(**kwargs)
        m = self.settings.num_tasks
        #: the logits a (a leaf trained by :attr:`meta_optimizer`); :attr:`weights` is softmax(a)
        self.logits = torch.full((m,), 1.0 / m, dtype=self.weights.dtype, device=self.weights.device)
        self.logits.requires_grad_(True)
        self.meta_optimizer = torch.optim.Adam([self.logits], lr=self.settings.outer_lr)
        self.weights = torch.softmax(self.logits.detach(), dim=0)
        spec = self.settings.solver
        if isinstance(spec, Solver):
            self._solver = copy.deepcopy(spec)
        else:
            self._solver = mtlsolve.from_config({"name": spec} if isinstance(spec, str) else dict(spec))
        self.last_hypergradients: torch.Tensor | None = None
        self.last_solver_weights: torch.Tensor | None = None

    def _hypergradient(self, G: list[torch.Tensor], train: Closure, val: Closure) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = self._set_lookahead(G)
        m = self.settings.num_tasks
        eye = torch.eye(m, dtype=self.weights.dtype, device=self.weights.device)
        val_losses, V = self._val_grads(val, eye)
        H_lam = torch.stack(
            [-alpha * sum((rows.flatten(1) * g.flatten()).sum(dim=1) for rows, g in zip(G, v)) for v in V]
        )
        s = self.weights
        H = H_lam @ (torch.diag(s) - torch.outer(s, s))  # chain rule through λ = softmax(a)
        if not torch.isfinite(H).all():
            raise NonFiniteError(f"moml: the hypergradients are not finite ({H.tolist()})")
        result = self._solver(H, losses=val_losses)
        self.last_hypergradients = H.detach().clone()
        self.last_solver_weights = torch.as_tensor(result.weights, dtype=H.dtype, device=H.device)
        return torch.as_tensor(result.direction, dtype=H.dtype, device=H.device), val_losses

    def _update_weights(self, G: list[torch.Tensor], train: Closure, val: Closure) -> dict[str, np.ndarray]:
        d, val_losses = self._hypergradient(G, train, val)
        self.meta_optimizer.zero_grad(set_to_none=True)
        self.logits.grad = d.to(self.logits.dtype)
        self.meta_optimizer.step()
        self.meta_optimizer.zero_grad(set_to_none=True)
        self.weights = torch.softmax(self.logits.detach(), dim=0)
        return {"val_losses": to_numpy64(val_losses), "hypergradient": to_numpy64(d)}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "logits": self.logits.detach().clone(), "solver": self._solver.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            self.logits.copy_(state["logits"])
        self.weights = torch.softmax(self.logits.detach(), dim=0)
        self._solver.load_state_dict(state["solver"])

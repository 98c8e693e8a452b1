"""Auto-Lambda — task weights learned from a one-step lookahead on a validation loss
(docs/methods.md#auto_lambda).

Liu, James, Davison, Johns, "Auto-Lambda: Disentangling Dynamic Task Relationships", TMLR 2022,
arXiv 2202.03091, §3 (eq. 2–4); official code lorenmt/auto-lambda. The task weights λ are the
upper-level variables of

    min_λ  L_val(θ′),   θ′ = θ − α ∇_θ Σ_i λ_i L_i(θ)   (one virtual SGD step on the training batch),

where L_val sums the validation losses of the *primary* tasks. Since θ′ is linear in λ, the
hypergradient is exactly

    ∂L_val(θ′)/∂λ_i = −α ∇L_val(θ′)ᵀ ∇L_i(θ),

which :class:`AutoLambda` computes from the per-task training gradients (``hypergradient="exact"``)
or, as the official code does, by the central difference −α (L_i(θ + εv) − L_i(θ − εv))/(2ε) with
v = ∇L_val(θ′) and ε = ``fd_radius``/‖v‖ (``"finite_difference"``). λ takes one Adam step on it, then
the model steps on Σ_i λ_i L_i with the new λ.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import attrs
import numpy as np
import torch

from mtlsolve._array import to_numpy64
from mtlsolve.adapters.backward import _loss_vector
from mtlsolve.adapters.strategies.auto_lambda_settings import AutoLambdaSettings
from mtlsolve.errors import InvalidConfigError, InvalidSystemError, NonFiniteError
from mtlsolve.strategy import settings_for

__all__ = ["AutoLambda", "AutoLambdaSettings", "AutoLambdaStep"]

Closure = Callable[[torch.nn.Module], Any]


@attrs.frozen(kw_only=True)
class AutoLambdaStep:
    """One step: the training losses, the weights λ the model stepped with, and (on a weight update)
    the validation losses at θ′ and the hypergradient ∂L_val(θ′)/∂λ."""

    losses: np.ndarray
    weights: np.ndarray
    val_losses: np.ndarray | None = None
    hypergradient: np.ndarray | None = None


class AutoLambda:
    """Auto-Lambda: Σ_i λ_i L_i with λ trained by the lookahead hypergradient of a validation loss.

    Runtime objects: ``model`` and ``optimizer`` (over the model's parameters; the model steps with it
    on Σ_i λ_i L_i, and its SGD momentum and weight decay enter the virtual step as in the official
    code).

    Settings (``settings=``, an :class:`~mtlsolve.adapters.strategies.auto_lambda_settings.AutoLambdaSettings`,
    or the same names as keywords): ``num_tasks`` m; ``primary`` (the tasks whose validation loss is
    the upper objective; default all, the multi-task setting); ``weight_init`` (0.1, the official
    code); ``outer_lr`` (Adam's learning rate for λ, 1e-3); ``inner_lr`` α of the virtual step (0.1;
    None: the optimizer's current learning rate, as the official code); ``update_every`` (update λ
    every k-th step, 1); ``hypergradient`` (``"exact"`` or ``"finite_difference"``) and ``fd_radius``
    (0.01, the official ε·‖v‖).

    Each :meth:`step` takes ``train(model)`` and ``val(model)``, closures returning the m training and
    validation losses of the model they are given (the model itself or the lookahead copy holding θ′).
    λ is not clipped, as in the official code.
    """

    settings_class: ClassVar[type] = AutoLambdaSettings

    def __init__(
        self,
        *,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        settings: AutoLambdaSettings | None = None,
        **options: Any,
    ) -> None:
        self.settings: AutoLambdaSettings = settings_for(self.settings_class, settings, options)
        self.model = model
        self.optimizer = optimizer
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise InvalidConfigError(f"{self.settings.name}: the model has no parameter that requires grad")
        self._lookahead = copy.deepcopy(model)
        self._lookahead.requires_grad_(False)
        self._lookahead_params = [
            q for p, q in zip(model.parameters(), self._lookahead.parameters()) if p.requires_grad
        ]
        first = self.params[0]
        m = self.settings.num_tasks
        #: the task weights λ (a leaf tensor trained by :attr:`meta_optimizer`)
        init = getattr(self.settings, "weight_init", 1.0 / m)
        self.weights = torch.full((m,), init, dtype=first.dtype, device=first.device)
        self.weights.requires_grad_(True)
        self.meta_optimizer = torch.optim.Adam([self.weights], lr=self.settings.outer_lr)
        primary = getattr(self.settings, "primary", None) or range(m)
        self._primary = torch.zeros(m, dtype=first.dtype, device=first.device)
        self._primary[list(primary)] = 1.0
        self._steps = 0

    @property
    def steps(self) -> int:
        return self._steps

    def inner_lr(self) -> float:
        """α of the virtual step: ``inner_lr``, else the optimizer's current learning rate."""
        if self.settings.inner_lr is not None:
            return self.settings.inner_lr
        return float(self.optimizer.param_groups[0]["lr"])

    def step(self, train: Closure, val: Closure) -> AutoLambdaStep:
        """Update λ (every ``update_every`` steps) by the lookahead hypergradient, then step the model."""
        losses = self._losses(train(self.model))
        G = self._task_grads(losses)
        record = {}
        if self._steps % self.settings.update_every == 0:
            record = self._update_weights(G, train, val)
        lam = self.weights.detach()
        self.optimizer.zero_grad(set_to_none=True)
        for p, rows in zip(self.params, G):
            p.grad = torch.tensordot(lam.to(rows.dtype), rows, dims=1)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._steps += 1
        return AutoLambdaStep(losses=to_numpy64(losses.detach()), weights=to_numpy64(lam.clone()), **record)

    def hypergradient(self, train: Closure, val: Closure) -> torch.Tensor:
        """∂L_val(θ′)/∂λ at the current θ and λ (no update of λ or θ)."""
        G = self._task_grads(self._losses(train(self.model)))
        return self._hypergradient(G, train, val)[0]

    # ------------------------------------------------------------------ internals
    def _losses(self, losses: Any) -> torch.Tensor:
        losses = _loss_vector(losses)
        if losses.numel() != self.settings.num_tasks:
            raise InvalidSystemError(
                f"{self.settings.name}: {losses.numel()} losses for num_tasks={self.settings.num_tasks}"
            )
        return losses

    def _task_grads(self, losses: torch.Tensor) -> list[torch.Tensor]:
        """Per parameter, the (m, *shape) block of the m task gradients ∇L_i(θ)."""
        m = losses.numel()
        rows = []
        for i in range(m):
            grads = torch.autograd.grad(losses[i], self.params, retain_graph=i < m - 1, allow_unused=True)
            rows.append([torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads)])
        return [torch.stack(block) for block in zip(*rows)]

    def _set_lookahead(self, G: list[torch.Tensor]) -> float:
        """Load θ′ = θ − α(Σ_i λ_i ∇L_i + SGD momentum + weight decay) into the lookahead copy; returns α."""
        alpha = self.inner_lr()
        lam = self.weights.detach()
        self._lookahead.load_state_dict(self.model.state_dict())
        self._lookahead.train(self.model.training)
        with torch.no_grad():
            for p, q, rows in zip(self.params, self._lookahead_params, G):
                d = torch.tensordot(lam.to(rows.dtype), rows, dims=1)
                state = self.optimizer.state.get(p, {})
                group = next(g for g in self.optimizer.param_groups if any(x is p for x in g["params"]))
                if group.get("momentum", 0) and state.get("momentum_buffer") is not None:
                    d = d + group["momentum"] * state["momentum_buffer"]
                if group.get("weight_decay", 0):
                    d = d + group["weight_decay"] * p
                q.copy_(p - alpha * d)
        return alpha

    def _val_grads(self, val: Closure, targets: torch.Tensor) -> tuple[torch.Tensor, list[list[torch.Tensor]]]:
        """The m validation losses at θ′ and, for each row c of ``targets``, ∇_θ′ Σ_i c_i L_i^val(θ′)."""
        for q in self._lookahead_params:
            q.requires_grad_(True)
        try:
            val_losses = self._losses(val(self._lookahead))
            out = []
            for k, c in enumerate(targets):
                target = (c.to(val_losses.dtype) * val_losses).sum()
                v = torch.autograd.grad(
                    target, self._lookahead_params, retain_graph=k < len(targets) - 1, allow_unused=True
                )
                out.append([torch.zeros_like(q) if g is None else g for q, g in zip(self._lookahead_params, v)])
        finally:
            for q in self._lookahead_params:
                q.requires_grad_(False)
        return val_losses.detach(), out

    def _hypergradient(self, G: list[torch.Tensor], train: Closure, val: Closure) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = self._set_lookahead(G)
        val_losses, (v,) = self._val_grads(val, self._primary[None])
        if self.settings.hypergradient == "exact":
            h = -alpha * sum((rows.flatten(1) * g.flatten()).sum(dim=1) for rows, g in zip(G, v))
        else:
            h = -alpha * self._central_difference(v, train)
        if not torch.isfinite(h).all():
            raise NonFiniteError(f"{self.settings.name}: the hypergradient is not finite ({to_numpy64(h)})")
        return h, val_losses

    def _central_difference(self, v: list[torch.Tensor], train: Closure) -> torch.Tensor:
        """(L(θ + εv) − L(θ − εv))/(2ε), ε = fd_radius/‖v‖: the official code's estimate of J(θ)v."""
        norm = torch.sqrt(sum((g * g).sum() for g in v))
        if norm == 0:
            return torch.zeros(self.settings.num_tasks, dtype=v[0].dtype, device=v[0].device)
        eps = self.settings.fd_radius / norm
        start = [p.detach().clone() for p in self.params]
        out = []
        with torch.no_grad():
            for sign in (1.0, -1.0):
                for p, p0, g in zip(self.params, start, v):
                    p.copy_(p0 + sign * eps * g)
                out.append(self._losses(train(self.model)))
            for p, p0 in zip(self.params, start):
                p.copy_(p0)
        return (out[0] - out[1]) / (2 * eps)

    def _update_weights(self, G: list[torch.Tensor], train: Closure, val: Closure) -> dict[str, np.ndarray]:
        h, val_losses = self._hypergradient(G, train, val)
        self.meta_optimizer.zero_grad(set_to_none=True)
        self.weights.grad = h.to(self.weights.dtype)
        self.meta_optimizer.step()
        self.meta_optimizer.zero_grad(set_to_none=True)
        return {"val_losses": to_numpy64(val_losses), "hypergradient": to_numpy64(h)}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """λ, its Adam state and the step counter (the model and optimizer checkpoint themselves)."""
        return {
            "weights": self.weights.detach().clone(),
            "meta_optimizer": copy.deepcopy(self.meta_optimizer.state_dict()),
            "steps": self._steps,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        weights = torch.as_tensor(state["weights"])
        if weights.shape != self.weights.shape:
            raise InvalidConfigError(
                f"{self.settings.name}: the checkpoint has {weights.numel()} task weights, not {self.weights.numel()}"
            )
        with torch.no_grad():
            self.weights.copy_(weights)
        self.meta_optimizer.load_state_dict(copy.deepcopy(state["meta_optimizer"]))
        self._steps = int(state["steps"])

"""FORUM — a first-order multi-gradient method for multi-objective bilevel task weighting
(docs/methods.md#forum).

Ye, Lin, Cao, Zhang, Tsang, "A First-Order Multi-Gradient Algorithm for Multi-Objective Bi-Level
Optimization", ECAI 2024, arXiv 2401.09257, §3 (eq. 4–14); the details follow the authors' trainer
(Baijiong-Lin/FORUM, ``Trainer.train_FORUM``). With task weights λ = softmax(a) (logits a, initially
1/m), model parameters ω and z = (a, ω), the lower level is f(z) = Σ_i λ_i L_i(ω) on the ``train``
batch and the upper level the m losses F_i(ω) of the ``val`` batch. The value-function
reformulation min_z F(z) s.t. q(z) = f(a, ω) − f(a, ω_T) ≤ 0, with ω_T after ``inner_steps`` SGD
steps (``inner_lr``) on f from ω, is solved by one multi-gradient step on z per call:

* ∇q = ∇_z f(a, ω) − (∇_a f(a, ω_T), 0)  (first order: ω_T is held fixed);
* u_i = (0, ∇_ω F_i/‖∇_ω F_i‖), π_i = ρ − ⟨∇q, u_i⟩/‖∇q‖², c = ρ‖∇q‖²;
* w solves min_w wᵀAAᵀw − c·w_{m+1} s.t. Σ_{i≤m} w_i = 1, w ≥ 0, w_{m+1} ≥ Σ_i w_i π_i, A = [u_1; …; u_m; ∇q]
  (the paper's problem (14), a small QP solved by cvxpy);
* λ̄ ← λ̄ + (e + 1)^{−3/4}(w_{1..m} − λ̄) (an average over steps, e the epoch, λ̄ = 0 at start),
  ν = max(Σ_i λ̄_i π_i, 0), and z steps along d = Σ_i λ̄_i u_i + ν∇q (a by Adam, ω by the
  caller's optimizer).

No second derivative is ever taken.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import numpy as np
import torch

from mtlsolve._array import to_numpy64
from mtlsolve.adapters.backward import _loss_vector
from mtlsolve.adapters.strategies.forum_settings import FORUMSettings
from mtlsolve.errors import InvalidConfigError, InvalidSystemError, NonFiniteError, SolverError
from mtlsolve.kernels import _cvx
from mtlsolve.strategy import settings_for

__all__ = ["FORUM", "FORUMSettings", "FORUMStep", "forum_qp"]

Closure = Callable[[torch.nn.Module], Any]
#: the authors' code stops the inner loop when the lower-level loss exceeds this value
INNER_LOSS_CAP = 1e5


@_cvx.cached
def _qp(m: int):
    import cvxpy as cp

    factor = cp.Parameter((m + 1, m + 1))
    pi = cp.Parameter(m)
    c = cp.Parameter(nonneg=True)
    w = cp.Variable(m + 1, nonneg=True)
    constraints = [cp.sum(w[:m]) == 1, w[m] >= pi @ w[:m]]
    problem = cp.Problem(cp.Minimize(cp.sum_squares(factor @ w) - c * w[m]), constraints)
    return problem, factor, pi, c, w


def forum_qp(K: np.ndarray, pi: np.ndarray, c: float) -> np.ndarray:
    """argmin_w wᵀKw − c·w_m over w ≥ 0 with Σ_{i<m} w_i = 1 and w_m ≥ Σ_{i<m} π_i w_i (K is (m+1) x (m+1))."""
    import cvxpy as cp

    m = len(pi)
    problem, factor, pi_p, c_p, w = _qp(m)
    factor.value = _cvx.psd_factor(np.asarray(K, dtype=np.float64))
    pi_p.value = np.asarray(pi, dtype=np.float64)
    c_p.value = float(c)
    problem.solve(solver=cp.CLARABEL)  # default tolerances: the tight reference ones warn on ill-conditioned steps
    if problem.status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
        raise SolverError(f"forum: the weight QP ended with status {problem.status!r}")
    return np.clip(np.asarray(w.value, dtype=np.float64), 0.0, None)


@attrs.frozen(kw_only=True)
class FORUMStep:
    """One step: the lower- and upper-level losses, the QP solution w, the averaged weights λ̄, ν, the
    constraint value q = f(a, ω) − f(a, ω_T) and the task weights λ after the step."""

    losses: np.ndarray
    val_losses: np.ndarray
    qp_weights: np.ndarray
    averaged: np.ndarray
    nu: float
    constraint: float
    weights: np.ndarray


def _flat(grads: Any, like: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(like, grads)])


class FORUM:
    """FORUM: task weights and model stepped together along a first-order multi-gradient direction.

    Runtime objects: ``model`` and ``optimizer`` (over the model's parameters; it applies ω's part of the
    direction). Settings (``settings=``, a :class:`~mtlsolve.adapters.strategies.forum_settings.FORUMSettings`,
    or the same names as keywords): ``num_tasks`` m, ``outer_lr`` (Adam's learning rate for the logits,
    1e-3), ``inner_lr`` η (0.1) and ``inner_steps`` T (5) of the inner SGD loop, ``rho`` ρ (0.1).

    ``step(train, val)``: closures returning the m losses of the model they are given on the lower-
    and upper-level batches. Call :meth:`end_epoch` after each epoch (the averaging rate of λ̄ is
    (epoch + 1)^{−3/4}, as the authors' code).
    """

    def __init__(
        self,
        *,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        settings: FORUMSettings | None = None,
        **options: Any,
    ) -> None:
        self.settings: FORUMSettings = settings_for(FORUMSettings, settings, options)
        self.model = model
        self.optimizer = optimizer
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise InvalidConfigError("forum: the model has no parameter that requires grad")
        m = self.settings.num_tasks
        first = self.params[0]
        #: the logits a of the task weights λ = softmax(a) (a leaf trained by :attr:`meta_optimizer`)
        self.logits = torch.full((m,), 1.0 / m, dtype=first.dtype, device=first.device, requires_grad=True)
        self.meta_optimizer = torch.optim.Adam([self.logits], lr=self.settings.outer_lr)
        self._averaged = np.zeros(m)
        self._epoch = 0
        self._steps = 0

    @property
    def steps(self) -> int:
        return self._steps

    @property
    def weights(self) -> torch.Tensor:
        """λ = softmax(a)."""
        return torch.softmax(self.logits.detach(), dim=0)

    def end_epoch(self) -> None:
        self._epoch += 1

    def _losses(self, losses: Any) -> torch.Tensor:
        losses = _loss_vector(losses)
        if losses.numel() != self.settings.num_tasks:
            raise InvalidSystemError(f"forum: {losses.numel()} losses for num_tasks={self.settings.num_tasks}")
        return losses

    def _inner(self, train: Closure) -> torch.nn.Module:
        """A copy of the model after T SGD steps (η) on f(a, ·) = Σ_i λ_i L_i."""
        inner = copy.deepcopy(self.model)
        params = [q for p, q in zip(self.model.parameters(), inner.parameters()) if p.requires_grad]
        lam = self.weights
        for _ in range(self.settings.inner_steps):
            loss = (lam * self._losses(train(inner))).sum()
            if loss.item() > INNER_LOSS_CAP:
                break
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            with torch.no_grad():
                for q, g in zip(params, grads):
                    if g is not None:
                        q.sub_(self.settings.inner_lr * g)
        return inner

    def step(self, train: Closure, val: Closure) -> FORUMStep:
        """One FORUM step of the logits and the model."""
        m, rho = self.settings.num_tasks, self.settings.rho
        losses = self._losses(train(self.model))
        f = (torch.softmax(self.logits, dim=0) * losses).sum()
        g_f = _flat(torch.autograd.grad(f, [self.logits, *self.params], allow_unused=True), [self.logits, *self.params])
        inner = self._inner(train)
        with torch.no_grad():
            losses_T = self._losses(train(inner))
        f_T = (torch.softmax(self.logits, dim=0) * losses_T).sum()
        g_q = g_f.clone()
        g_q[:m] -= torch.autograd.grad(f_T, self.logits)[0]
        F = self._losses(val(self.model))
        rows = []
        for i in range(m):
            g = _flat(torch.autograd.grad(F[i], self.params, retain_graph=i < m - 1, allow_unused=True), self.params)
            rows.append(torch.cat([g.new_zeros(m), g / (1e-8 + g.norm())]))
        U = torch.stack(rows)
        qq = float(g_q @ g_q) + 1e-8
        pi = rho - to_numpy64(U @ g_q) / qq
        A = torch.cat([U, g_q[None]])
        K = to_numpy64(A @ A.T)
        if not (np.isfinite(K).all() and np.isfinite(pi).all()):
            raise NonFiniteError("forum: the gradients are not finite")
        w = forum_qp(K, pi, rho * qq)
        self._averaged += (w[:m] - self._averaged) / (self._epoch + 1) ** 0.75
        nu = max(float(self._averaged @ pi), 0.0)
        lam_bar = torch.as_tensor(self._averaged, dtype=U.dtype, device=U.device)
        d = lam_bar @ U + nu * g_q
        self.meta_optimizer.zero_grad(set_to_none=True)
        self.optimizer.zero_grad(set_to_none=True)
        self.logits.grad = d[:m].clone()
        offset = m
        for p in self.params:
            p.grad = d[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        self.meta_optimizer.step()
        self.optimizer.step()
        self.meta_optimizer.zero_grad(set_to_none=True)
        self.optimizer.zero_grad(set_to_none=True)
        self._steps += 1
        return FORUMStep(
            losses=to_numpy64(losses.detach()),
            val_losses=to_numpy64(F.detach()),
            qp_weights=w,
            averaged=self._averaged.copy(),
            nu=nu,
            constraint=float(f.detach() - f_T.detach()),
            weights=to_numpy64(self.weights),
        )

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """The logits, their Adam state, λ̄, the epoch and step counters (the model and optimizer
        checkpoint themselves)."""
        return {
            "logits": self.logits.detach().clone(),
            "meta_optimizer": copy.deepcopy(self.meta_optimizer.state_dict()),
            "averaged": self._averaged.copy(),
            "epoch": self._epoch,
            "steps": self._steps,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        logits = torch.as_tensor(state["logits"])
        if logits.shape != self.logits.shape:
            raise InvalidConfigError(
                f"forum: the checkpoint has {logits.numel()} task weights, not {self.logits.numel()}"
            )
        with torch.no_grad():
            self.logits.copy_(logits)
        self.meta_optimizer.load_state_dict(copy.deepcopy(state["meta_optimizer"]))
        self._averaged = np.array(state["averaged"], dtype=np.float64)
        self._epoch = int(state["epoch"])
        self._steps = int(state["steps"])

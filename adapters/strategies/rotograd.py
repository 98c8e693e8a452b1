"""RotoGrad — gradient homogenisation by learned feature rotations and gradient scaling
(docs/methods.md#rotograd).

Javaloy & Valera, "RotoGrad: Gradient Homogenization in Multitask Learning", ICLR 2022,
arXiv 2103.02631, §4 (eq. 5–8); the official code adrianjav/rotograd is followed for the details.
Each task k sees the shared representation z rotated, r_k = R_k z (R_k ∈ SO(s) acting on the first
s = ``rotation_size`` features), and its head is trained on L_k as usual. With ĝ_k = ∂L_k/∂r_k and
g_k = R_kᵀ ĝ_k = ∂L_k/∂z:

* the rotations (a leader in the paper's Stackelberg game, trained by their own optimizer) minimise
  mean_n ‖R_k v_n − ĝ_{k,n}‖², where v = mean_k g_k ‖ḡ‖/‖g_k‖ (ḡ = mean_k g_k) is the mean of the task
  gradients rescaled to a common norm: R_k learns to turn its task's gradient toward the others';
* the backbone receives Σ_k C g_k/‖g_k‖ with C = Σ_k α_k ‖g_k‖, α_k = r_k/Σ_i r_i and
  r_k = ‖g_k‖/‖g_k^0‖ (relative convergence; g^0 is taken at the first step and again after
  ``burn_in_period`` steps): every task pushes the backbone equally hard, the scale favouring the
  slowest-converging ones (``scaling="rotograd"``). ``"gradnorm"`` uses GradNorm weights instead
  (the official RotoGradNorm); ``"none"`` sums the g_k (RotateOnly).

R_k = exp(W_k − W_kᵀ) with W_k initialised at 0 (R_k = I), so every R_k is orthogonal by
construction (the official code parametrises SO(s) by the same exponential map through geotorch).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import numpy as np
import torch

from mtlsolve._array import to_numpy64
from mtlsolve.adapters.backward import _loss_vector
from mtlsolve.adapters.strategies.rotograd_settings import RotoGradSettings
from mtlsolve.errors import InvalidConfigError, InvalidSystemError, StateError
from mtlsolve.strategy import settings_for

__all__ = ["RotoGrad", "RotoGradSettings", "RotoGradStep", "rotate"]


def rotate(z: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """R applied to the first R.shape[0] features (last axis) of every row of z, the rest unchanged."""
    s = R.shape[0]
    low = z[..., :s] @ R.T
    return low if s == z.shape[-1] else torch.cat((low, z[..., s:]), dim=-1)


@attrs.frozen(kw_only=True)
class RotoGradStep:
    """One step: the task losses, the gradient norms ‖g_k‖ at z, the scale weights α_k (or the
    GradNorm weights) and the rotation losses."""

    losses: np.ndarray
    grad_norms: np.ndarray
    weights: np.ndarray
    rotation_losses: np.ndarray


class RotoGrad:
    """RotoGrad: task-specific rotations of the shared features and homogenised gradient magnitudes.

    Runtime objects: ``backbone`` (module mapping the input to z of shape (..., d), d ≥
    ``rotation_size``), ``heads`` (m modules, head k maps r_k to task k's prediction), ``optimizer``
    (over the backbone's and heads' parameters), ``rotation_optimizer`` (optional callable
    ``params -> optimizer`` for the rotation (and GradNorm weight) parameters; default Adam with
    ``rotation_lr``).

    Settings (``settings=``, a :class:`~mtlsolve.adapters.strategies.rotograd_settings.RotoGradSettings`,
    or the same names as keywords): ``num_tasks`` m, ``rotation_size`` s, ``scaling``
    (``"rotograd"``, ``"gradnorm"`` or ``"none"``), ``burn_in_period`` (20: the step at which the
    reference norms g^0 and initial losses are taken again), ``normalize_losses`` (False: heads see
    L_k; True: L_k/L_k^0, as the official option), ``rotation_lr`` (1e-3; 0 freezes R_k = I),
    ``gradnorm_alpha`` (1.5, the GradNorm asymmetry for ``scaling="gradnorm"``).

    Use: ``preds = rotograd(x)`` (with grad enabled it records z), then ``rotograd.step(losses)`` with the m
    losses of those predictions: one step of both optimizers.
    """

    def __init__(
        self,
        *,
        backbone: torch.nn.Module,
        heads: Sequence[torch.nn.Module],
        optimizer: torch.optim.Optimizer,
        rotation_optimizer: Any = None,
        settings: RotoGradSettings | None = None,
        **options: Any,
    ) -> None:
        self.settings: RotoGradSettings = settings_for(RotoGradSettings, settings, options)
        config = self.settings
        if len(heads) != config.num_tasks:
            raise InvalidConfigError(f"rotograd: {len(heads)} heads for num_tasks={config.num_tasks}")
        self.backbone = backbone
        self.heads = list(heads)
        self.optimizer = optimizer
        first = next(iter(backbone.parameters()), None)
        kw = {} if first is None else {"dtype": first.dtype, "device": first.device}
        s = config.rotation_size
        #: W_k, with R_k = exp(W_k − W_kᵀ)
        self.generators = [torch.zeros(s, s, requires_grad=True, **kw) for _ in range(config.num_tasks)]
        #: GradNorm's log-weights (``scaling="gradnorm"``)
        self.log_weights = torch.zeros(config.num_tasks, requires_grad=True, **kw)
        params = self.rotation_parameters()
        if rotation_optimizer is None:
            self.rotation_optimizer = torch.optim.Adam(params, lr=config.rotation_lr)
        else:
            self.rotation_optimizer = rotation_optimizer(params)
        self._rep: torch.Tensor | None = None
        self._inputs: list[torch.Tensor] = []
        self._rotated: list[torch.Tensor] = []
        self._initial_norms: torch.Tensor | None = None
        self._initial_losses: torch.Tensor | None = None
        self._steps = 0

    @property
    def steps(self) -> int:
        return self._steps

    def rotation_parameters(self) -> list[torch.Tensor]:
        params = list(self.generators)
        if self.settings.scaling == "gradnorm":
            params.append(self.log_weights)
        return params

    def rotation(self, k: int) -> torch.Tensor:
        """R_k = exp(W_k − W_kᵀ) (differentiable in W_k), computed in float64 and rounded once to W_k's
        dtype, so that R_kᵀR_k = I to a few units of that dtype's round-off."""
        W = self.generators[k]
        return torch.linalg.matrix_exp((W - W.T).double()).to(W.dtype)

    def gradnorm_weights(self) -> torch.Tensor:
        """GradNorm's task weights: softmax-like exp(w_k) normalised to sum m (official RotoGradNorm)."""
        w = self.log_weights.exp() + 1e-15
        return w * (self.settings.num_tasks / w.sum())

    def __call__(self, x: Any) -> list[Any]:
        """The m heads' predictions on x; with grad enabled, z and each task's input are kept for :meth:`step`."""
        z = self.backbone(x)
        if z.shape[-1] < self.settings.rotation_size:
            raise InvalidSystemError(
                f"rotograd: the representation has {z.shape[-1]} features, rotation_size is {self.settings.rotation_size}"
            )
        training = torch.is_grad_enabled()
        self._rep, self._inputs, self._rotated = (z if training else None), [], []
        preds = []
        for k, head in enumerate(self.heads):
            R = self.rotation(k).detach()
            if training:
                z_k = z.detach().requires_grad_(True)
                r_k = rotate(z_k, R)
                r_k.retain_grad()
                self._inputs.append(z_k)
                self._rotated.append(r_k)
            else:
                r_k = rotate(z, R)
            preds.append(head(r_k))
        return preds

    def step(self, losses: Any) -> RotoGradStep:
        """Back-propagate the m losses of the last training forward, then step both optimizers."""
        record = self.backward(losses)
        self.optimizer.step()
        self.rotation_optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.rotation_optimizer.zero_grad(set_to_none=True)
        return record

    def backward(self, losses: Any) -> RotoGradStep:
        """Fill the gradients of the heads, the backbone and the rotations (no optimizer step)."""
        losses = _loss_vector(losses)
        m = self.settings.num_tasks
        if losses.numel() != m:
            raise InvalidSystemError(f"rotograd: {losses.numel()} losses for num_tasks={m}")
        if self._rep is None:
            raise StateError("rotograd: call the strategy on a batch in training mode before step/backward")
        if self._steps in (0, self.settings.burn_in_period):
            self._initial_losses = losses.detach().clone()
        normalised = losses / self._initial_losses
        for k in range(m):
            (normalised[k] if self.settings.normalize_losses else losses[k]).backward(retain_graph=k < m - 1)
        g = torch.stack([z_k.grad for z_k in self._inputs])  # g_k = ∂L_k/∂z, m x (..., d)
        g_hat = torch.stack([r_k.grad for r_k in self._rotated])  # ĝ_k = ∂L_k/∂r_k
        rotation_losses = self._rotation_backward(g, g_hat)
        rep_grad, weights, norms = self._rep_grad(g, normalised.detach())
        self._rep.backward(rep_grad)
        self._rep, self._inputs, self._rotated = None, [], []
        self._steps += 1
        return RotoGradStep(
            losses=to_numpy64(losses.detach()),
            grad_norms=to_numpy64(norms),
            weights=to_numpy64(weights),
            rotation_losses=to_numpy64(rotation_losses),
        )

    def _rotation_backward(self, g: torch.Tensor, g_hat: torch.Tensor) -> torch.Tensor:
        """Gradients of mean_n ‖R_k v_n − ĝ_{k,n}‖² into W_k (official ``RotateOnly._rep_grad``)."""
        m = g.shape[0]
        norms = g.flatten(1).norm(dim=1)
        mean = g.mean(dim=0)
        v = (g * (mean.norm() / norms.clamp_min(1e-15)).view(-1, *[1] * (g.ndim - 1))).mean(dim=0)
        out = []
        for k in range(m):
            residual = rotate(v, self.rotation(k)) - g_hat[k]
            loss = (residual * residual).sum(dim=-1).mean()
            loss.backward()
            out.append(loss.detach())
        return torch.stack(out)

    def _rep_grad(self, g: torch.Tensor, normalised: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The gradient sent into the backbone at z, the task weights used and ‖g_k‖."""
        m = g.shape[0]
        shape = (-1, *[1] * (g.ndim - 1))
        norms = g.flatten(1).norm(dim=1).clamp_min(1e-15)
        scaling = self.settings.scaling
        if scaling == "none":
            return g.sum(dim=0), torch.ones(m, dtype=g.dtype, device=g.device), norms
        if scaling == "rotograd":
            if self._initial_norms is None or self._steps == self.settings.burn_in_period:
                self._initial_norms = norms.clone()
            ratios = norms / self._initial_norms
            alpha = ratios / ratios.sum().clamp_min(1e-15)
            C = (alpha * norms).sum()
            return (g / norms.view(shape) * C).sum(dim=0), alpha, norms
        # gradnorm (official RotoGradNorm): |w_k‖g_k‖ − ‖mean_k w_k g_k‖ (L̃_k/mean L̃)^α| into w
        w = self.gradnorm_weights()
        with torch.no_grad():
            target = (g * w.detach().view(shape)).sum(dim=0).norm() / m
            target = target * (normalised / normalised.mean()) ** self.settings.gradnorm_alpha
        (w * norms - target).abs().sum().backward()
        w = w.detach()
        return (g * w.view(shape)).sum(dim=0), w, norms

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """The rotation generators, GradNorm weights, the reference norms and losses, the rotation
        optimizer and the step counter (the backbone, heads and optimizer checkpoint themselves)."""

        def clone(t):
            return None if t is None else t.detach().clone()

        return {
            "generators": [W.detach().clone() for W in self.generators],
            "log_weights": self.log_weights.detach().clone(),
            "initial_norms": clone(self._initial_norms),
            "initial_losses": clone(self._initial_losses),
            "rotation_optimizer": copy.deepcopy(self.rotation_optimizer.state_dict()),
            "steps": self._steps,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        generators = state["generators"]
        if len(generators) != len(self.generators) or generators[0].shape != self.generators[0].shape:
            raise InvalidConfigError("rotograd: the checkpoint has other rotations (num_tasks or rotation_size differ)")
        with torch.no_grad():
            for W, saved in zip(self.generators, generators):
                W.copy_(saved)
            self.log_weights.copy_(state["log_weights"])
        self._initial_norms = None if state["initial_norms"] is None else state["initial_norms"].clone()
        self._initial_losses = None if state["initial_losses"] is None else state["initial_losses"].clone()
        self.rotation_optimizer.load_state_dict(copy.deepcopy(state["rotation_optimizer"]))
        self._steps = int(state["steps"])

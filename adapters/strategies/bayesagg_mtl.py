"""BayesAgg-MTL — task gradients at the shared representation aggregated by their Bayesian uncertainty
(docs/methods.md#bayesagg_mtl).

Achituve, Diamant, Netzer, Chechik, Fetaya, "Bayesian Uncertainty for Gradient Aggregation in
Multi-Task Learning", ICML 2024, arXiv 2402.04005 (regression: exact gradient moments under a Gaussian
last-layer posterior; aggregation of the tasks' Gaussian gradients per feature dimension); the official
code ssi-research/BayesAgg_MTL is followed for the details. Regression tasks only.

Every output k of every task has a linear last layer on the shared features h ∈ ℝᵈ and a Gaussian
likelihood y ~ N(w_kᵀh, σ²). With the prior w_k ~ N(0, γI), the posterior given features H and targets Y
is N(μ_k, Σ) with

    Λ = I/γ + HᵀH/σ²,   Σ = Λ⁻¹,   μ_k = Σ Hᵀy_k/σ²

(one Σ for every output, the features being shared). As the official code, H and Y are those of the
whole previous epoch plus the batch (the previous epoch's posterior is the batch's prior). The gradient
of the loss (y − wᵀh)² with respect to h, g = 2w(wᵀh − y), is then random; with s = μᵀh − y,
v = hᵀΣh and c = Σh its moments per feature dimension j are, exactly,

    E[g_j] = 2(μ_j s + c_j),
    Var[g_j] = 4(μ_j² v + s² Σ_jj + Σ_jj v + c_j² + 2 μ_j s c_j)

(the fourth moments of the Gaussian pair (w_j, wᵀh − y)). Treating each g_k as a Gaussian with these
moments and a diagonal covariance, the product of the Gaussians gives the aggregated gradient at every
sample and feature dimension

    ∂L/∂h_j = Σ_k λ_kj E[g_kj] / Σ_k λ_kj,   λ_kj = 1 / Var[g_kj]^p

(p = ``variance_power``, the official code's variance tempering; p = 0 is the plain mean), divided by
the batch size and back-propagated into the backbone. The heads train on the sum of the task losses.
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
from mtlsolve.adapters.strategies.bayesagg_mtl_settings import BayesAggMTLSettings
from mtlsolve.errors import InvalidConfigError, InvalidSystemError, NonFiniteError, StateError
from mtlsolve.strategy import settings_for

__all__ = ["BayesAggMTL", "BayesAggMTLSettings", "BayesAggStep", "aggregate", "gradient_moments", "posterior"]

#: the variances are clamped from below before tempering (official code)
MIN_VARIANCE = 1e-8


def posterior(
    gram: torch.Tensor, cross: torch.Tensor, *, prior_variance: float, noise_variance: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (K, D) and covariance (D, D) of the last-layer posterior from the prior N(0, γI) and the
    statistics ``gram`` = HᵀH (D, D) and ``cross`` = HᵀY (D, K) of Gaussian linear regression."""
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    L, info = torch.linalg.cholesky_ex(eye / prior_variance + gram / noise_variance)
    if info.item() != 0 or not torch.isfinite(L).all():
        raise NonFiniteError("bayesagg_mtl: the posterior precision is not positive definite (non-finite features?)")
    cov = torch.cholesky_solve(eye, L)
    mean = torch.cholesky_solve(cross / noise_variance, L).T
    return mean, cov


def gradient_moments(
    features: torch.Tensor, targets: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor, *, bias: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """E[g] and the diagonal of Cov[g], each (B, K, d), of g = ∂(y_k − w_kᵀh)²/∂h = 2w_k(w_kᵀh − y_k) at
    every row h of ``features`` (B, D) with ``targets`` (B, K), under w_k ~ N(mean[k], cov). With
    ``bias`` the last feature is the constant 1 of a bias (D = d + 1) and g has the first d components."""
    D = features.shape[1]
    if mean.shape != (targets.shape[1], D) or cov.shape != (D, D):
        raise InvalidSystemError(
            f"bayesagg_mtl: a posterior of mean {tuple(mean.shape)} and covariance {tuple(cov.shape)} does not fit "
            f"{D} features and {targets.shape[1]} outputs"
        )
    d = D - int(bias)
    s = features @ mean.T - targets  # (B, K): the mean of wᵀh − y
    c = features @ cov  # (B, D): Cov(w, wᵀh − y)
    v = (c * features).sum(dim=1)  # (B,): Var(wᵀh − y)
    mu, c, var_w = mean[None, :, :d], c[:, None, :d], torch.diagonal(cov)[:d]
    s, v = s[..., None], v[:, None, None]
    expected = 2 * (mu * s + c)
    variance = 4 * (mu**2 * v + s**2 * var_w + var_w * v + c**2 + 2 * mu * s * c)
    return expected, variance


def aggregate(expected: torch.Tensor, variance: torch.Tensor, power: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The product-of-Gaussians direction Σ_k λ_k E[g_k] / Σ_k λ_k over axis 1, λ_k = 1/max(Var[g_k], 1e-8)^p,
    and the normalised weights λ_k / Σ_j λ_j."""
    precision = variance.clamp(min=MIN_VARIANCE).pow(-power)
    weights = precision / precision.sum(dim=1, keepdim=True)
    return (weights * expected).sum(dim=1), weights


@attrs.frozen(kw_only=True)
class BayesAggStep:
    """One step: the task losses, each task's share of the aggregation (its normalised weights λ summed
    over its outputs, averaged over samples and feature dimensions) and whether it was a warm-up step
    (the plain sum of the losses)."""

    losses: np.ndarray
    weights: np.ndarray
    warmup: bool


class BayesAggMTL:
    """BayesAgg-MTL: the backbone steps on the uncertainty-weighted mean of the task gradients at h.

    Runtime objects: ``backbone`` (module mapping the input to features h of shape (B, d)), ``heads``
    (m modules, head t maps h to task t's predictions, (B,) or (B, k_t); the method assumes a linear
    last layer), ``optimizer`` (over the backbone's and heads' parameters).

    Settings (``settings=``, a :class:`~mtlsolve.adapters.strategies.bayesagg_mtl_settings.BayesAggMTLSettings`,
    or the same names as keywords): ``num_tasks`` m; ``task_type`` (``"regression"``, the only one
    supported); ``prior_variance`` γ (1.0); ``noise_variance`` σ² (1.0, fixed in the official code);
    ``variance_power`` p (0.5, the official default); ``bias`` (False: the posterior is over the weights
    on h only, as the official code; True: on (h, 1)); ``warmup_epochs`` (0: epochs trained on the plain
    sum of the losses before the aggregation starts, the official ``ls_epochs``).

    Use: ``preds = bayesagg(x)`` (with grad enabled it records h), then ``bayesagg.step(losses, targets)``
    with the m losses of those predictions and the m targets ((B,) or (B, k_t) each, or one (B, m)
    tensor), and ``bayesagg.end_epoch()`` after each pass over the training set: the features and
    targets seen during an epoch make the next epoch's prior. Each output of a multi-output task counts
    as one Gaussian in the aggregation (official code).
    """

    def __init__(
        self,
        *,
        backbone: torch.nn.Module,
        heads: Sequence[torch.nn.Module],
        optimizer: torch.optim.Optimizer,
        settings: BayesAggMTLSettings | None = None,
        **options: Any,
    ) -> None:
        self.settings: BayesAggMTLSettings = settings_for(BayesAggMTLSettings, settings, options)
        if len(heads) != self.settings.num_tasks:
            raise InvalidConfigError(f"bayesagg_mtl: {len(heads)} heads for num_tasks={self.settings.num_tasks}")
        self.backbone = backbone
        self.heads = list(heads)
        self.optimizer = optimizer
        self._rep: torch.Tensor | None = None
        self._input: torch.Tensor | None = None
        self._sizes: list[int] = []
        self._gram: torch.Tensor | None = None  # HᵀH and HᵀY of the current epoch
        self._cross: torch.Tensor | None = None
        self._prior_gram: torch.Tensor | None = None  # those of the previous epoch
        self._prior_cross: torch.Tensor | None = None
        self._steps = 0
        self._epochs = 0

    @property
    def steps(self) -> int:
        return self._steps

    @property
    def epochs(self) -> int:
        return self._epochs

    def __call__(self, x: Any) -> list[Any]:
        """The m heads' predictions on x; with grad enabled, h is kept for :meth:`step`."""
        h = self.backbone(x)
        if not isinstance(h, torch.Tensor) or h.ndim != 2:
            raise InvalidSystemError(
                f"bayesagg_mtl: the backbone must return features of shape (B, d), got {getattr(h, 'shape', type(h))}"
            )
        if not torch.is_grad_enabled():
            return [head(h) for head in self.heads]
        self._rep = h
        self._input = h.detach().requires_grad_(True)
        preds = [head(self._input) for head in self.heads]
        self._sizes = [p.numel() // h.shape[0] if isinstance(p, torch.Tensor) else -1 for p in preds]
        return preds

    def step(self, losses: Any, targets: Any) -> BayesAggStep:
        """Back-propagate the last training forward (heads: Σ_t L_t; backbone: the aggregated gradient at
        h), then one optimizer step."""
        record = self.backward(losses, targets)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return record

    def backward(self, losses: Any, targets: Any) -> BayesAggStep:
        """Fill the gradients of the heads and the backbone (no optimizer step)."""
        losses = _loss_vector(losses)
        m = self.settings.num_tasks
        if losses.numel() != m:
            raise InvalidSystemError(f"bayesagg_mtl: {losses.numel()} losses for num_tasks={m}")
        if self._rep is None:
            raise StateError("bayesagg_mtl: call the strategy on a batch in training mode before step/backward")
        h, rep, inp = self._features(), self._rep, self._input
        y = self._targets(targets, h)
        self._accumulate(h, y)
        losses.sum().backward()
        warmup = self._epochs < self.settings.warmup_epochs
        if warmup or inp.grad is None:
            grad = torch.zeros_like(rep) if inp.grad is None else inp.grad
            weights = torch.full((m,), 1.0 / m, dtype=torch.float64)
        else:
            direction, shares = self.direction(h, y)
            grad = (direction / h.shape[0]).to(rep.dtype)
            bounds = np.cumsum([0, *self._sizes])
            weights = torch.stack([shares[:, a:b].sum(dim=1).mean() for a, b in zip(bounds[:-1], bounds[1:])])
        if not torch.isfinite(grad).all():
            raise NonFiniteError("bayesagg_mtl: the aggregated gradient at the features is not finite")
        rep.backward(grad)
        self._rep = self._input = None
        self._steps += 1
        return BayesAggStep(losses=to_numpy64(losses.detach()), weights=to_numpy64(weights), warmup=warmup)

    def direction(self, features: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The aggregated gradient (B, d) (before the division by B) and the normalised weights (B, K, d)
        for float64 ``features`` (B, D) and ``targets`` (B, K), under the posterior from the previous
        epoch's and this batch's statistics."""
        mean, cov = self.posterior(features, targets)
        expected, variance = gradient_moments(features, targets, mean, cov, bias=self.settings.bias)
        return aggregate(expected, variance, self.settings.variance_power)

    def posterior(
        self, features: torch.Tensor | None = None, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (K, D) and covariance (D, D) of the last-layer posterior given the previous epoch's
        features and targets and, when given, the batch's (float64; D = d, or d + 1 with ``bias``). The
        mean is the posterior-mean head, which the official code predicts with at evaluation."""
        gram, cross = self._prior_gram, self._prior_cross
        if features is not None:
            batch_gram, batch_cross = features.T @ features, features.T @ targets
            gram = batch_gram if gram is None else gram + batch_gram
            cross = batch_cross if cross is None else cross + batch_cross
        if gram is None:
            raise StateError("bayesagg_mtl: no features yet (call end_epoch after an epoch, or pass a batch)")
        s = self.settings
        return posterior(gram, cross, prior_variance=s.prior_variance, noise_variance=s.noise_variance)

    def end_epoch(self) -> None:
        """Make this epoch's features and targets the prior of the next epoch's batch posteriors."""
        if self._gram is not None:
            self._prior_gram, self._prior_cross = self._gram, self._cross
        self._gram = self._cross = None
        self._epochs += 1

    # ------------------------------------------------------------------ internals
    def _features(self) -> torch.Tensor:
        h = self._rep.detach().to(torch.float64)
        if not torch.isfinite(h).all():
            raise NonFiniteError("bayesagg_mtl: the features are not finite")
        if self.settings.bias:
            h = torch.cat((h, torch.ones_like(h[:, :1])), dim=1)
        return h

    def _targets(self, targets: Any, h: torch.Tensor) -> torch.Tensor:
        B, m = h.shape[0], self.settings.num_tasks
        if isinstance(targets, torch.Tensor):
            if targets.shape != (B, m):
                raise InvalidSystemError(
                    f"bayesagg_mtl: a targets tensor must have shape (B, m) = {(B, m)}, got {tuple(targets.shape)}"
                )
            targets = list(targets.T)
        if len(targets) != m:
            raise InvalidSystemError(f"bayesagg_mtl: {len(targets)} targets for num_tasks={m}")
        columns = []
        for t, (y, size) in enumerate(zip(targets, self._sizes)):
            y = torch.as_tensor(y)
            if y.shape[0] != B or y.numel() != B * size or not y.is_floating_point():
                raise InvalidSystemError(
                    f"bayesagg_mtl: task {t}'s targets must be real, (B,) or (B, k) matching its head's "
                    f"{size} output(s) per sample for B={B}, got {y.dtype} of shape {tuple(y.shape)}"
                )
            columns.append(y.detach().reshape(B, size).to(device=h.device, dtype=torch.float64))
        y = torch.cat(columns, dim=1)
        if not torch.isfinite(y).all():
            raise NonFiniteError("bayesagg_mtl: the targets are not finite")
        return y

    def _accumulate(self, h: torch.Tensor, y: torch.Tensor) -> None:
        gram, cross = h.T @ h, h.T @ y
        for known in (self._cross, self._prior_cross):
            if known is not None and known.shape != cross.shape:
                raise InvalidSystemError(
                    f"bayesagg_mtl: {tuple(cross.shape)} features x outputs, earlier batches had {tuple(known.shape)}"
                )
        self._gram = gram if self._gram is None else self._gram + gram
        self._cross = cross if self._cross is None else self._cross + cross

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The epoch's and the previous epoch's feature statistics and the counters (the backbone,
        heads and optimizer checkpoint themselves)."""
        return copy.deepcopy(
            {
                "gram": self._gram,
                "cross": self._cross,
                "prior_gram": self._prior_gram,
                "prior_cross": self._prior_cross,
                "steps": self._steps,
                "epochs": self._epochs,
            }
        )

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        missing = {"gram", "cross", "prior_gram", "prior_cross", "steps", "epochs"} - set(state)
        if missing:
            raise StateError(f"bayesagg_mtl: the checkpoint lacks {sorted(missing)}")
        state = copy.deepcopy(dict(state))
        self._gram, self._cross = state["gram"], state["cross"]
        self._prior_gram, self._prior_cross = state["prior_gram"], state["prior_cross"]
        self._steps, self._epochs = int(state["steps"]), int(state["epochs"])

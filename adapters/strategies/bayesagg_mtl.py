"""BayesAgg-MTL — task gradients at the shared representation aggregated by their Bayesian uncertainty
(docs/methods.md#bayesagg_mtl).

Achituve, Diamant, Netzer, Chechik, Fetaya, "Bayesian Uncertainty for Gradient Aggregation in
Multi-Task Learning", ICML 2024, arXiv 2402.04005 (regression: exact gradient moments under a Gaussian
last-layer posterior; aggregation of the tasks' Gaussian gradients per feature dimension); the official
code ssi-research/BayesAgg_MTL is followed for the details, including its classification tasks and its
mixing of regression and classification tasks.

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

Classification tasks (official code) have a linear head θ = (W, b) on h with a Bernoulli (``"binary"``:
every output an independent sigmoid, one Gaussian each in the aggregation) or categorical
(``"multiclass"``: one softmax, one Gaussian) likelihood. Their posterior is the Laplace (Taylor)
approximation at the current head weights θ₀: with φ = (h, 1), the logits' residual r = p − y and
curvature A (p(1 − p) for a sigmoid, diag(p) − ppᵀ for a softmax), a prior N(μ₀, Λ₀⁻¹),

    Λ = Λ₀ + Σ_i A_i ⊗ φ_iφ_iᵀ,   μ = θ₀ − Λ⁻¹(Σ_i r_i ⊗ φ_i + Λ₀(θ₀ − μ₀)),

one Newton step on the log-posterior (Λ is its exact Hessian, the head being linear). As for regression
the previous epoch's posterior (the same step from N(0, γI) over its stored features, at the weights of
the epoch's first aggregated step) is the batch's prior. The gradient at h, g = Σ_c r_c w_c, has no
closed-form moments: they are the sample mean and variance over ``mc_samples`` draws θ ~ N(μ, Λ⁻¹)
(official code), from the strategy's own seeded generator, and its variances are tempered with
``classification_variance_power``.
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

__all__ = [
    "BayesAggMTL",
    "BayesAggMTLSettings",
    "BayesAggStep",
    "aggregate",
    "gradient_moments",
    "laplace_posterior",
    "posterior",
    "sampled_moments",
]

#: the variances are clamped from below before tempering (official code)
MIN_VARIANCE = 1e-8
#: Monte-Carlo draws per chunk (bounds the memory of the sampled gradients)
MC_CHUNK = 128


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


def _residual_curvature(
    logits: torch.Tensor, labels: torch.Tensor, kind: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """For logits (..., B, U, n) and labels (B, U): ∂NLL/∂logits r, and the curvature ∂²NLL/∂logits² as
    diag(a) − qqᵀ (q None for independent sigmoids)."""
    if kind == "binary":
        p = torch.sigmoid(logits)
        return p - labels[..., None], p * (1 - p), None
    p = torch.softmax(logits, dim=-1)
    return p - torch.nn.functional.one_hot(labels.long(), logits.shape[-1]).to(p.dtype), p, p


def laplace_posterior(
    features: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    *,
    kind: str,
    prior_mean: torch.Tensor,
    prior_precision: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (U, n·D) and precision (U, n·D, n·D) of the Laplace approximation at the head weights
    ``weights`` θ₀ (U, n, D) of a linear classifier on ``features`` φ (B, D) with ``labels`` (B, U) and
    the prior N(prior_mean, prior_precision⁻¹): Λ = Λ₀ + Σ_i A_i ⊗ φ_iφ_iᵀ and μ = θ₀ − Λ⁻¹∇(−log p)(θ₀).
    ``kind`` "binary": U independent sigmoid outputs (n = 1, labels in [0, 1]); "multiclass": one
    softmax over n classes (U = 1, labels the class indices); θ is flattened class-major."""
    U, n, D = weights.shape
    logits = torch.einsum("bp,unp->bun", features, weights)
    r, a, q = _residual_curvature(logits, labels, kind)
    theta = weights.reshape(U, n * D)
    grad = torch.einsum("bun,bp->unp", r, features).reshape(U, n * D)
    grad = grad + (prior_precision @ (theta - prior_mean)[..., None])[..., 0]
    blocks = torch.einsum("bun,bp,bq->unpq", a, features, features)  # the diag(a) part, block-diagonal
    curvature = torch.zeros(U, n, D, n, D, dtype=features.dtype, device=features.device)
    for c in range(n):
        curvature[:, c, :, c, :] = blocks[:, c]
    curvature = curvature.reshape(U, n * D, n * D)
    if q is not None:
        qphi = (q[..., None] * features[:, None, None, :]).reshape(-1, U, n * D)
        curvature = curvature - torch.einsum("bui,buj->uij", qphi, qphi)
    precision = prior_precision + curvature
    L = _cholesky(precision)
    return theta - torch.cholesky_solve(grad[..., None], L)[..., 0], precision


def sampled_moments(
    features: torch.Tensor,
    labels: torch.Tensor,
    mean: torch.Tensor,
    precision: torch.Tensor,
    *,
    kind: str,
    dim: int,
    samples: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample mean and (biased) sample variance, each (B, U, dim), of the gradient at h of the negative
    log-likelihood, g = Σ_c r_c w_c (w_c the first ``dim`` of class c's D weights), over ``samples``
    draws θ ~ N(mean, precision⁻¹) (shapes as :func:`laplace_posterior`) from ``generator`` (CPU)."""
    U, nD = mean.shape
    D = features.shape[1]
    upper = _cholesky(precision).mT
    total = torch.zeros(features.shape[0], U, dim, dtype=mean.dtype, device=mean.device)
    squares = torch.zeros_like(total)
    for start in range(0, samples, MC_CHUNK):
        size = min(MC_CHUNK, samples - start)
        z = torch.randn((U, nD, size), generator=generator, dtype=torch.float64).to(mean)
        theta = mean[..., None] + torch.linalg.solve_triangular(upper, z, upper=True)  # cov Λ⁻¹
        W = theta.permute(2, 0, 1).reshape(size, U, nD // D, D)
        r = _residual_curvature(torch.einsum("bp,sunp->sbun", features, W), labels, kind)[0]
        g = torch.einsum("sbun,sunj->sbuj", r, W[..., :dim])
        total += g.sum(dim=0)
        squares += (g * g).sum(dim=0)
    expected = total / samples
    return expected, squares / samples - expected**2


def _cholesky(matrix: torch.Tensor) -> torch.Tensor:
    L, info = torch.linalg.cholesky_ex(matrix)
    if (info != 0).any() or not torch.isfinite(L).all():
        raise NonFiniteError("bayesagg_mtl: a classification posterior precision is not positive definite")
    return L


def aggregate(
    expected: torch.Tensor, variance: torch.Tensor, power: float | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The product-of-Gaussians direction Σ_k λ_k E[g_k] / Σ_k λ_k over axis 1, λ_k = 1/max(Var[g_k], 1e-8)^p,
    and the normalised weights λ_k / Σ_j λ_j (``power`` p a number, or one per k, shape (1, K, 1))."""
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
    last layer, and a classification head must be a ``torch.nn.Linear`` on h), ``optimizer`` (over the
    backbone's and heads' parameters).

    Settings (``settings=``, a :class:`~mtlsolve.adapters.strategies.bayesagg_mtl_settings.BayesAggMTLSettings`,
    or the same names as keywords): ``num_tasks`` m; ``task_type`` (``"regression"``, ``"binary"`` or
    ``"multiclass"``, or one per task, mixed as the official code allows); ``prior_variance`` γ (1.0, the
    prior N(0, γI) of every task); ``noise_variance`` σ² (1.0, fixed in the official code);
    ``variance_power`` p (0.5, the official default) and ``classification_variance_power`` (0.5, the
    official default) for regression and classification outputs; ``mc_samples`` (1024, official) and
    ``seed`` (0) of the classification moments; ``bias`` (False: the regression posterior is over the
    weights on h only, as the official code; True: on (h, 1); a classification posterior has the bias
    iff its head has one); ``warmup_epochs`` (0: epochs trained on the plain sum of the losses before the
    aggregation starts, the official ``ls_epochs``).

    Use: ``preds = bayesagg(x)`` (with grad enabled it records h), then ``bayesagg.step(losses, targets)``
    with the m losses of those predictions and the m targets (regression: real, (B,) or (B, k_t);
    binary: in [0, 1], (B,) or (B, k_t); multiclass: integer class indices (B,); or one (B, m) tensor
    of one-output regression or binary tasks), and ``bayesagg.end_epoch()`` after each pass over the
    training set: the features and targets seen during an epoch make the next epoch's prior (kept as
    HᵀH and HᵀY for regression; the features and labels themselves are stored when a task classifies).
    Each output of a regression or binary task and each multiclass task counts as one Gaussian in the
    aggregation (official code).
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
        self._types = self.settings.task_types
        for t, (head, kind) in enumerate(zip(heads, self._types)):
            if kind != "regression" and not isinstance(head, torch.nn.Linear):
                raise InvalidConfigError(
                    f"bayesagg_mtl: task {t} is {kind}: its head must be a torch.nn.Linear on the features, "
                    f"got {type(head).__name__}"
                )
            if kind == "multiclass" and head.out_features < 2:
                raise InvalidConfigError(
                    f"bayesagg_mtl: multiclass task {t} has {head.out_features} output(s), not ≥ 2"
                )
        self.backbone = backbone
        self.heads = list(heads)
        self.optimizer = optimizer
        self._classifies = any(kind != "regression" for kind in self._types)
        self._generator = torch.Generator().manual_seed(self.settings.seed)
        self._rep: torch.Tensor | None = None
        self._input: torch.Tensor | None = None
        self._sizes: list[int] = []
        self._gram: torch.Tensor | None = None  # HᵀH and HᵀY of the current epoch (regression)
        self._cross: torch.Tensor | None = None
        self._prior_gram: torch.Tensor | None = None  # those of the previous epoch
        self._prior_cross: torch.Tensor | None = None
        self._features_seen: list[torch.Tensor] = []  # the epoch's features and targets (classification)
        self._targets_seen: list[torch.Tensor] = []
        self._prior_features: torch.Tensor | None = None  # those of the previous epoch
        self._prior_targets: torch.Tensor | None = None
        self._epoch_priors: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # task → epoch posterior
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
        warmup = self._epochs < self.settings.warmup_epochs
        direction = None
        if not warmup:  # at the head weights of the forward, before the heads' gradients exist
            direction, shares = self.direction(h, y)
        losses.sum().backward()
        if direction is None or inp.grad is None:
            grad = torch.zeros_like(rep) if inp.grad is None else inp.grad
            weights = torch.full((m,), 1.0 / m, dtype=torch.float64)
        else:
            grad = (direction / h.shape[0]).to(rep.dtype)
            bounds = np.cumsum([0, *self._units()])
            weights = torch.stack([shares[:, a:b].sum(dim=1).mean() for a, b in zip(bounds[:-1], bounds[1:])])
        if not torch.isfinite(grad).all():
            raise NonFiniteError("bayesagg_mtl: the aggregated gradient at the features is not finite")
        rep.backward(grad)
        self._rep = self._input = None
        self._steps += 1
        return BayesAggStep(losses=to_numpy64(losses.detach()), weights=to_numpy64(weights), warmup=warmup)

    def direction(self, features: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The aggregated gradient (B, d) (before the division by B) and the normalised weights (B, K, d)
        for float64 ``features`` h (B, d) and ``targets`` (B, K) (one column per Gaussian: a regression
        output, a binary output or a multiclass task's class index), under the posteriors from the
        previous epoch and this batch."""
        s = self.settings
        units = self._units()
        bounds = np.cumsum([0, *units])
        reg = self._regression_columns(bounds)
        expected = torch.empty(
            features.shape[0], bounds[-1], features.shape[1], dtype=torch.float64, device=features.device
        )
        variance = torch.empty_like(expected)
        power = torch.full((1, bounds[-1], 1), s.classification_variance_power, dtype=torch.float64)
        if reg:
            hb = self._with_bias(features) if s.bias else features
            mean, cov = self.posterior(hb, targets[:, reg])
            expected[:, reg], variance[:, reg] = gradient_moments(hb, targets[:, reg], mean, cov, bias=s.bias)
            power[:, reg] = s.variance_power
        for t, kind in enumerate(self._types):
            if kind != "regression":
                sl = slice(bounds[t], bounds[t + 1])
                mean, precision = self.classification_posterior(t, features, targets[:, sl])
                expected[:, sl], variance[:, sl] = sampled_moments(
                    self._head_features(t, features),
                    targets[:, sl],
                    mean,
                    precision,
                    kind=kind,
                    dim=features.shape[1],
                    samples=s.mc_samples,
                    generator=self._generator,
                )
        return aggregate(expected, variance, power.to(features.device))

    def posterior(
        self, features: torch.Tensor | None = None, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (K, D) and covariance (D, D) of the regression last-layer posterior given the previous
        epoch's features and targets and, when given, the batch's (float64; D = d, or d + 1 with
        ``bias``; K the regression outputs). The mean is the posterior-mean head, which the official code
        predicts with at evaluation."""
        gram, cross = self._prior_gram, self._prior_cross
        if features is not None:
            batch_gram, batch_cross = features.T @ features, features.T @ targets
            gram = batch_gram if gram is None else gram + batch_gram
            cross = batch_cross if cross is None else cross + batch_cross
        if gram is None:
            raise StateError("bayesagg_mtl: no features yet (call end_epoch after an epoch, or pass a batch)")
        s = self.settings
        return posterior(gram, cross, prior_variance=s.prior_variance, noise_variance=s.noise_variance)

    def classification_posterior(
        self, task: int, features: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (U, n·D) and precision (U, n·D, n·D) of classification task ``task``'s Laplace posterior
        at its head's current weights, given the batch's float64 ``features`` h (B, d) and ``targets``
        (B, U), with the previous epoch's posterior as the prior (computed at the first call of the
        epoch, then kept); N(0, γI) before the first epoch ends."""
        kind, head = self._types[task], self.heads[task]
        weight = head.weight.detach().to(torch.float64)
        if head.bias is not None:
            weight = torch.cat((weight, head.bias.detach().to(weight)[:, None]), dim=1)
        weight = weight[:, None, :] if kind == "binary" else weight[None]
        U, n, D = weight.shape
        prior = self._epoch_priors.get(task)
        if prior is None:
            eye = torch.eye(n * D, dtype=torch.float64, device=features.device)
            prior = (
                torch.zeros(U, n * D, dtype=torch.float64, device=features.device),
                (eye / self.settings.prior_variance).expand(U, -1, -1),
            )
            if self._prior_features is not None:
                bounds = np.cumsum([0, *self._units()])
                stored = self._prior_features.to(features.device)
                labels = self._prior_targets[:, bounds[task] : bounds[task + 1]].to(features.device)
                prior = laplace_posterior(
                    self._head_features(task, stored),
                    labels,
                    weight,
                    kind=kind,
                    prior_mean=prior[0],
                    prior_precision=prior[1],
                )
                self._epoch_priors[task] = prior
        return laplace_posterior(
            self._head_features(task, features),
            targets,
            weight,
            kind=kind,
            prior_mean=prior[0],
            prior_precision=prior[1],
        )

    def end_epoch(self) -> None:
        """Make this epoch's features and targets the prior of the next epoch's batch posteriors."""
        if self._gram is not None:
            self._prior_gram, self._prior_cross = self._gram, self._cross
        if self._features_seen:
            self._prior_features = torch.cat(self._features_seen)
            self._prior_targets = torch.cat(self._targets_seen)
        self._gram = self._cross = None
        self._features_seen, self._targets_seen = [], []
        self._epoch_priors = {}
        self._epochs += 1

    # ------------------------------------------------------------------ internals
    def _units(self) -> list[int]:
        """Gaussians per task: one per output, one for a multiclass task."""
        return [1 if kind == "multiclass" else size for kind, size in zip(self._types, self._sizes)]

    def _regression_columns(self, bounds: np.ndarray) -> list[int]:
        """The target columns of the regression outputs, given the tasks' column bounds."""
        return [
            k for t, kind in enumerate(self._types) if kind == "regression" for k in range(bounds[t], bounds[t + 1])
        ]

    @staticmethod
    def _with_bias(h: torch.Tensor) -> torch.Tensor:
        return torch.cat((h, torch.ones_like(h[:, :1])), dim=1)

    def _head_features(self, task: int, h: torch.Tensor) -> torch.Tensor:
        return h if self.heads[task].bias is None else self._with_bias(h)

    def _features(self) -> torch.Tensor:
        h = self._rep.detach().to(torch.float64)
        if not torch.isfinite(h).all():
            raise NonFiniteError("bayesagg_mtl: the features are not finite")
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
        for t, (y, size, kind) in enumerate(zip(targets, self._sizes, self._types)):
            y = torch.as_tensor(y).detach()
            if kind == "multiclass":
                if y.shape != (B,) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
                    raise InvalidSystemError(
                        f"bayesagg_mtl: multiclass task {t}'s targets must be integer class indices of shape "
                        f"({B},), got {y.dtype} of shape {tuple(y.shape)}"
                    )
                if y.numel() and (y.min() < 0 or y.max() >= size):
                    raise InvalidSystemError(f"bayesagg_mtl: multiclass task {t}'s targets must lie in [0, {size})")
                columns.append(y.reshape(B, 1).to(device=h.device, dtype=torch.float64))
                continue
            if y.shape[0] != B or y.numel() != B * size or not y.is_floating_point():
                raise InvalidSystemError(
                    f"bayesagg_mtl: task {t}'s targets must be real, (B,) or (B, k) matching its head's "
                    f"{size} output(s) per sample for B={B}, got {y.dtype} of shape {tuple(y.shape)}"
                )
            y = y.reshape(B, size).to(device=h.device, dtype=torch.float64)
            if not torch.isfinite(y).all():
                raise NonFiniteError("bayesagg_mtl: the targets are not finite")
            if kind == "binary" and ((y < 0) | (y > 1)).any():
                raise InvalidSystemError(f"bayesagg_mtl: binary task {t}'s targets must lie in [0, 1]")
            columns.append(y)
        return torch.cat(columns, dim=1)

    def _accumulate(self, h: torch.Tensor, y: torch.Tensor) -> None:
        for known in (self._targets_seen[0] if self._targets_seen else None, self._prior_targets):
            if known is not None and known.shape[1] != y.shape[1]:
                raise InvalidSystemError(
                    f"bayesagg_mtl: {y.shape[1]} target columns, earlier batches had {known.shape[1]}"
                )
        bounds = np.cumsum([0, *self._units()])
        reg = self._regression_columns(bounds)
        hb = self._with_bias(h) if self.settings.bias else h
        gram, cross = hb.T @ hb, hb.T @ y[:, reg]
        for known in (self._cross, self._prior_cross):
            if known is not None and known.shape != cross.shape:
                raise InvalidSystemError(
                    f"bayesagg_mtl: {tuple(cross.shape)} features x outputs, earlier batches had {tuple(known.shape)}"
                )
        self._gram = gram if self._gram is None else self._gram + gram
        self._cross = cross if self._cross is None else self._cross + cross
        if self._classifies:
            self._features_seen.append(h)
            self._targets_seen.append(y)

    # ------------------------------------------------------------------ state
    _STATE = (
        "gram",
        "cross",
        "prior_gram",
        "prior_cross",
        "features",
        "targets",
        "prior_features",
        "prior_targets",
        "epoch_priors",
        "generator",
        "steps",
        "epochs",
    )

    def state_dict(self) -> dict[str, Any]:
        """The epoch's and the previous epoch's feature statistics (and stored features and targets when
        a task classifies), the epoch's classification priors, the Monte-Carlo generator's state and
        the counters (the backbone, heads and optimizer checkpoint themselves)."""
        return copy.deepcopy(
            {
                "gram": self._gram,
                "cross": self._cross,
                "prior_gram": self._prior_gram,
                "prior_cross": self._prior_cross,
                "features": list(self._features_seen),
                "targets": list(self._targets_seen),
                "prior_features": self._prior_features,
                "prior_targets": self._prior_targets,
                "epoch_priors": dict(self._epoch_priors),
                "generator": self._generator.get_state(),
                "steps": self._steps,
                "epochs": self._epochs,
            }
        )

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        required = self._STATE if self._classifies else self._STATE[:4] + self._STATE[-2:]
        missing = set(required) - set(state)
        if missing:
            raise StateError(f"bayesagg_mtl: the checkpoint lacks {sorted(missing)}")
        state = {**self.state_dict(), **copy.deepcopy(dict(state))}  # regression-only: no classification state
        self._gram, self._cross = state["gram"], state["cross"]
        self._prior_gram, self._prior_cross = state["prior_gram"], state["prior_cross"]
        self._features_seen, self._targets_seen = list(state["features"]), list(state["targets"])
        self._prior_features, self._prior_targets = state["prior_features"], state["prior_targets"]
        self._epoch_priors = dict(state["epoch_priors"])
        self._generator.set_state(state["generator"])
        self._steps, self._epochs = int(state["steps"]), int(state["epochs"])

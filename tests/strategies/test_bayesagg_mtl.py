"""BayesAgg-MTL (Achituve, Diamant, Netzer, Chechik, Fetaya, arXiv 2402.04005; docs/methods.md#bayesagg_mtl):
the last-layer posterior against the normal equations with the prior (and the official two-stage
posterior, the previous epoch's posterior as the batch's prior), the gradient moments against Monte-Carlo
sampling of the head weights and against the official fourth-moment formulas written out, the
aggregation rule and a whole step against the equations written out, the limiting cases, warm-up,
checkpoints and bad input; for classification tasks the Laplace posterior against the MAP of an
independent optimiser and the autograd Hessian of the log-posterior (and one Newton step away from the
MAP), the sampled moments against a large Monte-Carlo reference of autograd gradients, a mixed
regression/binary/multiclass step against the official two-stage computation written out, and a
bit-identical resume."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import mtlsolve
from mtlsolve.adapters.strategies import from_config, strategy_class
from mtlsolve.adapters.strategies.bayesagg_mtl import (
    BayesAggMTL,
    aggregate,
    gradient_moments,
    laplace_posterior,
    posterior,
    sampled_moments,
)
from mtlsolve.errors import InvalidConfigError, InvalidSystemError, NonFiniteError, StateError

D = 4  # feature dimension of the test model


def make(seed=0, **settings):
    """A 3 → 4 (tanh) backbone with a one-output and a two-output regression head (float64)."""
    torch.manual_seed(seed)
    backbone = torch.nn.Sequential(torch.nn.Linear(3, D), torch.nn.Tanh()).double()
    heads = [torch.nn.Linear(D, 1).double(), torch.nn.Linear(D, 2).double()]
    params = [*backbone.parameters(), *(p for h in heads for p in h.parameters())]
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    return BayesAggMTL(backbone=backbone, heads=heads, optimizer=opt, num_tasks=2, **settings)


def batch(seed, n=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    return x, [torch.randn(n, generator=g, dtype=torch.float64), torch.randn(n, 2, generator=g, dtype=torch.float64)]


def mse(preds, targets):
    return torch.stack([((p.reshape(t.shape) - t) ** 2).mean() for p, t in zip(preds, targets)])


def run(ba, seeds):
    for s in seeds:
        x, y = batch(s)
        ba.step(mse(ba(x), y), y)


def normal_equations(H, Y, gamma, noise):
    """Gaussian linear regression with prior N(0, γI): mean (K, D) and covariance from numpy's solve."""
    A = H.T @ H / noise + np.eye(H.shape[1]) / gamma
    return np.linalg.solve(A, H.T @ Y / noise).T, np.linalg.inv(A)


def random_posterior(rng, K, Dim):
    A = rng.standard_normal((Dim, Dim))
    return rng.standard_normal((K, Dim)), 0.3 * A @ A.T / Dim + 0.05 * np.eye(Dim)


# ------------------------------------------------------------------ posterior
def test_posterior_matches_the_normal_equations_with_the_prior():
    rng = np.random.default_rng(0)
    H, Y = rng.standard_normal((20, 5)), rng.standard_normal((20, 3))
    mean, cov = posterior(torch.tensor(H.T @ H), torch.tensor(H.T @ Y), prior_variance=0.3, noise_variance=0.7)
    ref_mean, ref_cov = normal_equations(H, Y, 0.3, 0.7)
    np.testing.assert_allclose(mean.numpy(), ref_mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cov.numpy(), ref_cov, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bias", [False, True])
def test_batch_posterior_has_the_previous_epochs_posterior_as_prior(bias):
    ba = make(1, prior_variance=0.5, noise_variance=0.8, bias=bias)
    feats, ys = [], []
    for s in range(3):  # one epoch: the features as the backbone computed them at each step
        x, y = batch(s)
        preds = ba(x)
        feats.append(ba._rep.detach().numpy().copy())
        ys.append(np.concatenate([y[0][:, None].numpy(), y[1].numpy()], axis=1))
        ba.step(mse(preds, y), y)
    ba.end_epoch()
    x, y = batch(10)
    with torch.no_grad():
        h = ba.backbone(x).numpy()
    yb = np.concatenate([y[0][:, None].numpy(), y[1].numpy()], axis=1)
    aug = (lambda a: np.concatenate([a, np.ones((len(a), 1))], axis=1)) if bias else (lambda a: a)
    # the official two stages: the epoch's posterior N(μ₀, Λ₀⁻¹) from N(0, γI), then the batch's from N(μ₀, Λ₀⁻¹)
    mu0, cov0 = normal_equations(aug(np.concatenate(feats)), np.concatenate(ys), 0.5, 0.8)
    lam0 = np.linalg.inv(cov0)
    lam = lam0 + aug(h).T @ aug(h) / 0.8
    ref_mean = np.linalg.solve(lam, lam0 @ mu0.T + aug(h).T @ yb / 0.8).T
    mean, cov = ba.posterior(torch.tensor(aug(h)), torch.tensor(yb))
    np.testing.assert_allclose(mean.numpy(), ref_mean, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(cov.numpy(), np.linalg.inv(lam), rtol=1e-9, atol=1e-11)
    # and the epoch's posterior alone
    np.testing.assert_allclose(ba.posterior()[0].numpy(), mu0, rtol=1e-9, atol=1e-11)


# ------------------------------------------------------------------ gradient moments
@pytest.mark.parametrize("bias", [False, True])
def test_gradient_moments_match_monte_carlo_sampling_of_the_head_weights(bias):
    rng = np.random.default_rng(2)
    B, K, d, n = 3, 2, 3, 200_000
    Dim = d + bias
    mean, cov = random_posterior(rng, K, Dim)
    h = rng.standard_normal((B, Dim))
    if bias:
        h[:, -1] = 1.0
    y = rng.standard_normal((B, K))
    E, V = (t.numpy() for t in gradient_moments(*map(torch.tensor, (h, y, mean, cov)), bias=bias))
    L = np.linalg.cholesky(cov)
    for k in range(K):
        w = mean[k] + rng.standard_normal((n, Dim)) @ L.T  # w ~ N(μ_k, Σ)
        for b in range(B):
            g = 2 * w[:, :d] * (w @ h[b] - y[b, k])[:, None]  # ∂(y − wᵀh)²/∂h
            g_mean, g_var = g.mean(axis=0), g.var(axis=0)
            se_mean = np.sqrt(g_var / n)
            se_var = np.sqrt((((g - g_mean) ** 4).mean(axis=0) - g_var**2) / n)
            assert np.all(np.abs(E[b, k] - g_mean) < 5 * se_mean), (E[b, k], g_mean, se_mean)
            assert np.all(np.abs(V[b, k] - g_var) < 5 * se_var), (V[b, k], g_var, se_var)


def official_moments(h, y, mu, S):
    """The official ExactMoments: E[g] = 2(E[wwᵀ]h − yμ), E[ggᵀ] = 4(y²E[wwᵀ] − 2y E[w wᵀh wᵀ] + E[wwᵀhhᵀwwᵀ])
    with the Gaussian fourth moments written as the authors do; returns E[g] and diag(E[ggᵀ] − E[g]E[g]ᵀ)."""
    mm = np.einsum("od,oe->ode", mu, mu)
    P, N = S + mm, S - mm
    muh = np.einsum("od,be->bode", mu, h)
    E_wxww = np.einsum("bode,oef->bodf", muh, P) + np.einsum("ode,bofe->bodf", P, muh)
    E_wxww += np.einsum("bd,od,oef->boef", h, mu, N)
    hh = np.einsum("bd,be->bde", h, h)
    E_4 = np.einsum("ode,bef,ofg->bodg", P, hh + hh.transpose(0, 2, 1), P)
    E_4 += np.einsum("od,bde,oe,ofg->bofg", mu, hh, mu, N)
    E_4 += np.einsum("bo,ode->bode", np.einsum("bd,ode,be->bo", h, S[None].repeat(len(mu), 0), h), P)
    E = 2 * (np.einsum("ode,be->bod", P, h) - y[..., None] * mu[None])
    Egg = 4 * (np.einsum("bo,ode->bode", y**2, P) - 2 * y[..., None, None] * E_wxww + E_4)
    return E, np.diagonal(Egg - np.einsum("bod,boe->bode", E, E), axis1=-2, axis2=-1)


def test_gradient_moments_match_the_official_fourth_moment_formulas():
    rng = np.random.default_rng(3)
    mean, cov = random_posterior(rng, 3, 5)
    h, y = rng.standard_normal((4, 5)), rng.standard_normal((4, 3))
    E, V = gradient_moments(*map(torch.tensor, (h, y, mean, cov)))
    ref_E, ref_V = official_moments(h, y, mean, cov)
    np.testing.assert_allclose(E.numpy(), ref_E, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(V.numpy(), ref_V, rtol=1e-9, atol=1e-11)


def test_a_concentrated_posterior_gives_the_plain_gradient_with_vanishing_variance():
    rng = np.random.default_rng(4)
    mean, _ = random_posterior(rng, 2, 3)
    h, y = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    E, V = gradient_moments(*map(torch.tensor, (h, y, mean, 1e-12 * np.eye(3))))
    plain = 2 * mean[None] * (h @ mean.T - y)[..., None]  # ∂(y − μᵀh)²/∂h
    np.testing.assert_allclose(E.numpy(), plain, rtol=1e-9, atol=1e-10)
    assert V.max() < 1e-9 * max(1.0, float(np.abs(plain).max()) ** 2)


# ------------------------------------------------------------------ aggregation
def test_aggregation_is_the_precision_weighted_mean_per_sample_and_dimension():
    rng = np.random.default_rng(5)
    E, V = rng.standard_normal((3, 4, 5)), rng.uniform(0.1, 3.0, (3, 4, 5))
    V[0, 1, 2] = 1e-12  # clamped to 1e-8 as the official code
    for p in (1.0, 0.5, 0.3):
        got, w = aggregate(torch.tensor(E), torch.tensor(V), p)
        ref = np.empty((3, 5))
        for b in range(3):
            for j in range(5):
                lam = [1 / max(V[b, k, j], 1e-8) ** p for k in range(4)]
                ref[b, j] = sum(lam[k] * E[b, k, j] for k in range(4)) / sum(lam)
        np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12)
        np.testing.assert_allclose(w.sum(dim=1).numpy(), 1.0, rtol=1e-12)


def test_equal_uncertainties_give_the_mean_and_a_confident_task_dominates():
    rng = np.random.default_rng(6)
    E = torch.tensor(rng.standard_normal((2, 3, 4)))
    equal = torch.full((2, 3, 4), 0.7, dtype=torch.float64)
    torch.testing.assert_close(aggregate(E, equal, 1.0)[0], E.mean(dim=1), rtol=1e-12, atol=0)
    torch.testing.assert_close(aggregate(E, torch.tensor(rng.uniform(0.1, 3, (2, 3, 4))), 0.0)[0], E.mean(dim=1))
    confident = equal.clone()
    confident[:, 1] = 1e-7  # task 1 is 7e6 times more certain: its weight is 1 − O(1e-7)
    torch.testing.assert_close(aggregate(E, confident, 1.0)[0], E[:, 1], rtol=1e-6, atol=1e-6)


def test_a_step_sends_the_aggregated_gradient_into_the_backbone_and_the_loss_gradient_into_the_heads():
    ba = make(7, variance_power=0.3, prior_variance=2.0)
    run(ba, range(2))
    ba.end_epoch()
    x, y = batch(20)
    ref = copy.deepcopy((ba.backbone, ba.heads))
    ba.optimizer.zero_grad()
    record = ba.backward(mse(ba(x), y), y)
    # reference: posterior from the numpy statistics, official moments, the rule written out, autograd
    h = ref[0](x)
    H, Yb = h.detach().numpy(), np.concatenate([y[0][:, None].numpy(), y[1].numpy()], axis=1)
    gram, cross = (t.numpy() for t in (ba._prior_gram, ba._prior_cross))
    A = np.eye(D) / 2.0 + gram + H.T @ H
    mean, cov = np.linalg.solve(A, cross + H.T @ Yb).T, np.linalg.inv(A)
    E, V = official_moments(H, Yb, mean, cov)
    lam = 1 / np.maximum(V, 1e-8) ** 0.3
    direction = (lam * E).sum(axis=1) / lam.sum(axis=1) / len(H)
    expected = torch.autograd.grad(h, list(ref[0].parameters()), torch.tensor(direction))
    for p, g in zip(ba.backbone.parameters(), expected):
        torch.testing.assert_close(p.grad, g, rtol=1e-9, atol=1e-12)
    head_loss = mse([hd(h.detach()) for hd in ref[1]], y).sum()
    head_params = [p for hd in ref[1] for p in hd.parameters()]
    for p, g in zip([p for hd in ba.heads for p in hd.parameters()], torch.autograd.grad(head_loss, head_params)):
        torch.testing.assert_close(p.grad, g, rtol=1e-12, atol=1e-14)
    shares = lam / lam.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(record.weights, [shares[:, :1].sum(1).mean(), shares[:, 1:].sum(1).mean()], rtol=1e-9)
    assert not record.warmup and record.weights.sum() == pytest.approx(1.0)


def test_warmup_epochs_train_on_the_plain_sum_and_collect_the_prior():
    ba = make(8, warmup_epochs=1)
    ref = copy.deepcopy((ba.backbone, ba.heads))
    x, y = batch(0)
    ba.optimizer.zero_grad()
    assert ba.backward(mse(ba(x), y), y).warmup
    loss = mse([hd(ref[0](x)) for hd in ref[1]], y).sum()
    for p, g in zip(ba.backbone.parameters(), torch.autograd.grad(loss, list(ref[0].parameters()))):
        torch.testing.assert_close(p.grad, g, rtol=1e-12, atol=1e-14)
    with pytest.raises(StateError, match="no features yet"):
        ba.posterior()
    ba.end_epoch()
    assert ba.posterior()[0].shape == (3, D)
    ba.optimizer.zero_grad()
    assert not ba.backward(mse(ba(x), y), y).warmup


# ------------------------------------------------------------------ checkpoints, registry, errors
def test_a_checkpoint_mid_run_resumes_bit_identically():
    ba = make(9, bias=True)
    run(ba, range(3))
    ba.end_epoch()
    run(ba, range(3, 5))
    saved = copy.deepcopy(
        (ba.state_dict(), ba.backbone.state_dict(), [h.state_dict() for h in ba.heads], ba.optimizer.state_dict())
    )
    run(ba, range(5, 7))
    ba.end_epoch()
    run(ba, range(7, 9))
    other = make(99, bias=True)
    other.load_state_dict(saved[0])
    other.backbone.load_state_dict(saved[1])
    for h, s in zip(other.heads, saved[2]):
        h.load_state_dict(s)
    other.optimizer.load_state_dict(saved[3])
    run(other, range(5, 7))
    other.end_epoch()
    run(other, range(7, 9))
    assert (other.steps, other.epochs) == (ba.steps, ba.epochs) == (9, 2)
    for a, b in zip(ba.backbone.parameters(), other.backbone.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(ba.heads, other.heads):
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert all(torch.equal(ba.state_dict()[k], other.state_dict()[k]) for k in ("gram", "cross", "prior_gram"))
    with pytest.raises(StateError, match="lacks"):
        other.load_state_dict({"steps": 1})


def test_registered_by_name_and_alias():
    settings = mtlsolve.get_strategy("BayesAgg", num_tasks=3)
    assert settings.name == "bayesagg_mtl" and strategy_class("bayesagg-mtl") is BayesAggMTL
    backbone = torch.nn.Linear(3, D)
    heads = [torch.nn.Linear(D, 1) for _ in range(3)]
    built = from_config(
        {"strategy": "bayesagg", "num_tasks": 3, "variance_power": 1.0},
        backbone=backbone,
        heads=heads,
        optimizer=torch.optim.SGD(backbone.parameters(), lr=0.1),
    )
    assert type(built) is BayesAggMTL and built.settings.variance_power == 1.0


@pytest.mark.parametrize(
    "settings, field",
    [
        ({"num_tasks": 1}, "num_tasks"),
        ({"num_tasks": 2, "task_type": "poisson"}, "task_type"),
        ({"num_tasks": 2, "task_type": ["binary"]}, "task_type"),
        ({"num_tasks": 2, "mc_samples": 1}, "mc_samples"),
        ({"num_tasks": 2, "classification_variance_power": -0.5}, "classification_variance_power"),
        ({"num_tasks": 2, "prior_variance": 0.0}, "prior_variance"),
        ({"num_tasks": 2, "noise_variance": -1.0}, "noise_variance"),
        ({"num_tasks": 2, "variance_power": float("nan")}, "variance_power"),
        ({"num_tasks": 2, "warmup_epochs": -1}, "warmup_epochs"),
    ],
)
def test_invalid_settings_raise_invalid_config_error(settings, field):
    with pytest.raises(InvalidConfigError, match=rf"^bayesagg_mtl: .*{field}"):
        mtlsolve.get_strategy("bayesagg_mtl", **settings)


def test_bad_input_raises_the_projects_errors():
    ba = make(10)
    x, y = batch(0)
    with pytest.raises(InvalidConfigError, match="2 heads for num_tasks=3"):
        BayesAggMTL(backbone=ba.backbone, heads=ba.heads, optimizer=ba.optimizer, num_tasks=3)
    with pytest.raises(StateError, match="before step"):
        ba.step(torch.ones(2, dtype=torch.float64), y)
    preds = ba(x)
    with pytest.raises(InvalidSystemError, match="3 losses for num_tasks=2"):
        ba.step(torch.ones(3, dtype=torch.float64), y)
    with pytest.raises(InvalidSystemError, match="task 1's targets"):
        ba.step(mse(preds, y), [y[0], y[0]])
    with pytest.raises(InvalidSystemError, match=r"shape \(B, m\)"):
        ba.step(mse(preds, y), torch.zeros(8, 3, dtype=torch.float64))
    bad = [y[0].clone(), y[1]]
    bad[0][2] = float("nan")
    with pytest.raises(NonFiniteError, match="targets are not finite"):
        ba.step(mse(preds, y), bad)
    flat = BayesAggMTL(backbone=torch.nn.Identity(), heads=ba.heads, optimizer=ba.optimizer, num_tasks=2)
    with pytest.raises(InvalidSystemError, match=r"features of shape \(B, d\)"):
        flat(torch.zeros(2, 3, D, dtype=torch.float64))
    with pytest.raises(InvalidSystemError, match="does not fit"):
        gradient_moments(torch.zeros(2, 3), torch.zeros(2, 1), torch.zeros(1, 4), torch.eye(4))


# ------------------------------------------------------------------ classification tasks
def neg_log_posterior(theta, phi, labels, kind, n, prior_mean, prior_precision):
    """−log p(θ | data) up to a constant, with torch's own losses (θ flattened class-major, U = 1 or n = 1)."""
    W = theta.reshape(-1, n, phi.shape[1])
    logits = torch.einsum("bp,unp->bun", phi, W)
    if kind == "binary":
        nll = torch.nn.functional.binary_cross_entropy_with_logits(logits[..., 0], labels, reduction="sum")
    else:
        nll = torch.nn.functional.cross_entropy(logits[:, 0], labels[:, 0].long(), reduction="sum")
    diff = theta.reshape(prior_mean.shape) - prior_mean
    return nll + 0.5 * torch.einsum("ui,uij,uj->", diff, prior_precision, diff)


def classification_problem(kind, bias, seed, B=30, d=3):
    g = torch.Generator().manual_seed(seed)
    phi = torch.randn(B, d, generator=g, dtype=torch.float64)
    if bias:
        phi = torch.cat((phi, torch.ones(B, 1, dtype=torch.float64)), dim=1)
    U, n = (2, 1) if kind == "binary" else (1, 3)
    labels = (
        (torch.rand(B, 2, generator=g) < 0.5).double()
        if kind == "binary"
        else torch.randint(0, 3, (B, 1), generator=g).double()
    )
    A = torch.randn(U, n * phi.shape[1], n * phi.shape[1], generator=g, dtype=torch.float64)
    prior_precision = A @ A.mT / A.shape[1] + 0.5 * torch.eye(A.shape[1], dtype=torch.float64)
    prior_mean = 0.3 * torch.randn(U, n * phi.shape[1], generator=g, dtype=torch.float64)
    return phi, labels, U, n, prior_mean, prior_precision


@pytest.mark.parametrize(
    "kind, bias", [("binary", True), ("binary", False), ("multiclass", True), ("multiclass", False)]
)
def test_laplace_posterior_at_the_map_is_the_map_with_the_autograd_hessian(kind, bias):
    phi, labels, U, n, mu0, lam0 = classification_problem(kind, bias, 11)
    args = (phi, labels, kind, n, mu0, lam0)
    theta = torch.zeros(U * n * phi.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [theta], lr=1, max_iter=500, tolerance_grad=1e-13, tolerance_change=0, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        loss = neg_log_posterior(theta, *args)
        loss.backward()
        return loss

    opt.step(closure)
    map_ = theta.detach()
    hessian = torch.autograd.functional.hessian(lambda t: neg_log_posterior(t, *args), map_)
    mean, precision = laplace_posterior(
        phi, labels, map_.reshape(U, n, -1), kind=kind, prior_mean=mu0, prior_precision=lam0
    )
    # the binary outputs are independent: the Hessian is block-diagonal, one block per output
    blocks = torch.stack(
        [
            hessian[u * n * phi.shape[1] :, u * n * phi.shape[1] :][: n * phi.shape[1], : n * phi.shape[1]]
            for u in range(U)
        ]
    )
    torch.testing.assert_close(precision, blocks, rtol=1e-10, atol=1e-12)
    if U > 1:
        off = hessian[: phi.shape[1], phi.shape[1] :]
        assert torch.all(off == 0)
    # the step from the optimiser's MAP moves by H⁻¹∇ (≈ 0), the optimiser's residual
    residual = torch.func.grad(lambda t: neg_log_posterior(t, *args))(map_).norm()
    bound = float(residual / torch.linalg.eigvalsh(hessian).min())
    assert bound < 1e-7
    torch.testing.assert_close(mean.flatten(), map_, rtol=0, atol=2 * bound + 1e-13)


@pytest.mark.parametrize("kind", ["binary", "multiclass"])
def test_laplace_posterior_away_from_the_map_is_one_newton_step(kind):
    phi, labels, U, n, mu0, lam0 = classification_problem(kind, True, 12)
    theta0 = torch.randn(U * n * phi.shape[1], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    f = lambda t: neg_log_posterior(t, phi, labels, kind, n, mu0, lam0)  # noqa: E731
    grad = torch.func.grad(f)(theta0)
    hessian = torch.autograd.functional.hessian(f, theta0)
    newton = theta0 - torch.linalg.solve(hessian, grad)
    mean, precision = laplace_posterior(
        phi, labels, theta0.reshape(U, n, -1), kind=kind, prior_mean=mu0, prior_precision=lam0
    )
    torch.testing.assert_close(mean.flatten(), newton, rtol=1e-10, atol=1e-11)
    # the head is linear: the precision is the exact Hessian at θ₀ (block-diagonal over binary outputs)
    torch.testing.assert_close(torch.block_diag(*precision), hessian, rtol=1e-10, atol=1e-12)


def autograd_gradients(h, labels, theta, kind, n):
    """∂NLL/∂h for every sample θ (S, U·n·D) and row of h (B, d): (S, B, U, d), by autograd (bias last)."""
    S, B, d = theta.shape[0], h.shape[0], h.shape[1]
    W = theta.reshape(S, -1, n, d + 1)
    hs = h.expand(S, -1, -1).clone().requires_grad_(True)
    grads = []
    for u in range(W.shape[1]):
        logits = torch.einsum("sbj,scj->sbc", hs, W[:, u, :, :d]) + W[:, u, None, :, d]
        if kind == "binary":
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                logits[..., 0], labels[:, u].expand(S, -1), reduction="sum"
            )
        else:
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(S * B, n), labels[:, 0].long().repeat(S), reduction="sum"
            )
        grads.append(torch.autograd.grad(loss, hs)[0])
    return torch.stack(grads, dim=2)


@pytest.mark.parametrize("kind", ["binary", "multiclass"])
def test_sampled_moments_match_a_large_monte_carlo_reference(kind):
    phi, labels, U, n, mean, precision = classification_problem(kind, True, 13, B=4)
    mean = 2 * mean
    h = phi[:, :-1]
    samples = 4096
    E, V = sampled_moments(
        phi, labels, mean, precision, kind=kind, dim=3, samples=samples, generator=torch.Generator().manual_seed(5)
    )
    # reference: numpy draws from N(μ, Λ⁻¹), autograd gradients
    rng = np.random.default_rng(6)
    ref = []
    for u in range(U):
        ref.append(rng.multivariate_normal(mean[u].numpy(), np.linalg.inv(precision[u].numpy()), size=200_000))
    theta = torch.tensor(np.concatenate(ref, axis=1))
    g = autograd_gradients(h, labels, theta, kind, n)
    g_mean, g_var = g.mean(dim=0), g.var(dim=0, correction=0)
    m4 = ((g - g_mean) ** 4).mean(dim=0)
    se_mean = torch.sqrt(g_var / samples + g_var / len(theta))
    se_var = torch.sqrt((m4 - g_var**2) * (1 / samples + 1 / len(theta)))
    assert torch.all((E - g_mean).abs() < 5 * se_mean), ((E - g_mean).abs() / se_mean).max()
    assert torch.all((V - g_var).abs() < 5 * se_var), ((V - g_var).abs() / se_var).max()


def test_a_concentrated_classification_posterior_gives_the_plain_gradient_with_vanishing_variance():
    phi, labels, U, n, mean, _ = classification_problem("multiclass", True, 14, B=5)
    precision = 1e14 * torch.eye(mean.shape[1], dtype=torch.float64)[None]
    E, V = sampled_moments(
        phi, labels, mean, precision, kind="multiclass", dim=3, samples=64, generator=torch.Generator()
    )
    plain = autograd_gradients(phi[:, :-1], labels, mean, "multiclass", n)[0]
    torch.testing.assert_close(E, plain, rtol=1e-6, atol=1e-6)
    assert V.max() < 1e-10


def make_mixed(init=0, **settings):
    """A 3 → 4 (tanh) backbone; a regression head, a two-output binary head without bias, a 3-class head."""
    torch.manual_seed(init)
    backbone = torch.nn.Sequential(torch.nn.Linear(3, D), torch.nn.Tanh()).double()
    heads = [torch.nn.Linear(D, 1).double(), torch.nn.Linear(D, 2, bias=False).double(), torch.nn.Linear(D, 3).double()]
    params = [*backbone.parameters(), *(p for h in heads for p in h.parameters())]
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    types = ("regression", "binary", "multiclass")
    settings = {"mc_samples": 256, **settings}
    return BayesAggMTL(backbone=backbone, heads=heads, optimizer=opt, num_tasks=3, task_type=types, **settings)


def mixed_batch(seed, n=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    y = [torch.randn(n, generator=g, dtype=torch.float64), (torch.rand(n, 2, generator=g) < 0.5).double()]
    return x, [*y, torch.randint(0, 3, (n,), generator=g)]


def mixed_losses(preds, y):
    return torch.stack(
        [
            ((preds[0][:, 0] - y[0]) ** 2).mean(),
            torch.nn.functional.binary_cross_entropy_with_logits(preds[1], y[1]),
            torch.nn.functional.cross_entropy(preds[2], y[2]),
        ]
    )


def run_mixed(ba, seeds):
    for s in seeds:
        x, y = mixed_batch(s)
        ba.step(mixed_losses(ba(x), y), y)


def test_a_mixed_step_follows_the_official_two_stage_computation():
    ba = make_mixed(15, variance_power=0.3, classification_variance_power=0.7, prior_variance=2.0, seed=4)
    feats, ys = [], []
    for s in range(3):
        x, y = mixed_batch(s)
        preds = ba(x)
        feats.append(ba._rep.detach().clone())
        ys.append(y)
        ba.step(mixed_losses(preds, y), y)
    ba.end_epoch()
    x, y = mixed_batch(20)
    ref = copy.deepcopy((ba.backbone, ba.heads))
    gen = torch.Generator()
    gen.set_state(ba._generator.get_state())
    ba.optimizer.zero_grad()
    record = ba.backward(mixed_losses(ba(x), y), y)
    h = ref[0](x)
    H, Hall = h.detach(), torch.cat(feats)
    # regression: exact moments under the normal equations with the previous epoch's posterior as prior
    yall = torch.cat([yy[0] for yy in ys])[:, None]
    A = np.eye(D) / 2.0 + Hall.numpy().T @ Hall.numpy() + H.numpy().T @ H.numpy()
    mean = np.linalg.solve(A, Hall.numpy().T @ yall.numpy() + H.numpy().T @ y[0][:, None].numpy()).T
    E0, V0 = official_moments(H.numpy(), y[0][:, None].numpy(), mean, np.linalg.inv(A))
    # classification: the epoch's Laplace posterior from N(0, γI) at the current weights, then the batch's
    Es, Vs = [torch.tensor(E0)], [torch.tensor(V0) ** 0.3]
    one = lambda a: torch.cat((a, torch.ones(len(a), 1, dtype=a.dtype)), dim=1)  # noqa: E731
    for t, kind, phi_all, phi, lab_all, lab in (
        (1, "binary", Hall, H, torch.cat([yy[1] for yy in ys]), y[1]),
        (2, "multiclass", one(Hall), one(H), torch.cat([yy[2] for yy in ys])[:, None].double(), y[2][:, None].double()),
    ):
        head = ref[1][t]
        W = head.weight.detach() if head.bias is None else torch.cat((head.weight, head.bias[:, None]), 1).detach()
        W = W[:, None] if kind == "binary" else W[None]
        U, n, Dd = W.shape
        prior = (
            torch.zeros(U, n * Dd, dtype=torch.float64),
            torch.eye(n * Dd, dtype=torch.float64).expand(U, -1, -1) / 2.0,
        )
        m0, l0 = laplace_posterior(phi_all, lab_all, W, kind=kind, prior_mean=prior[0], prior_precision=prior[1])
        m1, l1 = laplace_posterior(phi, lab, W, kind=kind, prior_mean=m0, prior_precision=l0)
        E, V = sampled_moments(phi, lab, m1, l1, kind=kind, dim=D, samples=256, generator=gen)
        Es.append(E)
        Vs.append(V.clamp(min=1e-8) ** 0.7)
    E, lam = torch.cat(Es, dim=1), 1 / torch.cat(Vs, dim=1).clamp(min=1e-300)
    direction = (lam * E).sum(dim=1) / lam.sum(dim=1) / len(H)
    expected = torch.autograd.grad(h, list(ref[0].parameters()), direction)
    for p, g in zip(ba.backbone.parameters(), expected):
        torch.testing.assert_close(p.grad, g, rtol=1e-9, atol=1e-12)
    shares = lam / lam.sum(dim=1, keepdim=True)
    want = [shares[:, :1].sum(1).mean(), shares[:, 1:3].sum(1).mean(), shares[:, 3:].sum(1).mean()]
    np.testing.assert_allclose(record.weights, torch.stack(want).numpy(), rtol=1e-9)
    head_loss = mixed_losses([hd(h.detach()) for hd in ref[1]], y).sum()
    head_params = [p for hd in ref[1] for p in hd.parameters()]
    for p, g in zip([p for hd in ba.heads for p in hd.parameters()], torch.autograd.grad(head_loss, head_params)):
        torch.testing.assert_close(p.grad, g, rtol=1e-12, atol=1e-14)


def test_a_mixed_checkpoint_mid_epoch_resumes_bit_identically():
    ba = make_mixed(16)
    run_mixed(ba, range(3))
    ba.end_epoch()
    run_mixed(ba, range(3, 5))  # the epoch's classification priors and the generator have moved
    saved = copy.deepcopy(
        (ba.state_dict(), ba.backbone.state_dict(), [h.state_dict() for h in ba.heads], ba.optimizer.state_dict())
    )
    run_mixed(ba, range(5, 7))
    ba.end_epoch()
    run_mixed(ba, range(7, 9))
    other = make_mixed(99)
    other.load_state_dict(saved[0])
    other.backbone.load_state_dict(saved[1])
    for h, s in zip(other.heads, saved[2]):
        h.load_state_dict(s)
    other.optimizer.load_state_dict(saved[3])
    run_mixed(other, range(5, 7))
    other.end_epoch()
    run_mixed(other, range(7, 9))
    for a, b in zip(ba.backbone.parameters(), other.backbone.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(ba.heads, other.heads):
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert torch.equal(ba._generator.get_state(), other._generator.get_state())
    # without the generator's state the Monte-Carlo draws, and so the run, would differ
    third = make_mixed(99)
    state = dict(saved[0])
    state["generator"] = torch.Generator().manual_seed(1).get_state()
    third.load_state_dict(state)
    third.backbone.load_state_dict(saved[1])
    for h, s in zip(third.heads, saved[2]):
        h.load_state_dict(s)
    third.optimizer.load_state_dict(saved[3])
    run_mixed(third, range(5, 7))
    assert not all(torch.equal(a, b) for a, b in zip(ba.backbone.parameters(), third.backbone.parameters()))


def test_bad_classification_input_raises_the_projects_errors():
    ba = make_mixed(17)
    x, y = mixed_batch(0)
    preds = ba(x)
    losses = mixed_losses(preds, y)
    with pytest.raises(InvalidSystemError, match="multiclass task 2's targets must be integer"):
        ba.backward(losses, [y[0], y[1], y[2].double()])
    with pytest.raises(InvalidSystemError, match=r"must lie in \[0, 3\)"):
        ba.backward(losses, [y[0], y[1], y[2] + 3])
    with pytest.raises(InvalidSystemError, match=r"binary task 1's targets must lie in \[0, 1\]"):
        ba.backward(losses, [y[0], 2 * y[1] - 1, y[2]])
    backbone, opt = ba.backbone, ba.optimizer
    seq = torch.nn.Sequential(torch.nn.Linear(D, 3))
    with pytest.raises(InvalidConfigError, match="task 0 is binary: its head must be a torch.nn.Linear"):
        BayesAggMTL(backbone=backbone, heads=[seq, seq], optimizer=opt, num_tasks=2, task_type="binary")
    with pytest.raises(InvalidConfigError, match="multiclass task 0 has 1 output"):
        BayesAggMTL(
            backbone=backbone, heads=[torch.nn.Linear(D, 1)] * 2, optimizer=opt, num_tasks=2, task_type="multiclass"
        )
    with pytest.raises(NonFiniteError, match="not positive definite"):
        laplace_posterior(
            torch.ones(2, 2, dtype=torch.float64),
            torch.ones(2, 1, dtype=torch.float64),
            torch.zeros(1, 1, 2, dtype=torch.float64),
            kind="binary",
            prior_mean=torch.zeros(1, 2, dtype=torch.float64),
            prior_precision=torch.full((1, 2, 2), float("nan"), dtype=torch.float64),
        )


def test_the_epoch_prior_is_laplace_at_the_weights_of_the_epochs_first_aggregated_step():
    ba = make_mixed(18, prior_variance=0.5)
    feats, labels = [], []
    for s in range(2):
        x, y = mixed_batch(s)
        preds = ba(x)
        feats.append(ba._rep.detach().clone())
        labels.append(y[2])
        ba.step(mixed_losses(preds, y), y)
    ba.end_epoch()
    head = ba.heads[2]
    first = torch.cat((head.weight, head.bias[:, None]), 1).detach()[None].clone()
    run_mixed(ba, [5])  # the first step of the epoch fixes the prior; the heads then move
    now = torch.cat((head.weight, head.bias[:, None]), 1).detach()[None]
    assert not torch.equal(first, now)
    x, y = mixed_batch(6)
    with torch.no_grad():
        h = ba.backbone(x)
    one = lambda a: torch.cat((a, torch.ones(len(a), 1, dtype=a.dtype)), dim=1)  # noqa: E731
    eye = torch.eye(first[0].numel(), dtype=torch.float64)[None] / 0.5
    lab_all = torch.cat(labels)[:, None].double()
    m0, l0 = laplace_posterior(
        one(torch.cat(feats)), lab_all, first, kind="multiclass", prior_mean=0 * eye[:, 0], prior_precision=eye
    )
    ref = laplace_posterior(one(h), y[2][:, None].double(), now, kind="multiclass", prior_mean=m0, prior_precision=l0)
    got = ba.classification_posterior(2, h, y[2][:, None].double())
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_a_regression_checkpoint_without_classification_state_loads_and_a_mixed_one_must_have_it():
    ba = make(19)
    run(ba, range(2))
    old = {
        k: v
        for k, v in ba.state_dict().items()
        if k in ("gram", "cross", "prior_gram", "prior_cross", "steps", "epochs")
    }
    other = make(19)
    other.load_state_dict(old)
    assert torch.equal(other.state_dict()["gram"], ba.state_dict()["gram"]) and other.steps == 2
    with pytest.raises(StateError, match="lacks.*generator"):
        make_mixed().load_state_dict(old)

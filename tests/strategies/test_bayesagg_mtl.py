"""BayesAgg-MTL (Achituve, Diamant, Netzer, Chechik, Fetaya, arXiv 2402.04005; docs/methods.md#bayesagg_mtl):
the last-layer posterior against the normal equations with the prior (and the official two-stage
posterior, the previous epoch's posterior as the batch's prior), the gradient moments against Monte-Carlo
sampling of the head weights and against the official fourth-moment formulas written out, the
aggregation rule and a whole step against the equations written out, the limiting cases, warm-up,
checkpoints and bad input."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import mtlsolve
from mtlsolve.adapters.strategies import from_config, strategy_class
from mtlsolve.adapters.strategies.bayesagg_mtl import BayesAggMTL, aggregate, gradient_moments, posterior
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
        ({"num_tasks": 2, "task_type": "binary"}, "task_type"),
        ({"num_tasks": 2, "prior_variance": 0.0}, "prior_variance"),
        ({"num_tasks": 2, "noise_variance": -1.0}, "noise_variance"),
        ({"num_tasks": 2, "variance_power": float("nan")}, "variance_power"),
        ({"num_tasks": 2, "warmup_epochs": -1}, "warmup_epochs"),
    ],
)
def test_invalid_settings_raise_invalid_config_error(settings, field):
    with pytest.raises(InvalidConfigError, match=rf"^bayesagg_mtl: .*{field}"):
        mtlsolve.get_strategy("bayesagg_mtl", **settings)


def test_classification_is_refused_with_a_clear_message():
    with pytest.raises(InvalidConfigError, match="only 'regression' tasks are supported"):
        mtlsolve.get_strategy("bayesagg_mtl", num_tasks=2, task_type="multiclass")


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

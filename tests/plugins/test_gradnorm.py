"""GradNorm (docs/methods.md#gradnorm): the closed-form weight gradient against autograd's
double backward, the α = 0 equilibrium, renormalisation, L(0) options, state."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mtlsolve
from mtlsolve import InvalidSystemError
from mtlsolve.plugins.gramian.gradnorm import GradNorm


def tiny_problem(seed: int, m: int = 3):
    """A last shared layer W (4 x 3) and m task losses L_i = ½‖A_i W x_i − y_i‖² (torch, float64)."""
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    A = torch.randn(m, 2, 4, generator=gen, dtype=torch.float64)
    A = A * 3 * torch.rand(m, 1, 1, generator=gen, dtype=torch.float64)
    x = torch.randn(m, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(m, 2, generator=gen, dtype=torch.float64)

    def losses(W):
        return 0.5 * ((torch.einsum("mij,jk,mk->mi", A, W, x) - y) ** 2).sum(-1)

    return W, losses


def reference_weight_grad(w_of, theta, W, losses, L0, alpha):
    """The paper's L_grad differentiated by autograd (double backward), as SamsungLabs/LibMTL do."""
    theta = theta.clone().requires_grad_(True)
    w = w_of(theta)
    L = losses(W)
    G = torch.stack(
        [torch.linalg.vector_norm(torch.autograd.grad(w[i] * L[i], W, create_graph=True)[0]) for i in range(len(L))]
    )
    ratio = L.detach() / L0
    target = (G.mean() * (ratio / ratio.mean()) ** alpha).detach()
    (G - target).abs().sum().backward()
    return theta.grad.numpy()


@pytest.mark.parametrize("parameterisation", ["raw", "softmax"])
@pytest.mark.parametrize("alpha", [0.0, 1.5, 2.0])
def test_weight_gradient_equals_double_backward(parameterisation, alpha):
    for seed in range(6):
        W, losses = tiny_problem(seed)
        m = 3
        solver = GradNorm(alpha=alpha, parameterisation=parameterisation)
        # first call fixes L(0) on the initial losses
        L0 = losses(W).detach()
        rows = torch.stack([torch.autograd.grad(losses(W)[i], W)[0].flatten() for i in range(m)]).numpy()
        solver(rows, losses=L0.numpy())
        (p,) = solver.parameters()
        p.grad = None
        rng = np.random.default_rng(seed)
        theta = rng.uniform(0.3, 1.7, m) if parameterisation == "raw" else rng.standard_normal(m)
        with torch.no_grad():
            p.copy_(torch.from_numpy(theta))
            W.add_(0.3 * torch.randn(W.shape, generator=torch.Generator().manual_seed(seed + 100), dtype=W.dtype))
        L = losses(W)
        rows = torch.stack([torch.autograd.grad(L[i], W, retain_graph=True)[0].flatten() for i in range(m)]).numpy()
        r = solver(rows, losses=L.detach().numpy())
        w_of = (lambda t: t) if parameterisation == "raw" else (lambda t: m * torch.softmax(t, 0))
        expected = reference_weight_grad(w_of, torch.from_numpy(theta), W, losses, L0, alpha)
        np.testing.assert_allclose(p.grad.numpy(), expected, atol=1e-12)
        np.testing.assert_allclose(r.weights, w_of(torch.from_numpy(theta)).numpy(), atol=1e-15)


def test_alpha_zero_equalises_weighted_gradient_norms():
    """α = 0: the fixed point has w_i‖g_i‖ equal for all i, i.e. w_i ∝ 1/‖g_i‖ with Σw = m."""
    rng = np.random.default_rng(0)
    G = rng.standard_normal((4, 6)) * np.array([[0.5], [1.0], [2.0], [4.0]])
    L = np.array([1.0, 2.0, 3.0, 4.0])
    solver = GradNorm(alpha=0.0)
    solver(G, losses=L)
    (p,) = solver.parameters()
    opt = torch.optim.SGD([p], lr=0.02)
    schedule = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.993)  # sign gradients need a decaying step
    for _ in range(800):
        opt.zero_grad()
        solver(G, losses=L)
        opt.step()
        schedule.step()
        solver.after_step()
    norms = np.linalg.norm(G, axis=1)
    expected = 4 * (1 / norms) / (1 / norms).sum()
    np.testing.assert_allclose(p.detach().numpy(), expected, rtol=2e-2)


def test_weights_sum_to_m_after_every_update():
    rng = np.random.default_rng(1)
    solver = GradNorm()
    solver(rng.standard_normal((3, 5)), losses=np.ones(3))
    (p,) = solver.parameters()
    opt = torch.optim.Adam([p], lr=0.5)  # large steps: some weights are clipped at 0
    for _ in range(50):
        G = rng.standard_normal((3, 5)) * np.array([[0.1], [1.0], [10.0]])
        opt.zero_grad()
        solver(G, losses=rng.uniform(0.2, 2.0, 3))
        opt.step()
        solver.after_step()
        w = p.detach().numpy()
        assert (w >= 0).all() and w.sum() == pytest.approx(3.0, abs=1e-12)


def test_softmax_weights_sum_to_m():
    rng = np.random.default_rng(2)
    solver = GradNorm(parameterisation="softmax")
    for _ in range(5):
        r = solver(rng.standard_normal((4, 3)), losses=rng.uniform(0.5, 2.0, 4))
        (p,) = solver.parameters()
        with torch.no_grad():
            p.sub_(0.5 * p.grad)
        p.grad = None
        assert r.weights.sum() == pytest.approx(4.0, abs=1e-12)
    np.testing.assert_allclose(solver(np.eye(4), losses=np.ones(4)).weights, 4 * torch.softmax(p, 0).detach().numpy())


def test_first_epoch_mean_warms_up_with_equal_weights():
    rng = np.random.default_rng(3)
    solver = GradNorm(initial_loss="first_epoch_mean", alpha=2.0)
    epoch0 = [rng.uniform(0.5, 2.0, 3) for _ in range(4)]
    for L in epoch0:
        r = solver(rng.standard_normal((3, 4)), losses=L)
        np.testing.assert_array_equal(r.weights, 1.0)
        assert solver.parameters()[0].grad is None  # no weight update during epoch 0
    solver.end_epoch()
    G, L = rng.standard_normal((3, 4)), rng.uniform(0.5, 2.0, 3)
    r = solver(G, losses=L)
    ratio = L / np.mean(epoch0, axis=0)
    norms = np.linalg.norm(G, axis=1)
    np.testing.assert_allclose(r.diagnostics["targets"], norms.mean() * (ratio / ratio.mean()) ** 2, rtol=1e-12)


def test_first_step_losses_are_the_initial_losses():
    rng = np.random.default_rng(4)
    solver = GradNorm(alpha=1.0)
    L0 = np.array([1.0, 4.0])
    solver(rng.standard_normal((2, 3)), losses=L0)
    G = rng.standard_normal((2, 3))
    r = solver(G, losses=np.array([0.5, 4.0]))  # L̃ = (0.5, 1), r = (2/3, 4/3)
    np.testing.assert_allclose(r.diagnostics["targets"], np.linalg.norm(G, axis=1).mean() * np.array([2 / 3, 4 / 3]))


def test_state_round_trip_keeps_the_parameter_object():
    rng = np.random.default_rng(5)
    solver = GradNorm()
    solver(rng.standard_normal((3, 4)), losses=np.ones(3))
    (p,) = solver.parameters()
    with torch.no_grad():
        p.copy_(torch.tensor([0.5, 1.0, 1.5]))
    snapshot = solver.state_dict()
    with torch.no_grad():
        p.fill_(1.0)
    solver.load_state_dict(snapshot)
    assert solver.parameters()[0] is p
    np.testing.assert_array_equal(p.detach().numpy(), [0.5, 1.0, 1.5])
    fresh = GradNorm()
    fresh.load_state_dict(snapshot)
    p.grad = None
    G, L = rng.standard_normal((3, 4)), rng.uniform(0.5, 2.0, 3)
    np.testing.assert_array_equal(fresh(G, losses=L).weights, solver(G, losses=L).weights)
    np.testing.assert_array_equal(fresh.parameters()[0].grad.numpy(), p.grad.numpy())


def test_options_and_registration():
    solver = mtlsolve.get("GradNorm")
    assert (solver.alpha, solver.params, solver.parameterisation, solver.initial_loss) == (
        1.5,
        "last_shared",
        "raw",
        "first_step",
    )
    assert solver.grads == "last_shared" and GradNorm(params="all_shared").grads is None
    assert mtlsolve.get("grad_norm").name == "gradnorm"
    assert GradNorm.post_step and not GradNorm.post_step_losses
    for bad in ({"alpha": -1.0}, {"params": "first"}, {"parameterisation": "exp"}, {"initial_loss": "mean"}):
        with pytest.raises(ValueError):
            GradNorm(**bad)


def test_non_positive_initial_loss_is_an_error():
    with pytest.raises(InvalidSystemError, match="initial losses"):
        GradNorm()(np.eye(2), losses=np.array([1.0, 0.0]))

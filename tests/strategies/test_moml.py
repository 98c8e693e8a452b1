"""MoML (Ye, Lin, Yue, Guo, Xiao, Zhang, arXiv 2102.07121; docs/methods.md#moml): the per-task validation
hypergradients H_ij = ∂L_i^val(θ′)/∂a_j against torch.func differentiating through the virtual step,
through λ = softmax(a), the upper-level direction against the min-norm (MGDA) optimality conditions on
the rows of H, the Adam step of a and the model step, checkpoints."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from strategy_testing import Net, task_losses
from torch.func import functional_call, grad, jacrev

import mtlsolve
from mtlsolve.adapters.strategies import from_config, strategy_class
from mtlsolve.adapters.strategies.moml import MoML
from mtlsolve.errors import InvalidConfigError


def reference_H(net, a, x, y, xv, yv, alpha):
    """∂L^val(θ − α∇_θ Σ λ_i L_i(θ))/∂a with λ = softmax(a), the m x m Jacobian, by torch.func."""
    params = {k: v.detach() for k, v in net.named_parameters()}

    def losses(p, x, y):
        return ((functional_call(net, p, (x,)) - y) ** 2).mean(dim=0)

    def lookahead(a):
        lam = torch.softmax(a, dim=0)
        g = grad(lambda p: (lam * losses(p, x, y)).sum())(params)
        return losses({k: params[k] - alpha * g[k] for k in params}, xv, yv)

    return jacrev(lookahead)(a)


def data(seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(12, k, generator=gen, dtype=torch.float64) for k in (4, 3, 4, 3)]


def test_hypergradients_and_the_mgda_direction():
    torch.manual_seed(0)
    net = Net().double()
    x, y, xv, yv = data(0)
    moml = MoML(model=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.05), num_tasks=3, inner_lr=0.3)
    with torch.no_grad():
        moml.logits.copy_(torch.tensor([0.5, 1.5, 1.0]))
    moml.weights = torch.softmax(moml.logits.detach(), dim=0)
    d = moml.hypergradient(lambda m: task_losses(m, x, y), lambda m: task_losses(m, xv, yv))
    H = reference_H(net, moml.logits.detach().clone(), x, y, xv, yv, 0.3)
    torch.testing.assert_close(moml.last_hypergradients, H, rtol=1e-10, atol=1e-13)
    # min-norm point of the convex hull of H's rows: d = Hᵀw, w ∈ Δ, ⟨H_i, d⟩ ≥ ‖d‖² with equality where w_i > 0
    w = moml.last_solver_weights
    assert w.min() >= 0 and w.sum().item() == pytest.approx(1.0)
    torch.testing.assert_close(d, H.T @ w, rtol=1e-10, atol=1e-13)
    slack = H @ d - d @ d
    tol = 1e-9 * float(H.abs().max()) ** 2
    assert slack.min() >= -tol
    assert slack[w > 1e-9].abs().max() <= tol
    # a common descent direction of every validation loss (to first order in a)
    assert (H @ d > 0).all()


def test_step_moves_lambda_by_adam_along_the_direction_then_steps_the_model():
    torch.manual_seed(1)
    net = Net().double()
    x, y, xv, yv = data(1)
    lr, outer = 0.05, 1e-2
    moml = MoML(model=net, optimizer=torch.optim.SGD(net.parameters(), lr=lr), num_tasks=3, outer_lr=outer)
    ref = copy.deepcopy(net)
    a0 = moml.logits.detach().clone()
    np.testing.assert_allclose(moml.weights.numpy(), 1 / 3)  # the authors' code: a = 1/m, λ uniform
    d = moml.hypergradient(lambda m: task_losses(m, x, y), lambda m: task_losses(m, xv, yv))
    record = moml.step(lambda m: task_losses(m, x, y), lambda m: task_losses(m, xv, yv))
    np.testing.assert_allclose(record.hypergradient, d.numpy(), rtol=1e-12)
    a1 = a0 - outer * d / (d.abs() + 1e-8)  # Adam's first step
    torch.testing.assert_close(moml.logits.detach(), a1, rtol=1e-12, atol=1e-15)
    lam1 = torch.softmax(a1, dim=0)
    torch.testing.assert_close(moml.weights, lam1, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(record.weights, lam1.numpy(), rtol=1e-12)
    grads = torch.autograd.grad((lam1 * task_losses(ref, x, y)).sum(), list(ref.parameters()))
    for p, q, g in zip(net.parameters(), ref.parameters(), grads):
        torch.testing.assert_close(p.detach(), q.detach() - lr * g, rtol=1e-12, atol=1e-14)


def test_checkpoint_resume_is_bit_identical():
    x, y, xv, yv = (t.float() for t in data(2))

    def make(seed):
        torch.manual_seed(seed)
        net = Net()
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        return net, opt, MoML(model=net, optimizer=opt, num_tasks=3, update_every=2, outer_lr=1e-2)

    def train(moml, steps):
        for _ in range(steps):
            moml.step(lambda m: task_losses(m, x, y), lambda m: task_losses(m, xv, yv))

    net, opt, moml = make(0)
    train(moml, 3)
    saved = {"net": copy.deepcopy(net.state_dict()), "opt": copy.deepcopy(opt.state_dict()), "moml": moml.state_dict()}
    train(moml, 4)
    net2, opt2, moml2 = make(1)
    net2.load_state_dict(saved["net"])
    opt2.load_state_dict(saved["opt"])
    moml2.load_state_dict(saved["moml"])
    train(moml2, 4)
    assert moml2.steps == moml.steps == 7
    for a, b in zip(net.parameters(), net2.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(moml.weights, moml2.weights) and torch.equal(moml.logits, moml2.logits)


def test_config_names_and_errors():
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    assert strategy_class("MOML") is MoML
    built = from_config({"strategy": "moml", "num_tasks": 3, "inner_lr": None}, model=net, optimizer=opt)
    assert built.inner_lr() == 0.1
    np.testing.assert_allclose(built.weights.numpy(), 1 / 3)
    for bad in (
        {"num_tasks": 1},
        {"num_tasks": 2, "outer_lr": 0},
        {"num_tasks": 2, "primary": [0]},
        {"num_tasks": 2, "solver": "nope"},
    ):
        with pytest.raises(InvalidConfigError):
            mtlsolve.get_strategy("moml", **bad)

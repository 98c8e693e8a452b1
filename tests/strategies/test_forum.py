"""FORUM (Ye, Lin, Cao, Zhang, Tsang, arXiv 2401.09257; docs/methods.md#forum): one step against the
authors' algorithm written out (∇q with the inner SGD loop, the normalised upper-level gradients, π,
the QP (14) checked against scipy's SLSQP, the averaged weights, ν and the update of logits and model),
no second-order autograd (a model whose double backward raises), the averaging rate across epochs,
checkpoints."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from strategy_testing import Net, task_losses
from torch.autograd.function import once_differentiable

import mtlsolve
from mtlsolve.adapters.strategies import from_config, strategy_class
from mtlsolve.adapters.strategies.forum import FORUM, forum_qp
from mtlsolve.errors import InvalidConfigError, InvalidSystemError


def data(seed, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(12, k, generator=gen, dtype=dtype) for k in (4, 3, 4, 3)]


def slsqp(K, pi, c):
    m = len(pi)
    cons = [
        {"type": "eq", "fun": lambda w: w[:m].sum() - 1},
        {"type": "ineq", "fun": lambda w: w[m] - pi @ w[:m]},
    ]
    best = None
    for start in (np.r_[np.full(m, 1 / m), max(pi.max(), 0) + 1], np.r_[np.eye(m)[0], 1.0]):
        res = minimize(
            lambda w: w @ K @ w - c * w[m],
            start,
            bounds=[(0, None)] * (m + 1),
            constraints=cons,
            method="SLSQP",
            options={"ftol": 1e-14, "maxiter": 500},
        )
        if best is None or res.fun < best.fun:
            best = res
    return best


def test_qp_matches_scipy():
    rng = np.random.default_rng(0)
    for m in (2, 3, 4):
        for _ in range(5):
            A = rng.normal(size=(m + 1, 7))
            K = A @ A.T
            pi = rng.normal(scale=0.5, size=m)
            c = abs(rng.normal())
            w = forum_qp(K, pi, c)
            ref = slsqp(K, pi, c)
            assert w.min() >= 0 and w[:m].sum() == pytest.approx(1, abs=1e-8) and w[m] >= pi @ w[:m] - 1e-8
            assert w @ K @ w - c * w[m] <= ref.fun + 1e-7


def test_step_matches_the_authors_algorithm_written_out():
    torch.manual_seed(0)
    net = Net().double()
    x, y, xv, yv = data(0)
    lr, outer, eta, T, rho = 0.05, 1e-2, 0.1, 3, 0.2
    forum = FORUM(
        model=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=lr),
        num_tasks=3,
        outer_lr=outer,
        inner_lr=eta,
        inner_steps=T,
        rho=rho,
    )
    with torch.no_grad():
        forum.logits.copy_(torch.tensor([0.2, -0.3, 0.5]))
    ref = copy.deepcopy(net)
    a = forum.logits.detach().clone().requires_grad_(True)
    params = list(ref.parameters())
    # ∇_z f at (a, ω)
    f = (torch.softmax(a, 0) * task_losses(ref, x, y)).sum()
    g_f = torch.cat([g.flatten() for g in torch.autograd.grad(f, [a, *params])])
    # ω_T: T steps of SGD(η) on f(a, ·) from ω, as the authors' inner loop
    inner = copy.deepcopy(ref)
    opt_in = torch.optim.SGD(inner.parameters(), lr=eta)
    for _ in range(T):
        opt_in.zero_grad()
        (torch.softmax(a.detach(), 0) * task_losses(inner, x, y)).sum().backward()
        opt_in.step()
    f_T = (torch.softmax(a, 0) * task_losses(inner, x, y).detach()).sum()
    g_q = g_f.clone()
    g_q[:3] -= torch.autograd.grad(f_T, a)[0]
    # normalised upper-level gradients, π, c
    Fv = task_losses(ref, xv, yv)
    U = []
    for i in range(3):
        g = torch.cat([t.flatten() for t in torch.autograd.grad(Fv[i], params, retain_graph=True)])
        U.append(torch.cat([torch.zeros(3, dtype=g.dtype), g / (1e-8 + g.norm())]))
    U = torch.stack(U)
    qq = float(g_q @ g_q) + 1e-8
    pi = rho - (U @ g_q).numpy() / qq
    A = torch.cat([U, g_q[None]])
    K = (A @ A.T).numpy()

    record = forum.step(lambda m: task_losses(m, x, y), lambda m: task_losses(m, xv, yv))
    ref_w = slsqp(K, pi, rho * qq)
    w = record.qp_weights
    assert w @ K @ w - rho * qq * w[3] <= ref_w.fun + 1e-7 * max(1.0, abs(ref_w.fun))
    np.testing.assert_allclose(record.averaged, w[:3], rtol=1e-12)  # epoch 0: rate 1, λ̄ = w
    nu = max(float(w[:3] @ pi), 0.0)
    assert record.nu == pytest.approx(nu, rel=1e-12, abs=1e-15)
    d = torch.as_tensor(w[:3]) @ U + nu * g_q
    # the logits take Adam's first step along d[:m], the model an SGD step along d[m:]
    a1 = a.detach() - outer * d[:3] / (d[:3].abs() + 1e-8)
    torch.testing.assert_close(forum.logits.detach(), a1, rtol=1e-10, atol=1e-12)
    flat = torch.cat([p.detach().flatten() for p in params]) - lr * d[3:]
    torch.testing.assert_close(
        torch.cat([p.detach().flatten() for p in net.parameters()]), flat, rtol=1e-10, atol=1e-12
    )
    assert record.constraint == pytest.approx(float((f - f_T).detach()), rel=1e-12)
    np.testing.assert_allclose(record.weights, torch.softmax(a1, 0).numpy(), rtol=1e-12)


class _OnceTanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * (1 - y * y)


class FirstOrderOnly(Net):
    """A model whose double backward raises."""

    def forward(self, x):
        return self.head(_OnceTanh.apply(self.trunk(x)))


def test_no_second_order_autograd_call():
    torch.manual_seed(1)
    net = FirstOrderOnly().double()
    x, y, xv, yv = data(1)
    out = (net(x) ** 2).sum()
    (g,) = torch.autograd.grad(out, net.trunk.weight, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(g.sum(), net.trunk.weight)  # the model indeed refuses second order
    forum = FORUM(model=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.05), num_tasks=3)
    for _ in range(3):
        record = forum.step(lambda m: task_losses(m, x, y), lambda m: task_losses(m, xv, yv))
    assert np.isfinite(record.weights).all() and record.weights.sum() == pytest.approx(1.0)


def test_averaging_rate_follows_the_epoch():
    torch.manual_seed(2)
    net = Net().double()
    x, y, xv, yv = data(2)
    forum = FORUM(model=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.05), num_tasks=3)
    first = forum.step(lambda m: task_losses(m, x, y), lambda m: task_losses(m, xv, yv))
    forum.end_epoch()
    second = forum.step(lambda m: task_losses(m, x, y), lambda m: task_losses(m, xv, yv))
    rate = 2**-0.75
    np.testing.assert_allclose(
        second.averaged, first.averaged + rate * (second.qp_weights[:3] - first.averaged), rtol=1e-12
    )


def test_checkpoint_resume_is_bit_identical():
    x, y, xv, yv = data(3, torch.float32)

    def make(seed):
        torch.manual_seed(seed)
        net = Net()
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        return net, opt, FORUM(model=net, optimizer=opt, num_tasks=3, inner_steps=2)

    def train(forum, steps):
        for _ in range(steps):
            forum.step(lambda m: task_losses(m, x, y), lambda m: task_losses(m, xv, yv))
        forum.end_epoch()

    net, opt, forum = make(0)
    train(forum, 2)
    saved = {
        "net": copy.deepcopy(net.state_dict()),
        "opt": copy.deepcopy(opt.state_dict()),
        "forum": forum.state_dict(),
    }
    train(forum, 3)
    net2, opt2, forum2 = make(1)
    net2.load_state_dict(saved["net"])
    opt2.load_state_dict(saved["opt"])
    forum2.load_state_dict(saved["forum"])
    train(forum2, 3)
    assert forum2.steps == forum.steps == 5
    for p, q in zip(net.parameters(), net2.parameters()):
        assert torch.equal(p, q)
    assert torch.equal(forum.logits, forum2.logits)


def test_config_names_and_errors():
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    assert strategy_class("FORUM") is FORUM
    built = from_config({"strategy": "forum", "num_tasks": 3, "inner_steps": 2}, model=net, optimizer=opt)
    np.testing.assert_allclose(built.weights.numpy(), 1 / 3)
    for bad in ({"num_tasks": 1}, {"num_tasks": 2, "inner_steps": 0}, {"num_tasks": 2, "rho": -1}):
        with pytest.raises(InvalidConfigError):
            mtlsolve.get_strategy("forum", **bad)
    x = torch.randn(4, 4)
    with pytest.raises(InvalidSystemError, match="2 losses for num_tasks=3"):
        built.step(lambda m: m(x).mean(0)[:2], lambda m: m(x).mean(0))

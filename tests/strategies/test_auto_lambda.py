"""Auto-Lambda (Liu, James, Davison, Johns, arXiv 2202.03091; docs/methods.md#auto_lambda): the lookahead
hypergradient ∂L_val(θ′)/∂λ against a closed form on a quadratic bilevel problem, against torch.func
differentiating through the virtual step, and against finite differences in λ; the official code's
central-difference estimate; the weight and model updates; checkpoints."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from strategy_testing import Net, task_losses
from torch.func import functional_call, grad

import mtlsolve
from mtlsolve.adapters.strategies import from_config, strategy_class
from mtlsolve.adapters.strategies.auto_lambda import AutoLambda
from mtlsolve.errors import InvalidConfigError, InvalidSystemError


class Point(torch.nn.Module):
    """A single parameter θ ∈ ℝ² (the quadratic bilevel problem)."""

    def __init__(self, theta):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.as_tensor(theta, dtype=torch.float64).clone())


def quadratic(anchors):
    """L_i(θ) = ½‖θ − a_i‖² for each row a_i."""
    A = torch.as_tensor(anchors, dtype=torch.float64)
    return lambda model: 0.5 * ((model.theta - A) ** 2).sum(dim=1)


def test_hypergradient_matches_the_closed_form_on_a_quadratic_bilevel_problem():
    a = np.array([[1.0, 0.0], [0.0, 2.0], [-1.0, 1.0]])
    b = np.array([[0.5, -0.5], [0.3, 0.2], [2.0, 1.0]])
    theta, alpha = np.array([0.2, -0.7]), 0.3
    model = Point(theta)
    al = AutoLambda(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), num_tasks=3, inner_lr=alpha, weight_init=0.4
    )
    with torch.no_grad():
        al.weights.copy_(torch.tensor([0.4, 1.3, 0.2]))
    lam = al.weights.detach().numpy().astype(np.float64)
    h = al.hypergradient(quadratic(a), quadratic(b)).numpy()
    # θ′ = θ − α Σ λ_i (θ − a_i);  L_val = Σ_j ½‖θ′ − b_j‖²;  ∂/∂λ_i = −α (Σ_j (θ′ − b_j))ᵀ (θ − a_i)
    theta_p = theta - alpha * (lam[:, None] * (theta - a)).sum(axis=0)
    expected = -alpha * ((theta_p - b).sum(axis=0) * (theta - a)).sum(axis=1)
    np.testing.assert_allclose(h, expected, rtol=1e-12, atol=1e-14)


def reference_hypergradient(net, lam, x, y, xv, yv, alpha, primary, momentum=None, weight_decay=0.0):
    """∇_λ L_val(θ − α(∇_θ Σ λ_i L_i(θ) + μ·buf + wd·θ)) by torch.func, through the virtual step."""
    params = {k: v.detach() for k, v in net.named_parameters()}

    def train_scalar(p, lam):
        return (lam * task_losses_f(p, x, y)).sum()

    def task_losses_f(p, x, y):
        return ((functional_call(net, p, (x,)) - y) ** 2).mean(dim=0)

    def lookahead(lam):
        g = grad(train_scalar)(params, lam)
        shifted = {}
        for k, p in params.items():
            d = g[k] + weight_decay * p + (0 if momentum is None else momentum[k])
            shifted[k] = p - alpha * d
        return (primary * task_losses_f(shifted, xv, yv)).sum()

    return grad(lookahead)(lam), lookahead


@pytest.mark.parametrize("primary", [None, (0,), (1, 2)])
def test_hypergradient_matches_torch_func_through_the_virtual_step(primary):
    torch.manual_seed(0)
    net = Net().double()
    x, y, xv, yv = (torch.randn(12, k, dtype=torch.float64) for k in (4, 3, 4, 3))
    al = AutoLambda(
        model=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.05), num_tasks=3, primary=primary, inner_lr=0.2
    )
    with torch.no_grad():
        al.weights.copy_(torch.tensor([0.3, 0.9, 0.5]))
    h = al.hypergradient(lambda m: task_losses(m, x, y), lambda m: task_losses(m, xv, yv))
    mask = torch.zeros(3, dtype=torch.float64)
    mask[list(primary or range(3))] = 1
    lam = al.weights.detach().clone()
    ref, lookahead = reference_hypergradient(net, lam, x, y, xv, yv, 0.2, mask)
    torch.testing.assert_close(h, ref, rtol=1e-10, atol=1e-13)
    # and against central differences of the whole lookahead in λ (float64, step 1e-5: error ~1e-10)
    fd = torch.stack(
        [(lookahead(lam + 1e-5 * e) - lookahead(lam - 1e-5 * e)) / 2e-5 for e in torch.eye(3, dtype=lam.dtype)]
    )
    torch.testing.assert_close(h, fd, rtol=1e-6, atol=1e-9)


def test_virtual_step_includes_sgd_momentum_and_weight_decay_as_the_official_code():
    torch.manual_seed(1)
    net = Net().double()
    x, y, xv, yv = (torch.randn(12, k, dtype=torch.float64) for k in (4, 3, 4, 3))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-2)
    al = AutoLambda(model=net, optimizer=opt, num_tasks=3, inner_lr=None, outer_lr=1e-2)
    for _ in range(2):  # fills the momentum buffers
        al.step(lambda m: task_losses(m, x, y), lambda m: task_losses(m, xv, yv))
    h = al.hypergradient(lambda m: task_losses(m, x, y), lambda m: task_losses(m, xv, yv))
    bufs = {k: 0.9 * opt.state[p]["momentum_buffer"] for k, p in net.named_parameters()}
    ref, _ = reference_hypergradient(
        net, al.weights.detach().clone(), x, y, xv, yv, 0.05, torch.ones(3, dtype=torch.float64), bufs, 1e-2
    )
    torch.testing.assert_close(h, ref, rtol=1e-10, atol=1e-13)


def test_central_difference_of_the_official_code_approximates_the_exact_hypergradient():
    torch.manual_seed(2)
    net = Net().double()
    x, y, xv, yv = (torch.randn(12, k, dtype=torch.float64) for k in (4, 3, 4, 3))
    kw = dict(num_tasks=3, inner_lr=0.2, weight_init=0.6)
    exact = AutoLambda(model=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.1), **kw)
    fd = AutoLambda(
        model=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.1), hypergradient="finite_difference", **kw
    )
    before = [p.detach().clone() for p in net.parameters()]
    args = (lambda m: task_losses(m, x, y), lambda m: task_losses(m, xv, yv))
    h_exact, h_fd = exact.hypergradient(*args), fd.hypergradient(*args)
    for p, p0 in zip(net.parameters(), before):  # θ restored exactly after θ ± εv
        assert torch.equal(p, p0)
    # central difference with ε‖v‖ = 0.01: error O(ε²‖v‖² · third derivative) ≈ 1e-5 relative here
    torch.testing.assert_close(h_fd, h_exact, rtol=1e-4, atol=1e-8)


def test_step_updates_lambda_by_adam_then_the_model_with_the_new_lambda():
    torch.manual_seed(3)
    net = Net().double()
    x, y, xv, yv = (torch.randn(12, k, dtype=torch.float64) for k in (4, 3, 4, 3))
    lr, outer = 0.05, 1e-2
    al = AutoLambda(model=net, optimizer=torch.optim.SGD(net.parameters(), lr=lr), num_tasks=3, outer_lr=outer)
    ref = copy.deepcopy(net)
    lam0 = al.weights.detach().clone()
    h = al.hypergradient(lambda m: task_losses(m, x, y), lambda m: task_losses(m, xv, yv))
    record = al.step(lambda m: task_losses(m, x, y), lambda m: task_losses(m, xv, yv))
    np.testing.assert_allclose(record.hypergradient, h.numpy(), rtol=1e-12)
    # Adam's first step: λ ← λ − lr_λ · h/(|h| + 1e-8) (bias corrections cancel)
    lam1 = lam0 - outer * h / (h.abs() + 1e-8)
    torch.testing.assert_close(al.weights.detach(), lam1, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(record.weights, lam1.numpy(), rtol=1e-12)
    loss = (lam1 * task_losses(ref, x, y)).sum()
    grads = torch.autograd.grad(loss, list(ref.parameters()))
    for p, q, g in zip(net.parameters(), ref.parameters(), grads):
        torch.testing.assert_close(p.detach(), q.detach() - lr * g, rtol=1e-12, atol=1e-14)


def test_helpful_auxiliary_tasks_gain_weight_and_harmful_ones_lose_it():
    """The paper's reading of λ (§3): a task whose gradient lowers the primary validation loss is up-weighted."""
    b = np.array([[1.0, 1.0]])
    anchors = np.array([[1.0, 1.0], [1.0, 1.0], [-1.0, -1.0]])  # primary, a copy of it, its opposite
    model = Point([0.0, 0.0])
    al = AutoLambda(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), num_tasks=3, primary=0, outer_lr=1e-2
    )
    for _ in range(20):
        al.step(quadratic(anchors), lambda m: quadratic(b)(m).expand(3))
    lam = al.weights.detach().numpy()
    assert lam[1] > 0.1 > lam[2]


def test_update_every_and_checkpoint_resume_is_bit_identical():
    torch.manual_seed(4)
    x, y, xv, yv = (torch.randn(32, k) for k in (4, 3, 4, 3))
    batches = [torch.randint(0, 32, (8,)) for _ in range(12)]

    def make(seed):
        torch.manual_seed(seed)
        net = Net()
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        return net, opt, AutoLambda(model=net, optimizer=opt, num_tasks=3, update_every=2, outer_lr=1e-2)

    def train(al, idx):
        return [al.step(lambda m, i=i: task_losses(m, x[i], y[i]), lambda m: task_losses(m, xv, yv)) for i in idx]

    net, opt, al = make(0)
    records = train(al, batches[:5])
    assert [r.hypergradient is None for r in records] == [False, True, False, True, False]
    saved = {"net": copy.deepcopy(net.state_dict()), "opt": copy.deepcopy(opt.state_dict()), "al": al.state_dict()}
    rest = train(al, batches[5:])
    net2, opt2, al2 = make(1)
    net2.load_state_dict(saved["net"])
    opt2.load_state_dict(saved["opt"])
    al2.load_state_dict(saved["al"])
    rest2 = train(al2, batches[5:])
    assert al2.steps == al.steps == 12
    for a, b in zip(net.parameters(), net2.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(al.weights, al2.weights)
    for r, r2 in zip(rest, rest2):
        np.testing.assert_array_equal(r.weights, r2.weights)


def test_config_names_and_errors():
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    assert strategy_class("Auto-Lambda") is AutoLambda and strategy_class("autol") is AutoLambda
    built = from_config({"strategy": "autol", "num_tasks": 3, "outer_lr": 1e-4}, model=net, optimizer=opt)
    assert built.settings == mtlsolve.get_strategy("auto_lambda", num_tasks=3, outer_lr=1e-4)
    for bad in ({"num_tasks": 1}, {"num_tasks": 2, "primary": [2]}, {"num_tasks": 2, "hypergradient": "implicit"}):
        with pytest.raises(InvalidConfigError):
            mtlsolve.get_strategy("auto_lambda", **bad)
    al = AutoLambda(model=net, optimizer=opt, num_tasks=2)
    x = torch.randn(4, 4)
    with pytest.raises(InvalidSystemError, match="3 losses for num_tasks=2"):
        al.step(lambda m: m(x).mean(dim=0), lambda m: m(x).mean(dim=0))
    with pytest.raises(InvalidConfigError, match="2 task weights, not 3"):
        AutoLambda(model=net, optimizer=opt, num_tasks=3).load_state_dict(al.state_dict())

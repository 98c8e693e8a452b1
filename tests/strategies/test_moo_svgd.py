"""MOO-SVGD (Liu, Tong, Liu, NeurIPS 2021; docs/methods.md#moo_svgd): one step against the SVGD update
written out with autograd as LibMOON computes it (kernel on the losses, repulsion −½∇Σk), the
bandwidth's median heuristic, the no-repulsion limit (each particle follows its MGDA step), the
spread of the particles along a Pareto front, hypervolume and checkpoints."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

import mtlsolve
from mtlsolve.adapters.strategies import from_config, strategy_class
from mtlsolve.adapters.strategies.moo_svgd import MOOSVGD, rbf_kernel
from mtlsolve.errors import InvalidConfigError, InvalidSystemError
from mtlsolve.metrics import hypervolume


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = torch.nn.Linear(3, 4)
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.head(torch.tanh(self.trunk(x)))


def two_losses(model, x, y):
    return ((model(x) - y) ** 2).mean(dim=0)


def min_norm_two(g1, g2):
    """The min-norm point of the segment [g1, g2] (two-task MGDA in closed form)."""
    gamma = torch.clamp(((g2 - g1) @ g2) / ((g1 - g2) @ (g1 - g2)), 0.0, 1.0)
    return gamma * g1 + (1 - gamma) * g2


def flat_grad(out, params, **kw):
    return torch.cat([g.flatten() for g in torch.autograd.grad(out, params, **kw)])


@pytest.mark.parametrize("repulsion, bandwidth", [(1.0, None), (0.5, 0.3)])
def test_step_is_the_svgd_update_with_mgda_directions(repulsion, bandwidth):
    torch.manual_seed(0)
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64)
    net = Tiny().double()
    lr = 0.1
    pop = MOOSVGD(
        model=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=lr),
        num_tasks=2,
        n_particles=4,
        repulsion=repulsion,
        bandwidth=bandwidth,
    )
    for _ in range(2):
        before = [copy.deepcopy(m) for m in pop.models]
        K = len(before)
        params = [list(m.parameters()) for m in before]
        F = torch.stack([two_losses(m, x, y) for m in before])
        d = []
        for k in range(K):
            g1 = flat_grad(F[k, 0], params[k], retain_graph=True)
            g2 = flat_grad(F[k, 1], params[k], retain_graph=True)
            d.append(min_norm_two(g1, g2))
        d = torch.stack(d)
        D = ((F[:, None, :] - F[None, :, :]) ** 2).sum(dim=-1)
        h = bandwidth if bandwidth is not None else float(np.median(D.detach().numpy())) / math.log(K)
        kernel = torch.exp(-D / h)
        # LibMOON: kernel_grad = −½ ∇_θ Σ k;  gradient = (k·g* − α·kernel_grad)/K;  θ ← θ − η·gradient
        kernel_grad = [-0.5 * flat_grad(kernel.sum(), params[j], retain_graph=True) for j in range(K)]
        record = pop.step(lambda m: two_losses(m, x, y))
        assert record.bandwidth == pytest.approx(h, rel=1e-12)
        np.testing.assert_allclose(record.kernel, kernel.detach().numpy(), rtol=1e-12)
        for j in range(K):
            gradient = (kernel[j].detach() @ d - repulsion * kernel_grad[j]) / K
            expected = torch.cat([p.detach().flatten() for p in params[j]]) - lr * gradient
            got = torch.cat([p.detach().flatten() for p in pop.models[j].parameters()])
            torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_median_heuristic_bandwidth():
    F = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]], dtype=torch.float64)
    kernel, h = rbf_kernel(F)
    D = np.array([[np.sum((a - b) ** 2) for b in F.numpy()] for a in F.numpy()])
    assert h == pytest.approx(np.median(D) / math.log(3))
    np.testing.assert_allclose(kernel.numpy(), np.exp(-D / h))
    assert rbf_kernel(torch.ones(3, 2))[1] == 1.0  # coincident particles: h falls back to 1


def test_without_repulsion_and_with_a_narrow_kernel_each_particle_takes_its_own_mgda_step():
    torch.manual_seed(1)
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64)
    net = Tiny().double()
    pop = MOOSVGD(
        model=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.2),
        num_tasks=2,
        n_particles=3,
        repulsion=0.0,
        bandwidth=1e-12,
    )
    before = [copy.deepcopy(m) for m in pop.models]
    record = pop.step(lambda m: two_losses(m, x, y))
    np.testing.assert_allclose(record.kernel, np.eye(3), atol=1e-300)
    for k, ref in enumerate(before):
        params = list(ref.parameters())
        L = two_losses(ref, x, y)
        d = min_norm_two(flat_grad(L[0], params, retain_graph=True), flat_grad(L[1], params))
        mgda = mtlsolve.get("mgda")(
            torch.stack([flat_grad(l, params, retain_graph=True) for l in two_losses(ref, x, y)])
        )
        torch.testing.assert_close(mgda.direction, d, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(record.weights[k], mgda.weights, rtol=1e-9, atol=1e-12)
        expected = torch.cat([p.detach().flatten() for p in params]) - 0.2 * d / 3
        got = torch.cat([p.detach().flatten() for p in pop.models[k].parameters()])
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


class Point(torch.nn.Module):
    """x ∈ ℝ², re-initialised near (0, 1) (the particles start bunched)."""

    def __init__(self):
        super().__init__()
        self.x = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
        self.reset_parameters()

    def reset_parameters(self):
        with torch.no_grad():
            self.x.copy_(torch.tensor([0.0, 1.0], dtype=torch.float64) + 0.01 * torch.randn(2, dtype=torch.float64))


A, B = torch.tensor([-1.0, 0.0], dtype=torch.float64), torch.tensor([1.0, 0.0], dtype=torch.float64)


def segment_losses(model):
    """f₁ = ‖x − a‖², f₂ = ‖x − b‖²: the Pareto set is the segment [a, b]."""
    return torch.stack([((model.x - A) ** 2).sum(), ((model.x - B) ** 2).sum()])


def run_segment(repulsion, steps=200):
    pop = MOOSVGD(
        model=Point(),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
        num_tasks=2,
        n_particles=5,
        repulsion=repulsion,
        bandwidth=0.1,
    )
    for _ in range(steps):
        pop.step(segment_losses)
    return pop, np.stack([m.x.detach().numpy() for m in pop.models])


def test_repulsion_spreads_the_particles_along_the_pareto_front():
    """The paper's claim (§3): the descent term brings each particle to the Pareto set, the kernel
    term keeps them apart; without it they stay where they started (bunched near (0, 1) → (0, 0))."""
    pop, X = run_segment(1.0)
    _, X0 = run_segment(0.0)
    assert np.abs(X[:, 1]).max() < 0.01 and np.abs(X[:, 0]).max() <= 1.0  # on the Pareto set [a, b] × {0}
    assert np.ptp(X[:, 0]) > 1.0 and np.ptp(X0[:, 0]) < 0.1
    r = (4.4, 4.4)
    L = pop.evaluate(segment_losses)
    L0 = np.stack([[np.sum((x - A.numpy()) ** 2), np.sum((x - B.numpy()) ** 2)] for x in X0])
    assert pop.hypervolume(L) == hypervolume(L, pop.reference) and hypervolume(L, r) > hypervolume(L0, r) + 1.0


def test_checkpoint_resume_is_bit_identical():
    torch.manual_seed(2)
    x, y = torch.randn(32, 3), torch.randn(32, 2)
    batches = [torch.randint(0, 32, (8,)) for _ in range(8)]

    def make(seed):
        net = Tiny()
        return MOOSVGD(
            model=net,
            optimizer=torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9),
            num_tasks=2,
            n_particles=3,
            seed=seed,
        )

    def train(pop, idx):
        for i in idx:
            pop.step(lambda m, i=i: two_losses(m, x[i], y[i]))

    pop = make(0)
    train(pop, batches[:4])
    saved = copy.deepcopy(pop.state_dict())
    train(pop, batches[4:])
    pop2 = make(5)
    pop2.load_state_dict(saved)
    train(pop2, batches[4:])
    assert pop2.steps == pop.steps == 8 and pop2.reference == pop.reference
    for a, b in zip(pop.models, pop2.models):
        for p, q in zip(a.parameters(), b.parameters()):
            assert torch.equal(p, q)


def test_config_names_and_errors():
    net = Tiny()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    assert strategy_class("MOO-SVGD") is MOOSVGD and strategy_class("moosvgd") is MOOSVGD
    pop = from_config(
        {"strategy": "moo_svgd", "num_tasks": 2, "n_particles": 3, "reference": [2, 2]}, model=net, optimizer=opt
    )
    assert len(pop.models) == 3 and pop.reference == (2.0, 2.0)
    assert not torch.equal(pop.models[0].trunk.weight, pop.models[1].trunk.weight)  # re-initialised apart
    for bad in (
        {"num_tasks": 2, "n_particles": 1},
        {"num_tasks": 2, "reference": [1.0]},
        {"num_tasks": 2, "bandwidth": 0},
    ):
        with pytest.raises(InvalidConfigError):
            mtlsolve.get_strategy("moo_svgd", **bad)
    with pytest.raises(InvalidSystemError, match="3 losses for num_tasks=2"):
        pop.step(lambda m: torch.ones(3, requires_grad=True) * m.trunk.weight.sum())
    with pytest.raises(InvalidConfigError, match="3 particles, not 2"):
        MOOSVGD(model=net, optimizer=opt, num_tasks=2, n_particles=2).load_state_dict(pop.state_dict())

"""Pareto HyperNetworks (Navon, Shamsian, Chechik, Fetaya, arXiv 2010.04104; docs/methods.md#phn): the
hypernetwork's output (target shapes, an independent forward), rays on the simplex from Dir(α), the
PHN-LS step against autograd of Σ r_i L_i(h(r)), the PHN-EPO weights, trained PHN-LS and PHN-EPO on
the convex companion of docs/problems.md#fonseca-problems (the front √f₁ + √f₂ = 1; EPO's r₁f₁ = r₂f₂),
hypervolume and checkpoints."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch.func import functional_call

import mtlsolve
from mtlsolve.adapters.strategies import from_config, strategy_class
from mtlsolve.adapters.strategies.phn import PHN
from mtlsolve.errors import InvalidConfigError, InvalidSystemError
from mtlsolve.metrics import hypervolume
from mtlsolve.problems import fonseca_convex


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(3, 4)
        self.fc2 = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def manual_weights(phn, ray):
    """h(r) written out: the ray MLP (Linear, ReLU) x layers, then one linear head per target parameter."""
    linears = [m for m in phn.hypernet.trunk if isinstance(m, torch.nn.Linear)]
    f = torch.as_tensor(ray, dtype=torch.float64)
    for lin in linears:
        f = torch.relu(f @ lin.weight.T + lin.bias)
    out = {}
    for (name, p), head in zip(phn.model.named_parameters(), phn.hypernet.heads):
        out[name] = (f @ head.weight.T + head.bias).reshape(p.shape)
    return out


def test_hypernetwork_outputs_the_target_parameters():
    torch.manual_seed(0)
    net = Net().double()
    phn = PHN(model=net, num_tasks=2, hidden=8, layers=3)
    initial = {n: p.detach().clone() for n, p in net.named_parameters()}
    ray = (0.3, 0.7)
    weights = phn.weights(ray)
    assert {n: w.shape for n, w in weights.items()} == {n: p.shape for n, p in net.named_parameters()}
    for name, w in manual_weights(phn, ray).items():
        torch.testing.assert_close(weights[name], w, rtol=1e-12, atol=1e-14)
        # heads start at the target's initialisation: bias = θ₀, weight scaled by head_scale = 0.1
        assert (weights[name] - initial[name]).abs().max() < 0.5
    x = torch.randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close(phn.network(ray)(x), functional_call(net, manual_weights(phn, ray), (x,)))
    torch.testing.assert_close(phn.network((3.0, 7.0))(x), phn.network(ray)(x))  # rays are normalised


def test_rays_are_dirichlet_draws_on_the_simplex():
    phn = PHN(model=Net(), num_tasks=3, dirichlet_alpha=0.5, seed=4)
    R = np.stack([phn.sample_ray() for _ in range(4000)])
    assert (R >= 0).all()
    np.testing.assert_allclose(R.sum(axis=1), 1.0, atol=1e-12)
    # Dir(α, α, α): mean 1/3, variance (1/3)(2/3)/(3α + 1) = 0.0889; 4000 draws: standard error ≈ 0.005
    np.testing.assert_allclose(R.mean(axis=0), 1 / 3, atol=0.02)
    np.testing.assert_allclose(R.var(axis=0), (1 / 3) * (2 / 3) / 2.5, rtol=0.1)


def two_losses(out, y):
    return ((out - y) ** 2).mean(dim=0)


def test_phn_ls_step_is_gradient_descent_on_the_ray_scalarisation():
    torch.manual_seed(1)
    net = Net().double()
    lr = 0.05
    phn = PHN(model=net, num_tasks=2, hidden=8, optimizer=lambda p: torch.optim.SGD(p, lr=lr))
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
    for _ in range(3):
        before = copy.deepcopy(phn.hypernet)
        rng = copy.deepcopy(phn._rng)
        ray = rng.dirichlet([0.2, 0.2])  # the draw the step will make
        params = list(before.parameters())
        ref = copy.deepcopy(phn)
        ref.hypernet = before
        L = two_losses(functional_call(net, manual_weights(ref, ray / ray.sum()), (x,)), y)
        grads = torch.autograd.grad((torch.as_tensor(ray) * L).sum(), params)
        record = phn.step(lambda f: two_losses(f(x), y))
        np.testing.assert_allclose(record.ray, ray / ray.sum(), rtol=1e-12)
        np.testing.assert_allclose(record.weights, record.ray)
        np.testing.assert_allclose(record.losses, L.detach().numpy(), rtol=1e-12)
        for p, p0, g in zip(phn.hypernet.parameters(), params, grads):
            torch.testing.assert_close(p.detach(), p0.detach() - lr * g, rtol=1e-12, atol=1e-14)


def test_phn_epo_weights_are_the_epo_solution_for_the_hypernetwork_gradients():
    torch.manual_seed(2)
    net = Net().double()
    phn = PHN(model=net, num_tasks=2, solver="epo", hidden=8, optimizer=lambda p: torch.optim.SGD(p, lr=0.01))
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
    before = copy.deepcopy(phn)
    record = phn.step(lambda f: two_losses(f(x), y))
    params = list(before.hypernet.parameters())
    L = two_losses(before.network(record.ray)(x), y)
    G = torch.stack(
        [torch.cat([g.flatten() for g in torch.autograd.grad(L[i], params, retain_graph=True)]) for i in range(2)]
    )
    expected = mtlsolve.get("epo")(G, losses=L.detach(), preference=tuple(record.ray)).weights
    np.testing.assert_allclose(record.weights, expected, rtol=1e-9, atol=1e-12)
    assert record.weights.min() >= 0 and record.weights.sum() == pytest.approx(1.0)


class Decision(torch.nn.Module):
    """x ∈ ℝ¹⁰, the decision variables of the convex companion (losses f = fonseca_convex(x))."""

    def __init__(self):
        super().__init__()
        self.x = torch.nn.Parameter(torch.zeros(10, dtype=torch.float64))

    def forward(self):
        return fonseca_convex(self.x)


RAYS = [(0.2, 0.8), (1 / 3, 2 / 3), (0.5, 0.5), (2 / 3, 1 / 3), (0.8, 0.2)]


def train_front(solver, steps):
    torch.manual_seed(0)
    phn = PHN(model=Decision(), num_tasks=2, solver=solver, hidden=32, lr=1e-2, dirichlet_alpha=1.0)
    for _ in range(steps):
        phn.step(lambda f: f())
    return phn, phn.evaluate(lambda f: f(), RAYS)


def test_trained_phn_ls_maps_rays_to_the_convex_front():
    phn, F = train_front("ls", 1000)
    np.testing.assert_allclose(np.sqrt(F).sum(axis=1), 1.0, atol=1e-3)  # on the front √f₁ + √f₂ = 1
    # the LS optimum of r₁f₁ + r₂f₂ on f = ((s − 1)²/4, (s + 1)²/4) is s = r₁ − r₂, i.e. f = (r₂², r₁²)
    expected = np.array([(r[1] ** 2, r[0] ** 2) for r in RAYS])
    np.testing.assert_allclose(F, expected, atol=0.03)  # residual training error after 1000 Adam steps ≈ 0.02
    assert phn.reference == tuple(1.1 * F.max(axis=0)) and phn.hypervolume(F) == hypervolume(F, phn.reference)


@pytest.mark.slow
def test_trained_phn_epo_reaches_the_exact_pareto_point_of_each_ray():
    _, F = train_front("epo", 3000)
    np.testing.assert_allclose(np.sqrt(F).sum(axis=1), 1.0, atol=1e-3)
    ratio = np.array([r[0] * f[0] / (r[1] * f[1]) for r, f in zip(RAYS, F)])
    np.testing.assert_allclose(ratio, 1.0, atol=0.15)  # r₁f₁ = r₂f₂ (EPO), within the residual training error


def test_checkpoint_resume_is_bit_identical():
    torch.manual_seed(3)
    x, y = torch.randn(16, 3), torch.randn(16, 2)

    def train(phn, steps):
        for _ in range(steps):
            phn.step(lambda f: two_losses(f(x), y))

    phn = PHN(model=Net(), num_tasks=2, hidden=8, lr=1e-2, seed=1)
    train(phn, 4)
    saved = copy.deepcopy(phn.state_dict())
    train(phn, 5)
    torch.manual_seed(9)
    phn2 = PHN(model=Net(), num_tasks=2, hidden=8, lr=1e-2, seed=7)
    phn2.load_state_dict(saved)
    train(phn2, 5)
    assert phn2.steps == phn.steps == 9
    for p, q in zip(phn.hypernet.parameters(), phn2.hypernet.parameters()):
        assert torch.equal(p, q)
    assert np.array_equal(phn.sample_ray(), phn2.sample_ray())


def test_config_names_and_errors():
    assert strategy_class("PHN") is PHN and strategy_class("pareto-hypernetwork") is PHN
    assert mtlsolve.get_strategy("phn_epo", num_tasks=2).solver == "epo"
    assert mtlsolve.get_strategy("PHN-LS", num_tasks=2).solver == "ls"
    phn = from_config({"strategy": "phn", "num_tasks": 2, "hidden": 4, "reference": [1, 1]}, model=Net())
    assert phn.reference == (1.0, 1.0)
    for bad in (
        {"num_tasks": 2, "solver": "mgda"},
        {"num_tasks": 2, "dirichlet_alpha": 0},
        {"num_tasks": 2, "reference": [1]},
    ):
        with pytest.raises(InvalidConfigError):
            mtlsolve.get_strategy("phn", **bad)
    with pytest.raises(InvalidSystemError, match="a ray must be 2 non-negative"):
        phn.weights((1.0, -1.0))
    x = torch.randn(4, 3)
    with pytest.raises(InvalidSystemError, match="3 losses for num_tasks=2"):
        phn.step(lambda f: torch.cat([f(x).mean(0), f(x).mean().view(1)]))
    with pytest.raises(InvalidConfigError, match="does not fit"):
        PHN(model=Net(), num_tasks=2, hidden=5).load_state_dict(phn.state_dict())
    with pytest.raises(InvalidConfigError, match="no parameter"):
        PHN(model=torch.nn.ReLU(), num_tasks=2)

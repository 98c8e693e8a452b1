"""MultiTaskBackward with solvers that need more than one step's (G, K, L): MoDo and SDMGrad read
three independent batches (``backward([L₁, L₂, L₃])``), GradNorm reads the last shared layer's
Gramian and renormalises its learnable weights after each optimiser step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adapter_testing import TwoTaskNet, data, flat_grad, per_task
from mtlsolve.adapters import MultiTaskBackward
from mtlsolve.errors import InvalidSystemError
from mtlsolve.plugins.gramian.gradnorm import GradNorm
from mtlsolve.plugins.gramian.modo import MoDo
from mtlsolve.plugins.gramian.sdmgrad import SDMGrad


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return list(module.parameters())


def three_losses(net: TwoTaskNet, seed: int = 0) -> list[torch.Tensor]:
    return [net.losses(*data(seed=seed + b, dtype=torch.float64)) for b in range(3)]


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("path", ["gramian", "matrix"])
@pytest.mark.parametrize("make", [lambda: MoDo(gamma=0.5), lambda: SDMGrad()], ids=["modo", "sdmgrad"])
def test_stacked_batches_against_separate_autograd_calls(make, path, batched):
    net = TwoTaskNet(dtype=torch.float64)
    shared, heads = _params(net.trunk), _params(net.heads) + _params(net.common)
    batches = three_losses(net)
    stacked = torch.cat(batches)
    G, G_heads = per_task(stacked, shared), per_task(stacked, heads)  # rows: batch 1, batch 2, batch 3
    expected = make()(G)  # the solver on the reference stacked system
    adapter = MultiTaskBackward(make(), shared=net.trunk, path=path, batched=batched)
    diagnostics = adapter.backward(batches)
    np.testing.assert_allclose(diagnostics.gramian, G @ G.T, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(diagnostics.weights, expected.weights, atol=1e-10)
    np.testing.assert_allclose(diagnostics.losses, stacked.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(flat_grad(shared), expected.weights @ G, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(flat_grad(heads), G_heads.sum(0) / 3, rtol=1e-10)  # mean over the batches


def test_a_b_by_m_tensor_is_accepted():
    net = TwoTaskNet(dtype=torch.float64)
    a = MultiTaskBackward(MoDo(), shared=net.trunk).backward(torch.stack(three_losses(net)))
    net.zero_grad()
    b = MultiTaskBackward(MoDo(), shared=net.trunk).backward(three_losses(net))
    np.testing.assert_array_equal(a.weights, b.weights)


def test_one_batch_for_a_three_batch_solver_is_a_clear_error():
    net = TwoTaskNet(dtype=torch.float64)
    adapter = MultiTaskBackward("sdmgrad", shared=net.trunk)
    batches = three_losses(net)
    with pytest.raises(InvalidSystemError, match=r"3 independent batches.*got one loss vector"):
        adapter.backward(batches[0])
    with pytest.raises(InvalidSystemError, match="got 2 loss vectors"):
        adapter.backward(batches[:2])
    with pytest.raises(ValueError, match="representation mode reads one"):
        MultiTaskBackward("modo", shared=net.trunk, grads="representation")


class TinyNet(torch.nn.Module):
    """A tanh trunk and two linear heads fitting linear targets (squared error): quick to train."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8), torch.nn.Tanh())
        self.heads = torch.nn.ModuleList([torch.nn.Linear(8, 1) for _ in range(2)])
        self.double()

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.trunk(x)
        return torch.stack([((head(h)[:, 0] - y[:, i]) ** 2).mean() for i, head in enumerate(self.heads)])


def _train(adapter: MultiTaskBackward, net: TinyNet, steps: int, batches_per_step: int, lr: float = 0.1):
    """SGD on a fixed data set, a fresh draw of batches every step; returns full-data losses before/after."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(96, 4, generator=gen, dtype=torch.float64)
    y = x @ torch.tensor([[1.0, -0.5], [0.5, 1.0], [-1.0, 0.3], [0.2, 2.0]], dtype=torch.float64)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    before = net.losses(x, y).detach().sum().item()
    history = []
    for _ in range(steps):
        draws = [torch.randint(0, 96, (16,), generator=gen) for _ in range(batches_per_step)]
        losses = [net.losses(x[i], y[i]) for i in draws]
        history.append(adapter.backward(losses if batches_per_step > 1 else losses[0]))
        assert adapter.step(opt)
    return before, net.losses(x, y).detach().sum().item(), history


@pytest.mark.parametrize("name", ["modo", "sdmgrad"])
def test_training_with_three_batches_lowers_the_loss(name):
    net = TinyNet()
    adapter = MultiTaskBackward(name, shared=net.trunk)
    before, after, history = _train(adapter, net, steps=15, batches_per_step=3)
    assert after < 0.6 * before
    for d in history:
        w = d.weights
        assert w.shape == (6,) and (w >= 0).all() and w.sum() == pytest.approx(1.0, abs=1e-12)
        np.testing.assert_array_equal(w[:4], 0.0)  # the direction comes from the third batch


def test_training_with_gradnorm():
    net = TinyNet()
    solver = GradNorm()
    adapter = MultiTaskBackward(solver, shared=net.trunk)
    assert adapter.grads == "last_shared" and adapter.path == "gramian"
    before, after, history = _train(adapter, net, steps=15, batches_per_step=1)
    assert after < 0.6 * before
    (p,) = solver.parameters()
    # the adapter added p to the optimiser, which stepped it; after_step renormalised it to sum m
    assert p.grad is None and p.detach().sum().item() == pytest.approx(2.0, abs=1e-12)
    assert not np.allclose(p.detach().numpy(), 1.0)
    for d in history:
        assert d.kind == "last_shared" and d.gramian.shape == (2, 2)
        assert d.weights.sum() == pytest.approx(2.0, abs=1e-12)


def test_gradnorm_diagnostics_read_the_last_shared_layer():
    net = TwoTaskNet(dtype=torch.float64)
    x, y = data(dtype=torch.float64)
    losses = net.losses(x, y)
    G_last = per_task(losses, _params(net.trunk[2]))
    d = MultiTaskBackward(GradNorm(), shared=net.trunk).backward(losses)
    np.testing.assert_allclose(d.solver["grad_norms"], np.linalg.norm(G_last, axis=1), rtol=1e-10)


def test_gradnorm_all_shared_accumulates_without_a_closure():
    net = TwoTaskNet(dtype=torch.float64)
    solver = GradNorm(params="all_shared", parameterisation="softmax", initial_loss="first_epoch_mean")
    adapter = MultiTaskBackward(solver, shared=net.trunk, accumulation_steps=2)
    assert adapter.grads == "shared"
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    for step in range(4):
        for micro in range(2):
            adapter.backward(net.losses(*data(seed=10 * step + micro, dtype=torch.float64)))
        assert adapter.step(opt)  # no closure: GradNorm's after_step needs no losses
        if step == 1:
            adapter.end_epoch()
    (p,) = solver.parameters()
    assert not np.allclose(p.detach().numpy(), 0.0)  # stepped once the first epoch ended

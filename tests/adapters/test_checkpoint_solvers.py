"""Adapter + solver + optimiser checkpoints of real stateful solvers give bit-identical continuation on CPU."""

from __future__ import annotations

import io

import pytest
import torch

import mtlsolve
from adapter_testing import TwoTaskNet, data
from mtlsolve.adapters import MultiTaskBackward

#: stateful (nash_mtl, famo, gradvac, moco, uw, dwa, modo, sdmgrad, gradnorm), randomised (gradvac, pcgrad),
#: learnable (uw, imtl_l created lazily, gradnorm renormalised after each step) and three-batch (modo, sdmgrad) solvers
SOLVERS = {
    "nash_mtl": {},
    "famo": {},
    "gradvac": {"seed": 5},
    "moco": {},
    "uw": {},
    "imtl_l": {},
    "dwa": {"period": 1},
    "pcgrad": {"seed": 2},
    "modo": {},
    "sdmgrad": {},
    "gradnorm": {},
}


def _make(name):
    torch.manual_seed(0)
    net = TwoTaskNet()
    adapter = MultiTaskBackward(mtlsolve.get(name, **SOLVERS[name]), shared=net.trunk)
    return net, torch.optim.Adam(net.parameters(), lr=1e-2), adapter


def _train(net, opt, adapter, seeds):
    batches = adapter.solver.batches  # modo, sdmgrad: three independent batches a step
    for seed in seeds:
        x, y = data(seed=seed)
        losses = [net.losses(*data(seed=100 * b + seed)) for b in range(1, batches)]
        adapter.backward([net.losses(x, y), *losses] if losses else net.losses(x, y))
        adapter.step(opt, closure=lambda: net.losses(x, y))
        if seed % 2:
            adapter.end_epoch()


@pytest.mark.parametrize("name", list(SOLVERS))
def test_checkpoint_mid_training_continues_bit_identically(name):
    net, opt, adapter = _make(name)
    _train(net, opt, adapter, range(4))
    buffer = io.BytesIO()
    torch.save({"model": net.state_dict(), "opt": opt.state_dict(), "adapter": adapter.state_dict()}, buffer)
    _train(net, opt, adapter, range(4, 9))

    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)  # solver states hold only tensors and Python values
    net2, opt2, adapter2 = _make(name)
    net2.load_state_dict(checkpoint["model"])
    adapter2.load_state_dict(checkpoint["adapter"])
    adapter2.add_parameters_to(opt2)  # learnable solver parameters (uw) before the optimiser state
    opt2.load_state_dict(checkpoint["opt"])
    _train(net2, opt2, adapter2, range(4, 9))

    for a, b in zip(net.parameters(), net2.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(adapter.parameters(), adapter2.parameters()):
        assert torch.equal(a, b)
    assert repr(adapter.solver.state_dict()) == repr(adapter2.solver.state_dict())


@pytest.mark.parametrize("name", ["gradvac", "famo", "modo"])
def test_the_solver_state_matters(name):
    """Restoring the model and optimiser but not the solver state changes the continuation."""
    net, opt, adapter = _make(name)
    _train(net, opt, adapter, range(4))
    model, optim = ({k: v.clone() for k, v in net.state_dict().items()}, io.BytesIO())
    torch.save(opt.state_dict(), optim)
    _train(net, opt, adapter, range(4, 9))
    net2, opt2, adapter2 = _make(name)
    net2.load_state_dict(model)
    optim.seek(0)
    opt2.load_state_dict(torch.load(optim, weights_only=False))
    _train(net2, opt2, adapter2, range(4, 9))
    assert not all(torch.equal(a, b) for a, b in zip(net.parameters(), net2.parameters()))

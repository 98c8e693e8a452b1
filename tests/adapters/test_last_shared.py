"""grads="last_shared": the solver reads the last shared block's gradients, the weights update every shared parameter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adapter_testing import NormWeighting, SignMask, TwoTaskNet, data, flat_grad, norm_weights, per_task
from mtlsolve.adapters import MultiTaskBackward
from mtlsolve.adapters.backward import last_shared_block
from mtlsolve.errors import SolverError


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return list(module.parameters())


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("path", ["gramian", "matrix"])
def test_weights_from_the_last_block_applied_to_all_shared_parameters(path, batched):
    net = TwoTaskNet(dtype=torch.float64)
    x, y = data(dtype=torch.float64)
    shared, last = _params(net.trunk), _params(net.trunk[2])
    heads = _params(net.heads) + _params(net.common)
    losses = net.losses(x, y)
    G_last, G_all, G_heads = per_task(losses, last), per_task(losses, shared), per_task(losses, heads)
    w = norm_weights(G_last)  # the solver sees the last Linear's gradients only
    adapter = MultiTaskBackward(NormWeighting(), shared=net.trunk, grads="last_shared", path=path, batched=batched)
    assert adapter.n == sum(p.numel() for p in shared)
    diagnostics = adapter.backward(losses)
    np.testing.assert_allclose(diagnostics.gramian, G_last @ G_last.T, rtol=1e-10)
    np.testing.assert_allclose(diagnostics.weights, w, rtol=1e-10)
    np.testing.assert_allclose(flat_grad(shared), w @ G_all, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(flat_grad(heads), G_heads.sum(0), rtol=1e-10)
    np.testing.assert_allclose(diagnostics.update_norm, np.linalg.norm(w @ G_all), rtol=1e-10)
    assert diagnostics.kind == "last_shared"


def test_differs_from_the_full_shared_gradients():
    """The last block's Gramian is not the full one, so the weights (and the update) differ from grads='shared'."""
    net = TwoTaskNet(dtype=torch.float64)
    x, y = data(dtype=torch.float64)
    out = {}
    for grads in ("shared", "last_shared"):
        net.zero_grad(set_to_none=True)
        out[grads] = MultiTaskBackward(NormWeighting(), shared=net.trunk, grads=grads).backward(net.losses(x, y))
    assert not np.allclose(out["shared"].weights, out["last_shared"].weights)


def test_last_shared_block_rules():
    net = TwoTaskNet()
    assert last_shared_block(net.trunk) == [net.trunk[2].weight, net.trunk[2].bias]
    assert last_shared_block([net.trunk[0], net.trunk[2]]) == [net.trunk[2].weight, net.trunk[2].bias]
    assert last_shared_block(net.trunk[0].weight) == [net.trunk[0].weight]
    assert last_shared_block([net.trunk[0].weight, net.trunk[0].bias]) == [net.trunk[0].bias]
    net.trunk[2].requires_grad_(False)  # frozen: the last block that still learns
    assert last_shared_block(net.trunk) == [net.trunk[0].weight, net.trunk[0].bias]


def test_a_generator_of_parameters_is_accepted():
    net = TwoTaskNet(dtype=torch.float64)
    x, y = data(dtype=torch.float64)
    adapter = MultiTaskBackward(NormWeighting(), shared=net.trunk.parameters(), grads="last_shared")
    assert adapter.n == sum(p.numel() for p in net.trunk.parameters())
    losses = net.losses(x, y)
    G_last, G_all = per_task(losses, [net.trunk[2].bias]), per_task(losses, _params(net.trunk))
    adapter.backward(losses)
    np.testing.assert_allclose(flat_grad(_params(net.trunk)), norm_weights(G_last) @ G_all, rtol=1e-10)


def test_direction_only_solvers_and_accumulation_are_refused():
    net = TwoTaskNet()
    x, y = data()
    with pytest.raises(SolverError, match="weights"):
        MultiTaskBackward(SignMask(), shared=net.trunk, grads="last_shared").backward(net.losses(x, y))
    with pytest.raises(ValueError, match="accumulation_steps"):
        MultiTaskBackward(NormWeighting(), shared=net.trunk, grads="last_shared", accumulation_steps=2)

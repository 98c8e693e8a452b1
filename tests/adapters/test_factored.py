"""The gramian path's factored Linear layers (adapters/_layers.py) against separate autograd calls per task."""

from __future__ import annotations

import gc
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adapter_testing import NormWeighting, flat_grad, norm_weights, per_task
from mtlsolve.adapters import MultiTaskBackward

DT = torch.float64


class Net(torch.nn.Module):
    """A shared trunk and three heads; ``kind`` picks what the trunk does with its Linear layers."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.kind = kind
        if kind == "conv":  # 57 conv parameters of 253: held
            self.trunk = torch.nn.Sequential(
                torch.nn.Conv2d(2, 3, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(48, 4), torch.nn.Tanh()
            )
        elif kind == "big_conv":  # 616 conv parameters of 812: one more backward writes their update
            self.trunk = torch.nn.Sequential(
                torch.nn.Conv2d(2, 8, 3),
                torch.nn.Conv2d(8, 6, 3, padding=1),
                torch.nn.ReLU(),
                torch.nn.AdaptiveAvgPool2d(2),
                torch.nn.Flatten(),
                torch.nn.Linear(24, 8),
                torch.nn.Tanh(),
            )
        else:
            self.trunk = torch.nn.Sequential(
                torch.nn.Linear(6, 5), torch.nn.ReLU(inplace=True), torch.nn.Linear(5, 5), torch.nn.Tanh()
            )
        width = 8 if kind == "big_conv" else 4 if kind == "conv" else 5
        self.heads = torch.nn.ModuleList([torch.nn.Linear(width, 1) for _ in range(3)])
        self.to(DT)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        first, relu, second, tanh = (
            (self.trunk[i] for i in range(4)) if self.kind not in ("conv", "big_conv") else [None] * 4
        )
        if self.kind == "reuse":  # the second layer is applied twice
            return tanh(second(torch.tanh(second(relu(first(x))))))
        if self.kind == "tied":  # the second layer's weight is also used outside the layer
            h = relu(first(x))
            return tanh(second(h) + F.linear(h, second.weight) * 0.5)
        return self.trunk(x)

    def losses(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        if h.ndim == 3:  # a sequence: pool over positions
            h = h.mean(1)
        return torch.stack(
            [self.heads[0](h).pow(2).mean(), torch.sin(self.heads[1](h)).abs().mean(), self.heads[2](h).exp().mean()]
        )


def inputs(kind: str, rows: int = 4) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    if kind in ("conv", "big_conv"):
        return torch.randn(rows, 2, 6, 6, generator=gen, dtype=DT)
    if kind == "sequence":  # 2 x 3 = 6 rows ≤ d_in + 1 = 7
        return torch.randn(2, 3, 6, generator=gen, dtype=DT)
    return torch.randn(rows, 6, generator=gen, dtype=DT)


def per_task_calls(module: torch.nn.Module) -> list[int]:
    """Counts the gradients autograd computes for ``module``'s weight (a per-task gradient shows up here)."""
    calls = [0]
    module.weight.register_hook(lambda g: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("batched", [None, True, False])
@pytest.mark.parametrize(
    "kind, rows", [("mlp", 4), ("sequence", 0), ("reuse", 3), ("tied", 4), ("mlp", 9), ("conv", 4), ("big_conv", 3)]
)
def test_factored_gramian_path_equals_separate_autograd_calls(kind, rows, batched):
    net = Net(kind)
    x = inputs(kind, rows)
    shared, heads = list(net.trunk.parameters()), list(net.heads.parameters())
    L = net.losses(x)
    G = per_task(L, shared)
    expected_heads = per_task(L, heads).sum(0)
    adapter = MultiTaskBackward(NormWeighting(), shared=net.trunk, batched=batched)
    linear = [mod for mod in net.trunk if isinstance(mod, torch.nn.Linear)][-1]
    calls = per_task_calls(linear)
    diagnostics = adapter.backward(net.losses(x))
    np.testing.assert_allclose(diagnostics.gramian, G @ G.T, rtol=1e-10)
    np.testing.assert_allclose(flat_grad(shared), norm_weights(G) @ G, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(flat_grad(heads), expected_heads, rtol=1e-10)
    assert diagnostics.engine == ("batched" if batched else "loop")  # None on CPU: the loop
    np.testing.assert_allclose(diagnostics.update_norm, np.linalg.norm(norm_weights(G) @ G), rtol=1e-10)
    factored = kind != "tied" and (kind != "mlp" or rows <= 7)  # a Linear is factored with ≤ d_in + 1 rows
    if factored:
        assert calls[0] == 0  # its per-task gradients were never formed, nor its update back-propagated
    else:
        assert calls[0] >= 1


@pytest.mark.parametrize("batched", [True, False])
def test_factored_path_with_every_parameter_shared(batched):
    net = Net("mlp")
    x = inputs("mlp")
    params = list(net.parameters())
    G = per_task(net.losses(x), params)
    adapter = MultiTaskBackward(NormWeighting(), shared=net, batched=batched)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback to the loop: nothing left for a heads pass is not an error
        diagnostics = adapter.backward(net.losses(x))
    assert diagnostics.engine == ("batched" if batched else "loop")
    np.testing.assert_allclose(diagnostics.gramian, G @ G.T, rtol=1e-10)
    np.testing.assert_allclose(flat_grad(params), norm_weights(G) @ G, rtol=1e-10, atol=1e-13)


def test_factored_path_under_grad_scaler_and_max_norm():
    net = Net("mlp")
    x = inputs("mlp")
    shared = list(net.trunk.parameters())
    G = per_task(net.losses(x), shared)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    adapter = MultiTaskBackward(NormWeighting(), shared=net.trunk, scaler=scaler, max_norm=1e9)
    diagnostics = adapter.backward(net.losses(x))
    np.testing.assert_allclose(diagnostics.gramian, G @ G.T, rtol=1e-10)
    np.testing.assert_allclose(flat_grad(shared), 2.0**8 * (norm_weights(G) @ G), rtol=1e-10)


def test_anchors_leave_the_model_unchanged_and_go_with_the_adapter():
    net = Net("mlp")
    x = inputs("mlp")
    L = net.losses(x)
    L.sum().backward()
    plain = flat_grad(list(net.parameters()))
    with torch.no_grad():
        out = net.features(x)
    net.zero_grad(set_to_none=True)
    adapter = MultiTaskBackward(NormWeighting(), shared=net.trunk)
    L2 = net.losses(x)
    assert torch.equal(L2, L)
    L2.sum().backward()  # the user's own backward through the anchored layers
    np.testing.assert_array_equal(flat_grad(list(net.parameters())), plain)
    with torch.no_grad():
        assert torch.equal(net.features(x), out)
    hooked = [mod for mod in net.trunk if mod._forward_hooks]
    assert hooked
    del adapter
    gc.collect()
    assert not any(mod._forward_hooks for mod in net.trunk)


def test_anchored_layers_still_work_inside_a_torch_func_transform():
    net = Net("mlp")
    x = inputs("mlp")
    adapter = MultiTaskBackward(NormWeighting(), shared=net.trunk)
    params = dict(net.trunk.named_parameters())
    out = torch.func.vmap(lambda row: torch.func.functional_call(net.trunk, params, (row,)))(x)
    assert torch.allclose(out, net.trunk(x))
    assert adapter.backward(net.losses(x)).gramian.shape == (3, 3)  # the hooks are still in place


def test_batched_default_falls_back_to_the_loop(monkeypatch):
    class NoVmap(torch.autograd.Function):
        @staticmethod
        def forward(ctx, h):
            return h.clone()

        @staticmethod
        def backward(ctx, g):
            return g * 2 if g.abs().sum().item() >= 0 else g  # data-dependent control flow: vmap cannot batch it

    class Doubled(Net):
        def features(self, x):
            return NoVmap.apply(self.trunk(x))

    net = Doubled("big_conv")
    x = inputs("big_conv")
    shared = list(net.trunk.parameters())
    G = per_task(net.losses(x), shared)
    adapter = MultiTaskBackward(NormWeighting(), shared=net.trunk)
    monkeypatch.setattr(adapter._engine, "batched_by_default", lambda *args: True)  # as on a GPU
    with pytest.warns(RuntimeWarning, match="batched per-task gradients failed") as record:
        diagnostics = adapter.backward(net.losses(x))
    assert record[0].filename == __file__  # the warning points at the user's call
    assert diagnostics.engine == "loop" and adapter.state_dict()["batched"] is False
    np.testing.assert_allclose(diagnostics.gramian, G @ G.T, rtol=1e-10)
    np.testing.assert_allclose(flat_grad(shared), norm_weights(G) @ G, rtol=1e-10, atol=1e-13)


def test_default_engine_keeps_memory_low():
    """Large tapped blocks are folded by the batched engine unless one task's activations outweigh them."""
    net = Net("big_conv")  # conv blocks: 616 numbers, more than the rows' activations 8·16 + 6·16 + 8 = 232
    adapter = MultiTaskBackward(NormWeighting(), shared=net.trunk)
    assert adapter.backward(net.losses(inputs("big_conv", rows=1))).engine == "batched"
    net.zero_grad(set_to_none=True)
    assert adapter.backward(net.losses(inputs("big_conv", rows=3))).engine == "loop"  # 3 · 232 > 616
    net = Net("conv")  # small conv blocks, kept either way: the loop, faster on CPU
    adapter = MultiTaskBackward(NormWeighting(), shared=net.trunk)
    assert adapter.backward(net.losses(inputs("conv"))).engine == "loop"

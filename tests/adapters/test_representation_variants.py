"""The representation-level variants mgda_ub and aligned_mtl_ub (docs/methods.md#representation-level-variants)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mtlsolve
from adapter_testing import TwoTaskNet, data, flat_grad, per_task
from mtlsolve.adapters import MultiTaskBackward

VARIANTS = {"mgda_ub": "mgda", "aligned_mtl_ub": "aligned_mtl"}


@pytest.mark.parametrize("variant, base", VARIANTS.items())
def test_variant_is_its_base_solver_on_any_matrix(variant, base):
    G = np.random.default_rng(0).normal(size=(3, 7))
    ours, reference = mtlsolve.get(variant)(G), mtlsolve.get(base)(G)
    np.testing.assert_array_equal(ours.direction, reference.direction)
    assert mtlsolve.get(variant).family == "RV"


@pytest.mark.parametrize("name", ["MGDA-UB", "MGDAUB", "mgdaub", "amtlub", "amtl_ub", "Aligned_MTL_UB"])
def test_published_names_resolve(name):
    assert mtlsolve.get(name).name in VARIANTS


@pytest.mark.parametrize("variant", VARIANTS)
def test_adapter_uses_feature_gradients_with_one_encoder_backward(variant):
    torch.manual_seed(0)
    net = TwoTaskNet(dtype=torch.float64)
    x, y = data(dtype=torch.float64)
    h = net.features(x)
    L = net.losses_from(h, y)
    Z = per_task(L, [h])  # rows z_i = ∂L_i/∂H, flattened
    encoder = list(net.trunk.parameters())
    G_encoder = per_task(L, encoder)
    calls = []
    h.grad_fn.register_hook(lambda *args: calls.append(1))

    adapter = MultiTaskBackward(variant, shared=net.trunk)
    diagnostics = adapter.backward(L, features=h)

    assert adapter.grads == "representation" and diagnostics.kind == "representation"
    assert len(calls) == 1
    np.testing.assert_allclose(diagnostics.gramian, Z @ Z.T, rtol=1e-10)
    w = np.asarray(diagnostics.weights, dtype=np.float64)
    # the encoder receives the backward of ẑ = Zᵀw, i.e. Σ_i w_i ∂L_i/∂θ_encoder
    np.testing.assert_allclose(flat_grad(encoder), w @ G_encoder, rtol=1e-9, atol=1e-12)
    z_hat = w @ Z
    if variant == "mgda_ub":  # min-norm property on the features: ẑ·z_i ≥ ‖ẑ‖²
        assert np.all(Z @ z_hat >= z_hat @ z_hat - 1e-10)
    # the weights are the base solver's on the feature-gradient matrix itself
    reference = mtlsolve.get(VARIANTS[variant])(Z).weights
    np.testing.assert_allclose(w, reference, rtol=1e-8, atol=1e-12)


def test_variant_refuses_parameter_gradients():
    net = TwoTaskNet()
    with pytest.raises(ValueError, match="defined on representation gradients"):
        MultiTaskBackward("mgda_ub", shared=net.trunk, grads="shared")


@pytest.mark.parametrize("name", ["mgda_ub", "aligned_mtl_ub", "upgrad"])
def test_representation_mode_trains_a_tiny_model(name):
    """End to end: 20 SGD steps on the feature gradients lower both tasks' full-data losses."""
    torch.manual_seed(0)
    trunk = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8), torch.nn.Tanh()).double()
    heads = torch.nn.ModuleList([torch.nn.Linear(8, 1) for _ in range(2)]).double()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(96, 4, generator=gen, dtype=torch.float64)
    y = x @ torch.tensor([[1.0, -0.5], [0.5, 1.0], [-1.0, 0.3], [0.2, 2.0]], dtype=torch.float64)

    def forward(xb, yb):
        h = trunk(xb)
        return torch.stack([((head(h)[:, 0] - yb[:, i]) ** 2).mean() for i, head in enumerate(heads)]), h

    adapter = MultiTaskBackward(name, shared=trunk, grads="representation")
    opt = torch.optim.SGD(list(trunk.parameters()) + list(heads.parameters()), lr=0.1)
    with torch.no_grad():
        before = forward(x, y)[0]
    for _ in range(20):
        idx = torch.randint(0, 96, (16,), generator=gen)
        losses, h = forward(x[idx], y[idx])
        d = adapter.backward(losses, features=h)
        assert d.kind == "representation" and d.gramian.shape == (2, 2)
        assert all(p.grad is not None for p in trunk.parameters())  # the encoder got Zᵀw back-propagated
        assert adapter.step(opt)
    with torch.no_grad():
        after = forward(x, y)[0]
    assert (after < 0.5 * before).all(), (before, after)

"""IMTL hybrid (docs/methods.md#imtl_hybrid): LibMTL's ``IMTL``, IMTL-G on the gradients of the
scaled losses e^{s_i}L_i − s_i, with learnable s.

The reference written out here is LibMTL's closed form on the scaled gradients ĝ_i = e^{s_i}g_i:
α̂_{2:m} = ĝ_1ᵀUᵀ(DUᵀ)⁻¹ with rows of D: ĝ_1 − ĝ_i, of U: û_1 − û_i; α̂_1 = 1 − Σα̂_{2:m}; the shared
update is Σ α̂_i ĝ_i and the s-gradient of the scaled losses is e^{s_i}L_i − 1.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mtlsolve
from mtlsolve.plugins.gramian.imtl_g import IMTLG
from mtlsolve.plugins.gramian.imtl_hybrid import IMTLHybrid
from mtlsolve.solver import Need


def libmtl_alpha(G: np.ndarray) -> np.ndarray:
    """LibMTL's IMTL-G closed form on the rows of G (full row rank)."""
    units = G / np.linalg.norm(G, axis=1, keepdims=True)
    D = G[0] - G[1:]
    U = units[0] - units[1:]
    tail = G[0] @ U.T @ np.linalg.inv(D @ U.T)
    return np.concatenate([[1.0 - tail.sum()], tail])


def full_rank(rng: np.random.Generator, m: int) -> np.ndarray:
    G = rng.standard_normal((m, m + int(rng.integers(0, 2 * m)))) * rng.uniform(0.2, 5.0, (m, 1))
    return G + rng.standard_normal(G.shape[1]) * rng.choice([-1.0, 1.0], (m, 1))


def with_scales(s: np.ndarray) -> IMTLHybrid:
    solver = IMTLHybrid()
    solver.load_state_dict({"solver": "imtl_hybrid", "m": len(s), "s": torch.tensor(s)})
    return solver


def test_zero_scales_equal_imtl_g():
    rng = np.random.default_rng(0)
    for m in (2, 3, 5, 10, 40):
        for _ in range(5):
            G = full_rank(rng, m)
            L = rng.uniform(0.1, 3.0, m)
            r, ref = IMTLHybrid()(G, losses=L), IMTLG()(G)
            np.testing.assert_allclose(r.weights, ref.weights, rtol=1e-12)
            np.testing.assert_allclose(r.direction, ref.direction, rtol=1e-12, atol=1e-14)


def test_matches_libmtl_closed_form_on_scaled_gradients():
    """For any s: weights on the raw gradients w = e^s∘α̂, d = Σ α̂_i e^{s_i}g_i (LibMTL's shared update)."""
    rng = np.random.default_rng(1)
    for m in (2, 3, 5, 10):
        for _ in range(10):
            G = full_rank(rng, m)
            s = rng.normal(0.0, 1.0, m)
            scaled = np.exp(s)[:, None] * G
            alpha = libmtl_alpha(scaled)
            r = with_scales(s)(G, losses=rng.uniform(0.1, 3.0, m))
            np.testing.assert_allclose(r.diagnostics["scaled_weights"], alpha, rtol=1e-7, atol=1e-9)
            np.testing.assert_allclose(r.weights, np.exp(s) * alpha, rtol=1e-7, atol=1e-9)
            np.testing.assert_allclose(r.direction, alpha @ scaled, rtol=1e-7, atol=1e-9 * np.abs(scaled).max())


def test_direction_parallel_to_imtl_g_and_scale():
    """Unit gradients do not change under positive scaling: d ∥ imtl_g's d with equal projections
    u_i·d, and Σ w_i e^{−s_i} = 1 fixes its length."""
    rng = np.random.default_rng(2)
    for m in (2, 5, 40):
        G = full_rank(rng, m)
        s = rng.normal(0.0, 1.0, m)
        r = with_scales(s)(G, losses=np.ones(m))
        units = G / np.linalg.norm(G, axis=1, keepdims=True)
        projections = units @ r.direction
        np.testing.assert_allclose(projections, projections[0], rtol=1e-8)
        d0 = IMTLG()(G).direction
        np.testing.assert_allclose(r.direction / np.linalg.norm(r.direction), d0 / np.linalg.norm(d0), atol=1e-9)
        assert (r.weights * np.exp(-s)).sum() == pytest.approx(1.0, rel=1e-12)


def test_s_objective_gradient_and_training():
    """objective(L) = Σ(e^{s_i}L_i − s_i): ∂/∂s_i = e^{s_i}L_i − 1 (LibMTL's s-gradient); trained on detached
    losses, s goes to −log L and the scaled losses e^{s}L to 1."""
    solver = IMTLHybrid()
    assert solver.parameters() == []
    L = torch.tensor([0.5, 2.0, 4.0], dtype=torch.float64)
    G = np.random.default_rng(3).standard_normal((3, 5))
    solver(G, losses=L.numpy())
    (s,) = solver.parameters()
    assert s.dtype == torch.float64 and torch.equal(s.detach(), torch.zeros(3, dtype=torch.float64))
    with torch.no_grad():
        s.copy_(torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64))
    (grad,) = torch.autograd.grad(solver.objective(L), s)
    np.testing.assert_allclose(grad.numpy(), np.exp([0.3, -0.2, 0.1]) * L.numpy() - 1.0, rtol=1e-14)
    optimizer = torch.optim.SGD(solver.parameters(), lr=0.1)
    for _ in range(300):
        optimizer.zero_grad()
        solver.objective(L.detach()).backward()
        optimizer.step()
    np.testing.assert_allclose(s.detach().numpy(), -np.log(L.numpy()), atol=1e-6)
    r = solver(G, losses=L.numpy())
    np.testing.assert_allclose(r.weights, np.exp(s.detach().numpy()) * np.array(r.diagnostics["scaled_weights"]))


def test_state_round_trip_and_names():
    rng = np.random.default_rng(4)
    G, L = full_rank(rng, 4), rng.uniform(0.5, 2.0, 4)
    solver = with_scales(rng.normal(size=4))
    copy = IMTLHybrid()
    copy.load_state_dict(solver.state_dict())
    np.testing.assert_array_equal(copy(G, losses=L).weights, solver(G, losses=L).weights)
    assert IMTLHybrid.needs == frozenset({Need.GRAMIAN, Need.LOSSES}) and IMTLHybrid.stateful
    for name in ("imtl_hybrid", "imtl_lg", "IMTL-LG"):
        assert type(mtlsolve.get(name)) is IMTLHybrid
    assert type(mtlsolve.get("imtl")) is IMTLG  # `imtl` stays IMTL-G (docs/methods.md#imtl_hybrid)
    assert IMTLHybrid(init=-0.5)(G, losses=L).weights is not None
    with pytest.raises(ValueError):
        IMTLHybrid(init=float("nan"))

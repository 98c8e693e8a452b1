"""SDMGrad (docs/methods.md#sdmgrad): three stacked batches, w ∈ Δ_m, the λ limits, torchjd parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchjd.aggregation import SDMGradWeighting

import mtlsolve
from mtlsolve import InvalidSystemError
from mtlsolve.kernels.simplex_qp import reference_simplex_qp
from mtlsolve.plugins.gramian.sdmgrad import SDMGrad


def three_batches(rng: np.random.Generator, m: int, n: int, noise: float = 0.5) -> np.ndarray:
    """[G_ξ; G_ξ′; G_ζ]: one mean gradient per task plus independent noise per batch."""
    mean = rng.standard_normal((m, n)) * rng.uniform(0.3, 3.0, (m, 1))
    return np.concatenate([mean + noise * rng.standard_normal((m, n)) for _ in range(3)])


def test_registered_with_libmtl_defaults():
    solver = mtlsolve.get("SDMGrad")
    assert type(solver) is SDMGrad and solver.batches == 3
    assert (solver.lambda_, solver.n_iter, solver.lr, solver.momentum) == (0.3, 20, 5.0, 0.5)


def test_weights_on_the_simplex_and_d_from_the_third_batch():
    rng = np.random.default_rng(0)
    solver = SDMGrad()
    for _ in range(40):
        G = three_batches(rng, 4, 6)
        r = solver(G)
        w = r.diagnostics["w"]
        assert (w >= 0).all() and w.sum() == pytest.approx(1.0, abs=1e-12)
        np.testing.assert_array_equal(r.weights[:8], 0.0)
        assert (r.weights >= 0).all() and r.weights.sum() == pytest.approx(1.0, abs=1e-12)
        g0 = G[8:].mean(axis=0)
        np.testing.assert_allclose(r.direction, (G[8:].T @ w + 0.3 * g0) / 1.3, atol=1e-12)


def test_lambda_zero_is_stochastic_mgda():
    """λ = 0 and G_ξ = G_ξ′ = G: the inner problem is MGDA's min-norm QP on the simplex; with a
    stable step size its iterates reach the min-norm weights (cvxpy reference)."""
    rng = np.random.default_rng(1)
    for _ in range(8):
        m, n = int(rng.integers(2, 6)), int(rng.integers(2, 8))
        G = rng.standard_normal((m, n)) + rng.standard_normal(n)
        K = G @ G.T
        solver = SDMGrad(lambda_=0.0, lr=0.2, n_iter=5000)
        r = solver(np.concatenate([G, G, G]))
        expected = reference_simplex_qp(K, np.zeros(m))
        np.testing.assert_allclose(r.direction, G.T @ expected, atol=1e-6)


def test_large_lambda_gives_the_mean_gradient():
    rng = np.random.default_rng(2)
    G = three_batches(rng, 5, 4)
    r = SDMGrad(lambda_=1e12)(G)
    np.testing.assert_allclose(r.direction, G[10:].mean(axis=0), atol=1e-10)


def test_parity_with_torchjd_on_the_cross_block():
    """torchjd 0.18.0 ``SDMGradWeighting(lr, momentum, n_iter, lambda_)`` takes A = G_ξG_ξ′ᵀ and
    returns (w + λ/m)/(1 + λ); mtlsolve puts those weights on the third batch. torchjd divides
    by scale² + 1e-8 (mtlsolve by scale², as Xiao et al., arXiv 2305.18409, §6.1): with scale² ≈ 10 the difference
    is ~1e-9 relative."""
    rng = np.random.default_rng(3)
    for lr, lam in ((5.0, 0.3), (10.0, 0.3), (1.0, 0.0), (5.0, 2.0)):
        ours = SDMGrad(lr=lr, lambda_=lam)
        theirs = SDMGradWeighting(lr=lr, momentum=0.5, n_iter=20, lambda_=lam)
        for _ in range(15):
            m = 3
            G = three_batches(rng, m, 6, noise=0.3)
            w_tj = theirs(torch.tensor(G[:m] @ G[m : 2 * m].T)).numpy()
            w = ours(G).weights[2 * m :]
            np.testing.assert_allclose(w, w_tj, atol=1e-6)
            theirs._w = ours.state_dict()["w"].clone()  # keep both on the same trajectory


def test_positive_homogeneous():
    rng = np.random.default_rng(4)
    G = three_batches(rng, 4, 5)
    for c in (1e-3, 0.5, 7.0, 1e4):
        np.testing.assert_allclose(SDMGrad()(c * G).direction, c * SDMGrad()(G).direction, rtol=1e-8, atol=0)


def test_state_round_trip():
    rng = np.random.default_rng(5)
    seq = [three_batches(rng, 3, 4) for _ in range(6)]
    solver = SDMGrad()
    for G in seq[:3]:
        solver(G)
    copy = SDMGrad()
    copy.load_state_dict(solver.state_dict())
    for G in seq[3:]:
        np.testing.assert_array_equal(copy(G).weights, solver(G).weights)


def test_zero_gradients_give_zero_direction():
    r = SDMGrad()(np.zeros((6, 3)))
    np.testing.assert_array_equal(r.direction, 0.0)
    assert np.isfinite(r.weights).all()


def test_one_batch_is_a_clear_error():
    with pytest.raises(InvalidSystemError, match="3 batches"):
        SDMGrad()(np.ones((4, 3)))


@pytest.mark.parametrize(
    "kwargs", [{"lambda_": -1.0}, {"n_iter": 0}, {"n_iter": 2.5}, {"lr": 0.0}, {"momentum": 1.0}, {"momentum": -0.1}]
)
def test_invalid_hyperparameters(kwargs):
    with pytest.raises(ValueError):
        SDMGrad(**kwargs)


def libmtl_sdmgrad_step(zeta, xi1, xi2, w: np.ndarray, lamda: float, niter: int, eps: float = 1e-8):
    """LibMTL ``SDMGrad.backward`` written out (batches (ζ, ξ, ξ′) in its order): C = G_ξG_ξ′ᵀ over
    (mean √diag⁺)² + eps (LibMTL: 1e-8), ``torch.optim.SGD(lr=5, momentum=0.5)`` on Cw + λ·mean_j C_ij, the sort-based
    simplex projection after each step; d = (G_ζᵀw + λ g_{0,ζ})/(1 + λ)."""
    GG = torch.from_numpy(xi1 @ xi2.T)
    scale = torch.sqrt(torch.clamp(torch.diag(GG), min=0.0)).mean()
    GG = GG / (scale**2 + eps)
    Gg = GG.mean(dim=1)
    w = torch.tensor(w, requires_grad=True)
    optimizer = torch.optim.SGD([w], lr=5, momentum=0.5)
    for _ in range(niter):
        optimizer.zero_grad()
        w.grad = GG @ w.detach() + lamda * Gg
        optimizer.step()
        v = w.detach().numpy()
        u = np.sort(v)[::-1]
        css = np.cumsum(u)
        rho = np.nonzero(u * np.arange(1, len(v) + 1) > css - 1)[0][-1]
        w.data.copy_(torch.from_numpy(np.clip(v - (css[rho] - 1) / (rho + 1), 0, None)))
    w = w.detach().numpy()
    return w, (zeta.T @ w + lamda * zeta.mean(axis=0)) / (1 + lamda)


def test_replays_libmtl_with_its_batch_order():
    """LibMTL's batches (ζ, ξ, ξ′) are mtlsolve's rows [G_ξ; G_ξ′; G_ζ]; the state w carries over.
    The transcription drops LibMTL's + 1e-8 next to scale² (mtlsolve follows the paper, §6.1), and then
    the two agree to round-off. With it they differ by up to 1e-5 here: lr 5 expands differences along
    eigenvalues of C above 2/5 (see the module docstring), a property of the method."""
    rng = np.random.default_rng(6)
    for eps, tol in ((0.0, 1e-12),):
        ours, w_ref = SDMGrad(), np.full(4, 0.25)
        for _ in range(10):
            zeta, xi1, xi2 = np.split(three_batches(rng, 4, 6, noise=0.3), 3)
            w_ref, d_ref = libmtl_sdmgrad_step(zeta, xi1, xi2, w_ref, 0.3, 20, eps)
            r = ours(np.concatenate([xi1, xi2, zeta]))
            np.testing.assert_allclose(r.diagnostics["w"], w_ref, rtol=0, atol=tol)
            np.testing.assert_allclose(r.direction, d_ref, rtol=0, atol=tol * np.abs(d_ref).max())
            ours.load_state_dict({**ours.state_dict(), "w": w_ref})  # keep both on one trajectory


def test_no_convergence_claim_but_simplex_residual():
    """A fixed number of projected SGD steps by definition: no ``converged`` is reported; w ∈ Δ
    holds and is reported as ``simplex_residual``."""
    rng = np.random.default_rng(6)
    G = three_batches(rng, 4, 5)
    for X in (G, G.astype(np.float32)):
        d = SDMGrad()(X).diagnostics
        assert "converged" not in d and d["simplex_residual"] <= 1e-15

"""COSMOS (docs/methods.md#cosmos): value rᵀL − λ_c·cos(r, L), weights = its gradient in L.

The weights are checked against autograd of the formula written here; TorchJD 0.18.0's
``COSMOS`` scalarizer parity is in tests/test_torchjd_parity.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mtlsolve
from mtlsolve.errors import InvalidSystemError
from mtlsolve.plugins.pareto.cosmos import COSMOS

F64 = torch.float64


def formula(r: np.ndarray, penalty: float, libmoon: bool = False):
    rt = torch.as_tensor(r, dtype=F64)

    def value(L):
        linear = rt / rt.norm() if libmoon else rt
        return linear @ L - penalty * (rt @ L) / (rt.norm() * L.norm())

    return value


def loss_grad(fn, L: np.ndarray) -> np.ndarray:
    x = torch.tensor(L, dtype=F64, requires_grad=True)
    return torch.autograd.grad(fn(x), x)[0].numpy()


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(
    m=st.integers(1, 8),
    penalty=st.sampled_from([0.0, 0.01, 1.0, 8.0]),
    libmoon=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_weights_are_the_gradient(m, penalty, libmoon, seed):
    rng = np.random.default_rng(seed)
    r, L = rng.dirichlet(np.ones(m)), rng.uniform(0.01, 5.0, m)
    solver = COSMOS(penalty=penalty, preference=r, form="libmoon" if libmoon else "paper")
    result = solver(losses=L)
    fn = formula(r, penalty, libmoon)
    np.testing.assert_allclose(result.weights, loss_grad(fn, L), rtol=1e-12, atol=1e-14)
    assert result.diagnostics["value"] == pytest.approx(fn(torch.tensor(L)).item(), rel=1e-12, abs=1e-14)


def test_zero_penalty_is_linear_scalarisation():
    rng = np.random.default_rng(0)
    for m in (2, 3, 7):
        r, L = rng.dirichlet(np.ones(m)), rng.uniform(0.1, 3.0, m)
        G = rng.standard_normal((m, 4))
        ours = COSMOS(penalty=0.0, preference=r)(G, losses=L)
        ls = mtlsolve.get("ls", weights=r)(G, losses=L)
        np.testing.assert_array_equal(ours.weights, ls.weights)
        np.testing.assert_allclose(ours.direction, ls.direction, rtol=1e-15)


def test_cosine_gradient_vanishes_when_losses_parallel_to_preference():
    """L = t·r: cos = 1 is a maximum, its gradient in L is 0, and the weights are r for any λ_c."""
    rng = np.random.default_rng(1)
    for m in (2, 4):
        r = rng.dirichlet(np.ones(m))
        for penalty in (0.5, 8.0):
            result = COSMOS(penalty=penalty, preference=r)(losses=2.5 * r)
            np.testing.assert_allclose(result.weights, r, atol=1e-14)
            assert result.diagnostics["cosine"] == pytest.approx(1.0, abs=1e-15)


def test_dirichlet_sampling_seed_and_precedence():
    L = np.array([0.4, 1.0, 2.0])
    draws = [COSMOS(penalty=1.0, seed=3)(losses=L).diagnostics["preference"] for _ in range(2)]
    assert draws[0] == draws[1]  # same seed, same draw
    solver = COSMOS(penalty=1.0, seed=3)
    sequence = [np.array(solver(losses=L).diagnostics["preference"]) for _ in range(200)]
    assert all((r > 0).all() and abs(r.sum() - 1.0) < 1e-12 for r in sequence)
    assert len({tuple(r) for r in sequence}) == 200  # a fresh draw each step
    np.testing.assert_allclose(np.mean(sequence, axis=0), 1 / 3, atol=0.05)  # Dirichlet(1): mean 1/m
    # a draw made before the forward pass is the one the next call uses
    pending = solver.sample_preference(3)
    assert solver(losses=L).diagnostics["preference"] == pending.tolist()
    # extras over the field over sampling
    fixed = COSMOS(penalty=1.0, preference=[1.0, 2.0, 3.0])
    assert fixed(losses=L).diagnostics["preference"] == [1.0, 2.0, 3.0]
    assert fixed(losses=L, preference=[3.0, 2.0, 1.0]).diagnostics["preference"] == [3.0, 2.0, 1.0]
    with pytest.raises(InvalidSystemError):
        fixed(losses=L, preference=[1.0, -1.0, 1.0])


def test_state_round_trip():
    L = np.array([0.4, 1.0])
    solver = COSMOS(penalty=2.0, seed=5)
    solver(losses=L)
    copy = COSMOS(penalty=2.0, seed=5)
    copy.load_state_dict(solver.state_dict())
    for _ in range(3):
        np.testing.assert_array_equal(copy(losses=L).weights, solver(losses=L).weights)


def test_validation_and_names():
    with pytest.raises(TypeError):
        COSMOS()  # the penalty has no default
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError):
            COSMOS(penalty=bad)
    with pytest.raises(ValueError):
        COSMOS(penalty=1.0, form="other")
    for name in ("cosmos", "COSMOS", "agg_cosmos"):
        assert type(mtlsolve.get(name, penalty=8.0)) is COSMOS
    zero = COSMOS(penalty=1.0, preference=[0.5, 0.5])(losses=np.zeros(2))
    np.testing.assert_array_equal(zero.weights, [0.5, 0.5])  # no cosine at L = 0: its gradient is taken as 0

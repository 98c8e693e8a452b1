"""CR-MOGM (catalogue §3.2 row ``cr_mogm``): λ_k = αλ_{k−1} + (1−α)λ̂_k around any weighting,
against the EMA computed here from an independent copy of the wrapped solver, and against
torchjd 0.18.0 ``CRMOGMWeighting``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchjd.aggregation import CRMOGMWeighting, IMTLGWeighting

import mtlsolve
from mtlsolve import Need
from mtlsolve.plugins.gramian.cr_mogm import CRMOGM


def sequence(seed: int, m: int = 4, n: int = 6, steps: int = 6):
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((m, n))
    out = []
    for _ in range(steps):
        G = G + 0.5 * rng.standard_normal((m, n))
        out.append(G.copy())
    return out


@pytest.mark.parametrize("base", ["mgda", {"name": "pcgrad", "seed": 3}, {"name": "gradvac", "seed": 1}, "imtl_g"])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.9])
def test_ema_of_the_wrapped_weights(base, alpha):
    solver = CRMOGM(base=base, alpha=alpha)
    twin = CRMOGM(base=base).base  # an independent copy of the wrapped solver, same settings
    previous = None
    for t, G in enumerate(sequence(0)):
        r = solver(G)
        lam_hat = twin(G).weights
        expected = lam_hat if previous is None else alpha * previous + (1 - alpha) * lam_hat
        if alpha == 0.0 or t == 0:  # α = 0 and the first call give the wrapped output verbatim
            np.testing.assert_array_equal(r.weights, lam_hat)
        np.testing.assert_allclose(r.weights, expected, rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(r.direction, G.T @ expected, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(r.diagnostics["base_weights"], lam_hat)
        previous = expected


def test_constant_wrapped_weights_are_unchanged():
    for base in ({"name": "ls", "reduction": "mean"}, {"name": "ls", "weights": [0.2, 1.0, 3.0, 0.5]}):
        solver = CRMOGM(base=base, alpha=0.9)
        expected = mtlsolve.from_config(base)(sequence(1)[0]).weights
        for G in sequence(1):
            np.testing.assert_allclose(solver(G).weights, expected, rtol=1e-15)


def test_matches_torchjd_around_imtl_g():
    reference = CRMOGMWeighting(IMTLGWeighting(), alpha=0.9)
    solver = CRMOGM(base="imtl_g", alpha=0.9)
    deviation = 0.0
    for G in sequence(2, m=3, n=5, steps=8):
        theirs = reference(torch.tensor(G @ G.T)).numpy()
        deviation = max(deviation, np.abs(solver(G).weights - theirs).max())
    assert deviation < 1e-12, deviation


def test_base_from_name_config_or_instance_and_requirements():
    from_config = mtlsolve.from_config({"name": "cr_mogm", "base": {"name": "mgda"}})
    assert isinstance(from_config, CRMOGM) and from_config.base.name == "mgda"
    assert CRMOGM().base.name == "mgda"  # the paper's MOGM instance is the default
    assert mtlsolve.get("CRMOGM", base="pcgrad").base.name == "pcgrad"
    instance = mtlsolve.get("upgrad")
    assert CRMOGM(base=instance).base is instance
    assert CRMOGM().requirements() == {Need.GRAMIAN}
    assert CRMOGM(base={"name": "mgda", "normalisation": "loss"}).requirements() == {Need.GRAMIAN, Need.LOSSES}
    assert Need.MATRIX in CRMOGM(base="excess_mtl").requirements()
    for bad in ("moco", "graddrop", "no_such_solver", {"name": "mgda", "normalisation": "x"}, 3):
        with pytest.raises((mtlsolve.InvalidConfigError, mtlsolve.UnknownSolverError)):
            mtlsolve.get("cr_mogm", base=bad)
    with pytest.raises(mtlsolve.InvalidConfigError):
        mtlsolve.get("cr_mogm", alpha=1.5)


def test_wrapping_a_matrix_weighting_checks_its_inputs():
    solver = CRMOGM(base="excess_mtl")
    G = sequence(3)[0]
    with pytest.raises(mtlsolve.InvalidSystemError):
        solver(gramian=G @ G.T)
    assert solver(G).weights.sum() == pytest.approx(4.0)


def test_state_holds_the_wrapped_state_and_round_trips():
    systems = sequence(4, steps=6)
    solver = CRMOGM(base={"name": "gradvac", "seed": 2}, alpha=0.7)
    for G in systems[:3]:
        solver(G)
    state = solver.state_dict()
    assert "targets" in state["base"] and state["lambda"].shape == (4,)
    tail = [solver(G).direction for G in systems[3:]]
    copy = CRMOGM(base={"name": "gradvac", "seed": 2}, alpha=0.7)
    copy.load_state_dict(state)
    np.testing.assert_array_equal(tail, [copy(G).direction for G in systems[3:]])
    copy.reset()
    assert copy.state_dict() == {"base": {}}
    fresh = CRMOGM(base={"name": "gradvac", "seed": 2}, alpha=0.7)
    np.testing.assert_array_equal(copy(systems[0]).direction, fresh(systems[0]).direction)


def test_new_task_count_restarts_the_average():
    solver = CRMOGM(alpha=0.9)
    for G in sequence(5):
        solver(G)
    G = np.array([[1.0, 0.0], [-1.0, 1.0]])
    np.testing.assert_allclose(solver(G).direction, [0.2, 0.4], atol=1e-12)  # mgda on C, verbatim


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_inputs(dtype):
    systems = sequence(6)
    reference, solver = CRMOGM(), CRMOGM()
    for G in systems:
        expected = reference(G).direction
        d = solver(torch.tensor(G, dtype=dtype)).direction
        assert d.dtype == dtype
        np.testing.assert_allclose(d.double().numpy(), expected, rtol=1e-4 if dtype == torch.float32 else 1e-12,
                                   atol=1e-5 if dtype == torch.float32 else 1e-12)


def test_alpha_schedule_by_assignment():
    """Corollary 1's rising α is applied by reassigning ``alpha`` between steps (validated)."""
    systems = sequence(7, steps=4)
    solver, twin = CRMOGM(alpha=0.0), CRMOGM(alpha=0.0).base
    previous = None
    for t, G in enumerate(systems):
        solver.alpha = alpha = 1 - 1 / (t + 1)
        lam_hat = twin(G).weights
        expected = lam_hat if previous is None else alpha * previous + (1 - alpha) * lam_hat
        np.testing.assert_allclose(solver(G).weights, expected, rtol=1e-13)
        previous = expected
    with pytest.raises(ValueError):
        solver.alpha = 1.5

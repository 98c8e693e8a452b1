"""CR-MOGM (docs/methods.md#cr_mogm): λ_k = αλ_{k−1} + (1−α)λ̂_k around any weighting,
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


def test_new_task_count_raises_until_reset():
    solver = CRMOGM(alpha=0.9)
    for G in sequence(5):
        solver(G)
    before = repr(solver.state_dict())
    G = np.array([[1.0, 0.0], [-1.0, 1.0]])
    with pytest.raises(mtlsolve.InvalidSystemError, match="reset"):
        solver(G)
    assert repr(solver.state_dict()) == before
    solver.reset()
    np.testing.assert_allclose(solver(G).direction, [0.2, 0.4], atol=1e-12)  # mgda on C, verbatim


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_inputs(dtype):
    systems = sequence(6)
    reference, solver = CRMOGM(), CRMOGM()
    for G in systems:
        expected = reference(G).direction
        d = solver(torch.tensor(G, dtype=dtype)).direction
        assert d.dtype == dtype
        np.testing.assert_allclose(
            d.double().numpy(),
            expected,
            rtol=1e-4 if dtype == torch.float32 else 1e-12,
            atol=1e-5 if dtype == torch.float32 else 1e-12,
        )


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


# ------------------------------------------------ the base's declarations
PROTOCOL = ("needs", "batches", "grads", "randomized", "post_step", "post_step_losses")


@pytest.mark.parametrize(
    "base",
    [
        "mgda",
        "modo",
        "sdmgrad",
        "gradnorm",
        "famo",
        "uw",
        {"name": "gradvac", "seed": 1},
        {"name": "rlw", "seed": 1},
        "excess_mtl",
        {"name": "mgda", "normalisation": "loss"},
    ],
    ids=str,
)
def test_an_instance_declares_what_its_base_declares(base):
    solver = CRMOGM(base=base)
    for attribute in PROTOCOL:
        assert getattr(solver, attribute) == getattr(solver.base, attribute), attribute
    assert solver.requirements() == solver.base.requirements()
    assert solver.stateful  # the average is state whatever the base


def test_the_class_declares_the_defaults():
    """What the registry, the CLI and the conformance suite read from the class."""
    assert (CRMOGM.needs, CRMOGM.batches, CRMOGM.grads) == (frozenset(), 1, None)
    assert (CRMOGM.randomized, CRMOGM.post_step, CRMOGM.post_step_losses, CRMOGM.stateful) == (False, False, True, True)


def test_around_modo_reads_three_batches_as_modo_does():
    rng = np.random.default_rng(8)
    three_tasks = rng.standard_normal((3, 5))
    with pytest.raises(mtlsolve.InvalidSystemError, match="batches"):
        mtlsolve.get("modo")(three_tasks[:2])
    with pytest.raises(mtlsolve.InvalidSystemError, match="batches"):
        CRMOGM(base="modo")(three_tasks[:2])
    stacked = rng.standard_normal((9, 5))  # 3 batches of 3 tasks
    twin = mtlsolve.get("modo")
    r = CRMOGM(base="modo", alpha=0.0)(stacked)
    np.testing.assert_array_equal(r.weights, twin(stacked).weights)
    assert r.weights.shape == (9,) and (r.weights[:6] == 0).all()


def test_around_gradnorm_forwards_its_parameter_and_post_step():
    solver = CRMOGM(base="gradnorm", alpha=0.5)
    G, L = sequence(9, m=3)[0], np.array([1.0, 2.0, 3.0])
    solver(G, losses=L)
    (p,) = solver.parameters()
    assert p is solver.base.parameters()[0] and p.grad is not None
    with torch.no_grad():
        p.mul_(2.0)
    solver.after_step(None)  # renormalised to sum m by the base
    assert float(p.detach().sum()) == pytest.approx(3.0)


def test_around_uw_the_objective_also_trains_the_scales():
    solver = CRMOGM(base="uw")
    losses = torch.tensor([0.5, 1.0, 4.0], requires_grad=True)
    solver.objective(losses).backward()
    (s,) = solver.parameters()
    assert s.grad is not None and losses.grad is not None
    expected = 0.5 * (1.0 - torch.exp(-s.detach()) * losses.detach())  # ∂/∂s of ½(e^{−s}L + s)
    torch.testing.assert_close(s.grad, expected)


def test_a_failed_call_leaves_the_base_state_as_it_was():
    solver = CRMOGM(base={"name": "gradvac", "seed": 4})
    G = sequence(10)[0]
    solver(G)
    before = repr(solver.state_dict())
    bad = G.copy()
    bad[0, 0] = np.inf
    with pytest.raises(mtlsolve.NonFiniteError):
        solver(bad)
    assert repr(solver.state_dict()) == before


def test_a_state_whose_parts_disagree_is_refused_and_changes_nothing():
    solver = CRMOGM(base="dwa")
    for L in ([1.0, 2.0, 3.0], [0.9, 1.9, 2.9]):
        solver(losses=L)
        solver.end_epoch()
    state = solver.state_dict()
    other = CRMOGM(base="dwa")
    other(losses=[1.0, 2.0])
    before = repr(other.state_dict())
    with pytest.raises(mtlsolve.errors.StateError, match="tasks"):
        other.load_state_dict({**state, "base": {**state["base"], "m": 2, "history": state["base"]["history"][:, :2]}})
    with pytest.raises(mtlsolve.errors.StateError):
        other.load_state_dict({**state, "lambda": torch.tensor([float("nan"), 0.5, 0.5])})
    assert repr(other.state_dict()) == before

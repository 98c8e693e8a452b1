"""Loss weightings (docs/methods.md#loss-weightings): stl, si, uw, dwa, gls, rlw, imtl_l, famo, stch.

Every "must hold" item of each row, the objective() gradients against autograd of the paper's
formula written here, state_dict round trips, and torchjd 0.18.0's scalarizations where they exist.
"""

from __future__ import annotations

import importlib.metadata
import io

import numpy as np
import pytest
import torch
import torchjd.scalarization as tjd

from mtlsolve.errors import InvalidSystemError, SolverError
from mtlsolve.plugins.loss_weighting.dwa import DynamicWeightAverage
from mtlsolve.plugins.loss_weighting.famo import FAMO, logit_gradient
from mtlsolve.plugins.loss_weighting.gls import GeometricLoss
from mtlsolve.plugins.loss_weighting.imtl_l import IMTLL
from mtlsolve.plugins.loss_weighting.rlw import RandomLossWeighting
from mtlsolve.plugins.loss_weighting.si import ScaleInvariant
from mtlsolve.plugins.loss_weighting.stch import SmoothTchebycheff
from mtlsolve.plugins.loss_weighting.stl import SingleTask
from mtlsolve.plugins.loss_weighting.uw import UncertaintyWeighting
from mtlsolve.plugins.pareto.tchebycheff import Tchebycheff
from mtlsolve.registry import Registry
from mtlsolve.solver import Need

F64 = torch.float64
A = torch.tensor([[1.0, -0.5, 0.3, 0.0], [0.2, 0.8, -1.0, 0.5], [-0.7, 0.1, 0.4, 1.2]], dtype=F64)
OFFSET = torch.tensor([0.5, 1.0, 2.0], dtype=F64)
THETA = torch.tensor([0.3, -0.2, 0.7, 0.1], dtype=F64)


def model_losses(theta: torch.Tensor) -> torch.Tensor:
    """Three strictly positive task losses of a parameter vector θ."""
    return (A @ theta) ** 2 + OFFSET


def grad_theta(fn, *extra: torch.Tensor) -> list[torch.Tensor]:
    """∇ of fn(L(θ)) with respect to θ (and any extra leaves) at THETA."""
    theta = THETA.clone().requires_grad_()
    return list(torch.autograd.grad(fn(model_losses(theta)), [theta, *extra]))


def roundtrip(state: dict) -> dict:
    """A state dict through torch.save / torch.load, as a checkpoint would carry it."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def loss_grad(scalar_fn, L: np.ndarray) -> np.ndarray:
    """∂scalar_fn/∂L by autograd at L (float64)."""
    x = torch.tensor(L, dtype=F64, requires_grad=True)
    return torch.autograd.grad(scalar_fn(x), x)[0].numpy()


# ------------------------------------------------------------------ registry
def builtin_registry() -> Registry:
    eps = [ep for ep in importlib.metadata.entry_points(group="mtlsolve") if ep.name == "loss_weighting"]
    return Registry(entry_points=lambda: eps)


@pytest.mark.parametrize(
    ("name", "cls", "preset"),
    [
        ("single_task", SingleTask, {}),
        ("scaleinvls", ScaleInvariant, {}),
        ("scale_invariant", ScaleInvariant, {}),
        ("log_ls", ScaleInvariant, {}),
        ("UW", UncertaintyWeighting, {}),
        ("uncertainty", UncertaintyWeighting, {}),
        ("uncertainty_weighting", UncertaintyWeighting, {}),
        ("DWA", DynamicWeightAverage, {}),
        ("dynamic_weight_average", DynamicWeightAverage, {}),
        ("GeometricMean", GeometricLoss, {}),
        ("geometric_loss", GeometricLoss, {}),
        ("Random", RandomLossWeighting, {}),
        ("random_loss_weighting", RandomLossWeighting, {}),
        ("IMTL-L", IMTLL, {}),
        ("IMTLL", IMTLL, {}),
        ("FAMO", FAMO, {}),
        ("STCH", SmoothTchebycheff, {}),
        ("SoftTche", SmoothTchebycheff, {}),
        ("smooth_tchebycheff", SmoothTchebycheff, {}),
    ],
)
def test_names_resolve(name, cls, preset):
    entry, got = builtin_registry().resolve(name)
    assert entry.cls is cls and dict(got) == preset
    assert cls.family == "LW"


def test_needs_and_flags():
    for cls in (
        ScaleInvariant,
        UncertaintyWeighting,
        DynamicWeightAverage,
        GeometricLoss,
        IMTLL,
        FAMO,
        SmoothTchebycheff,
    ):
        assert cls.needs == frozenset({Need.LOSSES}), cls
    assert SingleTask.needs == frozenset() and RandomLossWeighting.needs == frozenset()
    assert RandomLossWeighting.randomized and FAMO.post_step and not UncertaintyWeighting.post_step
    for cls in (UncertaintyWeighting, DynamicWeightAverage, IMTLL, FAMO, SmoothTchebycheff):
        assert cls.stateful, cls
    with pytest.raises(InvalidSystemError, match="losses"):
        ScaleInvariant()(np.eye(2))


# ----------------------------------------------------------------------- stl
def test_stl_is_the_main_task_gradient():
    G = np.random.default_rng(0).standard_normal((4, 6))
    for k in range(4):
        r = SingleTask(main_task=k)(G)
        np.testing.assert_array_equal(r.direction, G[k])
        np.testing.assert_array_equal(r.weights, np.eye(4)[k])
    with pytest.raises(InvalidSystemError, match="main_task"):
        SingleTask(main_task=4)(G)
    with pytest.raises(ValueError):
        SingleTask(main_task=-1)


# ------------------------------------------------------------------------ si
def test_si_effective_weights_and_transforms():
    L = np.array([0.5, 2.0, 4.0])
    np.testing.assert_allclose(ScaleInvariant()(losses=L).weights, 1 / L)
    np.testing.assert_allclose(ScaleInvariant(weights=[1, 2, 3])(losses=L).weights, [2.0, 1.0, 0.75])
    np.testing.assert_allclose(ScaleInvariant(transform="log1p")(losses=L).weights, 1 / (1 + L))
    np.testing.assert_allclose(ScaleInvariant(transform="log1p")(losses=[0.0, 1.0]).weights, [1.0, 0.5])


@pytest.mark.parametrize("bad", [[1.0, 0.0], [1.0, -2.0]])
def test_si_and_gls_reject_non_positive_losses(bad):
    for solver in (ScaleInvariant(), GeometricLoss()):
        with pytest.raises(InvalidSystemError, match="must be > 0"):
            solver(losses=bad)
    with pytest.raises(InvalidSystemError, match="> -1"):
        ScaleInvariant(transform="log1p")(losses=[1.0, -1.0])


def test_si_and_gls_loss_scale_invariance():
    """Scaling L_i by c (so g_i by c): si's d is unchanged, gls's d keeps its direction and scales by c^{1/m}."""
    rng = np.random.default_rng(1)
    for _ in range(10):
        m = int(rng.integers(2, 6))
        G = rng.standard_normal((m, 7))
        L = rng.uniform(0.1, 3.0, m)
        c = rng.uniform(0.01, 100.0, m)
        d_si = ScaleInvariant()(G, losses=L).direction
        np.testing.assert_allclose(ScaleInvariant()(c[:, None] * G, losses=c * L).direction, d_si, rtol=1e-12)
        d_gls = GeometricLoss()(G, losses=L).direction
        scaled = GeometricLoss()(c[:, None] * G, losses=c * L).direction
        np.testing.assert_allclose(scaled, np.prod(c) ** (1 / m) * d_gls, rtol=1e-10)
        # gls ∥ si: d_gls = GM/m · d_si
        np.testing.assert_allclose(d_gls, np.exp(np.log(L).mean()) / m * d_si, rtol=1e-12)


def test_gls_weights_and_torchjd_geometric_mean():
    rng = np.random.default_rng(2)
    for m in (1, 2, 5):
        L = rng.uniform(0.05, 5.0, m)
        w = GeometricLoss()(losses=L).weights
        np.testing.assert_allclose(w, np.prod(L) ** (1 / m) / (m * L), rtol=1e-12)
        np.testing.assert_allclose(w, loss_grad(tjd.GeometricMean(), L), rtol=1e-12)


# ------------------------------------------------------------ objective() gradients
@pytest.mark.parametrize(
    ("solver", "formula"),
    [
        (ScaleInvariant(), lambda L: torch.log(L).sum()),
        (
            ScaleInvariant(weights=[0.5, 1.0, 2.0]),
            lambda L: (torch.tensor([0.5, 1, 2], dtype=F64) * torch.log(L)).sum(),
        ),
        (ScaleInvariant(transform="log1p"), lambda L: torch.log1p(L).sum()),
        (GeometricLoss(), lambda L: torch.prod(L) ** (1 / 3)),
        (SingleTask(main_task=2), lambda L: L[2]),
        (SmoothTchebycheff(mode="raw", mu=0.3), lambda L: 0.3 * torch.log(torch.exp(L / 3 / 0.3).sum())),
        (SmoothTchebycheff(), lambda L: torch.log(L).sum()),  # warm-up phase
        (DynamicWeightAverage(), lambda L: L.sum()),  # first two epochs
    ],
    ids=["si", "si_weights", "si_log1p", "gls", "stl", "stch_raw", "stch_warmup", "dwa_start"],
)
def test_objective_gradient_matches_formula(solver, formula):
    expected = grad_theta(formula)[0]
    got = grad_theta(solver.objective)[0]
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------------ uw
def set_parameter(solver, values):
    """Write values into the solver's learnable s (created by a first call)."""
    solver(losses=np.ones(len(values)))
    with torch.no_grad():
        solver.parameters()[0].copy_(torch.as_tensor(values, dtype=solver.parameters()[0].dtype))
    return solver.parameters()[0]


def test_uw_parameters_are_lazy_and_initialised():
    uw = UncertaintyWeighting()
    assert uw.parameters() == []
    L = torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    np.testing.assert_allclose(uw(losses=L).weights.numpy(), [0.5, 0.5, 0.5])
    (s,) = uw.parameters()
    assert isinstance(s, torch.nn.Parameter) and s.requires_grad and s.dtype == F64
    s2 = UncertaintyWeighting(init=-0.5)
    s2.objective(L)
    torch.testing.assert_close(s2.parameters()[0].detach(), torch.full((3,), -0.5, dtype=F64))
    np.testing.assert_allclose(UncertaintyWeighting(form="classification")(losses=[1.0, 2.0]).weights, [1.0, 1.0])


@pytest.mark.parametrize(("form", "optimum"), [("regression", np.log), ("classification", lambda L: np.log(2 * L))])
def test_uw_stationary_point(form, optimum):
    L = np.array([0.3, 1.0, 4.0])
    uw = UncertaintyWeighting(form=form)
    s = set_parameter(uw, optimum(L))
    uw.objective(torch.tensor(L, dtype=torch.float32)).backward()
    # s was created float64 by the numpy call; the float32 objective's gradient still reaches it
    assert s.dtype == F64
    torch.testing.assert_close(s.grad, torch.zeros(3, dtype=F64), atol=1e-6, rtol=0)
    np.testing.assert_allclose(uw(losses=L).weights, 1 / (2 * L), rtol=1e-6)


def test_uw_objective_against_formula_and_torchjd():
    rng = np.random.default_rng(3)
    s0 = rng.normal(size=3)
    for form, formula in (
        ("regression", lambda L, s: (0.5 * (torch.exp(-s) * L + s)).sum()),
        ("classification", lambda L, s: (torch.exp(-s) * L + 0.5 * s).sum()),
    ):
        uw = UncertaintyWeighting(form=form)
        uw.objective(model_losses(THETA))  # creates s in float64
        s = set_parameter(uw, s0)
        ref_s = torch.tensor(s0, dtype=F64, requires_grad=True)
        got = grad_theta(uw.objective, s)
        expected = grad_theta(lambda L: formula(L, ref_s), ref_s)
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
        # the effective weights are ∂objective/∂L
        L = model_losses(THETA).numpy()
        np.testing.assert_allclose(uw(losses=L).weights, loss_grad(lambda x: formula(x, ref_s.detach()), L), rtol=1e-12)
    # torchjd UW is the regression form
    ref = tjd.UW(3).double()
    with torch.no_grad():
        ref.log_var.copy_(torch.tensor(s0))
    uw = UncertaintyWeighting()
    uw.objective(model_losses(THETA))
    s = set_parameter(uw, s0)
    got = grad_theta(uw.objective, s)
    expected = grad_theta(ref, ref.log_var)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(uw.objective(model_losses(THETA)), ref(model_losses(THETA)), rtol=1e-14, atol=0)


def test_uw_trains_s_to_log_loss():
    """A joint optimiser on s (fixed L) drives the effective weight to 1/(2L)."""
    L = torch.tensor([0.2, 1.0, 5.0], dtype=F64)
    uw = UncertaintyWeighting()
    uw.objective(L)
    opt = torch.optim.SGD(uw.parameters(), lr=1.0)
    for _ in range(60):
        opt.zero_grad()
        uw.objective(L).backward()
        opt.step()
    np.testing.assert_allclose(uw(losses=L).weights.numpy(), 1 / (2 * L.numpy()), rtol=1e-9)


@pytest.mark.parametrize("cls", [UncertaintyWeighting, IMTLL])
def test_learnable_state_round_trip(cls):
    L = model_losses(THETA)
    solver = cls()
    solver.objective(L)
    opt = torch.optim.SGD(solver.parameters(), lr=0.3)
    for _ in range(3):
        opt.zero_grad()
        solver.objective(L).backward()
        opt.step()
    state = roundtrip(solver.state_dict())
    assert not isinstance(state["s"], torch.nn.Parameter)
    fresh = cls()
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh(losses=L).weights, solver(losses=L).weights, rtol=0, atol=0)
    torch.testing.assert_close(fresh.objective(L), solver.objective(L), rtol=0, atol=0)
    # loading into the solver itself keeps the Parameter the optimiser holds
    held = solver.parameters()[0]
    opt.zero_grad()
    solver.objective(L).backward()
    opt.step()
    solver.load_state_dict(state)
    assert solver.parameters()[0] is held
    torch.testing.assert_close(held.detach(), state["s"], rtol=0, atol=0)
    # a new m raises until reset(), which starts s over
    with pytest.raises(InvalidSystemError, match="reset"):
        solver(losses=np.ones(5))
    assert solver.parameters()[0] is held
    solver.reset()
    solver(losses=np.ones(5))
    assert solver.parameters()[0].shape == (5,) and solver.parameters()[0] is not held


# -------------------------------------------------------------------- imtl_l
def test_imtl_l_stationary_point_and_uw_relation():
    L = np.array([0.3, 1.0, 4.0])
    imtl = IMTLL()
    s = set_parameter(imtl, -np.log(L))
    imtl.objective(torch.tensor(L, dtype=torch.float32)).backward()
    # s was created float64 by the numpy call; the float32 objective's gradient still reaches it
    assert s.dtype == F64
    torch.testing.assert_close(s.grad, torch.zeros(3, dtype=F64), atol=1e-6, rtol=0)
    w = imtl(losses=L).weights
    np.testing.assert_allclose(w * L, 1.0, rtol=1e-6)  # every scaled loss e^{s_i}L_i = 1
    rng = np.random.default_rng(4)
    for _ in range(5):
        s0, L = rng.normal(size=3), torch.tensor(rng.uniform(0.1, 3, 3), dtype=F64)
        imtl, uw = IMTLL(), UncertaintyWeighting()
        imtl.objective(L), uw.objective(L)
        set_parameter(imtl, s0), set_parameter(uw, -s0)
        torch.testing.assert_close(imtl.objective(L), 2 * uw.objective(L), rtol=1e-13, atol=0)
        np.testing.assert_allclose(imtl(losses=L).weights.numpy(), 2 * uw(losses=L).weights.numpy(), rtol=1e-13)


def test_imtl_l_against_formula_and_torchjd():
    s0 = np.array([0.4, -0.3, 1.1])
    ref = tjd.IMTLL(3).double()
    with torch.no_grad():
        ref.log_scale.copy_(torch.tensor(s0))
    ref_s = torch.tensor(s0, dtype=F64, requires_grad=True)
    imtl = IMTLL()
    imtl.objective(model_losses(THETA))
    s = set_parameter(imtl, s0)
    got = grad_theta(imtl.objective, s)
    for expected in (
        grad_theta(lambda L: (torch.exp(ref_s) * L - ref_s).sum(), ref_s),
        grad_theta(ref, ref.log_scale),
    ):
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    L = model_losses(THETA).numpy()
    np.testing.assert_allclose(imtl(losses=L).weights, np.exp(s0), rtol=1e-14)


# ----------------------------------------------------------------------- dwa
def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def test_dwa_epoch_mode_rules():
    rng = np.random.default_rng(5)
    dwa = DynamicWeightAverage()
    means = []
    for epoch in range(5):
        batches = rng.uniform(0.5, 2.0, (4, 3))
        for L in batches:
            w = dwa(losses=L).weights
            if epoch < 2:
                np.testing.assert_array_equal(w, np.ones(3))  # the first-2-epochs rule
            else:
                r = means[-1] / means[-2]
                np.testing.assert_allclose(w, 3 * softmax(r / 2.0), rtol=1e-12)
                assert np.argmax(w) == np.argmax(r)  # largest ratio, largest weight
                assert w.sum() == pytest.approx(3.0)
        means.append(batches.mean(axis=0))
        dwa.end_epoch()
    # objective(): the gradient of Σ w_i L_i with w = m·softmax(r/T) from the last two epoch means
    w = torch.tensor(3 * softmax(means[-1] / means[-2] / 2.0))
    expected = grad_theta(lambda L: (w * L).sum())[0]
    torch.testing.assert_close(grad_theta(dwa.objective)[0], expected, rtol=1e-12, atol=1e-14)
    # a new number of tasks raises until reset(), which starts over (uniform weights, no history)
    with pytest.raises(InvalidSystemError, match="reset"):
        dwa(losses=np.ones(5))
    dwa.reset()
    np.testing.assert_array_equal(dwa(losses=np.ones(5)).weights, np.ones(5))
    assert "history" not in dwa.state_dict()


def test_dwa_limits_and_sums():
    def after_two_epochs(solver, first, second):
        for L in (first, second):
            solver(losses=L)
            solver.end_epoch()
        return solver(losses=second).weights

    a, b = np.array([1.0, 2.0, 4.0]), np.array([0.5, 1.0, 2.0])  # equal ratios
    np.testing.assert_allclose(after_two_epochs(DynamicWeightAverage(), a, b), np.ones(3), rtol=1e-14)
    c = np.array([0.9, 0.4, 3.0])  # unequal ratios
    np.testing.assert_allclose(after_two_epochs(DynamicWeightAverage(temperature=1e9), a, c), np.ones(3), rtol=1e-9)
    w_mean = after_two_epochs(DynamicWeightAverage(reduction="mean"), a, c)
    assert w_mean.sum() == pytest.approx(1.0) and np.argmax(w_mean) == np.argmax(c / a)
    np.testing.assert_allclose(w_mean, softmax(c / a / 2.0), rtol=1e-12)
    np.testing.assert_allclose(DynamicWeightAverage(reduction="mean")(losses=a).weights, np.full(3, 1 / 3))
    w_sum = after_two_epochs(DynamicWeightAverage(), a, c)
    assert w_sum.sum() == pytest.approx(3.0)


def nash_mtl_dwa(loss_rows, window=25, temp=2.0):
    """AvivNavon/nash-mtl's DynamicWeightAverage (iteration window), transcribed: the weights
    of each call, as effective weights of its (task_weights * losses).mean()."""
    m = loss_rows.shape[1]
    costs = np.ones((2 * window, m))
    weights = np.ones(m)
    out = []
    for running, cost in enumerate(loss_rows):
        costs[:-1] = costs[1:].copy()
        costs[-1] = cost
        if running > window:
            ws = costs[window:].mean(0) / costs[:window].mean(0)
            weights = m * np.exp(ws / temp) / np.exp(ws / temp).sum()
        out.append(weights / m)
    return np.array(out)


def test_dwa_period_25_buffer_rule():
    rng = np.random.default_rng(6)
    rows = rng.uniform(0.2, 3.0, (90, 3)) * np.linspace(1.0, 0.3, 90)[:, None]
    expected = nash_mtl_dwa(rows)
    dwa = DynamicWeightAverage(period=25, reduction="mean")
    got = []
    for L in rows:
        got.append(dwa(losses=L).weights)
        dwa.end_epoch()  # no effect with an iteration window
    got = np.array(got)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    np.testing.assert_array_equal(got[:26], np.full((26, 3), 1 / 3))  # stays uniform until > 25 iterations were seen
    assert not np.allclose(got[26], 1 / 3)


def test_dwa_epoch_mode_matches_torchjd():
    rng = np.random.default_rng(7)
    ours, ref = DynamicWeightAverage(temperature=1.5), tjd.DWA(temperature=1.5)
    worst = 0.0
    for _ in range(5):
        for _ in range(3):
            L = rng.uniform(0.1, 4.0, 4)
            worst = max(worst, np.abs(ours(losses=L).weights - loss_grad(ref, L)).max())
        ours.end_epoch()
        ref.step()
    assert worst < 1e-12


@pytest.mark.parametrize("period", ["epoch", 3])
def test_dwa_state_round_trip(period):
    rng = np.random.default_rng(8)
    rows = rng.uniform(0.2, 3.0, (24, 2))
    a, b = DynamicWeightAverage(period=period), DynamicWeightAverage(period=period)
    for i, L in enumerate(rows):
        if i == 11:
            b.load_state_dict(roundtrip(a.state_dict()))
        wa = a(losses=L).weights
        if i >= 11:
            np.testing.assert_array_equal(b(losses=L).weights, wa)
        if i % 4 == 3:
            a.end_epoch()
            b.end_epoch()


def test_dwa_validation():
    with pytest.raises(ValueError):
        DynamicWeightAverage(period=0)
    with pytest.raises(ValueError):
        DynamicWeightAverage(temperature=0.0)
    dwa = DynamicWeightAverage()
    for L in ([0.0, 1.0], [0.0, 1.0]):
        dwa(losses=L)
        dwa.end_epoch()
    with pytest.raises(InvalidSystemError, match="ratio"):
        dwa(losses=[1.0, 1.0])


# ----------------------------------------------------------------------- rlw
def test_rlw_simplex_reproducible_and_unbiased():
    for distribution in ("normal", "uniform", "dirichlet"):
        a = RandomLossWeighting(seed=3, distribution=distribution)
        b = RandomLossWeighting(seed=3, distribution=distribution)
        W = np.array([a(losses=np.ones(4)).weights for _ in range(2000)])
        assert (W > 0).all()
        np.testing.assert_allclose(W.sum(axis=1), 1.0, rtol=1e-14)
        np.testing.assert_array_equal(W[:50], [b(losses=np.ones(4)).weights for _ in range(50)])
        np.testing.assert_allclose(W.mean(axis=0), 0.25, atol=0.015)  # about 3 standard errors
    other = RandomLossWeighting(seed=4)(losses=np.ones(4)).weights
    assert not np.allclose(other, RandomLossWeighting(seed=3)(losses=np.ones(4)).weights)


def test_rlw_state_round_trip():
    a = RandomLossWeighting(seed=11)
    for _ in range(5):
        a(losses=np.ones(3))
    b = RandomLossWeighting(seed=11)
    b.load_state_dict(roundtrip(a.state_dict()))
    for _ in range(5):
        np.testing.assert_array_equal(a(losses=np.ones(3)).weights, b(losses=np.ones(3)).weights)


def test_rlw_distribution_matches_torchjd_random():
    """Same law as torchjd's Random (softmax of a standard normal draw): two-sample KS statistic on w_0."""
    n, m = 5000, 3
    ours = RandomLossWeighting(seed=0)
    w_ours = np.array([ours(losses=np.ones(m)).weights[0] for _ in range(n)])
    torch.manual_seed(0)
    ref, e0 = tjd.Random(), torch.tensor([1.0, 0.0, 0.0], dtype=F64)
    w_ref = np.array([ref(e0).item() for _ in range(n)])  # Σ w_i e0_i = w_0
    grid = np.sort(np.concatenate([w_ours, w_ref]))
    ecdf = lambda x: np.searchsorted(np.sort(x), grid, side="right") / n  # noqa: E731
    assert np.abs(ecdf(w_ours) - ecdf(w_ref)).max() < 0.045  # α = 0.001 critical value ≈ 0.039


# ---------------------------------------------------------------------- famo
def famo_state(xi):
    return {"solver": "famo", "m": len(xi), "xi": np.asarray(xi, dtype=np.float64), "pending": None}


def test_famo_weights():
    rng = np.random.default_rng(9)
    for _ in range(10):
        m = int(rng.integers(2, 7))
        xi, L = rng.normal(size=m), rng.uniform(0.01, 5.0, m)
        famo = FAMO()
        famo.load_state_dict(famo_state(xi))
        w = famo(losses=L).weights
        z = np.exp(xi) / np.exp(xi).sum()
        D = L + 1e-8
        np.testing.assert_allclose(w, (z / D) / (z / D).sum(), rtol=1e-12)
        assert (w > 0).all() and w.sum() == pytest.approx(1.0, abs=1e-14)
    np.testing.assert_allclose(FAMO()(losses=np.full(5, 0.7)).weights, np.full(5, 0.2), rtol=1e-14)
    floor = FAMO(min_losses=[0.5, -1.0])
    np.testing.assert_allclose(floor(losses=[1.0, 1.0]).weights, [0.8, 0.2], rtol=1e-7)  # D = (0.5, 2)
    with pytest.raises(InvalidSystemError, match="lower bounds"):
        FAMO(min_losses=[0.5, 0.0])(losses=[0.2, 1.0])


def test_famo_protocol_raises():
    famo = FAMO()
    with pytest.raises(SolverError, match="preceding call"):
        famo.after_step(np.ones(2))
    famo(losses=[1.0, 2.0])
    with pytest.raises(SolverError, match="twice"):
        famo(losses=[1.0, 2.0])
    famo.after_step([0.9, 1.9])
    famo(losses=[0.9, 1.9])  # fine after the post-step update
    with pytest.raises(InvalidSystemError):
        famo.after_step([1.0, 1.0, 1.0])


def test_famo_uniform_improvement_gives_zero_logit_gradient():
    rng = np.random.default_rng(10)
    xi = rng.normal(size=4)
    np.testing.assert_allclose(logit_gradient(xi, np.full(4, 0.37)), 0.0, atol=1e-16)
    # with γ = 0 the logits do not move; with γ > 0 only weight decay acts (one torch Adam step on γξ)
    L = rng.uniform(0.5, 2.0, 4)
    after = (L + 1e-8) * np.exp(-0.37) - 1e-8  # log D − log D′ = 0.37 for every task
    for gamma in (0.0, 1e-3):
        famo = FAMO(gamma=gamma)
        famo.load_state_dict(famo_state(xi))
        famo(losses=L)
        famo.after_step(after)
        p = torch.tensor(xi, requires_grad=True)
        opt = torch.optim.Adam([p], lr=0.025, weight_decay=gamma)
        p.grad = torch.zeros(4, dtype=F64)
        opt.step()
        # δ is uniform up to rounding (~1e-17 in the gradient), which Adam's g/(|g| + 1e-8) scales
        # to at most lr·1e-9: hence the tolerance, far below the step size 0.025
        np.testing.assert_allclose(famo.state_dict()["xi"].numpy(), p.detach().numpy(), rtol=0, atol=1e-9)
        if gamma == 0.0:
            np.testing.assert_allclose(famo.state_dict()["xi"].numpy(), xi, rtol=0, atol=1e-9)


def famo_weights(xi, L):
    """(z/D)/Σ(z/D) with z = softmax(ξ), D = L + 1e-8, written out."""
    z = np.exp(xi) / np.exp(xi).sum()
    return (z / (L + 1e-8)) / (z / (L + 1e-8)).sum()


def famo_at(xi):
    famo = FAMO()
    famo.load_state_dict(famo_state(xi))
    return famo


def test_famo_objective_effective_weight_identity():
    rng = np.random.default_rng(12)
    xi = rng.normal(size=3)
    L = torch.tensor(rng.uniform(0.1, 3.0, 3), dtype=F64, requires_grad=True)
    value = famo_at(xi).objective(L)
    (grad_L,) = torch.autograd.grad(value, L)
    np.testing.assert_allclose(grad_L.numpy(), famo_at(xi)(losses=L.detach()).weights.numpy(), rtol=1e-12)
    # the value is Σ z_i log D_i / c, c = Σ z_j/D_j, written out here
    z = torch.softmax(torch.tensor(xi), 0)
    D = L.detach() + 1e-8
    torch.testing.assert_close(value.detach(), (z * torch.log(D)).sum() / (z / D).sum(), rtol=1e-14, atol=0)
    # through a model: ∇θ objective = Σ w_i ∇θ L_i with the effective weights
    w = torch.tensor(famo_weights(xi, model_losses(THETA).numpy()))
    torch.testing.assert_close(
        grad_theta(famo_at(xi).objective)[0], grad_theta(lambda L: (w * L).sum())[0], rtol=1e-12, atol=1e-14
    )


def test_famo_matches_torchjd_over_a_run():
    rng = np.random.default_rng(13)
    m = 4
    ours, ref = FAMO(), tjd.FAMO(m).double()  # both: lr 0.025, weight decay 1e-3, ξ₀ = 0
    L = rng.uniform(1.0, 3.0, m)
    worst_w = worst_value = 0.0
    for _ in range(40):
        x_ref, x_ours = torch.tensor(L, requires_grad=True), torch.tensor(L, requires_grad=True)
        value_ref, value_ours = ref(x_ref), ours.objective(x_ours)
        (w_ref,) = torch.autograd.grad(value_ref, x_ref)
        (w_ours,) = torch.autograd.grad(value_ours, x_ours)
        worst_w = max(worst_w, float((w_ours - w_ref).abs().max()))
        worst_value = max(worst_value, abs(value_ours.item() - value_ref.item()))
        new = L * rng.uniform(0.7, 1.02, m)
        ours.after_step(new)
        ref.update(torch.tensor(new))
        L = new
    assert worst_w < 1e-12 and worst_value < 1e-12
    np.testing.assert_allclose(ours.state_dict()["xi"].numpy(), ref._w.detach().numpy(), rtol=1e-10, atol=1e-13)
    assert ours.state_dict()["xi"].abs().max() > 0.05  # the logits did move


def test_famo_state_round_trip():
    rng = np.random.default_rng(14)
    a = FAMO()
    losses = rng.uniform(1.0, 2.0, (13, 3)).cumprod(axis=0) ** -0.2
    for L, new in zip(losses[:6], losses[1:7]):
        a(losses=L)
        a.after_step(new)
    a(losses=losses[6])  # save mid-step: a pending call and Adam moments
    b = FAMO()
    b.load_state_dict(roundtrip(a.state_dict()))
    for new in losses[7:]:
        a.after_step(new), b.after_step(new)
        np.testing.assert_array_equal(b(losses=new).weights, a(losses=new).weights)
    a.after_step(losses[-1])
    with pytest.raises(InvalidSystemError, match="reset"):  # a new m raises until reset()
        a(losses=np.ones(5))
    a.reset()
    a(losses=np.ones(5))
    assert a.state_dict()["m"] == 5 and "xi" not in a.state_dict()


# ---------------------------------------------------------------------- stch
def run_epochs(solver, epochs):
    """Feed each epoch's batches (a list of loss vectors) and close the epoch; returns the last weights."""
    for batches in epochs:
        for L in batches:
            out = solver(losses=L)
        solver.end_epoch()
    return out


def test_stch_official_phases():
    rng = np.random.default_rng(15)
    stch = SmoothTchebycheff(warmup_epoch=2, mu=0.5)
    nadir_batches = rng.uniform(0.5, 2.0, (3, 3))
    for epoch in range(3):
        batches = nadir_batches if epoch == 2 else rng.uniform(0.5, 2.0, (2, 3))
        for L in batches:
            np.testing.assert_allclose(stch(losses=L).weights, 1 / L, rtol=1e-14)  # Σ log L
        stch.end_epoch()
    nadir = nadir_batches.mean(axis=0)
    for _ in range(5):
        L = rng.uniform(0.2, 2.0, 3)
        r = stch(losses=L)
        y = np.log(L / nadir)
        np.testing.assert_allclose(r.diagnostics["y_weights"], softmax(y / 0.5), rtol=1e-12)
        np.testing.assert_allclose(r.weights, 3 * softmax(y / 0.5) / L, rtol=1e-12)
        value = r.diagnostics["value"] / 3
        assert y.max() <= value + 1e-12 and value <= y.max() + 0.5 * np.log(3) + 1e-12
    # objective(): gradient of m·μ·log Σ exp(log(L/nadir)/μ), written out
    nad = torch.tensor(nadir)
    expected = grad_theta(lambda L: 3 * 0.5 * torch.log(torch.exp(torch.log(L / nad) / 0.5).sum()))[0]
    torch.testing.assert_close(grad_theta(stch.objective)[0], expected, rtol=1e-12, atol=1e-14)


def test_stch_state_and_errors():
    rng = np.random.default_rng(16)
    epochs = [rng.uniform(0.5, 2.0, (2, 2)) for _ in range(3)]
    a = SmoothTchebycheff(warmup_epoch=1)
    run_epochs(a, epochs)
    b = SmoothTchebycheff(warmup_epoch=1)
    b.load_state_dict(roundtrip(a.state_dict()))
    L = np.array([0.7, 1.3])
    np.testing.assert_array_equal(a(losses=L).weights, b(losses=L).weights)
    skipped = SmoothTchebycheff(warmup_epoch=1)
    skipped(losses=L)
    skipped.end_epoch()
    skipped.end_epoch()  # no call during epoch 1, the nadir epoch
    with pytest.raises(SolverError, match="nadir"):
        skipped(losses=L)
    with pytest.raises(InvalidSystemError, match="> 0"):
        SmoothTchebycheff()(losses=[1.0, 0.0])
    with pytest.raises(ValueError, match="raw"):
        SmoothTchebycheff(preference=[0.5, 0.5])


def test_stch_raw_bounds_softmax_and_torchjd():
    rng = np.random.default_rng(17)
    worst_w = worst_value = 0.0
    for _ in range(20):
        m = int(rng.integers(2, 6))
        mu = float(rng.choice([0.01, 0.1, 0.5, 1.0]))
        lam, z, L = rng.dirichlet(np.ones(m)), rng.normal(size=m) * 0.1, rng.normal(size=m)
        r = SmoothTchebycheff(mode="raw", mu=mu, preference=lam, ideal=z)(losses=L)
        s, y, value = r.diagnostics["y_weights"], lam * (L - z), r.diagnostics["value"]
        assert (s >= 0).all() and s.sum() == pytest.approx(1.0)
        assert y.max() <= value + 1e-12 and value <= y.max() + mu * np.log(m) + 1e-12
        ref = tjd.STCH(mu, weights=torch.tensor(lam), reference=torch.tensor(z))
        worst_w = max(worst_w, np.abs(r.weights - loss_grad(ref, L)).max())
        worst_value = max(worst_value, abs(value - float(ref(torch.tensor(L)))))
    assert worst_w < 1e-12 and worst_value < 1e-12
    # defaults: λ = 1/m, z = 0, as torchjd's
    L = rng.normal(size=3)
    np.testing.assert_allclose(SmoothTchebycheff(mode="raw")(losses=L).weights, loss_grad(tjd.STCH(1.0), L), rtol=1e-12)
    # a per-step preference from the system extras overrides the field
    lam = np.array([0.2, 0.3, 0.5])
    np.testing.assert_allclose(
        SmoothTchebycheff(mode="raw", preference=[1, 1, 1])(losses=L, preference=lam).weights,
        loss_grad(tjd.STCH(1.0, weights=torch.tensor(lam)), L),
        rtol=1e-12,
    )


def test_stch_small_mu_recovers_tchebycheff():
    rng = np.random.default_rng(18)
    for _ in range(10):
        lam, L = rng.dirichlet(np.ones(4)), rng.uniform(0, 1, 4)
        tche = Tchebycheff(preference=lam)(losses=L)
        r = SmoothTchebycheff(mode="raw", mu=1e-5, preference=lam)(losses=L)
        np.testing.assert_allclose(r.weights, tche.weights, atol=1e-6)
        assert r.diagnostics["value"] == pytest.approx(tche.diagnostics["value"], abs=1e-4)


# ------------------------------------------------------------ finite output
def test_extreme_losses_give_finite_weights():
    dwa = DynamicWeightAverage()
    for L in ([1e-300, 1.0], [1e10, 1.0]):  # epoch means 1e-300 then 1e10: a ratio beyond float64
        dwa(losses=L)
        dwa.end_epoch()
    w = dwa(losses=[1.0, 1.0]).weights
    np.testing.assert_array_equal(w, [2.0, 0.0])  # the limit of m·softmax(r/T) as r_0 → ∞
    famo = FAMO()
    famo.load_state_dict(famo_state(np.array([30.0, -30.0])))
    w = famo(losses=[1e-300, 1e300]).weights
    assert np.isfinite(w).all() and w.sum() == pytest.approx(1.0)
    w = GeometricLoss()(losses=[1e-200, 1e200, 1.0]).weights
    np.testing.assert_allclose(w, [1e200 / 3, 1e-200 / 3, 1 / 3], rtol=1e-12)


def test_state_entries_survive_a_weights_only_checkpoint():
    """Every entry is a tensor or a Python number, list or dict: torch.load(weights_only=True) reads it."""
    solvers = [
        DynamicWeightAverage(),
        DynamicWeightAverage(period=2),
        FAMO(),
        SmoothTchebycheff(warmup_epoch=0),
        UncertaintyWeighting(),
        IMTLL(),
        RandomLossWeighting(seed=1),
    ]
    for solver in solvers:
        for L in ([1.0, 2.0], [0.9, 1.8], [0.8, 1.7]):
            solver(losses=L)
            if solver.post_step:
                solver.after_step(np.array(L) * 0.9)
            solver.end_epoch()
        state = roundtrip(solver.state_dict())
        assert state["solver"] == solver.name
        fresh = type(solver)(
            **{f: getattr(solver, f) for f in ("period", "warmup_epoch", "seed") if hasattr(solver, f)}
        )
        fresh.load_state_dict(state)
        L = [0.7, 1.6]
        np.testing.assert_array_equal(fresh(losses=L).weights, solver(losses=L).weights)

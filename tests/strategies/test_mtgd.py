"""MTGD-reconstructed (Bai, Gupta, Ong, arXiv 2403.16162; docs/methods.md#mtgd): the Das–Dennis grid, the transfer matrix, the update
θ_k ← Σ_j M_kj θ_j − η d_k against an independent autograd computation, inner solvers,
checkpoints, and the two-task check of docs/problems.md#conflicting-regression (transfer strength and the bound on α)."""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest
import torch

from mtlsolve.adapters.strategies import from_config, strategy_class
from mtlsolve.adapters.strategies.mtgd import MTGD, das_dennis, transfer_matrix, transfer_relation
from mtlsolve.errors import InvalidConfigError
from mtlsolve.metrics import hypervolume
from mtlsolve.problems import conflicting_regression


# ------------------------------------------------------------------ the grid
@pytest.mark.parametrize("m, H", [(m, H) for m in (1, 2, 3, 4) for H in (1, 2, 3, 5, 6)])
def test_das_dennis_grid_is_the_simplex_lattice(m, H):
    P = das_dennis(m, H)
    assert P.shape == (math.comb(H + m - 1, m - 1), m)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, atol=1e-12)
    assert (P >= 0).all()
    counts = np.rint(P * H).astype(int)
    np.testing.assert_allclose(counts / H, P, atol=1e-12)
    brute = {c for c in itertools.product(range(H + 1), repeat=m) if sum(c) == H}
    assert {tuple(r) for r in counts} == brute and len(brute) == len(P)


def test_population_size_picks_the_grid():
    net = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    assert MTGD(model=net, optimizer=opt, num_tasks=2, n_models=7, alpha=0).preferences.shape == (7, 2)
    assert MTGD(model=net, optimizer=opt, num_tasks=3, n_models=10, alpha=0).preferences.shape == (10, 3)
    assert MTGD(model=net, optimizer=opt, num_tasks=3, alpha=0).preferences.shape == (6, 3)  # smallest grid ≥ 5
    with pytest.raises(InvalidConfigError):
        MTGD(model=net, optimizer=opt, num_tasks=3, n_models=7)


# --------------------------------------------------------- the transfer matrix
def test_transfer_relation_and_matrix():
    P = das_dennis(3, 3)
    K = len(P)
    r_all = transfer_relation(P, neighbors=None)
    for k in range(K):
        for j in range(K):
            c = max(0.0, float(P[k] @ P[j] / np.linalg.norm(P[k]) / np.linalg.norm(P[j])))
            assert r_all[k, j] == pytest.approx(0.0 if k == j else c / (1 + c))
    r2 = transfer_relation(P, neighbors=2)
    for k in range(K):
        kept = np.flatnonzero(r2[k])
        assert len(kept) <= 2
        angles = [math.acos(min(1.0, P[k] @ P[j] / np.linalg.norm(P[k]) / np.linalg.norm(P[j]))) for j in range(K)]
        others = sorted((angles[j], j) for j in range(K) if j != k)
        nearest = {j for _, j in others[:2]}
        assert set(kept) <= nearest
        np.testing.assert_allclose(r2[k, kept], r_all[k, kept])
    lr = 0.05
    M = transfer_matrix(r2, 2.0, lr)
    np.testing.assert_allclose(M.sum(axis=1), 1.0)
    off = ~np.eye(K, dtype=bool)
    np.testing.assert_allclose(M[off], (2.0 * lr * r2)[off])
    assert (M >= 0).all()
    bound = 1.0 / (lr * r2.sum(axis=1).max())
    assert transfer_matrix(r2, bound, lr).diagonal().min() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(InvalidConfigError, match="alpha"):
        transfer_matrix(r2, 1.01 * bound, lr)


def test_alpha_above_the_bound_is_refused_at_construction():
    net = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    pop = MTGD(model=net, optimizer=opt, num_tasks=2, n_models=5, alpha=1.0)
    with pytest.raises(InvalidConfigError):
        MTGD(model=net, optimizer=opt, num_tasks=2, n_models=5, alpha=1.01 * pop.max_alpha())


# ------------------------------------------------------------- the update rule
class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = torch.nn.Linear(4, 6)
        self.head = torch.nn.Linear(6, 2)

    def forward(self, x):
        return self.head(torch.tanh(self.trunk(x)))


def two_losses(model, x, y):
    return ((model(x) - y) ** 2).mean(dim=0)


@pytest.mark.parametrize("scalarization", ["linear", "tchebycheff"])
@pytest.mark.parametrize("layers", [None, ["trunk"]])
def test_step_is_mixing_plus_gradient_step(scalarization, layers):
    torch.manual_seed(0)
    x, y = torch.randn(16, 4), torch.randn(16, 2)
    net = Tiny()
    lr, alpha = 0.1, 3.0
    pop = MTGD(
        model=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=lr),
        num_tasks=2,
        n_models=5,
        alpha=alpha,
        neighbors=2,
        transfer_layers=layers,
        scalarization=scalarization,
    )
    with torch.no_grad():  # make the models differ, so that the transfer does something
        for model in pop.models:
            for p in model.parameters():
                p.add_(0.3 * torch.randn_like(p))
    for _ in range(3):
        before = [copy.deepcopy(m) for m in pop.models]
        M = pop.transfer_matrix()
        record = pop.step(lambda model: two_losses(model, x, y))
        np.testing.assert_array_equal(record.transfer, M)
        for k, model in enumerate(pop.models):
            L = two_losses(before[k], x, y)
            lam = torch.tensor(pop.preferences[k], dtype=L.dtype)
            f = (lam * L).sum() if scalarization == "linear" else (lam * L).max()
            grads = dict(
                zip([n for n, _ in before[k].named_parameters()], torch.autograd.grad(f, list(before[k].parameters())))
            )
            for name, p in model.named_parameters():
                mixed = name.split(".")[0] in (layers or ["trunk", "head"])
                start = (
                    sum(M[k, j] * before[j].get_parameter(name).detach() for j in range(len(before)))
                    if mixed
                    else before[k].get_parameter(name).detach()
                )
                torch.testing.assert_close(p.detach(), start - lr * grads[name], rtol=1e-5, atol=1e-6)


def test_alpha_zero_is_independent_training():
    torch.manual_seed(1)
    x, y = torch.randn(16, 4), torch.randn(16, 2)
    net = Tiny()
    pop = MTGD(
        model=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9),
        num_tasks=2,
        n_models=3,
        alpha=0.0,
        init="copy",
    )
    refs = [copy.deepcopy(net) for _ in range(3)]
    opts = [torch.optim.SGD(r.parameters(), lr=0.1, momentum=0.9) for r in refs]
    for _ in range(4):
        assert pop.step(lambda model: two_losses(model, x, y)).transfer is None
        for k, (ref, opt) in enumerate(zip(refs, opts)):
            opt.zero_grad()
            (torch.tensor(pop.preferences[k], dtype=torch.float32) * two_losses(ref, x, y)).sum().backward()
            opt.step()
    for model, ref in zip(pop.models, refs):
        for p, q in zip(model.parameters(), ref.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_inner_solvers_get_their_preference():
    net = Tiny()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    pop = MTGD(model=net, optimizer=opt, num_tasks=2, n_models=5, solver="pmtl")
    assert [a.solver.index for a in pop.adapters] == list(range(5))
    np.testing.assert_allclose(np.array(pop.adapters[0].solver.preferences), pop.preferences)
    interior = [[0.8, 0.2], [0.5, 0.5], [0.2, 0.8]]
    pop = MTGD(model=net, optimizer=opt, preferences=interior, solver="epo", alpha=0)
    np.testing.assert_allclose([a.solver.preference for a in pop.adapters], interior)
    pop = MTGD(model=net, optimizer=opt, num_tasks=2, n_models=3, solver="aligned_mtl")
    np.testing.assert_allclose([a.solver.task_weights for a in pop.adapters], pop.preferences)
    x, y = torch.randn(8, 4), torch.randn(8, 2)
    pop.step(lambda model: two_losses(model, x, y))


# ------------------------------------------------------------------ initialisation
def test_independent_init_redraws_every_model_but_the_first():
    net = Tiny()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    torch.manual_seed(5)
    pop = MTGD(model=net, optimizer=opt, num_tasks=2, n_models=4, alpha=1.0)
    assert pop.settings.init == "independent"
    for p, q in zip(net.parameters(), pop.models[0].parameters()):
        assert torch.equal(p, q)
    # models 1..K−1 are what a fresh module's reset_parameters draws next from the global RNG
    torch.manual_seed(5)
    for model in pop.models[1:]:
        ref = copy.deepcopy(net)
        for module in ref.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        for p, q in zip(ref.parameters(), model.parameters()):
            assert torch.equal(p, q)
    flat = [torch.cat([p.detach().reshape(-1) for p in m.parameters()]) for m in pop.models]
    assert all(not torch.equal(flat[i], flat[j]) for i in range(4) for j in range(i))
    # "copy": every model starts at the template, so the first mixing moves nothing
    pop = MTGD(model=net, optimizer=opt, num_tasks=2, n_models=4, alpha=1.0, init="copy")
    assert all(float(d.abs().max()) < 1e-6 for d in pop._mixing(pop.transfer_matrix()).values())  # round-off


def test_independent_init_needs_reset_parameters():
    class Raw(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(3))

        def forward(self, x):
            return x @ self.w

    net = Raw()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(InvalidConfigError, match="reset_parameters"):
        MTGD(model=net, optimizer=opt, num_tasks=2, n_models=3)
    MTGD(model=net, optimizer=opt, num_tasks=2, n_models=3, init="copy")
    with pytest.raises(ValueError, match="init"):
        MTGD(model=net, optimizer=opt, num_tasks=2, n_models=3, init="random")


# ------------------------------------------------------------------ checkpoints
def test_checkpoint_resume_is_bit_identical():
    torch.manual_seed(2)
    data = [(torch.randn(16, 4), torch.randn(16, 2)) for _ in range(10)]

    def build():
        net = Tiny()
        opt = torch.optim.Adam(net.parameters(), lr=0.01)
        return from_config(
            {"strategy": "mtgd", "num_tasks": 2, "n_models": 5, "alpha": 5.0},
            model=net,
            optimizer=opt,
            scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, 2, 0.5),
        )

    torch.manual_seed(3)
    pop = build()
    for x, y in data[:5]:
        pop.step(lambda model: two_losses(model, x, y))
        pop.end_epoch()
    saved = copy.deepcopy(pop.state_dict())
    for x, y in data[5:]:
        pop.step(lambda model: two_losses(model, x, y))
        pop.end_epoch()
    torch.manual_seed(4)  # other initial weights, overwritten by the checkpoint
    resumed = build()
    resumed.load_state_dict(saved)
    for x, y in data[5:]:
        resumed.step(lambda model: two_losses(model, x, y))
        resumed.end_epoch()
    for a, b in zip(pop.models, resumed.models):
        for p, q in zip(a.parameters(), b.parameters()):
            assert torch.equal(p, q)
    assert resumed.steps == pop.steps == 10
    np.testing.assert_array_equal(resumed.learning_rates(), pop.learning_rates())


def test_config_names():
    assert strategy_class("mtgd") is MTGD and strategy_class("MGD") is MTGD
    net = Tiny()
    with pytest.raises(InvalidConfigError):
        from_config({"strategy": "mtgd"}, model=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.1))
    with pytest.raises(ValueError):
        from_config(
            {"strategy": "mtgd", "num_tasks": 2, "alpha": -1},
            model=net,
            optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        )


# --------------------------------------------------------------- two-task check
def population_run(alpha, seed=0, steps=300, every=10, K=7, init="independent", correlated=False):
    """docs/problems.md#conflicting-regression: 10 features, one hidden layer of width 32, one output for both targets, SGD 1e-2 with
    momentum 0.9, batch 64. HV of the test losses against 1.1 x the front's nadir (the loss of fitting
    the other target: E(y₁ − y₂)² for both tasks), fixed before the run.

    ``correlated``: y₂ is negated, so y₂ ≈ y₁ (correlated tasks) and the reference point is
    1.1 x max_i E y_i² (the loss of predicting zero) for both tasks."""
    X, Y = conflicting_regression(samples=2048, seed=seed)
    if correlated:
        Y = torch.stack([Y[:, 0], -Y[:, 1]], dim=1)
    Xtr, Ytr, Xte, Yte = X[:1536], Y[:1536], X[1536:], Y[1536:]
    nadir = float((Yte**2).mean(dim=0).max()) if correlated else float(((Yte[:, 0] - Yte[:, 1]) ** 2).mean())
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    pop = from_config(
        {
            "strategy": "mtgd",
            "num_tasks": 2,
            "n_models": K,
            "alpha": alpha,
            "neighbors": 2,
            "reference": [1.1 * nadir] * 2,
            "init": init,
        },
        model=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.9),
    )
    loss = lambda model, x, y: ((model(x) - y) ** 2).mean(dim=0)  # noqa: E731
    gen = torch.Generator().manual_seed(seed + 100)
    hv = [pop.hypervolume(pop.evaluate(lambda m: loss(m, Xte, Yte)))]
    for t in range(steps):
        idx = torch.randint(0, 1536, (64,), generator=gen)
        pop.step(lambda m: loss(m, Xtr[idx], Ytr[idx]))
        if (t + 1) % every == 0:
            hv.append(pop.hypervolume(pop.evaluate(lambda m: loss(m, Xte, Yte))))
    final = pop.evaluate(lambda m: loss(m, Xte, Yte))
    return np.array(hv), final, pop


@pytest.mark.slow
def test_two_task_population_transfer_and_its_bound():
    torch.set_num_threads(1)
    hv0, L0, pop = population_run(0.0)
    bound = pop.max_alpha()
    hv1, L1, _ = population_run(5.0)
    hvc, Lc, _ = population_run(0.95 * bound)
    # moderate transfer keeps the front: final HV within 1 % of independent training
    assert abs(hv1[-1] - hv0[-1]) < 0.01 * hv0[-1]
    assert hypervolume(L1, pop.reference) == pytest.approx(hv1[-1])
    # near the bound the population collapses towards a consensus: the front shrinks and HV drops
    spread = lambda L: float(L[:, 0].max() - L[:, 0].min())  # noqa: E731
    assert spread(Lc) < 0.8 * spread(L0)
    assert hvc[-1] < 0.98 * hv0[-1]


@pytest.mark.slow
def test_transfer_speeds_up_convergence_on_correlated_tasks():
    """The paper's claim (faster HV convergence through parameter transfer), as measured on correlated
    tasks (y₂ ≈ y₁) with independently initialised models, seeds 0–4, α = 5 against α = 0: a common
    target, 95 % of the α = 0 run's HV after 300 steps, is reached sooner in every seed (measured
    50–100 steps vs 80–190; mean 64 vs 110) and HV after 100 steps is higher on average (measured +3.7 %, at least +1.2 % in every seed).
    Not asserted because not measured to hold: conflicting tasks (there α = 5 reached the target later,
    42 vs 24 steps), HV after 20 steps (lower with transfer), and init="copy" (no effect)."""
    torch.set_num_threads(1)
    reach, early = {}, {}
    for alpha in (0.0, 5.0):
        runs = [population_run(alpha, seed=s, correlated=True)[0] for s in range(5)]
        reach[alpha] = runs
        early[alpha] = np.array([hv[10] for hv in runs])  # HV after 100 steps (every 10 steps)
    for s in range(5):
        target = 0.95 * reach[0.0][s][-1]
        first = {a: int(np.argmax(reach[a][s] >= target)) for a in reach}
        assert (reach[5.0][s] >= target).any() and first[5.0] < first[0.0], (s, first)
    steps = {a: np.mean([np.argmax(reach[a][s] >= 0.95 * reach[0.0][s][-1]) for s in range(5)]) for a in reach}
    assert steps[5.0] <= 0.75 * steps[0.0], steps
    assert np.mean(early[5.0] / early[0.0]) >= 1.01, early

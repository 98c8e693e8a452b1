"""LDC-MTL (docs/methods.md#ldc_mtl): one scalar f = Σσ_iℓ_i/Σσ_i + λΣ_{i<m}|σ_iℓ_i − σ_{i+1}ℓ_{i+1}|
trains the model and the router logits s (σ = softmax(s)) together.

Reference: the authors' released training step (OptMN-Lab/LDC-MTL: ``experiments/nyuv2/trainer.py``
for the ratio pre-normalisation, ``experiments/quantum_chemistry/trainer.py`` for log(L/L(0)),
``experiments/celeba/trainer.py`` for none), rewritten here in torch: autograd of that scalar gives
the effective weights and the router gradient, and a short training run is replayed step by step.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mtlsolve
from mtlsolve.errors import InvalidConfigError, InvalidSystemError, StateError


def released_total(logits: torch.Tensor, losses: torch.Tensor, initial: torch.Tensor, prenorm: str, lamb: float):
    """The released total loss, with the router's weights softmax(logits)."""
    weights = torch.softmax(logits, dim=-1)
    if prenorm == "initial":  # nyuv2: ratios = initial_loss / initial_loss.min()
        normalised = losses / (initial / initial.min())
    elif prenorm == "log":  # quantum_chemistry: log(losses / initial_loss), weight sum detached
        normalised = torch.log(losses / initial)
    else:  # celeba
        normalised = losses
    total = weights @ normalised / (weights.sum().detach() if prenorm == "log" else weights.sum())
    wl = weights * normalised
    return total + lamb * torch.sum(torch.abs(wl[:-1] - wl[1:]))


@pytest.mark.parametrize("prenorm", ["none", "initial", "log"])
@pytest.mark.parametrize("m", [2, 3, 7])
def test_released_gradients(prenorm, m):
    """Effective weights = ∂f/∂L and the router gradient = ∂f/∂s, on successive calls with the
    first call's losses kept as L(0) and the router moved between calls."""
    rng = np.random.default_rng(m)
    lamb = 0.3
    solver = mtlsolve.get("ldc_mtl", prenorm=prenorm, lamb=lamb)
    initial = None
    worst = 0.0
    for _ in range(6):
        L = torch.tensor(rng.uniform(0.1, 4.0, m) * 10.0 ** rng.integers(-1, 2, m), requires_grad=True)
        initial = L.detach().clone() if initial is None else initial
        solver(losses=L.detach())  # creates the router logits and keeps the first losses as L(0)
        (s,) = solver.parameters()
        with torch.no_grad():
            s.copy_(torch.from_numpy(rng.normal(0.0, 1.0, m)))
        w = solver(losses=L.detach()).weights
        logits = s.detach().clone().requires_grad_(True)
        released_total(logits, L, initial, prenorm, lamb).backward()
        s.grad = None
        ours = L.detach().clone().requires_grad_(True)
        solver.objective(ours).backward()
        for got, expected in ((w, L.grad), (ours.grad, L.grad), (s.grad, logits.grad)):
            expected = expected.numpy()
            error = float(np.abs(np.asarray(got) - expected).max() / (np.abs(expected).max() or 1.0))
            worst = max(worst, error) if np.isfinite(error) else np.inf
    assert worst <= 1e-12, worst


def test_training_replay():
    """Twenty Adam steps on a two-layer model and the router: mtlsolve's objective and the
    released scalar give the same parameters."""
    torch.manual_seed(0)
    X, Y = torch.randn(32, 5, dtype=torch.float64), torch.randn(32, 3, dtype=torch.float64)
    scales = torch.tensor([1.0, 30.0, 0.1], dtype=torch.float64)

    def losses_of(model):
        return ((model(X) - Y) ** 2 * scales).mean(dim=0)

    def make():
        torch.manual_seed(1)
        return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()

    ours_model, theirs_model = make(), make()
    solver = mtlsolve.get("ldc_mtl", prenorm="initial", lamb=0.05)
    solver.objective(losses_of(ours_model))  # creates the router logits
    logits = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    ours_opt = torch.optim.Adam([*ours_model.parameters(), *solver.parameters()], lr=0.01)
    theirs_opt = torch.optim.Adam([*theirs_model.parameters(), logits], lr=0.01)
    initial = losses_of(theirs_model).detach()
    for _ in range(20):
        ours_opt.zero_grad()
        solver.objective(losses_of(ours_model)).backward()
        ours_opt.step()
        theirs_opt.zero_grad()
        released_total(logits, losses_of(theirs_model), initial, "initial", 0.05).backward()
        theirs_opt.step()
    for a, b in zip([*ours_model.parameters(), *solver.parameters()], [*theirs_model.parameters(), logits]):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-10, atol=1e-12)
    assert not torch.allclose(logits, torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize("m", [2, 3])
def test_discrepancy_control(m):
    """The defining effect of the upper level: with λ large next to the spread of the losses, f is
    smallest over the router's simplex where every weighted loss σ_iℓ_i is equal, σ ∝ 1/ℓ."""
    rng = np.random.default_rng(5)
    solver = mtlsolve.get("ldc_mtl", lamb=10.0)
    L = torch.tensor(rng.uniform(0.5, 2.0, m))
    solver(losses=L)
    (s,) = solver.parameters()

    def f(sigma: np.ndarray) -> float:
        with torch.no_grad():
            s.copy_(torch.from_numpy(np.log(sigma)))
            return float(solver.objective(L))

    balanced = (1 / L.numpy()) / (1 / L.numpy()).sum()
    best = f(balanced)
    others = rng.dirichlet(np.ones(m), 2000)
    assert min(f(sigma) for sigma in others) >= best - 1e-12
    np.testing.assert_allclose(best, m / (1 / L.numpy()).sum(), rtol=1e-12)


def test_state_and_errors():
    solver = mtlsolve.get("ldc_mtl", prenorm="initial")
    solver(losses=[1.0, 4.0])
    state = solver.state_dict()
    np.testing.assert_array_equal(state["initial"].numpy(), [1.0, 4.0])
    fresh = mtlsolve.get("ldc_mtl", prenorm="initial")
    fresh.load_state_dict(state)
    np.testing.assert_array_equal(fresh(losses=[2.0, 3.0]).weights, solver(losses=[2.0, 3.0]).weights)
    with pytest.raises(StateError):
        fresh.load_state_dict({**state, "initial": -state["initial"]})
    with pytest.raises(InvalidSystemError, match="must be > 0"):
        mtlsolve.get("ldc_mtl", prenorm="log")(losses=[1.0, 0.0])
    with pytest.raises(InvalidConfigError):
        mtlsolve.get("ldc_mtl", prenorm="ratio")
    with pytest.raises(InvalidConfigError):
        mtlsolve.get("ldc_mtl", lamb=-0.1)

"""GO4Align (docs/methods.md#go4align): risk-guided indicators γ_i = (Σ_j L_j/L_i)·p_i, with
p_i ∝ p_i e^{−ηL_i} carried across calls, grouped by k-means; each task gets its group's mean.

Reference: the authors' released semantics (autumn9999/GO4Align, ``GO4ALIGN.get_weighted_loss``)
rewritten here in torch, with the k-means step solved by enumerating every assignment of the
tasks to k non-empty groups (the global optimum that Lloyd's iterations approximate).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import mtlsolve
from mtlsolve.errors import InvalidConfigError, InvalidSystemError, StateError


class ReleasedGO4Align:
    """The released update, step by step: p ← p·exp(−ηL), p /= Σp; γ = (ΣL/L)·p; w = group means."""

    def __init__(self, m: int, num_groups: int, robust_step_size: float = 1e-4) -> None:
        self.adv_probs = torch.ones(m, dtype=torch.float64) / m
        self.eta, self.k = robust_step_size, num_groups

    def __call__(self, losses: torch.Tensor) -> torch.Tensor:
        scale = losses.sum() / losses
        self.adv_probs = self.adv_probs * torch.exp(-self.eta * losses)
        self.adv_probs = self.adv_probs / self.adv_probs.sum()
        weight = scale * self.adv_probs
        if self.k == 1:
            return torch.full_like(weight, weight.mean().item())
        return brute_force_group_means(weight, self.k)


def brute_force_group_means(x: torch.Tensor, k: int) -> torch.Tensor:
    """Each entry replaced by the mean of its group in a partition into k non-empty groups of least
    within-group sum of squares, found by trying every assignment."""
    x = x.numpy()
    labels = np.array(list(itertools.product(range(k), repeat=len(x))))  # every assignment, one a row
    onehot = labels[:, :, None] == np.arange(k)  # (assignments, m, k)
    sizes = onehot.sum(axis=1)
    valid = (sizes > 0).all(axis=1)
    labels, onehot, sizes = labels[valid], onehot[valid], sizes[valid]
    centres = (onehot * x[None, :, None]).sum(axis=1) / sizes
    fitted = np.take_along_axis(centres, labels, axis=1)
    best = int(np.argmin(((x - fitted) ** 2).sum(axis=1)))
    return torch.from_numpy(fitted[best])


@pytest.mark.parametrize(("m", "k"), [(2, 2), (3, 2), (5, 2), (5, 3), (7, 3), (6, 1)])
def test_released_semantics(m, k):
    """Ten successive calls (the risk probabilities carry over) on losses of very different scales;
    the step size is raised from 1e-4 to 0.05 so that p moves visibly."""
    rng = np.random.default_rng(10 * m + k)
    eta = 0.05
    ours = mtlsolve.get("go4align", num_groups=k, robust_step_size=eta)
    theirs = ReleasedGO4Align(m, k, eta)
    worst = 0.0
    for _ in range(10):
        L = rng.uniform(0.1, 3.0, m) * 10.0 ** rng.integers(-1, 2, m)
        w = ours(losses=L).weights
        reference = theirs(torch.from_numpy(L)).numpy()
        worst = max(worst, float(np.abs(w - reference).max() / np.abs(reference).max()))
    np.testing.assert_allclose(ours.state_dict()["probs"].numpy(), theirs.adv_probs.numpy(), rtol=1e-13)
    assert worst <= 1e-12, worst


def test_group_structure():
    """Tasks of a group share one weight, the groups are intervals of γ, and the weights are the
    group means of γ: Σ_i w_i = Σ_i γ_i. k ≥ m gives w = γ; equal losses give w = 1."""
    rng = np.random.default_rng(1)
    for _ in range(20):
        L = rng.uniform(0.05, 5.0, 8)
        r = mtlsolve.get("go4align", num_groups=3)(losses=L)
        w, groups, gamma = r.weights, r.diagnostics["groups"], r.diagnostics["indicators"]
        assert len(set(groups.tolist())) == 3
        for g in range(3):
            np.testing.assert_allclose(w[groups == g], gamma[groups == g].mean(), rtol=1e-14)
        assert all(gamma[groups == g].max() < gamma[groups == g + 1].min() for g in range(2))
        np.testing.assert_allclose(w.sum(), gamma.sum(), rtol=1e-13)
        np.testing.assert_allclose(mtlsolve.get("go4align", num_groups=8)(losses=L).weights, gamma, rtol=1e-14)
    np.testing.assert_allclose(mtlsolve.get("go4align")(losses=np.full(4, 0.7)).weights, 1.0, rtol=1e-14)


def test_state_and_errors():
    go = mtlsolve.get("go4align", robust_step_size=0.1)
    go(losses=[1.0, 2.0, 4.0])
    state = go.state_dict()
    fresh = mtlsolve.get("go4align", robust_step_size=0.1)
    fresh.load_state_dict(state)
    np.testing.assert_array_equal(fresh(losses=[3.0, 1.0, 2.0]).weights, go(losses=[3.0, 1.0, 2.0]).weights)
    with pytest.raises(StateError):
        fresh.load_state_dict({**state, "probs": state["probs"] * 2})
    with pytest.raises(InvalidSystemError, match="must be > 0"):
        go(losses=[1.0, 0.0, 2.0])
    with pytest.raises(InvalidConfigError):
        mtlsolve.get("go4align", num_groups=0)
    with pytest.raises(InvalidConfigError):
        mtlsolve.get("go4align", robust_step_size=-1.0)

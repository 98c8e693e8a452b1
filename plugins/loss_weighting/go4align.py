"""GO4Align: group optimisation for multi-task alignment (docs/methods.md#go4align)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from mtlsolve.errors import InvalidSystemError, StateError
from mtlsolve.solver import Need, Weighting
from mtlsolve.system import GradientSystem
from mtlsolve.validation import count, non_negative


@attrs.define(kw_only=True, eq=False)
class GO4Align(Weighting):
    """GO4Align, Shen, Wang, Xiao, van Noord, Worring, NeurIPS 2024, arXiv 2404.06486: adaptive
    group risk minimisation, with the risk-guided group indicators and the dynamical group
    assignment of the authors' released code (autumn9999/GO4Align, ``GO4ALIGN``).

    Each call, with η = ``robust_step_size``: the risk probabilities p (p₀ = 1/m) are updated as
    p_i ← p_i e^{−ηL_i} / Σ_j p_j e^{−ηL_j}; the indicators are γ_i = (Σ_j L_j / L_i)·p_i; the tasks
    are split into k = min(``num_groups``, m) groups minimising the k-means objective
    Σ_g Σ_{i∈g} (γ_i − c_g)², c_g the group mean; and each task's weight is its group's mean,
    w_i = c_{g(i)}. With equal losses and p uniform, w = 1 (the sum of the gradients).

    The 1-D k-means problem is solved exactly (the optimal groups are contiguous in sorted γ:
    dynamic programming, O(k·m²); equal indicators always share a group); the released code runs Lloyd's iterations from random
    centres, a local optimum of the same objective. ``num_groups=1`` (the released NYUv2
    script's default) gives every task mean(γ), a multiple of LS. p lives in the solver state
    (``probs``). The losses must be positive. ``diagnostics``: ``groups`` (each task's group,
    numbered in increasing γ), ``indicators`` γ and ``objective`` (the k-means objective).
    On a step with missing tasks p is restricted to the present tasks, renormalised, and merged
    back with their mass kept.
    """

    name: ClassVar[str] = "go4align"
    family: ClassVar[str] = "LW"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.LOSSES})
    properties: ClassVar[frozenset[str]] = frozenset({"permutation_equivariant", "positive_homogeneous", "linear"})
    stateful: ClassVar[bool] = True
    paper: ClassVar[str] = "Shen, Wang, Xiao, van Noord, Worring — NeurIPS 2024 — arXiv 2404.06486"
    state_schema: ClassVar[Mapping[str, Any]] = {"probs": ("m",)}
    task_state: ClassVar[Mapping[str, Any]] = {"probs": "simplex"}

    num_groups: int = attrs.field(default=2, validator=count)
    robust_step_size: float = attrs.field(default=1e-4, converter=float, validator=non_negative)

    def _checked_state(self, state: Any) -> dict[str, Any]:
        checked = super()._checked_state(state)
        probs = checked.get("probs")
        if probs is not None and not ((probs > 0).all() and abs(probs.sum() - 1.0) <= 1e-9):
            raise StateError("go4align state entry 'probs' must be positive and sum to 1")
        return checked

    def weights(self, system: GradientSystem) -> tuple[np.ndarray, Mapping[str, Any]]:
        L = system.losses64
        if not (L > 0).all():
            bad = np.flatnonzero(~(L > 0)).tolist()
            raise InvalidSystemError(
                f"go4align divides by the losses, which must be > 0; tasks {bad} have {L[bad].tolist()}"
            )
        m = len(L)
        state = self._state_for(m)
        logits = np.log(state.get("probs", np.full(m, 1.0 / m))) - self.robust_step_size * L
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        state["probs"] = probs
        gamma = L.sum() / L * probs
        groups, objective = kmeans_1d(gamma, self.num_groups)
        means = np.bincount(groups, weights=gamma) / np.bincount(groups)
        return means[groups], {"groups": groups, "indicators": gamma, "objective": objective}


def kmeans_1d(x: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """The exact k-means partition of the numbers ``x`` into min(k, number of distinct values)
    non-empty groups: (the group of each entry, numbered in increasing order of x; the objective
    Σ_g Σ_{i∈g} (x_i − mean_g)²).

    An optimal partition is contiguous in sorted order and never splits equal values (moving one
    of them to the other group would lower the objective), so the best split of the first j
    sorted values into c groups, D[c, j] = min_t D[c−1, t] + SSE(t, j) over the t between two
    distinct values, solves it by dynamic programming; equal values always share a group.
    """
    m = len(x)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    cuts = np.concatenate(([True], xs[1:] > xs[:-1], [True]))  # t may end a group before sorted entry t
    k = min(k, int(cuts[1:-1].sum()) + 1)
    shift = xs.mean()
    s1 = np.concatenate(([0.0], np.cumsum(xs - shift)))
    s2 = np.concatenate(([0.0], np.cumsum((xs - shift) ** 2)))

    def sse(t: np.ndarray, j: int) -> np.ndarray:  # Σ (x − mean)² of sorted entries t..j−1
        counts = j - t
        return np.maximum(s2[j] - s2[t] - (s1[j] - s1[t]) ** 2 / counts, 0.0)

    cost = np.full((k + 1, m + 1), np.inf)
    split = np.zeros((k + 1, m + 1), dtype=np.int64)
    cost[0, 0] = 0.0
    for c in range(1, k + 1):
        for j in range(c, m + 1):
            if not cuts[j]:
                continue
            t = np.arange(c - 1, j)
            t = t[cuts[t]]
            if len(t) == 0:
                continue
            total = cost[c - 1, t] + sse(t, j)
            best = int(np.argmin(total))
            cost[c, j], split[c, j] = total[best], t[best]
    labels = np.empty(m, dtype=np.int64)
    j = m
    for c in range(k, 0, -1):
        t = split[c, j]
        labels[order[t:j]] = c - 1
        j = t
    return labels, float(cost[k, m])

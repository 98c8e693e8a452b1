"""Pareto MTL, one subproblem of the population (docs/methods.md#pmtl)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from mtlsolve._array import to_numpy64
from mtlsolve.errors import InvalidSystemError
from mtlsolve.gramian import norms as gradient_norms
from mtlsolve.solver import Need, Weighting
from mtlsolve.system import GradientSystem
from mtlsolve.validation import count, flag, non_negative_int


def _optional_matrix(value: Any) -> tuple[tuple[float, ...], ...] | None:
    if value is None:
        return None
    U = to_numpy64(value)
    U = U.reshape(1, -1) if U.ndim == 1 else U
    if U.ndim != 2 or U.size == 0 or not np.isfinite(U).all() or (U < 0).any() or not (U.sum(axis=1) > 0).all():
        raise ValueError(f"preferences must be a K x m array of non-negative, non-zero rows, got {value!r}")
    return tuple(tuple(float(v) for v in row) for row in U)


def _optional_count(value: Any) -> int | None:
    if value is None:
        return None
    if int(value) != value or value < 0:
        raise ValueError(f"expected None or an integer ≥ 0, got {value!r}")
    return int(value)


def default_preferences(m: int, count: int) -> np.ndarray:
    """``count`` unit vectors spread evenly over the positive orthant.

    m = 2: the angles linspace(0, π/2, count) (Lin et al.'s ``circle_points``); m ≥ 3: the
    Das–Dennis lattice {h/H : h ∈ ℕ^m, Σh = H} normalised, with the smallest H that gives at
    least ``count`` vectors (all of them are kept); ``count`` = 1 or m = 1: the single vector
    1/√m (with one vector there are no constraints and the vector does not matter).
    """
    if m == 1 or count == 1:
        return np.full((1, m), 1.0 / np.sqrt(m))
    if m == 2:
        t = np.linspace(0.0, 0.5 * np.pi, count)
        return np.column_stack([np.cos(t), np.sin(t)])
    H = 1
    while _lattice_size(m, H) < count:
        H += 1
    # compositions of H into m parts, from the positions of m − 1 bars among H + m − 1 slots
    bars = np.array(list(itertools.combinations(range(H + m - 1), m - 1)), dtype=np.int64)
    edges = np.column_stack([np.full(len(bars), -1), bars, np.full(len(bars), H + m - 1)])
    U = np.diff(edges, axis=1) - 1.0
    return U / np.linalg.norm(U, axis=1, keepdims=True)


def _lattice_size(m: int, H: int) -> int:
    from math import comb

    return comb(H + m - 1, m - 1)


@attrs.define(kw_only=True, eq=False)
class ParetoMTL(Weighting):
    """Pareto MTL, Lin, Zhen, Li, Zhang & Kwong, NeurIPS 2019, arXiv 1912.12854: the
    subproblem of preference vector u_k among K unit vectors u_1 … u_K,

        minimise L  s.t.  c_j(L) = (u_j − u_k)ᵀL ≤ 0  for j ≠ k,

    i.e. L stays in the sector of directions closest to u_k. Phase 1 (the paper's search for
    an initial solution) looks for a feasible start: min-norm over the gradients (u_j − u_k)ᵀG
    of the violated constraints (c_j > 0), weights Σ_j β_j(u_j − u_k). Phase 2 (the dual of
    its constrained descent subproblem): min-norm over the task gradients and those
    constraint gradients, weights β_task + Σ_j β_j(u_j − u_k). The
    Gramian of these vectors is E K Eᵀ (rows of E: e_i and u_j − u_k), so G is never needed;
    the min-norm problems are solved exactly by
    :func:`mtlsolve.kernels.simplex_qp.min_norm_simplex`. Without active constraints phase 2
    is the MGDA step.

    One instance drives one model of the population (``index`` k, from 0). ``preferences``
    (K x m, rows normalised to unit length) defaults to ``n_preferences`` evenly spread
    vectors (:func:`default_preferences`). Phase 1 runs until the first step at which the
    losses are feasible, as the authors' code, and for at most ``max_warmup_steps`` steps when
    given (LibMOON runs a fixed fifth of the epochs); phase 2 follows for good (the phase is
    state). ``normalize=True`` rescales the weights to Σ|w_i| = m, as the authors' training
    loop; the default leaves the min-norm weights (LibMOON). ``diagnostics``: ``phase``,
    ``active`` (the violated constraints j), ``feasible``, and the min-norm certificate
    (:func:`mtlsolve.kernels.simplex_qp.certified_min_norm`: KKT residual on E K Eᵀ with row
    scales |E|·‖g‖, ``residual``, ``tolerance``, ``converged``, ``fallback`` when not certified).
    """

    name: ClassVar[str] = "pmtl"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {"pareto_mtl": {}}
    family: ClassVar[str] = "PA"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.GRAMIAN, Need.LOSSES})
    stateful: ClassVar[bool] = True
    paper: ClassVar[str] = "Lin, Zhen, Li, Zhang, Kwong — NeurIPS 2019 — arXiv 1912.12854"
    state_schema: ClassVar[Mapping[str, Any]] = {"phase": (), "warmup_steps": ()}

    index: int = attrs.field(default=0, converter=int, validator=non_negative_int)
    preferences: tuple[tuple[float, ...], ...] | None = attrs.field(default=None, converter=_optional_matrix)
    n_preferences: int = attrs.field(default=5, converter=int, validator=count)
    max_warmup_steps: int | None = attrs.field(default=None, converter=_optional_count)
    normalize: bool = attrs.field(default=False, validator=flag)

    def preference_set(self, m: int) -> np.ndarray:
        """The K x m unit preference vectors used for m tasks."""
        if self.preferences is None:
            U = default_preferences(m, self.n_preferences)
        else:
            U = np.array(self.preferences)
            if U.shape[1] != m:
                raise InvalidSystemError(f"pmtl preferences have {U.shape[1]} entries for {m} tasks")
            U = U / np.linalg.norm(U, axis=1, keepdims=True)
        if self.index >= len(U):
            raise InvalidSystemError(f"pmtl index {self.index} is out of range for {len(U)} preference vectors")
        return U

    def weights(self, system: GradientSystem) -> tuple[np.ndarray, Mapping[str, Any]]:
        from mtlsolve.kernels.simplex_qp import certified_min_norm

        m = system.m
        U = self.preference_set(m)
        K, L = system.gramian64, system.losses64
        D = U - U[self.index]  # row k is zero: c_k ≡ 0 is never active
        active = np.flatnonzero(D @ L > 0)
        state = self._state_for(m)
        phase = state.setdefault("phase", 1)
        if phase == 1:
            done = state.get("warmup_steps", 0)
            if active.size == 0 or (self.max_warmup_steps is not None and done >= self.max_warmup_steps):
                phase = state["phase"] = 2
            else:
                state["warmup_steps"] = done + 1
        E = D[active] if phase == 1 else np.vstack([np.eye(m), D[active]])
        # the round-off of E K Eᵀ scales with |E|·n, not with the (possibly cancelling) norms of E G
        norms = gradient_norms(K)
        beta, info = certified_min_norm(E @ K @ E.T, system.roundoff, scales=np.abs(E) @ norms)
        w = beta @ E
        if self.normalize:
            total = np.abs(w).sum()
            if total > 0:
                w = w * (m / total)
        return w, {"phase": phase, "active": active.tolist(), "feasible": active.size == 0, **info}

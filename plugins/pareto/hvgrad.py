"""Hypervolume gradient ascent over a population (docs/methods.md#hvgrad)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from mtlsolve._array import to_numpy64
from mtlsolve.errors import InvalidSystemError
from mtlsolve.metrics import hypervolume
from mtlsolve.plugins.pareto._common import optional_vector
from mtlsolve.solver import Need, Weighting
from mtlsolve.system import GradientSystem
from mtlsolve.validation import flag, non_negative_int


def hypervolume_gradient(points: Any, reference: Any) -> np.ndarray:
    """∂HV(S; r)/∂p for every point p of S (K x d, minimisation), exact for any d.

    Lowering p_i by δ adds the slab [p_i − δ, p_i] × Π_{j≠i}[p_j, r_j] minus what the points
    q with q_i < p_i already dominate there, so

        ∂HV/∂p_i = −(Π_{j≠i}(r_j − p_j) − HV_{d−1}({max(q_{−i}, p_{−i}) : q_i < p_i}; r_{−i})),

    the (one-sided) derivative for a decrease of p_i; :func:`mtlsolve.metrics.hypervolume`
    gives HV_{d−1}. Points not strictly inside the reference box contribute nothing and get
    0; points dominated by another get 0 in every coordinate where the other is strictly
    better.
    """
    P = np.asarray(points, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64).ravel()
    if P.ndim != 2 or P.shape[1] != r.size:
        raise ValueError(f"points must be (K, {r.size}) for a {r.size}-D reference, got shape {P.shape}")
    if not (np.isfinite(P).all() and np.isfinite(r).all()):
        raise ValueError("points and reference must be finite")
    K, d = P.shape
    grad = np.zeros_like(P)
    inside = (P < r).all(axis=1)
    for k in np.flatnonzero(inside):
        p = P[k]
        others = P[inside & (np.arange(K) != k)]
        for i in range(d):
            rest = np.arange(d) != i
            better = others[others[:, i] < p[i]]
            if d == 1:
                grad[k, i] = 0.0 if len(better) else -1.0
                continue
            face = float(np.prod(r[rest] - p[rest]))
            covered = hypervolume(np.maximum(better[:, rest], p[rest]), r[rest]) if len(better) else 0.0
            grad[k, i] = -(face - covered)
    return grad


def nondominated_layers(P: np.ndarray) -> np.ndarray:
    """The non-dominated sorting layer of every point (0 = the non-dominated set); equal
    points share a layer."""
    K = len(P)
    dominated_by = [{j for j in range(K) if (P[j] <= P[k]).all() and (P[j] < P[k]).any()} for k in range(K)]
    layer = np.full(K, -1)
    level = 0
    while (layer < 0).any():
        current = [k for k in range(K) if layer[k] < 0 and all(layer[j] >= 0 for j in dominated_by[k])]
        layer[current] = level
        level += 1
    return layer


def population_weights(
    population: np.ndarray, reference: np.ndarray, *, fronts: bool = True, normalize: bool = True
) -> np.ndarray:
    """The K x m weights −∂HV/∂L^{(k)} (≥ 0) of a population of losses.

    ``fronts=True`` (HIGA-MO, Wang et al. EMO 2017, as Deist et al. and LibMOON): each
    non-dominated layer's HV gradient, so dominated models move too; ``fronts=False``: the
    gradient of the whole population's HV. ``normalize``: each model's weights scaled to
    unit norm (LibMOON ``obj_space_normalize``); zero rows stay zero.
    """
    P = np.asarray(population, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    inside = (P < r).all(axis=1)
    W = np.zeros_like(P)
    if fronts:
        layer = np.full(len(P), -1)
        layer[inside] = nondominated_layers(P[inside])
        for level in range(layer.max() + 1):
            members = layer == level
            W[members] = -hypervolume_gradient(P[members], r)
    else:
        W = -hypervolume_gradient(P, r)
    W = np.maximum(W, 0.0)  # −∂HV/∂L ≥ 0; clears −0.0 and round-off below zero
    if normalize:
        norms = np.linalg.norm(W, axis=1, keepdims=True)
        W = np.divide(W, norms, out=np.zeros_like(W), where=norms > 0)
    return W


@attrs.define(kw_only=True, eq=False)
class HVGrad(Weighting):
    """Hypervolume gradient, Deist, Grewal, Dankers, Alderliesten & Bosman, "Multi-Objective
    Learning to Predict Pareto Fronts Using Hypervolume Maximization", EMO 2023
    (arXiv 2102.04523): model k of a population of K models steps on Σ_i w_i L_i^{(k)} with
    w = −∂HV/∂L^{(k)} of the current population (LibMOON ``gradhv_solver.py``), i.e. gradient
    ascent on the population's hypervolume. Weights: :func:`population_weights`.

    One instance drives one model (``index`` k, from 0); the training loop passes the K x m
    losses of the whole population as ``system.extras["population"]`` (without it the
    population is this model alone), whose row k is replaced by the system's losses.
    ``reference`` is the reference point r, fixed for the run (docs/problems.md#hypervolume); when None it
    is fixed at the first call to max_k L^{(k)} + 0.1·|max_k L^{(k)}| per task (1.1 × the
    largest initial loss, docs/problems.md#hypervolume) and kept as state. Models outside the reference
    box get zero weight. ``diagnostics``: ``reference``, ``hypervolume`` (of the population).
    The weights are the exact hypervolume gradient (a closed form, no inner problem solved to a
    tolerance), so ``converged`` does not apply and is not reported.
    """

    name: ClassVar[str] = "hvgrad"
    # the published spellings HVGrad and hv_grad are this name up to case and "_"
    family: ClassVar[str] = "PA"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.LOSSES})
    stateful: ClassVar[bool] = True
    #: docs/methods.md#missing-tasks
    task_state: ClassVar[Mapping[str, Any]] = {"reference": None}
    paper: ClassVar[str] = "Deist, Grewal, Dankers, Alderliesten, Bosman — EMO 2023 — arXiv 2102.04523"
    state_schema: ClassVar[Mapping[str, Any]] = {"reference": ("m",)}

    index: int = attrs.field(default=0, converter=int, validator=non_negative_int)
    reference: tuple[float, ...] | None = attrs.field(default=None, converter=optional_vector)
    fronts: bool = attrs.field(default=True, validator=flag)
    normalize: bool = attrs.field(default=True, validator=flag)

    def weights(self, system: GradientSystem) -> tuple[np.ndarray, Mapping[str, Any]]:
        m = system.m
        L = system.losses64
        population = system.extras.get("population")
        P = L[None, :].copy() if population is None else to_numpy64(population).copy()
        if P.ndim != 2 or P.shape[1] != m:
            raise InvalidSystemError(f"hvgrad population must be K x {m} losses, got shape {P.shape}")
        if self.index >= len(P):
            raise InvalidSystemError(f"hvgrad index {self.index} is out of range for a population of {len(P)}")
        if not np.isfinite(P).all():
            raise InvalidSystemError("hvgrad population losses must be finite")
        P[self.index] = L
        state = self._state_for(m)
        if self.reference is not None:
            if len(self.reference) != m:
                raise InvalidSystemError(f"hvgrad reference has {len(self.reference)} entries for {m} tasks")
            r = np.array(self.reference)
        else:
            if "reference" not in state:
                top = P.max(axis=0)
                state["reference"] = (top + 0.1 * np.abs(top)).tolist()
            r = np.array(state["reference"])
        W = population_weights(P, r, fronts=self.fronts, normalize=self.normalize)
        return W[self.index], {"reference": r.tolist(), "hypervolume": hypervolume(P, r)}

"""Smooth Tchebycheff scalarisation (docs/methods.md#stch)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from mtlsolve.errors import SolverError
from mtlsolve.plugins.loss_weighting._common import (
    checked_counts,
    checked_positive,
    positive_losses,
    vector_converter,
)
from mtlsolve.plugins.pareto._common import preference_and_ideal
from mtlsolve.solver import Need, Weighting
from mtlsolve.system import GradientSystem
from mtlsolve.validation import non_negative_int, one_of, positive


def smooth_max(y: np.ndarray, mu: float) -> tuple[float, np.ndarray]:
    """μ log Σ exp(y_i/μ), evaluated with a max shift, and its gradient softmax(y/μ) ∈ Δ_m."""
    top = y.max()
    e = np.exp((y - top) / mu)
    return float(mu * np.log(e.sum()) + top), e / e.sum()


@attrs.define(kw_only=True, eq=False)
class SmoothTchebycheff(Weighting):
    """STCH, Lin, Zhang, Yang, Liu, Wang, Zhang, "Smooth Tchebycheff Scalarization for
    Multi-Objective Optimization", ICML 2024 (arXiv 2402.19078), Eq. (5).

    ``mode="official"`` (default; Xi-L/STCH ``STCH_MTL`` and LibMTL): during epochs
    0…``warmup_epoch`` the objective is Σ log L_i (effective weights 1/L_i); the mean loss
    over epoch ``warmup_epoch`` is the nadir point; afterwards the objective is
    m·μ·log Σ_i exp(y_i/μ) with y_i = log(L_i/nadir_i), i.e. effective weights
    m·softmax(y/μ)_i/L_i. Epochs are counted by :meth:`end_epoch`; losses must be > 0.
    (The reference subtracts max y inside the log-sum-exp without adding it back, which
    changes the value by a constant and not the gradient; here the value is exact.)

    ``mode="raw"`` (TorchJD ``STCH``, LibMOON ``SoftTche`` with μ = 0.1): μ log Σ exp(y_i/μ)
    with y_i = λ_i(L_i − z_i), effective weights λ_i·softmax(y/μ)_i, preference λ and ideal
    point z as in the Pareto scalarisations (system extras over the fields over the
    defaults λ = 1/m, z = 0). In both modes max y ≤ value/scale ≤ max y + μ log m, and
    μ → 0 recovers the Tchebycheff weights. ``diagnostics``: ``value`` and ``y_weights``
    (softmax(y/μ), empty during the warm-up).
    """

    name: ClassVar[str] = "stch"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {"soft_tche": {}, "smooth_tchebycheff": {}}
    family: ClassVar[str] = "LW"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.LOSSES})
    properties: ClassVar[frozenset[str]] = frozenset({"positive_homogeneous", "linear"})
    stateful: ClassVar[bool] = True
    #: docs/methods.md#missing-tasks
    task_state: ClassVar[str] = "mode='official' averages its nadir point over a count shared by all tasks"
    paper: ClassVar[str] = "Lin, Zhang, Yang, Liu, Wang, Zhang — ICML 2024 — arXiv 2402.19078"
    #: the epoch count, the nadir epoch's loss sum and count, then the nadir point
    state_schema: ClassVar[Mapping[str, Any]] = {"epoch": (), "sum": ("m",), "count": (), "nadir": ("m",)}

    mu: float = attrs.field(default=1.0, converter=float, validator=positive)
    warmup_epoch: int = attrs.field(default=4, validator=non_negative_int)
    mode: str = attrs.field(default="official", validator=one_of("official", "raw"))
    preference: tuple[float, ...] | None = attrs.field(default=None, converter=vector_converter("preference"))
    ideal: tuple[float, ...] | None = attrs.field(default=None, converter=vector_converter("ideal"))

    def __attrs_post_init__(self) -> None:
        if self.mode == "official" and (self.preference is not None or self.ideal is not None):
            raise ValueError("stch: preference and ideal apply to mode='raw' only")
        if self.preference is not None and (min(self.preference) < 0 or max(self.preference) <= 0):
            raise ValueError(f"preference must be non-negative and not all zero, got {self.preference}")

    def weights(self, system: GradientSystem) -> tuple[np.ndarray, Mapping[str, Any]]:
        if self.mode == "raw":
            lam, z = preference_and_ideal(system, self.preference, self.ideal, "stch")
            value, s = smooth_max(lam * (system.losses64 - z), self.mu)
            return lam * s, {"value": value, "y_weights": s}
        L = positive_losses(system.losses64, "stch")
        m = system.m
        epoch = self._state.get("epoch", 0)
        state = self._state_for(m)
        state["epoch"] = epoch
        if epoch <= self.warmup_epoch:
            if epoch == self.warmup_epoch:  # the nadir epoch
                state["sum"] = state.get("sum", 0.0) + L
                state["count"] = state.get("count", 0) + 1
            return 1.0 / L, {"value": float(np.log(L).sum()), "y_weights": np.zeros(0)}
        if "nadir" not in state:
            if not state.get("count"):
                raise SolverError(
                    f"stch saw no losses during epoch {self.warmup_epoch} (the nadir epoch) for these {m} tasks"
                )
            state["nadir"] = state.pop("sum") / state.pop("count")
        value, s = smooth_max(np.log(L / state["nadir"]), self.mu)
        return m * s / L, {"value": m * value, "y_weights": s}

    def missing_tasks_refusal(self) -> str | None:
        """``mode="raw"`` keeps no state and serves missing tasks; the official mode's nadir does not."""
        return None if self.mode == "raw" else super().missing_tasks_refusal()

    def end_epoch(self) -> None:
        """Count an epoch (``mode="official"``: warm-up, nadir epoch, then STCH)."""
        if self.mode == "official":
            self._state["epoch"] = self._state.get("epoch", 0) + 1

    def _checked_state(self, state: Any) -> dict[str, Any]:
        checked = checked_counts(super()._checked_state(state), self.name, "epoch", "count")
        return checked_positive(checked, self.name, "mean losses", "nadir")

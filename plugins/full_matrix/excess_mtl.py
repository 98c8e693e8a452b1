"""ExcessMTL: robust task weighting by excess risks (docs/methods.md#excess_mtl)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from mtlsolve._array import to_numpy64
from mtlsolve.errors import StateError
from mtlsolve.plugins.full_matrix._common import match, state_for, working
from mtlsolve.plugins.loss_weighting._common import checked_counts, checked_non_negative
from mtlsolve.solver import REDUCTIONS, Need, Weighting
from mtlsolve.system import GradientSystem
from mtlsolve.validation import non_negative_int, one_of, positive

#: the AdaGrad shift inside the square root (LibMTL, official code, TorchJD)
ADAGRAD_EPS = 1e-7


@attrs.define(kw_only=True, eq=False)
class ExcessMTL(Weighting):
    """ExcessMTL, He, Zhou, Zhang, Yun, Xu, Zeng, Chilimbi, Zhao, "Robust Multi-Task Learning
    with Excess Risks", ICML 2024, arXiv 2402.02009: excess risks by the second-order
    estimate of eqs. (6)–(7), weights by the exponentiated-gradient step of eq. (9), as
    LibMTL ``ExcessMTL`` and the official code.

    Each call: S_i += g_i² (element-wise AdaGrad accumulator), e_i = Σ g_i²/√(S_i + 1e-7).
    The first ``n_warmup_steps`` calls keep the weights and average e into the
    baseline e⁰ (default 1: the first call's e is the baseline, as LibMTL); later calls
    set w_i ← w_i·exp(η e_i/e⁰_i) renormalised to sum m (``reduction="sum"``, w₀ = 1,
    LibMTL) or 1 (``"mean"``, w₀ = 1/m, TorchJD), computed in log space so that a huge
    ratio saturates instead of overflowing (a zero baseline gives ratio 0 for e_i = 0
    and +∞ otherwise). ``n_warmup_steps=0`` reproduces torchjd 0.18.0's default: the
    first call's raw e both updates the weights and becomes the baseline. TorchJD's
    ``ExcessMTL(robust_step_size=η, n_warmup_steps=k)`` is
    ``excess_mtl(robust_step_size=η, reduction="mean", n_warmup_steps=k)`` (up to the
    1e-7 TorchJD adds to the baseline). The update is d = Gᵀw. S (m x n, in G's array
    type, device and dtype, float32 for a half-precision G, whose squares would overflow),
    w, e⁰ and the step count are the state; another m or n raises until :meth:`reset`. ``diagnostics``: ``excess_risk`` e and ``ratio`` e/e⁰ (after warm-up).
    """

    name: ClassVar[str] = "excess_mtl"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    family: ClassVar[str] = "FM"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.MATRIX})
    properties: ClassVar[frozenset[str]] = frozenset({"permutation_equivariant"})
    stateful: ClassVar[bool] = True
    #: docs/methods.md#missing-tasks
    task_state: ClassVar[str] = "its baseline averages the warm-up excess risks over a step count shared by all tasks"
    paper: ClassVar[str] = "He, Zhou, Zhang, Yun, Xu, Zeng, Chilimbi, Zhao — ICML 2024 — arXiv 2402.02009"
    state_schema: ClassVar[Mapping[str, Any]] = {
        "n": (),
        "step": (),
        "sq_sum": ("m", "n"),
        "weights": ("m",),
        "warmup_sum": ("m",),
        "baseline": ("m",),
    }

    robust_step_size: float = attrs.field(default=1e-2, converter=float, validator=positive)
    reduction: str = attrs.field(default="sum", validator=one_of(*REDUCTIONS))
    n_warmup_steps: int = attrs.field(default=1, validator=non_negative_int)

    def weights(self, system: GradientSystem) -> tuple[np.ndarray, Mapping[str, Any]]:
        G = working(system.matrix)
        m, n = G.shape
        total = float(m) if self.reduction == "sum" else 1.0
        state = state_for(self, m, n)
        k = state.get("step", 0) + 1
        squares = G * G
        if "sq_sum" in state:
            S = match(state["sq_sum"], G)
            S += squares  # in place: S is this solver's own accumulator
        else:
            S = squares.copy() if isinstance(squares, np.ndarray) else squares.clone()
        root = S + ADAGRAD_EPS
        root **= 0.5
        squares /= root
        e = to_numpy64(squares.sum(1))
        w = np.array(state.get("weights", np.full(m, total / m)), dtype=np.float64)
        state.update(step=k, sq_sum=S)
        diagnostics: dict[str, Any] = {"excess_risk": e}
        if k <= self.n_warmup_steps:
            state["warmup_sum"] = state.get("warmup_sum", 0.0) + e
            if k == self.n_warmup_steps:
                state["baseline"] = state.pop("warmup_sum") / k
            state["weights"] = w
            return w.copy(), diagnostics
        if "baseline" in state:
            baseline = state["baseline"]
            ratio = np.divide(e, baseline, out=np.where(e > 0, np.inf, 0.0), where=baseline > 0)
        else:  # n_warmup_steps = 0: the raw excess risks, which become the baseline
            ratio, state["baseline"] = e, e
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            logits = np.log(w) + self.robust_step_size * ratio
            logits = np.nan_to_num(logits, nan=-np.inf, posinf=np.finfo(np.float64).max)
            logits = logits - logits.max()
        w = total * np.exp(logits) / np.exp(logits).sum()
        state["weights"] = w
        diagnostics["ratio"] = ratio
        return w.copy(), diagnostics

    def _checked_state(self, state: Any) -> dict[str, Any]:
        checked = checked_counts(super()._checked_state(state), self.name, "step")
        checked_non_negative(checked, self.name, "sums of squares or excess risks", "sq_sum", "warmup_sum", "baseline")
        checked_non_negative(checked, self.name, "task weights", "weights")
        if "weights" in checked and not checked["weights"].sum() > 0:
            raise StateError("excess_mtl state entry 'weights' must have a positive sum")
        return checked

"""UPGrad: the mean of the task gradients projected onto the dual cone (catalogue §3.2, row ``upgrad``)."""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import attrs
import numpy as np

from mtlsolve._array import is_torch
from mtlsolve.solver import REDUCTIONS, GramianWeighting
from mtlsolve.system import GradientSystem


@attrs.define(kw_only=True, eq=False)
class UPGrad(GramianWeighting):
    """Unconflicting projection of gradients, Quinton & Rey, arXiv 2406.16232 (2024), eq. (5)
    with the uniform preference: d = (1/m) Σ_i π_J(g_i), π_J the projection onto the dual
    cone {x : Gx ≥ 0}.

    Weight form (their Prop. 1, as in TorchJD): π_J(Gᵀe_i) = Gᵀv_i with
    v_i = argmin_{v ≥ e_i} ½vᵀK'v, solved exactly
    (:func:`mtlsolve.kernels.cone_projection.upgrad_weights`), and w = mean_i v_i.
    K' is K divided by its trace (the zero matrix when the trace is below ``norm_eps``)
    plus ``reg_eps``·I, TorchJD's regularisation; ``reg_eps=0`` gives the exact
    projection (solved on the PSD part of K when ``reg_eps`` does not dominate the
    round-off of the input dtype). ``reduction="sum"`` multiplies the weights by m.
    """

    name: ClassVar[str] = "upgrad"
    # Not claimed: positive homogeneity holds only while tr(c²K) ≥ norm_eps (below it K' = reg_eps·I
    # and d = g_0); d·g_j ≥ 0 holds exactly for reg_eps = 0, the default only gives
    # d·g_j ≥ −reg_eps·tr(K)·w_j (for g_2 = −g_1 it leaves both d·g_i slightly negative).
    properties: ClassVar[frozenset[str]] = frozenset({"permutation_equivariant"})
    paper: ClassVar[str] = "Quinton & Rey — arXiv 2406.16232 (2024)"

    norm_eps: float = attrs.field(default=1e-4, converter=float, validator=attrs.validators.ge(0.0))
    reg_eps: float = attrs.field(default=1e-4, converter=float, validator=attrs.validators.ge(0.0))
    reduction: str = attrs.field(default="mean", validator=attrs.validators.in_(REDUCTIONS))

    def weights_from_gramian(
        self, gramian: np.ndarray, system: GradientSystem
    ) -> tuple[np.ndarray, Mapping[str, Any]]:
        from mtlsolve.kernels.cone_projection import upgrad_weights

        m = gramian.shape[0]
        if self.reg_eps < 10 * m * _eps(system.reference):
            # the QP is unbounded below on a negative eigenvalue: without a regularisation that
            # dominates the round-off of K (a float32 Gramian is indefinite at ~1e-7), solve it
            # on the PSD part of K
            lam, Q = np.linalg.eigh(gramian)
            gramian = (Q * np.clip(lam, 0.0, None)) @ Q.T
        w, iterations, converged = upgrad_weights(gramian, self.norm_eps, self.reg_eps)
        if self.reduction == "sum":
            w *= m
        return w, {"iterations": int(iterations), "converged": bool(converged)}


def _eps(x) -> float:
    """The machine epsilon of an array's or tensor's dtype."""
    if is_torch(x):
        import torch

        return float(torch.finfo(x.dtype).eps)
    return float(np.finfo(x.dtype).eps)

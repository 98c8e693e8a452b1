"""DualProj: the mean gradient projected onto the dual cone (docs/methods.md#dualproj)."""

from __future__ import annotations

from typing import ClassVar

import attrs
import numpy as np

from mtlsolve.plugins.gramian.upgrad import DualConeWeighting


@attrs.define(kw_only=True, eq=False)
class DualProj(DualConeWeighting):
    """DualProj, Quinton & Rey, arXiv 2406.16232 (2024) (TorchJD ``DualProj``; the projection of
    GEM, Lopez-Paz & Ranzato, NeurIPS 2017, eq. (11)): d = π_J(g_0), the projection of the
    mean gradient onto the dual cone {x : Gx ≥ 0}.

    Weight form (Quinton & Rey, Prop. 1): π_J(Gᵀu) = Gᵀv with v = argmin_{v ≥ u} ½vᵀK'v,
    u = 1/m, solved exactly (:func:`mtlsolve.kernels.cone_projection.dual_cone_weights`),
    w = v ≥ 1/m. K', the options (``norm_eps``, ``reg_eps`` = 1e-4 as TorchJD; ``reg_eps=0``
    for the exact projection; ``reduction="sum"`` multiplies w by m) and the KKT certificate
    are UPGrad's (:class:`~mtlsolve.plugins.gramian.upgrad.DualConeWeighting`). g_0 already
    in the cone (Ku ≥ 0) gives d = g_0. The exact projection has d·g_j ≥ 0 for every j; the
    default regularisation only d·g_j ≥ −reg_eps·tr(K)·w_j, and positive homogeneity holds
    while tr(c²K) ≥ norm_eps, so neither is claimed.
    """

    name: ClassVar[str] = "dualproj"
    paper: ClassVar[str] = "Quinton & Rey — arXiv 2406.16232 (2024); GEM: Lopez-Paz & Ranzato — NeurIPS 2017"

    def preferences(self, m: int) -> tuple[np.ndarray, float]:
        return np.full((1, m), 1.0 / m), 1.0

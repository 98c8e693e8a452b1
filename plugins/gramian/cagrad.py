"""CAGrad: conflict-averse gradient descent (catalogue §3.2, row ``cagrad``)."""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import attrs
import numpy as np

from mtlsolve.solver import REDUCTIONS, GramianWeighting, reduce_weights
from mtlsolve.system import GradientSystem


@attrs.define(kw_only=True, eq=False)
class CAGrad(GramianWeighting):
    """Conflict-averse gradient descent, Liu, Liu, Jin, Stone, Liu — NeurIPS 2021 — arXiv 2110.14048,
    eq. (3)–(5) and Alg. 1: d_raw = argmax_{‖d − g_0‖ ≤ c‖g_0‖} min_i g_i·d
    = g_0 + c‖g_0‖·g_w/‖g_w‖ with w = argmin_{w ∈ Δ_m} g_wᵀg_0 + c‖g_0‖‖g_w‖.

    The dual is solved exactly on the Gramian (:func:`mtlsolve.kernels.cagrad.cagrad_dual`)
    and d_raw is returned as weights, 1/m + c‖g_0‖w/‖g_w‖, so G is never needed. ``rescale``
    divides them by 1 + c² (1, the default and the paper's), 1 (0: d_raw, TorchJD and
    SamsungLabs/MTL) or 1 + c (2). ``reduction="sum"`` multiplies by m (nash-mtl's scale).
    g_0 = 0 or c = 0 give d_raw = g_0. When the max-min value is 0 (0 ∈ conv{g_i} and some d in
    the ball has g_i·d ≥ 0 for all i; the optimal dual point then has g_w = 0, unless c = 1)
    the maximiser is not unique and d_raw is the one nearest g_0, the projection of g_0 onto
    {d : g_i·d ≥ 0 ∀i}, with ‖d_raw − g_0‖ ≤ c‖g_0‖ (``diagnostics["degenerate"]``).
    """

    name: ClassVar[str] = "cagrad"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {"log_cagrad": {"loss_transform": "log"}}
    properties: ClassVar[frozenset[str]] = frozenset({"permutation_equivariant", "positive_homogeneous"})
    paper: ClassVar[str] = "Liu, Liu, Jin, Stone, Liu — NeurIPS 2021 — arXiv 2110.14048"

    c: float = attrs.field(
        default=0.4, converter=float, validator=[attrs.validators.ge(0.0), attrs.validators.lt(np.inf)]
    )
    rescale: int = attrs.field(default=1, validator=attrs.validators.in_((0, 1, 2)))
    reduction: str = attrs.field(default="mean", validator=attrs.validators.in_(REDUCTIONS))

    def weights_from_gramian(
        self, gramian: np.ndarray, system: GradientSystem
    ) -> tuple[np.ndarray, Mapping[str, Any]]:
        from mtlsolve.kernels.cagrad import cagrad_dual

        m = gramian.shape[0]
        _, nu, value, iterations, converged, degenerate = cagrad_dual(gramian, self.c)
        w = (1.0 / m + nu) / (1.0, 1.0 + self.c**2, 1.0 + self.c)[self.rescale]
        diagnostics = {
            "iterations": iterations,
            "converged": converged,
            "degenerate": degenerate,
            "min_product": value,  # min_i g_i·d_raw, the value of CAGrad's max-min problem
        }
        return reduce_weights(w, self.reduction), diagnostics

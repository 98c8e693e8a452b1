"""CAGrad: conflict-averse gradient descent (docs/methods.md#cagrad)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from mtlsolve.solver import REDUCTIONS, GramianWeighting, reduce_weights
from mtlsolve.system import GradientSystem
from mtlsolve.validation import non_negative, one_of


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

    Certificate (:func:`mtlsolve.kernels.cagrad.cagrad_residual`, on K in float64, or on its
    PSD part when K, accumulated in float32, is indefinite beyond round-off: ``repaired``):
    d_raw lies in the ball for every Gramian within the round-off bound ρ of K, and the
    duality gap between min_i g_i·d_raw and the dual value F(w) vanishes, both relative to
    max_i‖g_i‖·Σ_i x_i‖g_i‖ (x the weights of d_raw). ``residual``, ``tolerance`` (from ρ),
    ``converged``. A ball the round-off leaves uncertain is met by solving again for the
    largest radius the data certify (``radius_scale``), certified against c; when that fails
    too (a system whose max-min direction the data's precision cannot resolve, e.g. nearly
    opposed float32 gradients) the fallback scales d_raw − g_0 back into the ball, down to
    g_0 itself when the radius is not resolved (``fallback``), with a ConvergenceWarning.
    """

    name: ClassVar[str] = "cagrad"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {"log_cagrad": {"loss_transform": "log"}}
    properties: ClassVar[frozenset[str]] = frozenset({"permutation_equivariant", "positive_homogeneous"})
    paper: ClassVar[str] = "Liu, Liu, Jin, Stone, Liu — NeurIPS 2021 — arXiv 2110.14048"

    c: float = attrs.field(default=0.4, converter=float, validator=non_negative)
    rescale: int = attrs.field(default=1, validator=one_of(0, 1, 2))
    reduction: str = attrs.field(default="mean", validator=one_of(*REDUCTIONS))

    def weights_from_gramian(self, gramian: np.ndarray, system: GradientSystem) -> tuple[np.ndarray, Mapping[str, Any]]:
        from mtlsolve.kernels.cagrad import certified_cagrad

        m = gramian.shape[0]
        _, nu, value, info = certified_cagrad(gramian, self.c, system.roundoff)
        w = (1.0 / m + nu) / (1.0, 1.0 + self.c**2, 1.0 + self.c)[self.rescale]
        # min_product: min_i g_i·d_raw, the value of CAGrad's max-min problem
        return reduce_weights(w, self.reduction), {**info, "min_product": value}

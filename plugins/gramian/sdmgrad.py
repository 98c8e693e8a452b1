"""SDMGrad: stochastic direction-oriented multi-objective gradient (docs/methods.md#sdmgrad)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from mtlsolve.gramian import norms as gradient_norms
from mtlsolve.plugins.gramian.modo import simplex_residual
from mtlsolve.solver import GramianWeighting
from mtlsolve.system import GradientSystem
from mtlsolve.validation import count, in_range, non_negative, positive


@attrs.define(kw_only=True, eq=False)
class SDMGrad(GramianWeighting):
    """SDMGrad, Xiao, Ban, Ji, "Direction-oriented Multi-objective Learning: Simple and
    Provable Stochastic Algorithms", NeurIPS 2023, arXiv 2305.18409, Algorithm 1 with the
    uniform preference w̃ = 1/m, as LibMTL ``SDMGrad`` and torchjd 0.18.0 ``SDMGradWeighting``.

    The system stacks the task gradients of three batches (``batches = 3``: rows
    [G_ξ; G_ξ′; G_ζ], 3m of them, MoDo's layout too). LibMTL lists its batches as (ζ, ξ, ξ′);
    they are independent draws, so only replaying a LibMTL step needs the order: pass its
    batches 2, 3, 1. C = G_ξG_ξ′ᵀ (the cross block of the Gramian) is divided
    by (mean_i √max(C_ii, 0))² (§6.1; where every C_ii ≤ 0, by (mean_i √(‖g_i^ξ‖‖g_i^ξ′‖))², so
    the step stays positively homogeneous; left as is when that is 0 too), then ``n_iter`` steps of
    SGD (lr ``lr``, heavy-ball ``momentum``, buffer reset every call) on the gradient
    Cw + λ·C1/m, each projected onto Δ_m, start from the previous w (w₀ = 1/m). The stacked
    weights are (0, 0, (w + λ/m)/(1 + λ)), i.e. d = (G_ζᵀw + λ·g_{0,ζ})/(1 + λ); λ = 0 gives
    the stochastic MGDA direction, λ → ∞ the mean gradient g_0. ``lr=10`` gives the torchjd
    0.18.0 defaults (LibMTL: 5). The state holds w; ``diagnostics["w"]`` is w.

    With lr 5 the inner iteration expands differences along directions where lr·eig(C) > 2
    (the projection folds them back), so a float32 and a float64 Gramian of the same
    gradients can end at different w: on random 3-batch systems about 3 % differ by more
    than 1e-4 relative (a property of the reference method, not of the kernel).

    The inner loop is a fixed number of projected SGD steps by definition (Algorithm 1), not
    a solve to a tolerance, so ``converged`` does not apply and is not reported. What holds is
    w ∈ Δ_m (each step ends with an exact projection); ``diagnostics["simplex_residual"]`` is
    max(|Σw − 1|, max_i −w_i).
    """

    name: ClassVar[str] = "sdmgrad"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    # the weights (w + λ/m)/(1 + λ) lie in Δ_m; C/scale² is unchanged by G → cG, so d(cG) = c·d(G)
    properties: ClassVar[frozenset[str]] = frozenset({"simplex_weights", "positive_homogeneous"})
    stateful: ClassVar[bool] = True
    #: docs/methods.md#missing-tasks
    task_state: ClassVar[Mapping[str, Any]] = {"w": "simplex"}
    batches: ClassVar[int] = 3
    paper: ClassVar[str] = "Xiao, Ban, Ji — NeurIPS 2023 — arXiv 2305.18409"
    state_schema: ClassVar[Mapping[str, Any]] = {"w": ("m",)}

    lambda_: float = attrs.field(default=0.3, converter=float, validator=non_negative)
    n_iter: int = attrs.field(default=20, validator=count)
    lr: float = attrs.field(default=5.0, converter=float, validator=positive)
    momentum: float = attrs.field(default=0.5, converter=float, validator=in_range(0.0, 1.0, closed="left"))

    def weights_from_gramian(self, gramian: np.ndarray, system: GradientSystem) -> tuple[np.ndarray, Mapping[str, Any]]:
        from mtlsolve.kernels.simplex_projection import projected_sgd

        m = gramian.shape[0] // 3
        state = self._state_for(m)
        cross = gramian[:m, m : 2 * m]
        scale = float(np.sqrt(np.clip(np.diag(cross), 0.0, None)).mean())
        if not scale > 0:  # every g_i^ξ·g_i^ξ′ ≤ 0: the geometric mean of the two batches' norms
            norms = gradient_norms(gramian)
            scale = float(np.sqrt(norms[:m] * norms[m : 2 * m]).mean())
        if scale > 0:
            cross = cross / scale**2
        w = projected_sgd(
            cross,
            self.lambda_ * cross.sum(axis=1) / m,
            state.get("w", np.full(m, 1.0 / m)),
            lr=self.lr,
            momentum=self.momentum,
            n_iter=self.n_iter,
        )
        state["w"] = w
        out = np.zeros(3 * m)
        out[2 * m :] = (w + self.lambda_ / m) / (1.0 + self.lambda_)
        return out, {"w": w.copy(), "simplex_residual": simplex_residual(w)}

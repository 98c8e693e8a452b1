"""IMTL (hybrid): IMTL-L loss scaling and IMTL-G gradient weighting together (docs/methods.md#imtl_hybrid)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from mtlsolve.plugins.gramian.imtl_g import IMTLG
from mtlsolve.plugins.loss_weighting._learnable import LearnableScales
from mtlsolve.plugins.loss_weighting.imtl_l import scaled_losses_objective
from mtlsolve.solver import Need
from mtlsolve.system import GradientSystem
from mtlsolve.validation import finite


@attrs.define(kw_only=True, eq=False)
class IMTLHybrid(LearnableScales, IMTLG):
    """IMTL, Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021, Algorithm 1 (IMTL-L
    and IMTL-G together), as LibMTL's ``IMTL``: learnable scales s (one ``torch.nn.Parameter``,
    ``init`` 0) turn the losses into e^{s_i}L_i − s_i, and IMTL-G weighs the gradients of the
    scaled losses, ĝ_i = e^{s_i}g_i.

    Weights: with D = diag(e^s) the scaled gradients have the Gramian DKD; IMTL-G on it gives
    α̂ (Σα̂ = 1, equal projections of d on every unit gradient), and the shared update is
    d = Σ α̂_i ĝ_i = Gᵀw with w = Dα̂: the returned weights apply to the raw gradients (α̂ is in
    ``diagnostics["scaled_weights"]``). Unit gradients do not change under positive scaling, so
    d is parallel to ``imtl_g``'s d for every s and equal to it at s = 0; s sets its length
    (Σ_i w_i e^{−s_i} = 1). The options of ``imtl_g`` (``singular``, ``rtol``, ``ridge``,
    ``loss_transform``) apply to the scaled Gramian, and so do its rank decision and its
    certificate (``residual``, ``tolerance``, ``converged``: equal projections on the scaled
    Gramian, which has the same round-off relative to the scaled norms).

    The s-objective: :meth:`parameters` returns s (after the first call) for an optimiser, and
    :meth:`objective` is IMTL-L's Σ_i (e^{s_i}L_i − s_i), whose gradient in s is e^{s_i}L_i − 1
    (LibMTL's s-gradient; stationary at s_i = −log L_i). Back-propagate
    ``objective(losses.detach())`` to train s alone; with live losses it also gives task-specific
    parameters LibMTL's e^{s_i}∇L_i. The shared parameters take d from the Gramian path,
    never this objective's gradient.
    """

    name: ClassVar[str] = "imtl_hybrid"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {"imtl_lg": {}}
    needs: ClassVar[frozenset[Need]] = frozenset({Need.GRAMIAN, Need.LOSSES})
    properties: ClassVar[frozenset[str]] = frozenset({"permutation_equivariant", "positive_homogeneous"})
    stateful: ClassVar[bool] = True

    init: float = attrs.field(default=0.0, converter=float, validator=finite)

    def value(self, s: Any, losses: Any) -> Any:
        return scaled_losses_objective(s, losses)

    def weights_from_gramian(self, gramian: np.ndarray, system: GradientSystem) -> tuple[np.ndarray, Mapping[str, Any]]:
        system.losses64  # noqa: B018 - the weights do not read L, but NaN or Inf losses must raise
        scale = np.exp(self.scales(system))
        scaled, diagnostics = super().weights_from_gramian(gramian * np.outer(scale, scale), system)
        return scale * scaled, {**diagnostics, "scaled_weights": scaled.tolist()}

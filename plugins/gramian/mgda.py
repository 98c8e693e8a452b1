"""MGDA: the min-norm point of the convex hull of the task gradients (docs/methods.md#mgda)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from mtlsolve.errors import InvalidSystemError
from mtlsolve.gramian import norms as gradient_norms
from mtlsolve.solver import REDUCTIONS, GramianWeighting, Need, reduce_weights
from mtlsolve.system import GradientSystem
from mtlsolve.validation import one_of

NORMALISATIONS = ("none", "l2", "loss", "loss+")


@attrs.define(kw_only=True, eq=False)
class MGDA(GramianWeighting):
    """Multiple-gradient descent, Désidéri (C. R. Math. 2012) as used by Sener & Koltun,
    NeurIPS 2018, arXiv 1810.04650, eq. (3): w = argmin_{w ∈ Δ_m} ‖Σ_i w_i g_i/n_i‖²,
    d = Σ_i (w_i/n_i) g_i.

    The weights returned apply to the raw gradients (w_i/n_i). ``normalisation``
    picks n_i: ``"none"`` (1), ``"l2"`` (‖g_i‖), ``"loss"`` (L_i), ``"loss+"``
    (L_i‖g_i‖), as LibMTL's ``mgda_gn`` and nash-mtl; a zero gradient keeps n_i = 1.
    The paper's Frank–Wolfe solver (Alg. 2, 250 iterations, tol 1e-5) is
    replaced by an exact active-set solve of the same QP
    (:func:`mtlsolve.kernels.simplex_qp.min_norm_simplex`), so d satisfies
    d·g_i ≥ ‖d‖² for every i, with equality where w_i > 0 (for "none").
    ``reduction="sum"`` multiplies the weights by m (nash-mtl's scale).

    Certificate (:func:`mtlsolve.kernels.simplex_qp.certified_min_norm`, on the Gramian solved,
    in float64): w ∈ Δ_m and those KKT conditions, each row's violation divided by
    ‖g_i‖ν + ν² with ν = Σ_j w_j‖g_j‖ (the round-off that row carries; scale-free, so it
    holds for row norms over any number of decades). ``diagnostics``: ``iterations``,
    ``residual``, ``tolerance`` (from the system's round-off bound ρ), ``converged``. When
    not certified the cvxpy reference is solved and the weights with the smaller residual
    are returned (``fallback`` names it, with a ConvergenceWarning).
    """

    name: ClassVar[str] = "mgda"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "min_norm": {},
        "log_mgda": {"loss_transform": "log"},
    }
    properties: ClassVar[frozenset[str]] = frozenset(
        {"permutation_equivariant", "positive_homogeneous", "non_conflicting", "simplex_weights"}
    )
    paper: ClassVar[str] = "Sener & Koltun — NeurIPS 2018 — arXiv 1810.04650"

    normalisation: str = attrs.field(default="none", validator=one_of(*NORMALISATIONS))
    reduction: str = attrs.field(default="mean", validator=one_of(*REDUCTIONS))

    def requirements(self) -> frozenset[Need]:
        needs = super().requirements()
        return needs | {Need.LOSSES} if self.normalisation in ("loss", "loss+") else needs

    def weights_from_gramian(self, gramian: np.ndarray, system: GradientSystem) -> tuple[np.ndarray, Mapping[str, Any]]:
        from mtlsolve.kernels.simplex_qp import certified_min_norm

        scale = self._inverse_norms(gramian, system)
        if scale is not None:
            gramian = gramian * np.outer(scale, scale)
        w, diagnostics = certified_min_norm(gramian, system.roundoff)
        if scale is not None:
            w = w * scale
        return reduce_weights(w, self.reduction), diagnostics

    def _inverse_norms(self, gramian: np.ndarray, system: GradientSystem) -> np.ndarray | None:
        """1/n_i, or None for no normalisation."""
        if self.normalisation == "none":
            return None
        norms = np.ones(gramian.shape[0])
        if self.normalisation in ("l2", "loss+"):
            norms = gradient_norms(gramian)
            norms[norms <= np.finfo(np.float64).tiny] = 1.0
        if self.normalisation in ("loss", "loss+"):
            losses = system.losses64
            if (losses <= 0).any():
                raise InvalidSystemError(
                    f"mgda normalisation={self.normalisation!r} needs positive losses, got {losses.tolist()}"
                )
            norms = norms * losses
        return 1.0 / norms

"""Geometric loss strategy: the geometric mean of the losses (docs/methods.md#gls)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from mtlsolve.plugins.loss_weighting._common import positive_losses
from mtlsolve.solver import Need, Weighting
from mtlsolve.system import GradientSystem


@attrs.define(kw_only=True, eq=False)
class GeometricLoss(Weighting):
    """GLS, Chennupati et al., "MultiNet++", CVPR Workshops 2019 (arXiv 1904.08492), Eq. (1):
    minimise (∏ L_i)^{1/m} (LibMTL ``GLS``, TorchJD ``GeometricMean``).

    Its gradient is Σ w_i g_i with effective weights w_i = (∏L)^{1/m}/(m L_i); the
    update is parallel to ``si``'s, scaled by the geometric mean over m. Losses must be > 0.
    """

    name: ClassVar[str] = "gls"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "geometric_mean": {},
        "geometric_loss": {},
    }
    family: ClassVar[str] = "LW"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.LOSSES})
    properties: ClassVar[frozenset[str]] = frozenset({"permutation_equivariant", "positive_homogeneous", "linear"})
    paper: ClassVar[str] = "Chennupati, Sistu, Yogamani, Rawashdeh — CVPR Workshops 2019 — arXiv 1904.08492"

    def weights(self, system: GradientSystem) -> tuple[np.ndarray, Mapping[str, Any]]:
        L = positive_losses(system.losses64, "gls")
        log_L = np.log(L)
        geometric_mean = float(np.exp(log_L.mean()))
        # (∏L)^{1/m}/(m L_i) in log space: finite whenever the ratio of the mean to L_i is
        return np.exp(log_L.mean() - log_L) / system.m, {"value": geometric_mean}

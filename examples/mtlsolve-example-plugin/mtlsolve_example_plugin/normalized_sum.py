"""``normalized_sum``: every task gradient scaled to unit norm, then summed.

An example of a third-party solver, not a published method: d = Σ_i g_i/‖g_i‖,
i.e. the weighting w_i = 1/√K_ii on the Gramian K = G Gᵀ. A row whose squared
norm is zero (or underflows to zero in G's precision) gets weight 0, so a
vanishing task drops out instead of producing NaN or Inf.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from mtlsolve import GradientSystem, GramianWeighting


@attrs.define(kw_only=True, eq=False)
class NormalizedSum(GramianWeighting):
    """d = Σ_i g_i/‖g_i‖ (weights 1/√K_ii, 0 for a zero gradient); an example plugin solver."""

    name: ClassVar[str] = "normalized_sum"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {"unit_sum": {}}
    properties: ClassVar[frozenset[str]] = frozenset({"permutation_equivariant", "scale_invariant"})
    paper: ClassVar[str] = "none: an example third-party plugin for mtlsolve"

    def weights_from_gramian(self, gramian: np.ndarray, system: GradientSystem) -> tuple[np.ndarray, Mapping[str, Any]]:
        sq_norms = np.diag(gramian)
        positive = sq_norms > 0
        w = np.zeros(len(sq_norms))
        w[positive] = 1.0 / np.sqrt(sq_norms[positive])
        return w, {"zero_rows": int((~positive).sum())}

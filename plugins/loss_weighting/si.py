"""Scale-invariant loss weighting: Σ w_i log L_i (docs/methods.md#si)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from mtlsolve.errors import InvalidSystemError
from mtlsolve.plugins.loss_weighting._common import positive_losses, vector_converter, vector_for
from mtlsolve.solver import Need, Weighting
from mtlsolve.system import GradientSystem
from mtlsolve.validation import one_of


@attrs.define(kw_only=True, eq=False)
class ScaleInvariant(Weighting):
    """The scale-invariant baseline of Navon et al., "Multi-Task Learning as a Bargaining Game",
    ICML 2022 (arXiv 2202.01017), §6: minimise Σ w_i log L_i (nash-mtl and FAMO ``scaleinvls``).

    One backward of Σ w_i log L_i is the update d = Σ (w_i/L_i) g_i, so the effective
    weights are w_i/L_i (``transform="log"``, losses must be > 0) or w_i/(1 + L_i)
    (``transform="log1p"``, SamsungLabs/MTL, losses must be > −1). ``weights``
    defaults to all ones. Scaling L_i (and with it g_i) by c > 0 leaves d unchanged
    under ``"log"``.
    """

    name: ClassVar[str] = "si"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "scaleinvls": {},
        "scale_invariant": {},
        "log_ls": {},
    }
    family: ClassVar[str] = "LW"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.LOSSES})
    properties: ClassVar[frozenset[str]] = frozenset({"permutation_equivariant", "positive_homogeneous", "linear"})
    paper: ClassVar[str] = "Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik, Fetaya — ICML 2022 — arXiv 2202.01017"

    transform: str = attrs.field(default="log", validator=one_of("log", "log1p"))
    weights_: tuple[float, ...] | None = attrs.field(
        default=None, converter=vector_converter("weights"), alias="weights"
    )

    def weights(self, system: GradientSystem) -> tuple[np.ndarray, Mapping[str, Any]]:
        L = system.losses64
        w = vector_for(self.weights_, system.m, "si weights", 1.0)
        if self.transform == "log":
            return w / positive_losses(L, "si"), {}
        if (L <= -1).any():
            raise InvalidSystemError(f"si(transform='log1p') needs losses > -1, got {L.tolist()}")
        return w / (1.0 + L), {}

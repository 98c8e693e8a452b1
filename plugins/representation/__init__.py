"""Representation-level variants (docs/methods.md#representation-level-variants): Gramian weightings published as methods of
their own when fed the gradients z_i = ∂L_i/∂H of the shared features H instead of the shared
parameters. They are the same solvers; ``grads = "representation"`` makes
:class:`~mtlsolve.adapters.MultiTaskBackward` collect feature gradients and back-propagate the
combined ẑ = Zᵀw through the encoder once. Any other Gramian weighting runs on features with
``MultiTaskBackward(..., grads="representation")``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs

from mtlsolve import hookimpl
from mtlsolve.plugins.gramian.aligned_mtl import AlignedMTL
from mtlsolve.plugins.gramian.mgda import MGDA


@attrs.define(kw_only=True, eq=False)
class MGDAUB(MGDA):
    """MGDA-UB, Sener & Koltun, NeurIPS 2018, arXiv 1810.04650, §3.3: ``mgda`` on the feature
    gradients (an upper bound of the multi-objective loss), one encoder backward per step.
    Its certificate is MGDA's (the scale-free KKT residual of the min-norm point, here of the
    feature gradients' Gramian, with the round-off bound of those gradients)."""

    name: ClassVar[str] = "mgda_ub"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {}  # MGDA-UB, MGDAUB normalise to the name
    family: ClassVar[str] = "RV"
    grads: ClassVar[str | None] = "representation"


@attrs.define(kw_only=True, eq=False)
class AlignedMTLUB(AlignedMTL):
    """Aligned-MTL-UB, Senushkin et al., CVPR 2023, arXiv 2305.19000, §4.3: ``aligned_mtl`` on
    the feature gradients, one encoder backward per step. Rank decision (at the round-off of the
    feature gradients' own dtype), accurate eigenpairs and the BKB = s·I_r certificate are
    ``aligned_mtl``'s."""

    name: ClassVar[str] = "aligned_mtl_ub"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {"amtlub": {}}
    family: ClassVar[str] = "RV"
    grads: ClassVar[str | None] = "representation"


@hookimpl
def register_solvers(register):
    for cls in (MGDAUB, AlignedMTLUB):
        register(cls)

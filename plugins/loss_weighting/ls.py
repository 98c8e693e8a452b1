"""Linear scalarisation: fixed task weights (docs/methods.md#ls)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from mtlsolve.errors import InvalidSystemError
from mtlsolve.plugins.loss_weighting._common import vector_converter
from mtlsolve.solver import REDUCTIONS, Need, Weighting
from mtlsolve.system import GradientSystem
from mtlsolve.validation import one_of


@attrs.define(kw_only=True, eq=False)
class LinearScalarization(Weighting):
    """d = Σ w_i g_i with fixed weights: all ones (``reduction="sum"``, the default),
    all 1/m (``"mean"``), or the given ``weights`` (used as they are)."""

    name: ClassVar[str] = "ls"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "ew": {},
        "linear_scalarization": {},
        "sum": {},
        "agg_ls": {},
        "mean": {"reduction": "mean"},
        "constant": {},
    }
    family: ClassVar[str] = "LW"
    needs: ClassVar[frozenset[Need]] = frozenset()
    properties: ClassVar[frozenset[str]] = frozenset({"permutation_equivariant", "positive_homogeneous", "linear"})
    paper: ClassVar[str] = "linear scalarisation (classic; no single source)"

    reduction: str = attrs.field(default="sum", validator=one_of(*REDUCTIONS))
    weights_: tuple[float, ...] | None = attrs.field(
        default=None, converter=vector_converter("weights"), alias="weights"
    )

    def weights(self, system: GradientSystem) -> tuple[np.ndarray, Mapping[str, Any]]:
        m = system.m
        if self.weights_ is not None:
            if len(self.weights_) != m:
                raise InvalidSystemError(f"ls was given {len(self.weights_)} weights for {m} tasks")
            return np.array(self.weights_), {}
        return np.full(m, 1.0 if self.reduction == "sum" else 1.0 / m), {}

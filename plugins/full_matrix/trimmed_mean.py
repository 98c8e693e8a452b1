"""Coordinate-wise trimmed mean (docs/methods.md#trimmed_mean)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from mtlsolve._array import is_torch
from mtlsolve.errors import InvalidSystemError
from mtlsolve.solver import Need, Result, Solver
from mtlsolve.system import GradientSystem
from mtlsolve.validation import non_negative_int


@attrs.define(kw_only=True, eq=False)
class TrimmedMean(Solver):
    """Coordinate-wise trimmed mean, Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust
    Distributed Learning: Towards Optimal Statistical Rates", ICML 2018, arXiv 1803.01498,
    Definition 2 (as TorchJD ``TrimmedMean``): in every coordinate, drop the t largest
    and the t smallest of the m values and average the other m − 2t; m ≥ 2t + 1 is
    checked. t = 0 is the mean g_0. The sort runs on G's device, in its dtype.
    """

    name: ClassVar[str] = "trimmed_mean"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    family: ClassVar[str] = "FM"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.MATRIX})
    #: coordinate j of d is read off column j of G alone: each rank trims its own shard's columns
    shards: ClassVar[str | None] = "coordinate"
    properties: ClassVar[frozenset[str]] = frozenset({"permutation_equivariant", "positive_homogeneous"})
    paper: ClassVar[str] = "Yin, Chen, Ramchandran, Bartlett — ICML 2018 — arXiv 1803.01498"

    trim_number: int = attrs.field(validator=non_negative_int)

    def solve(self, system: GradientSystem) -> Result:
        G = system.matrix
        m, t = G.shape[0], int(self.trim_number)
        if m < 2 * t + 1:
            raise InvalidSystemError(
                f"trimmed_mean with trim_number t = {t} needs at least 2t + 1 = {2 * t + 1} tasks, got {m}"
            )
        if t == 0:
            return Result(direction=G.mean(0))
        ordered = G.sort(dim=0).values if is_torch(G) else np.sort(G, axis=0)
        return Result(direction=ordered[t : m - t].mean(0))

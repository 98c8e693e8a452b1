"""PCGrad: projecting conflicting gradients (docs/methods.md#pcgrad)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from mtlsolve.solver import REDUCTIONS, GramianWeighting
from mtlsolve.system import GradientSystem
from mtlsolve.validation import one_of, optional_seed


@attrs.define(kw_only=True, eq=False)
class PCGrad(GramianWeighting):
    """Gradient surgery, Yu et al., NeurIPS 2020, arXiv 2001.06782, Algorithm 1.

    For each task i, in a random order over the other tasks j (B \\ T_i, as in
    the paper's Algorithm 1 and TorchJD), if g_i^PC·g_j < 0 then
    g_i^PC ← g_i^PC − (g_i^PC·g_j/‖g_j‖²)·g_j, with g_j the original gradient;
    d = Σ_i g_i^PC (``reduction="sum"``) or its mean (``"mean"``).

    Gramian form: g_i^PC = Σ_j C_ij g_j is tracked as the m x m coefficient
    matrix C, every dot product is read from K, and the weights are the column
    sums of C, so that d = Gᵀw. The orders come from the solver's generator
    (``seed``); they are in ``diagnostics["orders"]``.
    """

    name: ClassVar[str] = "pcgrad"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {"gradient_surgery": {}}
    properties: ClassVar[frozenset[str]] = frozenset({"positive_homogeneous"})
    randomized: ClassVar[bool] = True
    paper: ClassVar[str] = "Yu, Kumar, Gupta, Levine, Hausman, Finn — NeurIPS 2020 — arXiv 2001.06782"
    state_schema: ClassVar[Mapping[str, Any]] = {"rng": None}

    reduction: str = attrs.field(default="sum", validator=one_of(*REDUCTIONS))
    seed: int | None = attrs.field(default=None, validator=optional_seed)

    def weights_from_gramian(self, gramian: np.ndarray, system: GradientSystem) -> tuple[np.ndarray, Mapping[str, Any]]:
        from mtlsolve.kernels.pcgrad import pcgrad_coefficients, random_orders

        m = gramian.shape[0]
        gen = self._rng(self.seed)
        orders = random_orders(gen, m)
        self._save_rng(gen)
        C, projections = pcgrad_coefficients(np.ascontiguousarray(gramian), orders)
        w = C.sum(axis=0)
        if self.reduction == "mean":
            w = w / m
        return w, {"projections": int(projections), "orders": orders}

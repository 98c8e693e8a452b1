"""GradVac: gradient vaccine (docs/methods.md#gradvac)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from mtlsolve.solver import REDUCTIONS, GramianWeighting
from mtlsolve.system import GradientSystem
from mtlsolve.validation import in_range, one_of, optional_seed

EMA_UPDATES = ("every_step", "conflict_only")


@attrs.define(kw_only=True, eq=False)
class GradVac(GramianWeighting):
    """Gradient Vaccine, Wang, Tsvetkov, Firat, Cao, ICLR 2021, arXiv 2010.05874, Section 3
    (Algorithm 1: the closed-form update that raises cos(g_i^PC, g_j) to the target φ̂_ij,
    and the EMA of the targets), in LibMTL's form.

    For each task i, in a random order over the other tasks j: φ = cos(g_i^PC, g_j)
    with g_j the original gradient; if φ < φ̂_ij then
    g_i^PC += ‖g_i^PC‖(φ̂√(1−φ²) − φ√(1−φ̂²))/(‖g_j‖√(1−φ̂²))·g_j, which makes
    cos(g_i^PC, g_j) = φ̂_ij; then φ̂_ij ← (1−β)φ̂_ij + βφ, at every comparison
    (``ema_update="every_step"``, LibMTL) or only after an adjustment
    (``"conflict_only"``, SamsungLabs/MTL). d = Σ_i g_i^PC (``reduction="sum"``)
    or its mean. With φ̂ = 0 (the start) the first call is PCGrad.

    Gramian form, as PCGrad: g_i^PC = Σ_k C_ik g_k is tracked as coefficients
    over the original rows (:func:`mtlsolve.kernels.gradvac.gradvac_coefficients`),
    every norm and dot product is read from K, and w = column sums of C.
    The targets φ̂ (m x m) and the generator live in the solver state; they reset
    when m changes. Only ``group_type=0`` (the whole shared vector, one φ̂_ij per
    pair) is provided: LibMTL's per-layer (1) and per-tensor (2) variants need a
    Gramian per parameter block, which a gradient system does not carry.
    ``diagnostics``: ``adjustments`` (count), ``orders`` and the updated ``targets``.
    """

    name: ClassVar[str] = "gradvac"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {"gradient_vaccine": {}}
    properties: ClassVar[frozenset[str]] = frozenset({"positive_homogeneous"})
    randomized: ClassVar[bool] = True
    stateful: ClassVar[bool] = True
    #: docs/methods.md#missing-tasks
    task_state: ClassVar[Mapping[str, Any]] = {"targets": 0.0}
    paper: ClassVar[str] = "Wang, Tsvetkov, Firat, Cao — ICLR 2021 — arXiv 2010.05874"
    state_schema: ClassVar[Mapping[str, Any]] = {"targets": ("m", "m"), "rng": None}

    beta: float = attrs.field(default=0.5, converter=float, validator=in_range(0.0, 1.0))
    ema_update: str = attrs.field(default="every_step", validator=one_of(*EMA_UPDATES))
    group_type: int = attrs.field(default=0, validator=one_of(0))
    reduction: str = attrs.field(default="sum", validator=one_of(*REDUCTIONS))
    seed: int | None = attrs.field(default=None, validator=optional_seed)

    def weights_from_gramian(self, gramian: np.ndarray, system: GradientSystem) -> tuple[np.ndarray, Mapping[str, Any]]:
        from mtlsolve.kernels.gradvac import gradvac_coefficients
        from mtlsolve.kernels.pcgrad import random_orders

        m = gramian.shape[0]
        state = self._state_for(m)
        gen = self._rng(self.seed)
        orders = random_orders(gen, m)
        self._save_rng(gen)
        targets = np.array(state.get("targets", np.zeros((m, m))), dtype=np.float64)
        C, adjustments = gradvac_coefficients(
            np.ascontiguousarray(gramian), orders, targets, self.beta, self.ema_update == "conflict_only"
        )
        state["targets"] = targets
        w = C.sum(axis=0)
        if self.reduction == "mean":
            w = w / m
        return w, {"adjustments": int(adjustments), "orders": orders, "targets": targets.copy()}

"""Uncertainty weighting (docs/methods.md#uw)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from mtlsolve.plugins.loss_weighting._learnable import LogScaleWeighting
from mtlsolve.validation import one_of


@attrs.define(kw_only=True, eq=False)
class UncertaintyWeighting(LogScaleWeighting):
    """Kendall, Gal, Cipolla, CVPR 2018 (arXiv 1705.07115), Eqs. (7)–(10), with learnable
    log-variances s_i = log σ_i² (one ``torch.nn.Parameter``, ``init`` 0; LibMTL uses −0.5).

    ``form="regression"`` (default; nash-mtl, TorchJD, LibMTL):
    objective Σ ½(e^{−s_i}L_i + s_i), effective weights ½e^{−s_i}.
    ``form="classification"`` (SamsungLabs/MTL): Σ (e^{−s_i}L_i + ½s_i), weights e^{−s_i}.
    For fixed L the s-gradient vanishes at s_i = log L_i (regression) or log 2L_i
    (classification); both give the effective weight 1/(2L_i) there. s is trained by the
    user's optimiser: add :meth:`parameters` to it (nash-mtl used lr 0.025 for s).
    """

    name: ClassVar[str] = "uw"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {"uncertainty": {}, "uncertainty_weighting": {}}
    paper: ClassVar[str] = "Kendall, Gal, Cipolla — CVPR 2018 — arXiv 1705.07115"

    form: str = attrs.field(default="regression", validator=one_of("regression", "classification"))

    def value(self, s: Any, losses: Any) -> Any:
        import torch

        if self.form == "regression":
            return 0.5 * (torch.exp(-s) * losses + s).sum()
        return (torch.exp(-s) * losses + 0.5 * s).sum()

    def effective_weights(self, s: np.ndarray) -> np.ndarray:
        return (0.5 if self.form == "regression" else 1.0) * np.exp(-s)

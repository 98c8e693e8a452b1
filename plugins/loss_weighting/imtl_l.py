"""IMTL-L: impartial loss balancing (docs/methods.md#imtl_l)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from mtlsolve.plugins.loss_weighting._learnable import LogScaleWeighting


@attrs.define(kw_only=True, eq=False)
class IMTLL(LogScaleWeighting):
    """IMTL-L, Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021, §3.2, Eq. (3):
    objective Σ (e^{s_i}L_i − s_i) with learnable scales s (one ``torch.nn.Parameter``, ``init`` 0),
    as in LibMTL ``IMTL`` and TorchJD ``IMTLL``.

    Effective weights e^{s_i}. For fixed L the s-gradient vanishes at s_i = −log L_i, where
    every scaled loss e^{s_i}L_i equals 1; the objective equals 2·UW (regression form) at −s.
    """

    name: ClassVar[str] = "imtl_l"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    paper: ClassVar[str] = (
        "Liu, Li, Kuang, Xue, Chen, Yang, Liao, Zhang — ICLR 2021 (OpenReview IMPnRXEWpvr; no arXiv id)"
    )

    def value(self, s: Any, losses: Any) -> Any:
        return scaled_losses_objective(s, losses)

    def effective_weights(self, s: np.ndarray) -> np.ndarray:
        return np.exp(s)


def scaled_losses_objective(s: Any, losses: Any) -> Any:
    """IMTL-L's Σ_i (e^{s_i}L_i − s_i) (torch tensors); ∂/∂s_i = e^{s_i}L_i − 1."""
    import torch

    return (torch.exp(s) * losses - s).sum()

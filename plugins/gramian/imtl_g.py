"""IMTL-G: impartial gradient weighting (catalogue §3.2, row ``imtl_g``)."""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import attrs
import numpy as np

from mtlsolve.solver import GramianWeighting
from mtlsolve.system import GradientSystem


def _optional_positive(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and not (np.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name} must be a positive number or None, got {value!r}")


def _positive(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name} must be a positive number, got {value!r}")


@attrs.define(kw_only=True, eq=False)
class IMTLG(GramianWeighting):
    """IMTL-G, Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021 (gradient balance), in Gramian form.

    The update d = Σ α_i g_i has equal projections on every unit gradient,
    u_i·d = const, with Σ α_i = 1. With n_i = ‖g_i‖ = √K_ii the weights are
    α = K⁺n / (1ᵀK⁺n), which equals the paper's closed form
    α_{2:m} = g_1ᵀUᵀ(DUᵀ)⁻¹ whenever that exists, and extends it to linearly
    dependent gradients through the pseudo-inverse (as TorchJD does).

    ``singular="pinv"`` (default) takes K⁺ from an eigendecomposition,
    dropping eigenvalues ≤ ``rtol``·λ_max (default m·ε_float64, the cut-off of
    ``torch.linalg.pinv``); ``singular="ridge"`` uses (K + ``ridge``·I)⁻¹
    instead (the nash-mtl fallback, absolute ``ridge``). Degenerate systems
    give zero weights, flagged ``diagnostics["degenerate"]``: G = 0, and
    systems where 1ᵀK⁺n vanishes to rounding (|1ᵀK⁺n| ≤ m·ε·κ·Σ|K⁺n|, κ the
    condition number of the kept eigenvalues), for which α is unbounded.
    """

    name: ClassVar[str] = "imtl_g"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "imtl": {},
        "log_imtl": {"loss_transform": "log"},
    }
    properties: ClassVar[frozenset[str]] = frozenset({"permutation_equivariant", "positive_homogeneous"})
    paper: ClassVar[str] = (
        "Liu, Li, Kuang, Xue, Chen, Yang, Liao, Zhang — ICLR 2021 (OpenReview IMPnRXEWpvr; no arXiv id)"
    )

    singular: str = attrs.field(default="pinv", validator=attrs.validators.in_(("pinv", "ridge")))
    rtol: float | None = attrs.field(default=None, validator=_optional_positive)
    ridge: float = attrs.field(default=1e-8, validator=_positive)

    def weights_from_gramian(
        self, gramian: np.ndarray, system: GradientSystem
    ) -> tuple[np.ndarray, Mapping[str, Any]]:
        m = gramian.shape[0]
        norms = np.sqrt(np.clip(np.diag(gramian), 0.0, None))
        lam, V = np.linalg.eigh(gramian)
        if self.singular == "ridge":
            lam = lam + self.ridge
            keep = lam > 0
        else:
            rtol = m * np.finfo(np.float64).eps if self.rtol is None else self.rtol
            keep = lam > rtol * max(lam[-1], 0.0)
        lam, V = lam[keep], V[:, keep]
        v = V @ ((V.T @ norms) / lam)
        total = v.sum()
        # 1ᵀK⁺n carries a rounding error of about κ·ε·Σ|K⁺n|; below that α is unbounded noise
        cond = lam[-1] / lam[0] if lam.size else 1.0
        degenerate = not abs(total) > m * np.finfo(np.float64).eps * cond * np.abs(v).sum()
        w = np.zeros(m) if degenerate else v / total
        return w, {"rank": int(lam.size), "degenerate": degenerate}

"""Aligned-MTL: independent component alignment (catalogue §3.2, row ``aligned_mtl``; seed-methods §1.2)."""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import attrs
import numpy as np

from mtlsolve.errors import InvalidSystemError
from mtlsolve.solver import REDUCTIONS, GramianWeighting
from mtlsolve.system import GradientSystem

SCALE_MODES = ("min", "median", "rmse")
#: machine epsilon of float32, used by the official code's rank tolerance whatever the data dtype
EPS_FLOAT32 = float(np.finfo(np.float32).eps)


def _optional_weights(value: Any) -> tuple[float, ...] | None:
    if value is None:
        return None
    weights = tuple(float(v) for v in np.asarray(value, dtype=np.float64).ravel())
    if not weights or not np.isfinite(weights).all():
        raise ValueError(f"task_weights must be a non-empty sequence of finite numbers, got {value!r}")
    return weights


def _optional_non_negative(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and not (np.isfinite(value) and value >= 0):
        raise ValueError(f"{attribute.name} must be a non-negative number or None, got {value!r}")


def balance_matrix(
    gramian: np.ndarray, rank_tol: float | None = None, scale_mode: str = "min"
) -> tuple[np.ndarray, float, np.ndarray]:
    """The balance matrix B = V_r·diag(√(s/λ_j))·V_rᵀ of seed-methods §1.2, the scale s, the kept λ ascending.

    Eigenpairs of K with λ ≤ ``rank_tol``·λ_max are dropped (``rank_tol``
    None: m·ε_float32, the official code's tolerance). A zero system (no kept
    eigenvalue) gives B = 0 and s = 0.
    """
    m = gramian.shape[0]
    lam, V = np.linalg.eigh(gramian)
    rel = m * EPS_FLOAT32 if rank_tol is None else rank_tol
    keep = lam > max(rel * lam[-1], 0.0)
    lam, V = lam[keep], V[:, keep]
    if lam.size == 0:
        return np.zeros((m, m)), 0.0, lam
    if scale_mode == "min":
        scale = lam[0]
    elif scale_mode == "median":
        scale = lam[(lam.size - 1) // 2]  # the lower median, as torch.median in the official code
    else:
        scale = lam.mean()
    B = (V * np.sqrt(scale / lam)) @ V.T
    return B, float(scale), lam


@attrs.define(kw_only=True, eq=False)
class AlignedMTL(GramianWeighting):
    """Aligned-MTL, Senushkin et al., "Independent Component Alignment for Multi-Task Learning",
    CVPR 2023, arXiv 2305.19000, Algorithm 1, in the task-space form of seed-methods §1.2.

    The aligned gradients Ĝ = BG (B = K^{−1/2} on range(K), scaled by √s) are
    orthogonal with equal norm √s, BKB = s·I_r; the weights are α = Bw and
    d = Gᵀα = Ĝᵀw. ``task_weights`` w default to 1/m (``reduction="mean"``,
    the paper and TorchJD) or 1 (``reduction="sum"``, SamsungLabs/MTL and
    LibMTL); given ``task_weights`` are used as they are. ``scale_mode``:
    s = smallest kept eigenvalue (``"min"``), their median (the lower one for
    an even count, as ``torch.median`` in the official code), or their mean
    (``"rmse"``). ``rank_tol``: eigenvalues ≤ ``rank_tol``·λ_max are dropped
    (default m·ε_float32). A zero system gives zero weights.
    ``diagnostics``: ``rank`` r and ``scale`` s (so BKB = s·I_r is checkable),
    ``condition_number`` λ_max/λ_min of the kept eigenvalues (κ(G)²).
    """

    name: ClassVar[str] = "aligned_mtl"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {"amtl": {}, "aligned": {}}
    properties: ClassVar[frozenset[str]] = frozenset({"permutation_equivariant", "positive_homogeneous"})
    paper: ClassVar[str] = "Senushkin, Patakin, Kuznetsov, Konushin — CVPR 2023 — arXiv 2305.19000"

    scale_mode: str = attrs.field(default="min", validator=attrs.validators.in_(SCALE_MODES))
    reduction: str = attrs.field(default="mean", validator=attrs.validators.in_(REDUCTIONS))
    task_weights: tuple[float, ...] | None = attrs.field(default=None, converter=_optional_weights)
    rank_tol: float | None = attrs.field(default=None, validator=_optional_non_negative)

    def weights_from_gramian(
        self, gramian: np.ndarray, system: GradientSystem
    ) -> tuple[np.ndarray, Mapping[str, Any]]:
        m = gramian.shape[0]
        if self.task_weights is None:
            w = np.full(m, 1.0 if self.reduction == "sum" else 1.0 / m)
        elif len(self.task_weights) != m:
            raise InvalidSystemError(f"aligned_mtl was given {len(self.task_weights)} task weights for {m} tasks")
        else:
            w = np.array(self.task_weights)
        B, scale, lam = balance_matrix(gramian, self.rank_tol, self.scale_mode)
        diagnostics = {"rank": int(lam.size), "scale": scale}
        if lam.size:
            diagnostics["condition_number"] = float(lam[-1] / lam[0])
        return B @ w, diagnostics

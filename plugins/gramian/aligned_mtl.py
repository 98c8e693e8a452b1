"""Aligned-MTL: independent component alignment (docs/methods.md#aligned_mtl)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np
import scipy.linalg

from mtlsolve.errors import InvalidSystemError
from mtlsolve.gramian import certificate_tolerance, normalised, rank_threshold
from mtlsolve.solver import REDUCTIONS, GramianWeighting
from mtlsolve.system import GradientSystem
from mtlsolve.validation import non_negative, one_of, optional, vector_converter

SCALE_MODES = ("min", "median", "rmse")


_TASK_WEIGHTS = vector_converter("task_weights")


def balance_matrix(
    gramian: np.ndarray, rank_tol: float | None = None, scale_mode: str = "min", roundoff: float | None = None
) -> tuple[np.ndarray, float, np.ndarray]:
    """The balance matrix B = V_r·diag(√(s/λ_j))·V_rᵀ (Senushkin et al., arXiv 2305.19000, Algorithm 1, in task space), the scale s, the kept λ ascending.

    The rank r is decided on the normalised Gramian K̂ = D⁻¹KD⁻¹ (D = diag ‖g_i‖): its eigenvalues
    above the round-off cut-off 4·m·ρ (:func:`mtlsolve.gramian.rank_threshold`; ``roundoff`` ρ
    defaults to that of a float64 Gramian given as it is) span the range, whatever the row
    scales. The eigenpairs (λ_j, v_j) of K on that range are computed with high relative
    accuracy from the factor F = D·Q̂_r·Λ̂_r^{1/2} (K = FFᵀ): a Householder QR with column
    pivoting of F with its rows sorted by decreasing norm, then the SVD of the triangular
    factor (Demmel et al., "Computing the singular value decomposition with high relative
    accuracy", Linear Algebra Appl. 1999), so small eigenvalues of a Gramian with rows of
    very different norms keep their digits (an eigendecomposition of K would lose them to
    ε·λ_max); a well-conditioned K (λ_min ≥ √ε·λ_max and λ_min above the cut-off times max_i K_ii)
    needs none of this and is decomposed directly. ``rank_tol`` (optional) further drops
    λ ≤ ``rank_tol``·λ_max. A zero system (no
    kept eigenvalue) gives B = 0 and s = 0.
    """
    B, scale, lam, _, _ = _balance(gramian, rank_tol, scale_mode, roundoff)
    return B, scale, lam


def _balance(gramian, rank_tol, scale_mode, roundoff):
    """:func:`balance_matrix`, the kept eigenvectors V_r and the certificate (residual, tolerance)
    of BKB = s·P, P = V_rV_rᵀ the projector on the kept range: residual max_ij |(BKB)_ij/s − P_ij|,
    tolerance certificate_tolerance(ρ)·max_i (|B|n)_i²/s (the effect of K's round-off ρ·n_i·n_j
    on BKB/s, n_i = ‖g_i‖)."""
    from mtlsolve.kernels._dense import as_kernel_array
    from mtlsolve.kernels.aligned import balance, balance_residual, full_rank_balance

    m = gramian.shape[0]
    rho = 2.0 * (1 + m) * float(np.finfo(np.float64).eps) if roundoff is None else roundoff
    gramian = as_kernel_array(gramian)
    mode = SCALE_MODES.index(scale_mode)
    cutoff = rank_threshold(m, rho)
    full, lam, V, B, scale, residual, spread = full_rank_balance(gramian, cutoff, _FAST_PATH_CONDITION, mode)
    if not full:
        lam, V = _accurate_eigenpairs(gramian, cutoff)
    if rank_tol is not None:
        kept = lam > rank_tol * lam[-1] if lam.size else np.zeros(0, dtype=bool)
        lam, V = np.ascontiguousarray(lam[kept]), np.ascontiguousarray(V[:, kept])
    if lam.size == 0 or not lam[0] > 0:
        return np.zeros((m, m)), 0.0, np.zeros(0), np.zeros((m, 0)), (0.0, float(certificate_tolerance(rho)))
    if not full or rank_tol is not None:
        B, scale = balance(lam, V, mode)
        residual, spread = balance_residual(gramian, B, scale, V)
    return B, float(scale), lam, V, (float(residual), float(certificate_tolerance(rho, max(spread, 1.0))))


#: the fast path of :func:`_balance` (no QR/SVD) needs λ_min(K) ≥ √ε·λ_max(K)
_FAST_PATH_CONDITION = float(np.sqrt(np.finfo(np.float64).eps))


def _accurate_eigenpairs(gramian: np.ndarray, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    """The eigenpairs of K on the range kept by the normalised Gramian's cut-off, ascending, with
    high relative accuracy: QR with column pivoting of F = D·Q̂_r·Λ̂_r^{1/2} (rows by decreasing
    norm), then the SVD of its triangular factor (Demmel et al. 1999)."""
    m = gramian.shape[0]
    Kn, n = normalised(gramian)
    lam_hat, Q_hat = np.linalg.eigh(Kn)
    keep = lam_hat > cutoff
    if not keep.any():
        return np.zeros(0), np.zeros((m, 0))
    F = n[:, None] * (Q_hat[:, keep] * np.sqrt(lam_hat[keep]))
    order = np.argsort(-np.linalg.norm(F, axis=1), kind="stable")
    Q, T, _ = scipy.linalg.qr(F[order], mode="economic", pivoting=True, check_finite=False)
    U_T, sigma, _ = np.linalg.svd(T)
    V = np.empty((m, sigma.size))
    V[order] = Q @ U_T
    return np.ascontiguousarray(sigma[::-1] ** 2), np.ascontiguousarray(V[:, ::-1])


@attrs.define(kw_only=True, eq=False)
class AlignedMTL(GramianWeighting):
    """Aligned-MTL, Senushkin et al., "Independent Component Alignment for Multi-Task Learning",
    CVPR 2023, arXiv 2305.19000, Algorithm 1, in task-space form (docs/methods.md#aligned_mtl).

    The aligned gradients Ĝ = BG (B = K^{−1/2} on range(K), scaled by √s) are
    orthogonal with equal norm √s, BKB = s·I_r; the weights are α = Bw and
    d = Gᵀα = Ĝᵀw. ``task_weights`` w default to 1/m (``reduction="mean"``,
    the paper and TorchJD) or 1 (``reduction="sum"``, SamsungLabs/MTL and
    LibMTL); given ``task_weights`` are used as they are. ``scale_mode``:
    s = smallest kept eigenvalue (``"min"``), their median (the lower one for
    an even count, as ``torch.median`` in the official code), or their mean
    (``"rmse"``). Rank: directions whose eigenvalue on the normalised Gramian is round-off
    (≤ 4·m·ρ, ρ the system's round-off, so float32 and float64 input each at their own
    precision) are dropped, and with ``rank_tol`` also eigenvalues ≤ ``rank_tol``·λ_max of K
    (the official code's m·ε_float32 is ``rank_tol=m*1.19e-7``); the kept eigenpairs are
    computed with high relative accuracy (:func:`balance_matrix`). A zero system gives zero
    weights. ``diagnostics``: ``rank`` r and ``scale`` s, ``condition_number`` λ_max/λ_min of
    the kept eigenvalues (κ(G)²), and the certificate of BKB = s·I_r (on the range):
    ``residual`` max_ij |(BKB)_ij/s − P_ij|, ``tolerance`` certificate_tolerance(ρ) scaled by
    max_i (|B|n)_i²/s, ``converged``.
    """

    name: ClassVar[str] = "aligned_mtl"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {"amtl": {}, "aligned": {}}
    properties: ClassVar[frozenset[str]] = frozenset({"permutation_equivariant", "positive_homogeneous"})
    paper: ClassVar[str] = "Senushkin, Patakin, Kuznetsov, Konushin — CVPR 2023 — arXiv 2305.19000"

    scale_mode: str = attrs.field(default="min", validator=one_of(*SCALE_MODES))
    reduction: str = attrs.field(default="mean", validator=one_of(*REDUCTIONS))
    task_weights: tuple[float, ...] | None = attrs.field(default=None, converter=_TASK_WEIGHTS)
    rank_tol: float | None = attrs.field(default=None, validator=optional(non_negative))

    def weights_from_gramian(self, gramian: np.ndarray, system: GradientSystem) -> tuple[np.ndarray, Mapping[str, Any]]:
        m = gramian.shape[0]
        if self.task_weights is None:
            w = np.full(m, 1.0 if self.reduction == "sum" else 1.0 / m)
        elif len(self.task_weights) != m:
            raise InvalidSystemError(f"aligned_mtl was given {len(self.task_weights)} task weights for {m} tasks")
        else:
            w = np.array(self.task_weights)
        B, scale, lam, _, (residual, tolerance) = _balance(gramian, self.rank_tol, self.scale_mode, system.roundoff)
        diagnostics = {
            "rank": int(lam.size),
            "scale": scale,
            "residual": residual,
            "tolerance": tolerance,
            "converged": bool(residual <= tolerance),
        }
        if lam.size:
            diagnostics["condition_number"] = float(lam[-1] / lam[0])
        else:
            diagnostics["message"] = "aligned_mtl: every gradient is zero; zero weights"
        if not diagnostics["converged"]:
            diagnostics["fallback"] = "none: the uncertified result is returned"
        return B @ w, diagnostics

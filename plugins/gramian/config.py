"""ConFIG: conflict-free update direction (docs/methods.md#config)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np
import scipy.linalg

from mtlsolve.errors import InvalidSystemError
from mtlsolve.gramian import certificate_tolerance, normalised, rank_threshold
from mtlsolve.solver import GramianWeighting
from mtlsolve.system import GradientSystem
from mtlsolve.validation import flag, non_negative, optional, vector_converter

_PREFERENCE = vector_converter("preference")


@attrs.define(kw_only=True, eq=False)
class ConFIG(GramianWeighting):
    """ConFIG, Liu, Chu, Thuerey, "ConFIG: Towards Conflict-free Training of Physics Informed
    Neural Networks", ICLR 2025, arXiv 2408.11104, eq. (2) (as TorchJD ``ConFIG``):
    d_u = U⁺p with rows u_i = g_i/‖g_i‖ and preference p (all ones), d̂ = d_u/‖d_u‖,
    d = (Σ_i g_i·d̂)·d̂.

    Gramian form: D = diag(1/√K_ii) (0 for a zero row, whose unit vector is taken
    as 0), K̄ = DKD = UUᵀ and U⁺ = Uᵀ(UUᵀ)⁺, so d_u = GᵀDK̄⁺p = Gᵀa; then
    ‖d_u‖² = aᵀKa, Σ_i g_i·d_u = 1ᵀKa and d = Gᵀw with w = (1ᵀKa/aᵀKa)·a.
    K̄⁺p is the minimum-norm solution of K̄x = p on the kept range of K̄: eigenvalues above
    the round-off cut-off 4·m·ρ of the system (:func:`mtlsolve.gramian.rank_threshold`, so
    float32 and float64 input each at their own precision), or above ``rank_tol``·λ_max when
    given; at full rank it is a Cholesky solve with one step of iterative refinement (an
    eigen pseudo-inverse would not meet K̄x = p to round-off on an ill-conditioned K̄), else
    the eigen pseudo-inverse on the kept eigenvectors. ``least_squares=True`` solves K̄x = p
    by least squares (SVD, same cut-off) instead, as the official code's ``use_least_square``.
    When p is (almost) orthogonal to the range of K̄ (‖K̄x‖² ≤ cut-off·‖p‖², e.g. a zero
    system, or one coordinate whose signs cancel), d_u has no direction and the weights are
    zero (fallback "zero update", ``converged`` False, residual inf).

    Certificate (``diagnostics``): ``residual`` = max_i |(P(K̄x − p))_i|/(Σ_j|x_j| + max_j|p_j|),
    P the projector on the kept range (I at full rank, where K̄x = p says u_i·d_u = p_i: equal
    cosines of d with every g_i for p = 1), ``tolerance`` = certificate_tolerance(ρ).
    """

    name: ClassVar[str] = "config"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {"conflict_free": {}}
    properties: ClassVar[frozenset[str]] = frozenset({"permutation_equivariant", "positive_homogeneous"})
    paper: ClassVar[str] = "Liu, Chu, Thuerey — ICLR 2025 — arXiv 2408.11104"

    preference: tuple[float, ...] | None = attrs.field(default=None, converter=_PREFERENCE)
    least_squares: bool = attrs.field(default=False, validator=flag)
    rank_tol: float | None = attrs.field(default=None, validator=optional(non_negative))

    def weights_from_gramian(self, gramian: np.ndarray, system: GradientSystem) -> tuple[np.ndarray, Mapping[str, Any]]:
        m = gramian.shape[0]
        if self.preference is None:
            p = np.ones(m)
        elif len(self.preference) != m:
            raise InvalidSystemError(f"config was given {len(self.preference)} preference values for {m} tasks")
        else:
            p = np.array(self.preference)
        rho = system.roundoff
        unit, norms = normalised(gramian)
        scale = np.divide(1.0, norms, out=np.zeros(m), where=norms > 0.0)
        lam, V = np.linalg.eigh(unit)
        cutoff = rank_threshold(m, rho) if self.rank_tol is None else self.rank_tol * max(lam[-1], 0.0)
        keep = lam > cutoff
        rank = int(keep.sum())
        projector = None if rank == m else V[:, keep] @ V[:, keep].T
        if self.least_squares:
            rcond = cutoff / lam[-1] if lam[-1] > 0 else 1.0
            x = np.linalg.lstsq(unit, p, rcond=rcond)[0]
        elif rank == m and (L := _cholesky(unit)) is not None:
            x = scipy.linalg.cho_solve((L, True), p)
            x = x + scipy.linalg.cho_solve((L, True), p - unit @ x)
        else:
            x = V[:, keep] @ ((V[:, keep].T @ p) / lam[keep])
        a = scale * x
        Ka = gramian @ a
        norm_sq = float(a @ Ka)
        reached = unit @ x  # the projection of p onto the range of K̄
        tolerance = float(certificate_tolerance(rho))
        if norm_sq <= 0.0 or reached @ reached <= max(cutoff, rank_threshold(m, rho)) * (p @ p):
            return np.zeros(m), {
                "rank": rank,
                "converged": False,
                "fallback": "zero update",
                "residual": float("inf"),
                "tolerance": tolerance,
                "message": "config: p is orthogonal to the range of the unit gradients; d = 0",
            }
        error = reached - p
        if projector is not None:
            error = projector @ error
        residual = float(np.abs(error).max() / (np.abs(x).sum() + np.abs(p).max()))
        w = (Ka.sum() / norm_sq) * a
        diagnostics = {
            "rank": rank,
            "residual": residual,
            "tolerance": tolerance,
            "converged": bool(residual <= tolerance),
        }
        if not diagnostics["converged"]:
            diagnostics["fallback"] = "none: the uncertified result is returned"
        return w, diagnostics


def _cholesky(A: np.ndarray) -> np.ndarray | None:
    """The lower Cholesky factor of A, or None when A is not numerically positive definite."""
    try:
        return np.linalg.cholesky(A)
    except np.linalg.LinAlgError:
        return None

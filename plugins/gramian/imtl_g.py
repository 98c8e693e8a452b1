"""IMTL-G: impartial gradient weighting (docs/methods.md#imtl_g)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

import attrs
import numpy as np
import scipy.linalg.lapack

from mtlsolve.gramian import certificate_tolerance, normalised, norms, rank_threshold
from mtlsolve.solver import GramianWeighting
from mtlsolve.system import GradientSystem
from mtlsolve.validation import one_of, optional, positive


@attrs.define(kw_only=True, eq=False)
class IMTLG(GramianWeighting):
    """IMTL-G, Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021 (gradient balance), in Gramian form.

    The update d = Σ α_i g_i has equal projections on every unit gradient,
    u_i·d = const, with Σ α_i = 1. With n_i = ‖g_i‖ = √K_ii the weights are
    α = K⁺n / (1ᵀK⁺n), which equals the paper's closed form
    α_{2:m} = g_1ᵀUᵀ(DUᵀ)⁻¹ whenever that exists, and extends it to linearly
    dependent gradients through the pseudo-inverse (as TorchJD does).

    ``singular="pinv"`` (default): the rank is decided on the normalised Gramian D⁻¹KD⁻¹
    (eigenvalues above ``rtol``·λ̂_max, default the round-off cut-off 4·m·ρ of the system,
    :func:`mtlsolve.gramian.rank_threshold`, so a float32 system is not read at float64's ε);
    K⁺n is then solved accurately: a Cholesky solve of D⁻¹KD⁻¹b = 1 (x = D⁻¹b) at full rank,
    else a Cholesky solve of the projected system on an orthonormal basis Q of the kept range,
    x = Q(QᵀKQ)⁻¹Qᵀn, each with one step of iterative refinement. ``singular="ridge"`` uses
    (K + ``ridge``·I)⁻¹n instead (the nash-mtl fallback, absolute ``ridge``).

    Certificate (``diagnostics``): ``residual`` = max_i |(P(Kx − n))_i|/(n_i(Σ_j n_j|x_j| + 1)),
    P the projector on the kept range (I at full rank, where it is the deviation of the
    projections u_i·d from their common value, relative), with |Σα − 1|/Σ|α_i| — for ``ridge``,
    the same on (K + ridge·I)x = n; ``tolerance`` = certificate_tolerance(ρ);
    ``projection_spread`` = (max_i u_i·d − min_i u_i·d)/|mean_i u_i·d| (0 for equal
    projections; not 0 when n ∉ range(K), where the pseudo-inverse gives the least-squares
    weights). Degenerate systems give zero weights (fallback "zero update", ``converged``
    False, residual inf, ``diagnostics["degenerate"]``): G = 0, and systems where 1ᵀx = 1ᵀK⁺n vanishes to
    round-off, for which α is unbounded: |1ᵀx| ≤ 4ρ‖c‖₁‖b‖₁ with b = D x and c = K̂⁺D⁻¹1, the
    first-order bound on how far an entry-wise error ρ of the normalised Gramian K̂ moves it.
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

    singular: str = attrs.field(default="pinv", validator=one_of("pinv", "ridge"))
    rtol: float | None = attrs.field(default=None, validator=optional(positive))
    ridge: float = attrs.field(default=1e-8, validator=positive)

    def weights_from_gramian(self, gramian: np.ndarray, system: GradientSystem) -> tuple[np.ndarray, Mapping[str, Any]]:
        rho = system.roundoff
        if self.singular == "pinv":
            solved = _compiled_full_rank(gramian, rho, self.rtol)
            if solved is not None:
                return solved
        solution = self._ridge_solution(gramian) if self.singular == "ridge" else self._pinv_solution(gramian, rho)
        return _certified(gramian, rho, solution)

    def _ridge_solution(self, gramian: np.ndarray) -> _Solution:
        """x = (K + ridge·I)⁻¹n, its residual read on the shifted matrix."""
        m = gramian.shape[0]
        shifted = gramian + self.ridge * np.eye(m)
        x = _solve(shifted, norms(gramian))
        used, scales = normalised(shifted)
        lam, Q = np.linalg.eigh(used)
        return _Solution(x, scales, lam, Q, lam > 0, m, shifted, None)

    def _pinv_solution(self, gramian: np.ndarray, rho: float) -> _Solution:
        """x = K⁺n on the range kept by the rank cut-off of the normalised Gramian."""
        m = gramian.shape[0]
        Kn, n = normalised(gramian)
        lam, Q = np.linalg.eigh(Kn)
        cutoff = rank_threshold(m, rho) if self.rtol is None else self.rtol * max(lam[-1], 0.0)
        keep = lam > cutoff
        rank = int(keep.sum())
        basis = None
        if rank == 0:
            x = np.zeros(m)
        elif rank == m:  # K = DK̂D: K x = n  ⇔  K̂ (Dx) = 1
            x = _solve(Kn, np.ones(m)) / n
        else:  # x = Q(QᵀKQ)⁻¹Qᵀn on an orthonormal basis Q of range(K) = D·range(K̂)
            basis = np.linalg.qr(n[:, None] * Q[:, keep])[0]
            x = basis @ _solve(basis.T @ gramian @ basis, basis.T @ n)
        return _Solution(x, n, lam, Q, keep, rank, gramian, basis)


class _Solution(NamedTuple):
    """A solve of K x = n: x, the scales of the normalised matrix used, its eigenpairs, the kept
    eigenvalues, the rank, the matrix the residual is read on and the basis of the kept range."""

    x: np.ndarray
    scales: np.ndarray
    lam: np.ndarray
    Q: np.ndarray
    keep: np.ndarray
    rank: int
    residual_matrix: np.ndarray
    basis: np.ndarray | None


def _compiled_full_rank(gramian: np.ndarray, rho: float, rtol: float | None) -> tuple | None:
    """The common full-rank case in one compiled call (:mod:`mtlsolve.kernels.imtl`); None otherwise."""
    from mtlsolve.kernels._dense import as_kernel_array
    from mtlsolve.kernels.imtl import SOLVED, imtl_full_rank

    m = gramian.shape[0]
    status, w, residual, spread = imtl_full_rank(
        as_kernel_array(gramian), rank_threshold(m, rho), -1.0 if rtol is None else rtol, rho
    )
    if status != SOLVED:
        return None
    return w, _diagnostics(m, float(residual), float(certificate_tolerance(rho)), float(spread))


def _diagnostics(rank: int, residual: float, tolerance: float, spread: float) -> dict[str, Any]:
    diagnostics = {
        "rank": rank,
        "degenerate": False,
        "residual": residual,
        "tolerance": tolerance,
        "converged": bool(residual <= tolerance),
        "projection_spread": spread,
    }
    if not diagnostics["converged"]:
        diagnostics["fallback"] = "none: the uncertified result is returned"
    return diagnostics


def _certified(gramian: np.ndarray, rho: float, solution: _Solution) -> tuple[np.ndarray, dict[str, Any]]:
    """α = x/1ᵀx with its certificate, or zero weights when 1ᵀx vanishes to round-off."""
    x, scales, lam, Q, keep, rank, residual_matrix, basis = solution
    m = gramian.shape[0]
    n = norms(gramian)
    # 1ᵀx = (1/n)ᵀK̂⁺1 moves by cᵀδK̂b under K̂'s round-off |δK̂| ≤ ρ (b = n∘x, c = K̂⁺(1/n)):
    # below 4ρ‖c‖₁‖b‖₁ its sign is round-off and α is unbounded noise
    total = x.sum()
    inv = np.divide(1.0, scales, out=np.zeros(m), where=scales > 0)
    c = Q[:, keep] @ ((Q[:, keep].T @ inv) / lam[keep])
    sensitivity = rho * np.abs(c).sum() * np.abs(scales * x).sum()
    tolerance = float(certificate_tolerance(rho))
    if not (np.abs(x).sum() > 0 and abs(total) > 4.0 * sensitivity):
        message = "every gradient is zero" if not n.any() else "1ᵀK⁺n vanishes to round-off: α is unbounded"
        return np.zeros(m), {
            "rank": rank,
            "degenerate": True,
            "converged": False,
            "fallback": "zero update",
            "residual": float("inf"),
            "tolerance": tolerance,
            "message": f"imtl_g: {message}; returned α = 0 (d = 0)",
        }
    w = x / total
    residual, spread = _certificate(residual_matrix, x, n, basis)
    residual = float(max(residual, abs(w.sum() - 1.0) / np.abs(w).sum()))
    return w, _diagnostics(rank, residual, tolerance, spread)


def _solve(A: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """A⁻¹rhs for a symmetric A positive definite up to round-off: a Cholesky solve (of A with its
    diagonal raised by a relative 1e-15, so that the factor exists) and one step of iterative
    refinement against A itself; least squares if even that factor does not exist."""
    shift = 1e-15 * max(float(np.abs(np.diagonal(A)).max(initial=0.0)), 1e-300)
    factor, info = _potrf(A + shift * np.eye(len(A)), lower=1)
    if info != 0:
        return np.linalg.lstsq(A, rhs, rcond=None)[0]
    x = _potrs(factor, rhs, lower=1)[0]
    return x + _potrs(factor, rhs - A @ x, lower=1)[0]


_potrf, _potrs = scipy.linalg.lapack.dpotrf, scipy.linalg.lapack.dpotrs  # LAPACK's Cholesky factor and solve


def _certificate(K: np.ndarray, x: np.ndarray, n: np.ndarray, basis: np.ndarray | None) -> tuple[float, float]:
    """(max_i |(P(Kx − n))_i|/(n_i(Σ_j n_j|x_j| + 1)), spread of the projections u_i·d)."""
    error = K @ x - n
    if basis is not None:
        error = basis @ (basis.T @ error)
    live = n > 0
    scale = n[live] * (n @ np.abs(x) + 1.0)
    residual = float((np.abs(error[live]) / scale).max(initial=0.0))
    p = (K @ x)[live] / n[live]
    mean = abs(p.mean()) if p.size else 0.0
    spread = float((p.max() - p.min()) / mean) if mean > 0 else float("inf")
    return residual, spread

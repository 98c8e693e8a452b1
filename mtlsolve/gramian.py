"""Primitives on a Gramian K = G Gᵀ (float64 numpy, m x m) and the precision model of mtlsolve.

Precision model (docs/verified.md): a Gramian computed from G in a dtype with machine epsilon u
carries an entry-wise error |δK_ij| ≤ ρ·n_i·n_j, n_i = ‖g_i‖ = √K_ii, with
ρ = 2·u_data + 2·√n·u_acc (the data's own rounding plus a probabilistic bound on the
accumulation of n products, Higham & Mary, SIAM J. Sci. Comput. 2019, Thm. 3.1). Every
tolerance of a solver derives from ρ: rank and PSD decisions are taken on the normalised
Gramian D⁻¹KD⁻¹ (D = diag n), whose round-off is ρ entry-wise whatever the row scales, and
certificates compare a scale-free residual with :func:`certificate_tolerance`.
"""

from __future__ import annotations

import functools

import numpy as np

from mtlsolve.errors import InvalidSystemError

#: A certificate accepts a scale-free residual up to this multiple of the round-off bound ρ.
CERTIFICATE_FACTOR = 64.0
#: ... and never asks for less than this (float64 kernels solve to about 1e-13)
CERTIFICATE_FLOOR = 1e-11
#: ... nor accepts more than this: a residual of 1 % is no certificate, whatever the dtype (bf16's
#: ρ alone is 1.6e-2)
CERTIFICATE_CAP = 1e-2


def norms(K: np.ndarray) -> np.ndarray:
    """The task-gradient norms n_i = √K_ii (negative round-off on the diagonal read as 0)."""
    return np.sqrt(np.clip(np.diag(K), 0.0, None))


def normalised(K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(D⁻¹KD⁻¹, n): the Gramian of the unit gradients g_i/n_i, zero rows left zero."""
    n = norms(K)
    inv = np.divide(1.0, n, out=np.zeros_like(n), where=n > 0)
    return K * np.outer(inv, inv), n


def cosines(K: np.ndarray) -> np.ndarray:
    """Pairwise cosines g_i·g_j/(n_i n_j) (0 where a gradient is zero), clipped to [−1, 1]."""
    return np.clip(normalised(K)[0], -1.0, 1.0)


def psd_part(K: np.ndarray) -> np.ndarray:
    """A positive semidefinite repair of K that respects every row's scale: D·P(D⁻¹KD⁻¹)·D, with
    P the nearest PSD matrix in Frobenius norm (negative eigenvalues set to 0). Repairing K
    itself would move the rows of small gradients by the round-off of the large ones. K itself
    when D⁻¹KD⁻¹ has a Cholesky factor (positive definite: nothing to repair)."""
    if _normalised_factorable()(np.ascontiguousarray(K, dtype=np.float64), 0.0):  # positive definite
        return K
    Kn, n = normalised(K)
    lam, Q = np.linalg.eigh(Kn)
    if lam[0] >= 0:
        return K
    return ((Q * np.clip(lam, 0.0, None)) @ Q.T) * np.outer(n, n)


@functools.cache
def _normalised_factorable():
    """:func:`mtlsolve.kernels._dense.normalised_factorable`, imported (with numba) on first use."""
    from mtlsolve.kernels._dense import normalised_factorable

    return normalised_factorable


def psd_repair(K: np.ndarray, ridge: float) -> tuple[np.ndarray, bool]:
    """K made safe for a kernel that adds ``ridge`` to the unit diagonal of D⁻¹KD⁻¹ and needs a
    convex problem (on an indefinite K, e.g. a Gramian accumulated in float32, a QP is unbounded
    along the negative directions).

    (K, False) when D⁻¹KD⁻¹ + (ridge/2)·I has a Cholesky factor, else (D·P·D, True) with
    P = Q·diag(max(λ, f))·Qᵀ from the eigendecomposition of D⁻¹KD⁻¹ and f = 4m·ε·max(λ_max, 1)
    just above the round-off of that reconstruction: :func:`psd_part` with a margin. The
    repair moves entry (i, j) by about |λ_min|·n_i·n_j, so rows of any scale keep their digits.
    """
    if _normalised_factorable()(K, 0.5 * ridge):
        return K, False
    m = K.shape[0]
    Kn, n = normalised(K)
    lam, Q = np.linalg.eigh(0.5 * (Kn + Kn.T))
    floor = 4.0 * m * np.finfo(np.float64).eps * max(lam[-1], 1.0)
    P = (Q * np.maximum(lam, floor)) @ Q.T
    return np.ascontiguousarray(P * np.outer(n, n)), True


def condition_number(K: np.ndarray) -> float:
    """λ_max/λ_min of K (inf when singular)."""
    lam = np.linalg.eigvalsh(K)
    return float(lam[-1] / lam[0]) if lam[0] > 0 else float("inf")


def numerical_rank(K: np.ndarray, roundoff: float) -> int:
    """The number of eigenvalues of D⁻¹KD⁻¹ above its round-off m·ρ (scale-free)."""
    Kn, _ = normalised(K)
    lam = np.linalg.eigvalsh(Kn)
    return int((lam > rank_threshold(K.shape[0], roundoff)).sum())


def rank_threshold(m: int, roundoff: float) -> float:
    """Eigenvalues of the normalised Gramian below this are round-off: an entry-wise error ρ moves
    them by at most m·ρ (Weyl), with a margin of 4."""
    return 4.0 * m * roundoff


def certificate_tolerance(roundoff: float, scale: float = 1.0) -> float:
    """The largest scale-free residual a certificate accepts for a system with round-off ρ:
    64ρ, at least 1e-11 and at most 1e-2."""
    return min(max(CERTIFICATE_FACTOR * roundoff, CERTIFICATE_FLOOR), CERTIFICATE_CAP) * scale


def check_gramian(K: np.ndarray, roundoff: float) -> None:
    """Raise InvalidSystemError unless K is symmetric and positive semidefinite within its round-off.

    A Gramian is symmetric and PSD by construction; a given K that is not (a wrong sign, a
    transposed block, a stale entry) would make every inner problem unbounded or meaningless.
    Both checks are scale-free: |K_ij − K_ji| ≤ 2ρ·n_i·n_j, and a Cholesky factorisation of
    D⁻¹KD⁻¹ + (m·ρ)·I must exist (so λ_min ≥ −m·ρ on the normalised Gramian).
    """
    m = K.shape[0]
    diagonal = np.diag(K)
    n = norms(K)
    scale = np.outer(n, n)
    if (diagonal < -roundoff * diagonal.max(initial=0.0)).any():
        bad = np.flatnonzero(diagonal < 0).tolist()
        raise InvalidSystemError(f"the given Gramian has negative diagonal entries in rows {bad}: not a Gramian")
    asym = np.abs(K - K.T)
    if (asym > 2 * roundoff * scale + np.finfo(np.float64).tiny).any():
        i, j = np.unravel_index(np.argmax(asym - 2 * roundoff * scale), K.shape)
        raise InvalidSystemError(
            f"the given Gramian is not symmetric: K[{i},{j}] = {K[i, j]:.6g} but K[{j},{i}] = {K[j, i]:.6g}"
        )
    if m == 1:
        return
    Kn, _ = normalised(0.5 * (K + K.T))
    try:
        np.linalg.cholesky(Kn + rank_threshold(m, roundoff) * np.eye(m))
    except np.linalg.LinAlgError:
        lam = np.linalg.eigvalsh(Kn)[0]
        raise InvalidSystemError(
            f"the given Gramian is not positive semidefinite: its normalised form has eigenvalue {lam:.3g}, "
            f"below the round-off bound −{rank_threshold(m, roundoff):.3g}; pass G Gᵀ of real gradients"
        ) from None

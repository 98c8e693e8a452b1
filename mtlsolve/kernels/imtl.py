"""IMTL-G's weights on a full-rank Gramian, certified, in one compiled call (Liu et al., ICLR 2021).

α = K⁻¹n / (1ᵀK⁻¹n), n_i = √K_ii, solved as K̂b = 1 on the normalised Gramian K̂ = D⁻¹KD⁻¹
(x = D⁻¹b) by a Cholesky factorisation with one step of iterative refinement; the certificate
and the degeneracy test are those of :class:`mtlsolve.plugins.gramian.imtl_g.IMTLG`, which
handles every other case (rank-deficient or degenerate systems, ``singular="ridge"``).
"""

from __future__ import annotations

import numpy as np

from mtlsolve.kernels._dense import PIVOT_FLOOR, chol_solve, cholesky, row_norms
from mtlsolve.kernels._numba import kernel

#: statuses of :func:`imtl_full_rank`
SOLVED, NOT_FULL_RANK, DEGENERATE, NO_FACTOR = 0, 1, 2, 3


@kernel
def imtl_full_rank(K, cutoff, rtol, roundoff):
    """(status, w, residual, spread) for a float64 Gramian K.

    The rank is full when every eigenvalue of K̂ exceeds ``cutoff`` (or ``rtol``·λ̂_max when
    ``rtol`` > 0). ``residual`` = max_i |(Kx − n)_i|/(n_i(Σ_j n_j|x_j| + 1)) together with
    |Σα − 1|/Σ|α_i|; ``spread`` = (max_i u_i·d − min_i u_i·d)/|mean_i u_i·d|. Status
    NOT_FULL_RANK (a zero row or a small eigenvalue), DEGENERATE (1ᵀx vanishes to round-off:
    |1ᵀx| ≤ 4ρ‖c‖₁‖D x‖₁ with c = K̂⁻¹D⁻¹1) and NO_FACTOR return no weights.
    """
    m = K.shape[0]
    empty = np.zeros(0)
    n = row_norms(K)
    if not n.min() > 0.0:
        return NOT_FULL_RANK, empty, 0.0, 0.0
    Kn = np.empty((m, m))
    for i in range(m):
        for j in range(m):
            Kn[i, j] = K[i, j] / (n[i] * n[j])
    lam, Q = np.linalg.eigh(Kn)
    limit = rtol * max(lam[m - 1], 0.0) if rtol > 0.0 else cutoff
    if not lam[0] > limit:
        return NOT_FULL_RANK, empty, 0.0, 0.0
    shift = 1e-15 * max(np.abs(np.diag(Kn)).max(), 1e-300)
    shifted = Kn.copy()
    for i in range(m):
        shifted[i, i] += shift
    L = np.zeros((m, m))
    if not cholesky(shifted, L, PIVOT_FLOOR):
        return NO_FACTOR, empty, 0.0, 0.0
    ones = np.ones(m)
    b = np.empty(m)
    chol_solve(L, m, ones.copy(), b)
    step = np.empty(m)
    chol_solve(L, m, ones - Kn @ b, step)
    b += step
    x = b / n
    total = x.sum()
    magnitude = np.abs(x).sum()
    c = Q @ ((Q.T @ (1.0 / n)) / lam)
    sensitivity = roundoff * np.abs(c).sum() * np.abs(b).sum()
    if not (magnitude > 0.0 and abs(total) > 4.0 * sensitivity):
        return DEGENERATE, empty, 0.0, 0.0
    w = x / total
    Kx = K @ x
    scale = n @ np.abs(x) + 1.0
    residual = 0.0
    for i in range(m):
        residual = max(residual, abs(Kx[i] - n[i]) / (n[i] * scale))
    residual = max(residual, abs(w.sum() - 1.0) / np.abs(w).sum())
    p = Kx / n
    mean = abs(p.mean())
    spread = (p.max() - p.min()) / mean if mean > 0.0 else np.inf
    return SOLVED, w, residual, spread

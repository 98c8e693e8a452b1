"""Aligned-MTL's balance matrix (Senushkin et al., arXiv 2305.19000, Algorithm 1, in task space)
and its certificate, compiled: B = V·diag(√(s/λ))·Vᵀ with BKB = s·P, P = VVᵀ the projector on
the kept range (:mod:`mtlsolve.plugins.gramian.aligned_mtl` decides the rank)."""

from __future__ import annotations

import numpy as np

from mtlsolve.kernels._dense import row_norms
from mtlsolve.kernels._numba import kernel


@kernel
def balance(lam, V, mode):
    """(B, s) for the kept eigenpairs (λ ascending, all > 0; the columns of V): s the smallest λ
    (mode 0), the lower median (1, as ``torch.median``) or the mean (2), the order of
    ``AlignedMTL.scale_mode``'s values."""
    r = lam.shape[0]
    if mode == 0:
        scale = lam[0]
    elif mode == 1:
        scale = lam[(r - 1) // 2]
    else:
        scale = lam.mean()
    B = (V * np.sqrt(scale / lam)) @ V.T
    return B, scale


@kernel
def balance_residual(K, B, scale, V):
    """(residual, spread) of BKB = s·P: max_ij |(BKB)_ij/s − P_ij| and max_i (|B|n)_i²/s (n_i = √K_ii),
    the factor by which K's round-off ρ·n_i·n_j is amplified in BKB/s."""
    residual = np.abs(B @ K @ B / scale - V @ V.T).max()
    spread = ((np.abs(B) @ row_norms(K)) ** 2).max() / scale
    return residual, spread


@kernel
def full_rank_balance(K, cutoff, condition, mode):
    """The common case in one call: K = VΛVᵀ by ``eigh`` is full rank and well conditioned
    (λ_min > ``cutoff``·max_i K_ii, so the normalised Gramian's λ̂_min exceeds the cut-off too, and
    λ_min ≥ ``condition``·λ_max, so every λ is accurate to about m·``condition``).

    Returns (full, λ, V, B, s, residual, spread); when ``full`` is False only λ and V are set."""
    lam, V = np.linalg.eigh(K)
    top = 0.0
    for i in range(K.shape[0]):
        top = max(top, K[i, i])
    if not (lam[0] > cutoff * top and lam[0] >= condition * lam[-1]):
        return False, lam, V, np.zeros((0, 0)), 0.0, 0.0, 0.0
    B, scale = balance(lam, V, mode)
    residual, spread = balance_residual(K, B, scale, V)
    return True, lam, V, B, scale, residual, spread

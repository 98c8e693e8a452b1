"""GradVac's sequential gradient vaccinations on the Gramian (numba).

GradVac is not an optimisation problem, so there is no cvxpy reference here;
the tests check the kernel against a direct transcription on G.
"""

from __future__ import annotations

import numpy as np

from mtlsolve.kernels._numba import kernel


@kernel
def gradvac_coefficients(
    K: np.ndarray, orders: np.ndarray, targets: np.ndarray, beta: float, conflict_only: bool
) -> tuple[np.ndarray, int]:
    """The vaccinated gradients as coefficients over the original rows, and the number of adjustments.

    ``K`` is the m x m Gramian, ``orders[i]`` the order (m − 1 task indices, i
    excluded) in which g_i^PC is compared with the original g_j, ``targets``
    the m x m EMA targets φ̂ (updated in place). Row i of the returned C holds
    g_i^PC = Σ_k C_ik g_k, so g_i^PC·g_j = (C K)_ij and ‖g_i^PC‖² = (C K Cᵀ)_ii.

    For each pair, φ = cos(g_i^PC, g_j) (0 when either vector is zero); if
    φ < φ̂_ij, g_i^PC += ‖g_i^PC‖(φ̂√(1−φ²) − φ√(1−φ̂²))/(‖g_j‖√(1−φ̂²))·g_j, after
    which cos(g_i^PC, g_j) = φ̂_ij (skipped when either vector is zero or
    |φ̂_ij| = 1, where no finite step reaches the target); then
    φ̂_ij ← (1 − β)φ̂_ij + βφ, at every comparison or, with ``conflict_only``,
    only where φ < φ̂_ij.
    """
    m = K.shape[0]
    C = np.eye(m)
    adjustments = 0
    cross = np.empty(m)  # (C K)_i·: g_i^PC · g_l for every l
    for i in range(m):
        for l in range(m):
            cross[l] = K[i, l]
        for k in range(orders.shape[1]):
            j = orders[i, k]
            norm_i_sq = 0.0
            for l in range(m):
                norm_i_sq += C[i, l] * cross[l]
            norm_i = np.sqrt(max(norm_i_sq, 0.0))
            norm_j = np.sqrt(max(K[j, j], 0.0))
            phi = 0.0
            if norm_i > 0.0 and norm_j > 0.0:
                phi = min(max(cross[j] / (norm_i * norm_j), -1.0), 1.0)
            target = targets[i, j]
            if phi < target:
                rest = 1.0 - target * target
                if norm_i > 0.0 and norm_j > 0.0 and rest > 0.0:
                    root = np.sqrt(rest)
                    w = norm_i * (target * np.sqrt(1.0 - phi * phi) - phi * root) / (norm_j * root)
                    C[i, j] += w
                    for l in range(m):
                        cross[l] += w * K[j, l]
                    adjustments += 1
                targets[i, j] = (1.0 - beta) * target + beta * phi
            elif not conflict_only:
                targets[i, j] = (1.0 - beta) * target + beta * phi
    return C, adjustments

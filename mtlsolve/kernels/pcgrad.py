"""PCGrad's sequential projections on the Gramian (numba).

PCGrad is not an optimisation problem, so there is no cvxpy reference here;
the tests check the kernel against a direct transcription on G.
"""

from __future__ import annotations

import numpy as np

from mtlsolve.kernels._numba import kernel


@kernel
def pcgrad_coefficients(K: np.ndarray, orders: np.ndarray) -> tuple[np.ndarray, int]:
    """The PCGrad gradients as coefficients over the original rows, and the number of projections.

    ``K`` is the m x m Gramian, ``orders[i]`` the order (m − 1 task indices,
    i excluded) in which g_i^PC is projected. Row i of the returned C holds
    g_i^PC = Σ_j C_ij g_j, so g_i^PC·g_j = (C K)_ij. A task j with g_j = 0
    never conflicts (its dot product is 0) and is skipped.
    """
    m = K.shape[0]
    C = np.eye(m)
    projections = 0
    for i in range(m):
        for k in range(orders.shape[1]):
            j = orders[i, k]
            if K[j, j] <= 0.0:
                continue
            dot = 0.0
            for l in range(m):
                dot += C[i, l] * K[l, j]
            if dot < 0.0:
                C[i, j] -= dot / K[j, j]
                projections += 1
    return C, projections


def random_orders(gen: np.random.Generator, m: int) -> np.ndarray:
    """For each task i, a uniformly random order of the other m − 1 tasks (an m x (m − 1) int64 array)."""
    ranks = gen.permuted(np.broadcast_to(np.arange(m - 1, dtype=np.int64), (m, m - 1)), axis=1)
    return ranks + (ranks >= np.arange(m)[:, None])

"""Dense helpers the m x m kernels share."""

from __future__ import annotations

import numba
import numpy as np


def as_kernel_array(a) -> np.ndarray:
    """A writable C-contiguous float64 array, so every call hits the same compiled signature
    (numba types a read-only array, such as ``GradientSystem.gramian64``, separately)."""
    a = np.ascontiguousarray(a, dtype=np.float64)
    return a if a.flags.writeable else a.copy()


@numba.njit(cache=True)
def chol_solve(L, n, rhs, out):
    """out[:n] = (L Lᵀ)⁻¹ rhs[:n] for the lower-triangular factor L[:n, :n]."""
    for i in range(n):
        s = rhs[i]
        for c in range(i):
            s -= L[i, c] * out[c]
        out[i] = s / L[i, i]
    for i in range(n - 1, -1, -1):
        s = out[i]
        for r in range(i + 1, n):
            s -= L[r, i] * out[r]
        out[i] = s / L[i, i]

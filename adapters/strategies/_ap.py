"""The message passing of Affinity Propagation (Frey & Dueck, Science 2007) as a numba kernel.

Responsibilities R and availabilities A are damped as in scikit-learn's implementation; the run
stops once the exemplar set has not changed for ``convergence_iter`` iterations (and is not empty).
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True)
def messages(S: np.ndarray, damping: float, convergence_iter: int, max_iter: int) -> tuple[np.ndarray, bool]:
    """(exemplar mask, converged) for a similarity matrix S whose diagonal holds the preferences."""
    n = S.shape[0]
    R = np.zeros((n, n))
    A = np.zeros((n, n))
    seen = np.zeros((n, convergence_iter), dtype=np.bool_)
    exemplar = np.zeros(n, dtype=np.bool_)
    keep = 1.0 - damping
    for it in range(max_iter):
        for i in range(n):
            best, top, second = 0, -np.inf, -np.inf
            for k in range(n):
                v = A[i, k] + S[i, k]
                if v > top:
                    best, second, top = k, top, v
                elif v > second:
                    second = v
            for k in range(n):
                new = S[i, k] - (second if k == best else top)
                R[i, k] = damping * R[i, k] + keep * new
        for k in range(n):
            col = 0.0
            for i in range(n):
                col += R[i, k] if i == k else max(R[i, k], 0.0)
            for i in range(n):
                new = col - (R[i, k] if i == k else max(R[i, k], 0.0))
                if i != k and new > 0.0:
                    new = 0.0
                A[i, k] = damping * A[i, k] + keep * new
        count = 0
        for k in range(n):
            exemplar[k] = A[k, k] + R[k, k] > 0.0
            seen[k, it % convergence_iter] = exemplar[k]
            count += exemplar[k]
        if it >= convergence_iter:
            stable = True
            for k in range(n):
                s = seen[k].sum()
                if s != 0 and s != convergence_iter:
                    stable = False
            if stable and count > 0:
                return exemplar, True
    return exemplar, False

"""The message passing of Affinity Propagation (Frey & Dueck, Science 2007) as a numba kernel.

Responsibilities R and availabilities A are damped as in scikit-learn's implementation; the run
stops once the exemplar set has not changed for ``convergence_iter`` iterations (and is not empty).
Compiled with :func:`mtlsolve.kernels._numba.kernel`, so the on-disk cache is stamped with the
sources of this package.
"""

from __future__ import annotations

import numpy as np

from mtlsolve.kernels._numba import kernel


@kernel
def messages(S: np.ndarray, damping: float, convergence_iter: int, max_iter: int) -> tuple[np.ndarray, bool]:
    """(exemplar mask, converged) for a similarity matrix S whose diagonal holds the preferences."""
    n = S.shape[0]
    R = np.zeros((n, n))
    A = np.zeros((n, n))
    seen = np.zeros((n, convergence_iter), dtype=np.bool_)
    exemplar = np.zeros(n, dtype=np.bool_)
    for it in range(max_iter):
        update_responsibilities(S, A, R, damping)
        update_availabilities(R, A, damping)
        count = mark_exemplars(A, R, exemplar, seen, it % convergence_iter)
        if it >= convergence_iter and exemplars_stable(seen) and count > 0:
            return exemplar, True
    return exemplar, False


@kernel
def update_responsibilities(S: np.ndarray, A: np.ndarray, R: np.ndarray, damping: float) -> None:
    """R ← damping·R + (1 − damping)·(S(i, k) − max_{k' ≠ k} (A(i, k') + S(i, k'))), in place."""
    n = S.shape[0]
    keep = 1.0 - damping
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


@kernel
def update_availabilities(R: np.ndarray, A: np.ndarray, damping: float) -> None:
    """A ← damping·A + (1 − damping)·a, in place, with a(k, k) = Σ_{i' ≠ k} max(0, R(i', k)) and
    a(i, k) = min(0, R(k, k) + Σ_{i' ∉ {i, k}} max(0, R(i', k)))."""
    n = R.shape[0]
    keep = 1.0 - damping
    for k in range(n):
        col = 0.0
        for i in range(n):
            col += R[i, k] if i == k else max(R[i, k], 0.0)
        for i in range(n):
            new = col - (R[i, k] if i == k else max(R[i, k], 0.0))
            if i != k and new > 0.0:
                new = 0.0
            A[i, k] = damping * A[i, k] + keep * new


@kernel
def mark_exemplars(A: np.ndarray, R: np.ndarray, exemplar: np.ndarray, seen: np.ndarray, column: int) -> int:
    """Set ``exemplar`` (A(k, k) + R(k, k) > 0) and its copy in ``seen[:, column]``; returns how many there are."""
    count = 0
    for k in range(A.shape[0]):
        exemplar[k] = A[k, k] + R[k, k] > 0.0
        seen[k, column] = exemplar[k]
        count += exemplar[k]
    return count


@kernel
def exemplars_stable(seen: np.ndarray) -> bool:
    """Whether every point was an exemplar in all or none of the recorded iterations."""
    stable = True
    for k in range(seen.shape[0]):
        s = seen[k].sum()
        if s != 0 and s != seen.shape[1]:
            stable = False
    return stable

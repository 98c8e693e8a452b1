"""Shared plumbing for the cvxpy reference formulations.

Each reference problem is built once per size with cvxpy Parameters and then
reused: a call only assigns parameter values and solves (no recompilation).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from mtlsolve.errors import SolverError

#: Tight tolerances so that references are accurate well below the 1e-6 agreement checks.
CLARABEL_OPTIONS = {"tol_gap_abs": 1e-12, "tol_gap_rel": 1e-12, "tol_feas": 1e-12, "max_iter": 500}


def cached(build: Callable[..., Any]) -> Callable[..., Any]:
    """Memoise a problem builder on its (hashable) size arguments."""
    return functools.lru_cache(maxsize=64)(build)


def solve(problem: Any) -> None:
    """Solve a built problem with Clarabel; raise SolverError unless it reports optimal."""
    import cvxpy as cp

    problem.solve(solver=cp.CLARABEL, **CLARABEL_OPTIONS)
    if problem.status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
        raise SolverError(f"cvxpy reference problem ended with status {problem.status!r}")


def psd_factor(K: Any) -> Any:
    """A matrix F with Fᵀ F = K for a symmetric PSD K (negative round-off eigenvalues clipped)."""
    import numpy as np

    lam, V = np.linalg.eigh(K)
    return (V * np.sqrt(np.clip(lam, 0.0, None))).T

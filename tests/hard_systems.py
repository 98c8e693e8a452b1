"""Families of hard task-gradient matrices for the certificate tests of the simplex QP, CAGrad
and EPO kernels and their solvers (a helper module, not a test file).

Every generator returns an exact float64 m x n matrix; a test casts it to the input dtype and
compares against the float64 version of that input; :func:`gramian_of` gives the Gramian and
round-off bound ρ a solver reads from that input (mtlsolve.system.GradientSystem).
"""

from __future__ import annotations

import numpy as np

FAMILIES = ("gaussian", "mixed_scales", "conditioned", "rank_deficient", "opposed", "hull_zero", "zero_rows")


def hard_matrix(family: str, m: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """One m x n matrix of a family:

    * ``mixed_scales``: Gaussian rows scaled log-uniformly over [1e-20, 1e3];
    * ``conditioned``: singular values log-spaced from 1 to 1e-6 (κ(K) = 1e12 when m ≤ n);
    * ``rank_deficient``: n < m (n = m when m = 1) or exact integer combinations of a few rows;
    * ``opposed``: g_1 = −g_0 + gap·‖g_0‖·u, gap in 1e-16…1;
    * ``hull_zero``: 0 in the convex hull, or within 1e-12…1e-4 of it;
    * ``zero_rows``: some rows exactly 0.
    """
    if family == "gaussian":
        return rng.standard_normal((m, n)) * rng.uniform(0.3, 3.0, (m, 1))
    if family == "mixed_scales":
        return rng.standard_normal((m, n)) * 10.0 ** rng.uniform(-20, 3, (m, 1))
    if family == "conditioned":
        r = min(m, n)
        U = np.linalg.qr(rng.standard_normal((m, r)))[0]
        V = np.linalg.qr(rng.standard_normal((n, r)))[0]
        return (U * 1e-6 ** np.linspace(0.0, 1.0, r)) @ V.T
    if family == "rank_deficient":
        if m > 2 and rng.random() < 0.5:
            rank = int(rng.integers(1, m - 1))
            base = rng.standard_normal((rank, n))
            return rng.permutation(np.vstack([base, rng.integers(-3, 4, (m - rank, rank)) @ base]))
        return rng.standard_normal((m, max(1, int(rng.integers(1, m))) if m > 1 else 1))
    if family == "opposed":
        G = rng.standard_normal((m, n))
        if m >= 2:
            u = rng.standard_normal(n)
            G[1] = -G[0] + 10.0 ** -rng.integers(0, 17) * np.linalg.norm(G[0]) * u / np.linalg.norm(u)
        return G
    if family == "hull_zero":
        H = rng.standard_normal((m, n))
        u = rng.standard_normal(n)
        return H - rng.dirichlet(np.ones(m)) @ H + rng.choice([0.0, 1e-12, 1e-8, 1e-4]) * u / np.linalg.norm(u)
    if family == "zero_rows":
        G = rng.standard_normal((m, n))
        G[rng.permutation(m)[: int(rng.integers(1, m + 1))]] = 0.0
        return G
    raise ValueError(family)


def gramian_of(G: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray, float]:
    """(X, K, ρ): G rounded to ``dtype`` (as float64), and the float64 Gramian and round-off bound
    ρ a solver reads from a system built on that input (accumulated in the input's dtype)."""
    from mtlsolve.system import GradientSystem

    system = GradientSystem(G.astype(dtype))
    return G.astype(dtype).astype(np.float64), np.array(system.gramian64), system.roundoff

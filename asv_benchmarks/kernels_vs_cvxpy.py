"""The numba inner kernels next to their cvxpy references: largest deviation and time per call.

    .venv/bin/python asv_benchmarks/kernels_vs_cvxpy.py

Deviations at m = 40 are the references' accuracy (Clarabel stops near 1e-6 on the dual-cone
projection); tests/kernels/ check the kernels' own optimality conditions to round-off.
"""

import time

import numpy as np

from mtlsolve.kernels import cagrad as cg
from mtlsolve.kernels import cone_projection as cp
from mtlsolve.kernels import fairgrad as fg
from mtlsolve.kernels import simplex_qp as sq


def systems(rng, m, k=30):
    """Random Gramians with unequal row norms and a shared component of random sign."""
    for _ in range(k):
        G = rng.standard_normal((m, 3 * m)) * rng.uniform(0.2, 5, (m, 1)) + rng.standard_normal(3 * m) * rng.choice(
            [-1, 1], (m, 1)
        )
        yield G @ G.T


def per_call_ms(f, rounds=20):
    f()
    t = time.perf_counter()
    for _ in range(rounds):
        f()
    return (time.perf_counter() - t) / rounds * 1e3


def main():
    rng = np.random.default_rng(0)
    for m in (10, 40):
        Ks = list(systems(rng, m))
        U = np.eye(m)
        solvable = [K for K in Ks if fg.fairgrad_weights(K)[2] == 0][:10]
        rows = [
            (
                "simplex QP (mgda), rel. dev of Kw",
                max(
                    np.abs((sq.min_norm_simplex(K)[0] - sq.reference_min_norm_simplex(K)) @ K).max() / np.abs(K).max()
                    for K in Ks
                ),
                lambda: sq.min_norm_simplex(Ks[0]),
                lambda: sq.reference_min_norm_simplex(Ks[0]),
            ),
            (
                "dual-cone projection (upgrad), abs dev of V",
                max(
                    np.abs(cp.project_dual_cone(K, U)[0] - cp.reference_project_dual_cone(K, U)).max() for K in Ks[:10]
                ),
                lambda: cp.project_dual_cone(Ks[0], U),
                lambda: cp.reference_project_dual_cone(Ks[0], U),
            ),
            (
                "cagrad dual (c=0.4), abs dev of w",
                max(np.abs(cg.cagrad_dual(K, 0.4)[0] - cg.reference_cagrad_dual(K, 0.4)[0]).max() for K in Ks[:10]),
                lambda: cg.cagrad_dual(Ks[0], 0.4),
                lambda: cg.reference_cagrad_dual(Ks[0], 0.4),
            ),
            (
                "nash / fairgrad (alpha=1), rel. dev of w",
                max(np.abs(fg.fairgrad_weights(K)[0] / fg.reference_fairgrad_weights(K) - 1).max() for K in solvable),
                lambda: fg.fairgrad_weights(solvable[0]),
                lambda: fg.reference_fairgrad_weights(solvable[0]),
            ),
        ]
        for name, dev, ours, reference in rows:
            a, b = per_call_ms(ours), per_call_ms(reference, 3)
            print(
                f"m={m:2d} {name:45s} max dev {dev:.1e}  numba {a * 1e3:8.1f} µs  cvxpy {b:7.2f} ms  ratio {b / a:6.0f}x"
            )


if __name__ == "__main__":
    main()

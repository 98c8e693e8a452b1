"""Per-call cost of Gramian solvers against the linear-algebra floor, as the minimum over many calls.

Run:  .venv/bin/python asv_benchmarks/per_call.py [--methods a,b,...] > after.json

Each solver is called as ``solver(G, losses=L)`` on a torch float32 G (m x n, rows with a shared
component of random sign) next to the floor ``K = G @ G.T; w @ G``; every figure is the smallest
single-call time in microseconds over many calls (the minimum is robust to a busy machine, where a
median of a few rounds is not). To compare two versions of mtlsolve, run this file under each (for
an older checkout put a copy of its package first on PYTHONPATH) and compare the JSON side by side.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings

import numpy as np
import torch

import mtlsolve

CELLS = ((2, 100_000, 600), (10, 100_000, 200), (40, 100_000, 60), (2, 1_000_000, 60), (10, 1_000_000, 20))
METHODS = "mgda,upgrad,cagrad,nash_mtl,imtl_g,aligned_mtl,fairgrad,pcgrad"


def fastest_call(function, calls: int) -> float:
    """The smallest wall time of one call, in µs."""
    best = float("inf")
    for _ in range(calls):
        start = time.perf_counter_ns()
        function()
        best = min(best, time.perf_counter_ns() - start)
    return best / 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=METHODS)
    methods = parser.parse_args().methods.split(",")
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    out = {}
    for m, n, calls in CELLS:
        rng = np.random.default_rng(0)
        shared = rng.choice([-1, 1], m)[:, None] * rng.standard_normal(n)
        G = torch.tensor(rng.standard_normal((m, n)) + shared, dtype=torch.float32)
        losses = rng.uniform(0.5, 2, m)
        w = torch.ones(m)
        out[f"floor m={m} n={n:.0e}"] = fastest_call(lambda: (G @ G.T, w @ G), calls)
        for name in methods:
            solver = mtlsolve.get(name)
            solver(G, losses=losses)  # compilation, warm state
            out[f"{name} m={m} n={n:.0e}"] = fastest_call(lambda: solver(G, losses=losses), calls)
    json.dump(out, sys.stdout, indent=1)


if __name__ == "__main__":
    main()

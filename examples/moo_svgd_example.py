"""MOO-SVGD on the two-task conflicting regression (docs/problems.md#conflicting-regression).

    python examples/moo_svgd_example.py                  # 1 seed x 300 steps, about 40 s on one core
    python examples/moo_svgd_example.py --steps 100 --seeds 1

K = 7 particles (one-hidden-layer MLPs of width 32 with one output fitted to both targets y₁ ≈ −y₂,
each initialised from its own seed) move by SGD 1e-2 along the SVGD update with their MGDA
directions. The repulsion strength α is 0 (the kernel-weighted average of the MGDA directions
only), 1 (the paper's update) or 0.1, with the median-heuristic bandwidth. For each setting the
script prints the final hypervolume of the test losses (reference point 1.1 x E(y₁ − y₂)² for both
tasks, fixed before the run), the spread of the particles along task 1, how many of them another
particle dominates, and the mean bandwidth. On this problem full repulsion spreads the particles
so far that most leave the front (dominated, some outside the reference box); the weaker 0.1
spreads them less and gives the highest hypervolume of the three.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from mtlsolve.adapters.strategies import from_config
from mtlsolve.problems import conflicting_regression


def run(repulsion: float, bandwidth: float | None, seed: int, steps: int):
    X, Y = conflicting_regression(samples=2048, seed=seed)
    Xtr, Ytr, Xte, Yte = X[:1536], Y[:1536], X[1536:], Y[1536:]
    nadir = float(((Yte[:, 0] - Yte[:, 1]) ** 2).mean())
    net = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    config = {
        "strategy": "moo_svgd",
        "num_tasks": 2,
        "n_particles": 7,
        "repulsion": repulsion,
        "bandwidth": bandwidth,
        "seed": seed,
        "reference": [1.1 * nadir] * 2,
    }
    pop = from_config(config, model=net, optimizer=torch.optim.SGD(net.parameters(), lr=1e-2))

    def loss(model, x, y):
        return ((model(x) - y) ** 2).mean(dim=0)

    gen = torch.Generator().manual_seed(seed + 100)
    widths = []
    for _ in range(steps):
        idx = torch.randint(0, 1536, (64,), generator=gen)
        widths.append(pop.step(lambda m: loss(m, Xtr[idx], Ytr[idx])).bandwidth)
    final = pop.evaluate(lambda m: loss(m, Xte, Yte))
    return pop.hypervolume(final), final, float(np.mean(widths))


def dominated_count(F: np.ndarray) -> int:
    """How many rows of F another row Pareto-dominates."""
    return sum(any((F[j] <= F[k]).all() and (F[j] < F[k]).any() for j in range(len(F))) for k in range(len(F)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    print(f"MOO-SVGD, K=7, {args.steps} steps, {args.seeds} seed(s)")
    print(f"{'setting':30s} {'final HV (mean, per seed)':>30s} {'L1 range':>10s} {'dominated':>10s} {'mean h':>8s}")
    for label, repulsion, bandwidth in [
        ("alpha=0 (no repulsion)", 0.0, None),
        ("alpha=1, median heuristic", 1.0, None),
        ("alpha=0.1, median heuristic", 0.1, None),
    ]:
        results = [run(repulsion, bandwidth, seed, args.steps) for seed in range(args.seeds)]
        hv = np.mean([r[0] for r in results])
        per_seed = ", ".join(f"{r[0]:.4f}" for r in results)
        width = np.mean([np.ptp(r[1][:, 0]) for r in results])
        dominated = np.mean([dominated_count(r[1]) for r in results])
        h = np.mean([r[2] for r in results])
        print(f"{label:30s} {hv:10.4f} ({per_seed}) {width:10.4f} {dominated:10.1f} {h:8.4f}")
    print(f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()

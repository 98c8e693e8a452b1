"""Auto-Lambda on the six-task two-cluster regression (docs/problems.md#two-cluster-regression).

    python examples/auto_lambda_example.py                  # 2 seeds x 1500 steps, about 20 s on an idle core
    python examples/auto_lambda_example.py --steps 300 --seeds 1

Task 1 is the primary task (the validation loss is its loss alone) and tasks 2–6 are auxiliary:
tasks 2–3 are noisy copies of it, tasks 4–6 conflict with it. A shared tanh trunk (width 32) with
one linear output per task is trained by SGD 0.05 on 128 training rows; Auto-Lambda updates the
task weights λ (initial 0.1) from the lookahead gradient of the primary loss on 128 validation rows.
The script prints the final λ per task (the copies should gain weight, the conflicting tasks lose
it) and the primary task's test loss against equal weights and against training on the primary
task alone.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from mtlsolve.adapters.strategies import from_config
from mtlsolve.problems import two_cluster_regression


def make(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 6))


def losses(model, x, y):
    return ((model(x) - y) ** 2).mean(dim=0)


def run(seed: int, steps: int, mode: str):
    X, Y = two_cluster_regression(samples=2304, noise=0.3, seed=seed)
    Xtr, Ytr, Xva, Yva, Xte, Yte = X[:128], Y[:128], X[128:256], Y[128:256], X[256:], Y[256:]
    net = make(seed)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(seed + 100)
    al = None
    if mode == "auto_lambda":
        al = from_config({"strategy": "auto_lambda", "num_tasks": 6, "primary": [0]}, model=net, optimizer=opt)
    fixed = torch.ones(6) if mode == "equal" else torch.eye(6)[0]
    for _ in range(steps):
        i = torch.randint(0, 128, (32,), generator=gen)
        j = torch.randint(0, 128, (32,), generator=gen)
        if al is not None:
            al.step(lambda m: losses(m, Xtr[i], Ytr[i]), lambda m: losses(m, Xva[j], Yva[j]))
        else:
            opt.zero_grad()
            (fixed * losses(net, Xtr[i], Ytr[i])).sum().backward()
            opt.step()
    with torch.no_grad():
        test = float(losses(net, Xte, Yte)[0])
    weights = al.weights.detach().numpy().copy() if al is not None else fixed.numpy()
    return test, weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    print(f"Auto-Lambda, primary task 1 of 6, {args.steps} steps, {args.seeds} seed(s)")
    print(f"{'training':14s} {'primary test loss (mean, per seed)':>40s}   final λ (mean over seeds)")
    for mode in ("primary_only", "equal", "auto_lambda"):
        results = [run(seed, args.steps, mode) for seed in range(args.seeds)]
        test = np.mean([r[0] for r in results])
        per_seed = ", ".join(f"{r[0]:.4f}" for r in results)
        lam = np.mean([r[1] for r in results], axis=0)
        print(f"{mode:14s} {test:10.4f} ({per_seed})   [{', '.join(f'{v:+.3f}' for v in lam)}]")
    print(f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()

"""MoML on the six-task two-cluster regression (docs/problems.md#two-cluster-regression).

    python examples/moml_example.py                  # 2 seeds x 1000 steps, about 40 s on one core
    python examples/moml_example.py --steps 300 --seeds 1

Tasks 1–3 and 4–6 are two clusters that conflict with each other, and the targets of tasks 4–6 are
noisier (noise 0.3 vs 0.05 added on top). A shared tanh trunk (width 32) with one linear output per
task is trained by SGD 0.05 on 128 training rows. Three ways of weighting the tasks: equal weights
1/6, Auto-Lambda with every task primary (λ follows the gradient of the summed validation loss),
and MoML (λ = softmax(a), a follows the MGDA direction of the six validation hypergradients, so that
no validation loss goes up to first order). Both bilevel methods start at λ = 1/6 and learn by Adam
1e-2 on 128 validation rows. The script prints the mean and worst-task test loss and the final λ.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from mtlsolve.adapters.strategies import from_config
from mtlsolve.problems import two_cluster_regression


def losses(model, x, y):
    return ((model(x) - y) ** 2).mean(dim=0)


def run(seed: int, steps: int, mode: str):
    X, Y = two_cluster_regression(samples=2304, noise=0.05, seed=seed)
    gen = torch.Generator().manual_seed(seed + 7)
    Y = Y + torch.tensor([0.0, 0.0, 0.0, 0.3, 0.3, 0.3]) * torch.randn(Y.shape, generator=gen)
    Xtr, Ytr, Xva, Yva, Xte, Yte = X[:128], Y[:128], X[128:256], Y[128:256], X[256:], Y[256:]
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 6))
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    strategy = None
    if mode != "equal":
        config = {"strategy": mode, "num_tasks": 6, "outer_lr": 1e-2}
        if mode == "auto_lambda":
            config["weight_init"] = 1 / 6
        strategy = from_config(config, model=net, optimizer=opt)
    for _ in range(steps):
        i = torch.randint(0, 128, (32,), generator=gen)
        j = torch.randint(0, 128, (32,), generator=gen)
        if strategy is not None:
            strategy.step(lambda m: losses(m, Xtr[i], Ytr[i]), lambda m: losses(m, Xva[j], Yva[j]))
        else:
            opt.zero_grad()
            losses(net, Xtr[i], Ytr[i]).mean().backward()
            opt.step()
    with torch.no_grad():
        test = losses(net, Xte, Yte).numpy()
    weights = np.full(6, 1 / 6) if strategy is None else strategy.weights.detach().numpy().copy()
    return test.mean(), test.max(), weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    print(f"MoML vs Auto-Lambda vs equal weights, 6 tasks, {args.steps} steps, {args.seeds} seed(s)")
    print(f"{'weighting':12s} {'mean test loss':>15s} {'worst task':>11s}   final λ (mean over seeds)")
    for mode in ("equal", "auto_lambda", "moml"):
        results = [run(seed, args.steps, mode) for seed in range(args.seeds)]
        mean = np.mean([r[0] for r in results])
        worst = np.mean([r[1] for r in results])
        lam = np.mean([r[2] for r in results], axis=0)
        print(f"{mode:12s} {mean:15.4f} {worst:11.4f}   [{', '.join(f'{v:.3f}' for v in lam)}]")
    print(f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()

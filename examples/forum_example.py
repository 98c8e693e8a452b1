"""FORUM on the six-task two-cluster regression (docs/problems.md#two-cluster-regression).

    python examples/forum_example.py                  # 1 seed x 600 steps, about 30 s on one core
    python examples/forum_example.py --steps 200

The set-up of examples/moml_example.py: tasks 1–3 and 4–6 are two conflicting clusters, tasks 4–6
with noisier targets; a shared tanh trunk (width 32) with one linear output per task, SGD 0.05,
128 training rows for the lower level and 128 validation rows for the upper level. Equal weights
1/6 against FORUM (λ = softmax(a), 5 inner SGD steps of 0.1, ρ = 0.1, Adam 1e-2 on a; an "epoch"
of the averaging schedule is 100 steps). The script prints the mean and worst-task test loss, the
final λ, and FORUM's mean constraint value q = f(a, ω) − f(a, ω_T) and ν over the last 100 steps.
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
    forum = None
    if mode == "forum":
        forum = from_config({"strategy": "forum", "num_tasks": 6, "outer_lr": 1e-2}, model=net, optimizer=opt)
    tail = []
    for t in range(steps):
        i = torch.randint(0, 128, (32,), generator=gen)
        j = torch.randint(0, 128, (32,), generator=gen)
        if forum is not None:
            record = forum.step(lambda m: losses(m, Xtr[i], Ytr[i]), lambda m: losses(m, Xva[j], Yva[j]))
            if t >= steps - 100:
                tail.append((record.constraint, record.nu))
            if (t + 1) % 100 == 0:
                forum.end_epoch()
        else:
            opt.zero_grad()
            losses(net, Xtr[i], Ytr[i]).mean().backward()
            opt.step()
    with torch.no_grad():
        test = losses(net, Xte, Yte).numpy()
    weights = np.full(6, 1 / 6) if forum is None else forum.weights.numpy()
    q, nu = np.mean(tail, axis=0) if tail else (float("nan"), float("nan"))
    return test.mean(), test.max(), weights, q, nu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    print(f"FORUM vs equal weights, 6 tasks, {args.steps} steps, {args.seeds} seed(s)")
    print(f"{'weighting':10s} {'mean test loss':>15s} {'worst task':>11s} {'mean q':>9s} {'mean nu':>9s}   final λ")
    for mode in ("equal", "forum"):
        results = [run(seed, args.steps, mode) for seed in range(args.seeds)]
        mean, worst = np.mean([r[0] for r in results]), np.mean([r[1] for r in results])
        lam = np.mean([r[2] for r in results], axis=0)
        q, nu = np.mean([r[3] for r in results]), np.mean([r[4] for r in results])
        qs, nus = ("-", "-") if mode == "equal" else (f"{q:.2e}", f"{nu:.2e}")
        print(f"{mode:10s} {mean:15.4f} {worst:11.4f} {qs:>9s} {nus:>9s}   [{', '.join(f'{v:.3f}' for v in lam)}]")
    print(f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()

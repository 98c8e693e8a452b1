"""BayesAgg-MTL on the six-task two-cluster regression (docs/problems.md#two-cluster-regression), and a mix with binary tasks.

    python examples/bayesagg_mtl_example.py                  # 2 seeds x 60 epochs, under a minute on one core
    python examples/bayesagg_mtl_example.py --epochs 10 --seeds 1

Tasks 1–3 are noisy copies of one function and tasks 4–6 of a conflicting one; here tasks 4–6 get
three times the label noise, so their head posteriors (and hence their gradients at the shared
features) are less certain. A shared tanh trunk (16 → 32) with one linear head per task is trained by
Adam (1e-2) on 512 rows in batches of 64, either on the sum of the task losses ("equal") or with
BayesAgg-MTL: variance power p = 0 (every task weighted equally: the plain mean of the expected
gradients), p = 0.5 (the official default) and p = 1 (the untempered product of Gaussians). The script
prints the mean test loss of each task cluster (the noise floors are 0.04 and 0.36), the mean over the
six tasks, and each cluster's share of the aggregation weights over the last epoch.

A second table mixes task types (as the official code does): tasks 1–3 stay regression tasks and
tasks 4–6 become binary tasks, the label 1[target > 0] of their noisy targets, trained on the binary
cross-entropy; their posterior is the Laplace approximation and their gradient moments are sampled
(256 draws; the official default is 1024). It prints the regression test loss, the binary tasks' test
error rate and the shares; ``--no-mixed`` skips it.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from mtlsolve.adapters.strategies import from_config
from mtlsolve.problems import two_cluster_regression

LR = 1e-2
NOISE = torch.tensor([0.2, 0.2, 0.2, 0.6, 0.6, 0.6])


def data(seed: int):
    X, Y = two_cluster_regression(samples=2560, noise=0.0, seed=seed)
    Y = Y + NOISE * torch.randn(Y.shape, generator=torch.Generator().manual_seed(seed + 50))
    return X[:512], Y[:512], X[512:], Y[512:]


def run(seed: int, epochs: int, mode: str, power: float, mixed: bool = False):
    Xtr, Ytr, Xte, Yte = data(seed)
    if mixed:  # tasks 4-6: binary labels of the noisy targets
        Ytr, Yte = (torch.cat((Y[:, :3], (Y[:, 3:] > 0).float()), dim=1) for Y in (Ytr, Yte))
    torch.manual_seed(seed)
    backbone = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh())
    heads = [torch.nn.Linear(32, 1) for _ in range(6)]
    params = [*backbone.parameters(), *(p for h in heads for p in h.parameters())]
    opt = torch.optim.Adam(params, lr=LR)
    ba = None
    if mode == "bayesagg_mtl":
        config = {"strategy": "bayesagg_mtl", "num_tasks": 6, "variance_power": power}
        if mixed:
            config |= {"task_type": ["regression"] * 3 + ["binary"] * 3, "classification_variance_power": power}
            config |= {"mc_samples": 256}
        ba = from_config(config, backbone=backbone, heads=heads, optimizer=opt)
    gen = torch.Generator().manual_seed(seed + 100)
    shares = []
    for _ in range(epochs):
        for i in torch.randperm(512, generator=gen).split(64):
            x, y = Xtr[i], Ytr[i]
            if ba is not None:
                losses = task_losses(ba(x), y, mixed)
                shares.append(ba.step(losses, y).weights)
            else:
                h = backbone(x)
                losses = task_losses([head(h) for head in heads], y, mixed)
                opt.zero_grad()
                losses.sum().backward()
                opt.step()
        if ba is not None:
            ba.end_epoch()
    with torch.no_grad():
        h = backbone(Xte)
        test = np.array([float(((head(h).squeeze(1) - Yte[:, t]) ** 2).mean()) for t, head in enumerate(heads)])
        if mixed:  # error rates of the binary tasks
            test[3:] = [float(((heads[t](h).squeeze(1) > 0).float() != Yte[:, t]).float().mean()) for t in range(3, 6)]
    share = np.mean(shares[-8:], axis=0) if shares else np.full(6, 1 / 6)
    return test, share


def task_losses(preds, y, mixed: bool) -> torch.Tensor:
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    return torch.stack(
        [
            bce(p.squeeze(1), y[:, t]) if mixed and t >= 3 else ((p.squeeze(1) - y[:, t]) ** 2).mean()
            for t, p in enumerate(preds)
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--no-mixed", action="store_true", help="skip the regression + binary table")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    print(
        f"BayesAgg-MTL, six regression tasks (label noise 0.2 x3, 0.6 x3), {args.epochs} epochs, {args.seeds} seed(s)"
    )
    print(f"{'training':20s} {'tasks 1-3':>10s} {'tasks 4-6':>10s} {'mean':>8s}   share 1-3 / 4-6 (last epoch)")
    for mode, power in (("equal", 0.0), ("bayesagg_mtl", 0.0), ("bayesagg_mtl", 0.5), ("bayesagg_mtl", 1.0)):
        results = [run(seed, args.epochs, mode, power) for seed in range(args.seeds)]
        test = np.mean([r[0] for r in results], axis=0)
        share = np.mean([r[1] for r in results], axis=0)
        label = mode if mode == "equal" else f"{mode}(p={power:g})"
        print(
            f"{label:20s} {test[:3].mean():10.4f} {test[3:].mean():10.4f} {test.mean():8.4f}"
            f"   {share[:3].sum():.3f} / {share[3:].sum():.3f}"
        )
    if not args.no_mixed:
        print("\nmixed: tasks 1-3 regression, tasks 4-6 binary (labels of the noisy targets)")
        print(f"{'training':26s} {'loss 1-3':>10s} {'error 4-6':>10s}   share 1-3 / 4-6 (last epoch)")
        for mode, power in (("equal", 0.0), ("bayesagg_mtl", 0.5)):
            results = [run(seed, args.epochs, mode, power, mixed=True) for seed in range(args.seeds)]
            test = np.mean([r[0] for r in results], axis=0)
            share = np.mean([r[1] for r in results], axis=0)
            label = "mixed " + (mode if mode == "equal" else f"{mode}(p={power:g})")
            print(
                f"{label:26s} {test[:3].mean():10.4f} {test[3:].mean():10.4f}   {share[:3].sum():.3f} / {share[3:].sum():.3f}"
            )
    print(f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()

"""COST (continual optimisation with symmetry teleportation) on a two-task CPU check (docs/methods.md#cost).

    python examples/cost_example.py                  # 1000 batches a run, three runs, under a minute on one core
    python examples/cost_example.py --steps 2000 --lora-lr 1e-3

A shared two-layer MLP trunk (width 32) with one linear head per task fits y₁ = sin(a·x) and
y₂ = −sin(a·x) + 0.3·cos(b·x) (task 2's loss ×5). The base solver is linear scalarisation with Adam
1e-3; from step 300 COST may teleport at most once per 100-step epoch when it sees a dominated
conflict (min_i cos(g₀, g_i) ≤ 0). For each teleport the example prints the largest relative
deviation of the teleport-set losses from their contour during the adapter optimisation, and
min_i cos(g₀, g_i) and ‖g₀‖ on the triggering batch before and after; then the final training
losses of the base alone, COST, COST without historical trajectory reuse, and the reset-only control:
the same trigger and gates, but at a trigger step Adam's state is cleared and the weights stay where
they are. A teleport whose HTR finds c ≤ 0 also clears Adam's state, so COST's gain over the base
must beat this control before it can be credited to the teleport.
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn

import mtlsolve

SCALE = torch.tensor([1.0, 5.0])


class TwoHeadNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh())
        self.heads = nn.ModuleList([nn.Linear(32, 1) for _ in range(2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.trunk(x)
        return torch.cat([head(h) for head in self.heads], dim=1)


def data(samples: int = 2048, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(10, generator=gen) / math.sqrt(10)
    b = torch.randn(10, generator=gen) / math.sqrt(10)
    X = torch.randn(samples, 10, generator=gen)
    return X, torch.stack([torch.sin(X @ a), -torch.sin(X @ a) + 0.3 * torch.cos(X @ b)], dim=1)


def task_losses(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return ((model(x) - y) ** 2).mean(dim=0) * SCALE


def train(args, teleports: bool, htr: bool = True, on_trigger: str = "teleport"):
    torch.manual_seed(args.seed)
    X, Y = data()
    net = TwoHeadNet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    config = {
        "name": "cost",
        "base": "ls",
        "lora_rank": 2,
        "tele_rounds": 1,
        "start_step": 300,
        "max_teleports_per_epoch": 1 if teleports else 0,
        "max_norm": None,
        "lora_lr": args.lora_lr,
        "monitor": True,
        "htr": htr,
        "on_trigger": on_trigger,
        "seed": args.seed,
    }
    teleport_set = [(X[i : i + 64], Y[i : i + 64]) for i in range(0, 512, 64)]
    settings = mtlsolve.strategy_from_config(config)  # validated plain values; no model needed yet
    cost = settings.build(model=net, optimizer=opt, shared=net.trunk, loss_fn=task_losses, teleport_loader=teleport_set)
    gen = torch.Generator().manual_seed(args.seed + 1)
    for step in range(args.steps):
        idx = torch.randint(0, len(X), (32,), generator=gen)
        cost.train_step((X[idx], Y[idx]))
        if (step + 1) % 100 == 0:
            cost.end_epoch()
    with torch.no_grad():
        return cost, task_losses(net, (X, Y)).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--lora-lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    _, base = train(args, teleports=False)
    cost, final = train(args, teleports=True)
    _, no_htr = train(args, teleports=True, htr=False)
    reset, reset_only = train(args, teleports=True, on_trigger="reset")
    print(f"{cost.teleports} teleports")
    for r in cost.records:
        print(
            f"step {r['step']:5d}: max contour deviation {100 * r['max_deviation']:.2f} %, "
            f"min cos(g0, g_i) {r['min_cos_before']:+.3f} -> {r['min_cos_after']:+.3f}, "
            f"|g0| {r['g0_norm_before']:.3f} -> {r['g0_norm_after']:.3f}, HTR {r['htr']}"
        )
    runs = (("LS", base), ("LS + COST", final), ("LS + COST, htr=False", no_htr), ("LS + Adam reset only", reset_only))
    for name, losses in runs:
        print(f"{name:22s} final training losses: task 1 {losses[0]:.4f}  task 2 {losses[1]:.4f}")
    print(f"(reset only: the optimiser state cleared at the {reset.teleports} trigger steps, no teleport)")


if __name__ == "__main__":
    main()

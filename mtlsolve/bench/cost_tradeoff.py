"""COST's teleport budget against its loss-contour invariance (docs/methods.md#cost).

One teleport of COST (Zhou, Meng, Wu, Zhao, Miao, NeurIPS 2025, arXiv 2503.04046) is a trade: the
LoRA adapter is trained to lower the sharpness term (and with it the dominated conflict) while the
invariance term holds every task loss on its contour L*_i. The more the adapter moves the weights —
more adapter steps (``tele_rounds`` passes over the teleport set) or a larger ``lora_lr`` — the more
it can change the conflict, and the further the losses may leave the contour.

:func:`tradeoff` measures both on the CPU check of docs/problems.md#cost-check: a shared two-layer MLP
trunk (width 32) with linear heads fits y₁ = sin(a·x) and y₂ = −sin(a·x) + 0.3·cos(b·x) (task 2's loss
×5), trained by LS with Adam 1e-3 for ``warmup`` steps; the first later batch whose gradients show a
dominated conflict (min_i cos(g₀, g_i) ≤ 0) is then teleported from the same weights once per
(budget, LoRA learning rate), with the released objective 10·|L − L*| − 0.5·sharpness, LoRA rank 2 on
the trunk and a 512-sample teleport set (8 batches). One row per seed, budget and learning rate:

* ``adapter_steps`` = 8 × ``tele_rounds``;
* ``max_deviation``: the largest max_i |L_i − L*_i| / L*_i on the teleport set over the adapter steps;
* ``final_deviation``: the same after the last adapter step (the teleported point);
* ``min_cos_before`` / ``min_cos_after``: min_i cos(g₀, g_i) on the triggering batch before and after;
  ``conflict_reduction`` is their difference (positive: less conflict);
* ``displacement``: ‖Δθ‖ of the shared parameters.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

#: the budgets (passes over the 8-batch teleport set) and LoRA learning rates of a default sweep
BUDGETS = (1, 4, 16)
LORA_LRS = (1e-4, 1e-3, 1e-2)


def _problem(seed: int, samples: int = 2048):
    import torch

    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(10, generator=gen) / math.sqrt(10)
    b = torch.randn(10, generator=gen) / math.sqrt(10)
    X = torch.randn(samples, 10, generator=gen)
    return X, torch.stack([torch.sin(X @ a), -torch.sin(X @ a) + 0.3 * torch.cos(X @ b)], dim=1)


def _net():
    from torch import nn

    class TwoHeadNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trunk = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh())
            self.heads = nn.ModuleList([nn.Linear(32, 1) for _ in range(2)])

        def forward(self, x):
            import torch

            h = self.trunk(x)
            return torch.cat([head(h) for head in self.heads], dim=1)

    return TwoHeadNet()


def _losses(model, batch):
    import torch

    x, y = batch
    return ((model(x) - y) ** 2).mean(dim=0) * torch.tensor([1.0, 5.0])


def _min_cos(net, batch) -> float:
    """min_i cos(g₀, g_i) over the per-task gradients of the trunk on ``batch``."""
    import torch

    from mtlsolve.adapters.strategies.cost import mean_cosines

    shared = list(net.trunk.parameters())
    L = _losses(net, batch)
    G = torch.stack(
        [torch.cat([g.reshape(-1) for g in torch.autograd.grad(Li, shared, retain_graph=True)]) for Li in L]
    )
    G = G.double()
    return float(mean_cosines((G @ G.T).numpy())[0].min())


def _cost(net, opt, teleport, *, rounds: int, lora_lr: float, seed: int, teleports: int):
    from mtlsolve.adapters.strategies import from_config

    config = {
        "strategy": "cost",
        "base": "ls",
        "lora_rank": 2,
        "tele_rounds": rounds,
        "lora_lr": lora_lr,
        "max_teleports_per_epoch": teleports,
        "max_norm": None,
        "monitor": True,
        "htr": False,
        "seed": seed,
    }
    return from_config(config, model=net, optimizer=opt, shared=net.trunk, loss_fn=_losses, teleport_loader=teleport)


def tradeoff(
    budgets: Sequence[int] = BUDGETS,
    lora_lrs: Sequence[float] = LORA_LRS,
    seeds: Sequence[int] = (0,),
    *,
    warmup: int = 300,
    search: int = 300,
) -> list[dict[str, Any]]:
    """One row per seed, budget (``tele_rounds``) and LoRA learning rate; see the module docstring.

    Each seed trains LS for ``warmup`` steps, then looks for a triggering batch within ``search`` more
    steps; a seed without one gives no rows."""
    import torch

    rows: list[dict[str, Any]] = []
    for seed in seeds:
        torch.manual_seed(seed)
        X, Y = _problem(seed)
        teleport = [(X[i : i + 64], Y[i : i + 64]) for i in range(0, 512, 64)]
        net = _net()
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        base = _cost(net, opt, teleport, rounds=1, lora_lr=1e-3, seed=seed, teleports=0)
        gen = torch.Generator().manual_seed(seed + 1)
        trigger = None
        for step in range(warmup + search):
            idx = torch.randint(0, len(X), (32,), generator=gen)
            batch = (X[idx], Y[idx])
            if step >= warmup and _min_cos(net, batch) <= 0:
                trigger = batch
                break
            base.train_step(batch)
        if trigger is None:
            continue
        for lr in lora_lrs:
            for rounds in budgets:
                net2, opt2 = copy.deepcopy((net, opt))
                cost = _cost(net2, opt2, teleport, rounds=rounds, lora_lr=lr, seed=seed, teleports=1)
                r = cost.train_step(trigger).record
                rows.append(
                    {
                        "seed": seed,
                        "trigger_step": step,
                        "tele_rounds": rounds,
                        "adapter_steps": r["adapter_steps"],
                        "lora_lr": lr,
                        "max_deviation": r["max_deviation"],
                        "final_deviation": r["deviation"][-1] if r["deviation"] else float("nan"),
                        "min_cos_before": r["min_cos_before"],
                        "min_cos_after": r["min_cos_after"],
                        "conflict_reduction": r["min_cos_after"] - r["min_cos_before"],
                        "displacement": r["displacement"],
                        "aborted": r["aborted"],
                    }
                )
    return rows


def summary(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std over seeds of each (budget, learning rate): deviation and conflict reduction."""
    keys = sorted({(r["lora_lr"], r["tele_rounds"]) for r in rows})
    out = []
    for lr, rounds in keys:
        sel = [r for r in rows if r["lora_lr"] == lr and r["tele_rounds"] == rounds]
        entry: dict[str, Any] = {"lora_lr": lr, "tele_rounds": rounds, "adapter_steps": sel[0]["adapter_steps"]}
        for k in ("max_deviation", "final_deviation", "conflict_reduction", "displacement"):
            v = np.array([r[k] for r in sel], dtype=np.float64)
            entry[k] = float(v.mean())
            entry[k + "_std"] = float(v.std())
        entry["seeds"] = len(sel)
        out.append(entry)
    return out

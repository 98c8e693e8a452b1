"""Data-parallel multi-task training on CPU: 2 gloo processes on 127.0.0.1 (well under a minute).

    python examples/ddp_launch.py                   # mgda
    python examples/ddp_launch.py --solver famo     # any registered solver name

Each rank sees half of every global batch. The adapter (``distributed=True``)
averages what the solver reads (losses, per-task gradient blocks or the
Gramian) across ranks *before* the solver runs, so every rank solves the same
system and applies the same update; the forward and backward run inside
``ddp_model.no_sync()`` so DDP's own all-reduce does not run as well. See
:mod:`mtlsolve.adapters.ddp`. With ``torchrun`` the worker body is the same:
``init_process_group`` reads the rank and address from the environment.
"""

from __future__ import annotations

import argparse
import os
import socket
import time

import torch
import torch.distributed as dist

from mtlsolve.adapters import MultiTaskBackward

WORLD = 2


class TwoTaskMLP(torch.nn.Module):
    def __init__(self, d_in: int = 8, width: int = 32) -> None:
        super().__init__()
        self.trunk = torch.nn.Sequential(
            torch.nn.Linear(d_in, width), torch.nn.ReLU(), torch.nn.Linear(width, width), torch.nn.ReLU()
        )
        self.heads = torch.nn.ModuleList([torch.nn.Linear(width, 1) for _ in range(2)])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.trunk(x)
        return [head(h).squeeze(-1) for head in self.heads]


def make_data(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, 8, generator=gen)
    y1 = torch.sin(x @ torch.linspace(-1.0, 1.0, 8))
    y2 = 5.0 * torch.tanh(x[:, :4].sum(1)) + 0.1 * torch.randn(n, generator=gen)
    return x, torch.stack([y1, y2], dim=1)


def task_losses(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.nn.functional.mse_loss(p, y[:, i]) for i, p in enumerate(model(x))])


def worker(rank: int, port: int, solver: str, epochs: int) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        gen = torch.Generator().manual_seed(0)  # the same data and order on every rank; each takes its half
        x_train, y_train = make_data(2048, gen)
        x_test, y_test = make_data(512, gen)
        torch.manual_seed(0)
        net = TwoTaskMLP()
        model = torch.nn.parallel.DistributedDataParallel(net)  # broadcasts rank 0's parameters
        adapter = MultiTaskBackward(solver, shared=net.trunk, distributed=True)
        optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
        with torch.no_grad():
            initial = task_losses(net, x_test, y_test).sum().item()
        start, batch, steps = time.perf_counter(), 128, 0
        for _ in range(epochs):
            order = torch.randperm(len(x_train), generator=gen)
            for i in range(0, len(order), batch):
                idx = order[i : i + batch].chunk(WORLD)[rank]  # this rank's half of the global batch
                x, y = x_train[idx], y_train[idx]
                with model.no_sync():  # the adapter does the only cross-rank reduction
                    adapter.backward(task_losses(model, x, y))
                steps += adapter.step(optimizer, closure=lambda: task_losses(net, x, y))
            adapter.end_epoch()
        with torch.no_grad():
            final = task_losses(net, x_test, y_test).sum().item()
        flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
        copies = [torch.empty_like(flat) for _ in range(WORLD)]
        dist.all_gather(copies, flat)
        if rank == 0:
            agree = all(torch.equal(copies[0], c) for c in copies[1:])
            print(f"solver {solver} ({adapter.path} path), {WORLD} ranks, {steps} steps")
            print(f"ranks hold identical parameters: {agree}")
            print(f"initial test loss {initial:.4f}")
            print(f"final test loss {final:.4f}")
            print(f"({time.perf_counter() - start:.1f} s)")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--solver", default="mgda")
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    torch.multiprocessing.spawn(worker, args=(free_port(), args.solver, args.epochs), nprocs=WORLD, join=True)


if __name__ == "__main__":
    main()

"""Multi-task training of an FSDP2 model (``fully_shard``) on CPU: 2 gloo processes, exact Gramian solvers.

    python examples/fsdp_launch.py                          # upgrad, spawns 2 processes
    torchrun --nproc-per-node 2 examples/fsdp_launch.py     # the same under torchrun
    accelerate launch --num_processes 2 --cpu examples/fsdp_launch.py   # or Hugging Face accelerate
    python examples/fsdp_launch.py --solver famo            # any solver the sharded engine serves

Each rank holds a shard of every parameter and half of every global batch.
The adapter sees DTensor parameters and picks the sharded engine: one
backward per task gives each rank the per-task gradients of its own shards
(FSDP2 reduce-scatters them), the partial Gramians are summed by one m x m
all-reduce, every rank solves the same system and writes its own shard of
the update d = Gᵀw. No rank ever holds a full gradient. See
:mod:`mtlsolve.adapters.engines.sharded` and docs/distributed.md.
"""

from __future__ import annotations

import argparse
import os
import socket
import time

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

from mtlsolve.adapters import MultiTaskBackward


class ThreeTaskNet(torch.nn.Module):
    def __init__(self, d_in: int = 8, width: int = 48, depth: int = 3) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(d_in, width)
        self.blocks = torch.nn.ModuleList(
            [torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU()) for _ in range(depth)]
        )
        self.heads = torch.nn.ModuleList([torch.nn.Linear(width, 1) for _ in range(3)])

    def trunk(self) -> list[torch.nn.Module]:
        return [self.embed, self.blocks]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = torch.relu(self.embed(x))
        for block in self.blocks:
            h = block(h)
        return [head(h).squeeze(-1) for head in self.heads]


def make_data(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, 8, generator=gen)
    y = torch.stack([torch.sin(x @ torch.linspace(-1.0, 1.0, 8)), torch.tanh(x[:, :4].sum(1)), x[:, 0] * x[:, 1]], 1)
    return x, y


def task_losses(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.nn.functional.mse_loss(p, y[:, i]) for i, p in enumerate(model(x))])


def train(solver: str, epochs: int) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    gen = torch.Generator().manual_seed(0)  # the same data and order on every rank; each takes its share
    x_train, y_train = make_data(1024, gen)
    x_test, y_test = make_data(256, gen)
    torch.manual_seed(0)
    net = ThreeTaskNet()
    for block in net.blocks:
        fully_shard(block)
    fully_shard(net)
    adapter = MultiTaskBackward(solver, shared=net.trunk())
    optimizer = torch.optim.Adam(list(net.parameters()) + adapter.parameters(), lr=3e-3)
    local = sum(p.to_local().numel() for p in net.parameters())
    total = sum(p.numel() for p in net.parameters())
    with torch.no_grad():
        initial = task_losses(net, x_test, y_test).sum().item()
    start, batch, steps = time.perf_counter(), 128, 0
    for _ in range(epochs):
        order = torch.randperm(len(x_train), generator=gen)
        for i in range(0, len(order), batch):
            idx = order[i : i + batch].chunk(world)[rank]
            x, y = x_train[idx], y_train[idx]
            adapter.backward(task_losses(net, x, y))
            steps += adapter.step(optimizer, closure=lambda: task_losses(net, x, y))
        adapter.end_epoch()
    with torch.no_grad():
        final = task_losses(net, x_test, y_test).sum().item()
    if rank == 0:
        print(f"solver {solver} ({type(adapter._engine).__name__}), {world} ranks, {steps} steps")
        print(f"parameters: {total} in all, {local} on rank 0")
        print(f"initial test loss {initial:.4f}")
        print(f"final test loss {final:.4f}")
        print(f"({time.perf_counter() - start:.1f} s)")


def worker(rank: int, world: int, port: int, solver: str, epochs: int) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        train(solver, epochs)
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--solver", default="upgrad")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    if "LOCAL_RANK" in os.environ:  # started by torchrun (or accelerate launch): it set the rank and address
        torch.set_num_threads(1)
        dist.init_process_group("gloo")
        try:
            train(args.solver, args.epochs)
        finally:
            dist.destroy_process_group()
        return
    torch.multiprocessing.spawn(worker, args=(2, free_port(), args.solver, args.epochs), nprocs=2, join=True)


if __name__ == "__main__":
    main()

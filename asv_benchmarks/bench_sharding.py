"""Per-step time, bytes and peak memory per rank of the distributed Gramian schedules, 2 gloo ranks on CPU.

Run:  .venv/bin/python asv_benchmarks/bench_sharding.py [--quick] [--width W] [--tasks 2,10,40] [--steps K]

Schedules, each with upgrad on an MLP trunk (``depth`` square Linear layers of ``width``, one
Linear head per task, batch 32 per rank):

* ``ddp all-reduce``: ``distributed=True``, the default schedule (blocks all-reduced, one more backward);
* ``ddp reduce-scatter``: ``distributed=ReduceScatter()`` (own columns kept, update all-gathered);
* ``ddp gather G``: ``path="matrix"``, G (m x n) held and all-reduced on every rank;
* ``fsdp2``: every layer ``fully_shard``-ed, the sharded engine (per-task shards, m x m all-reduce).

Per rank: the median step time (``backward`` + ``step``), the bytes the adapter's and FSDP2's
collectives contribute and what a ring sends (:mod:`mtlsolve.adapters.comm`), next to the
formula of the schedule, and the extra peak memory of a steady-state step (``VmHWM − VmRSS``
after resetting the kernel's peak mark, as in ``compare_adapters.py``; Linux only). The asv
class runs the smallest case.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time

import torch
import torch.distributed as dist

SCHEDULES = ("ddp all-reduce", "ddp reduce-scatter", "ddp gather G", "fsdp2")
WORLD = 2
BATCH = 32


class MLP(torch.nn.Module):
    def __init__(self, width: int, depth: int, m: int) -> None:
        super().__init__()
        layers = [torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.Tanh()) for _ in range(depth)]
        self.trunk = torch.nn.Sequential(*layers)
        self.heads = torch.nn.ModuleList([torch.nn.Linear(width, 1) for _ in range(m)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.trunk(x)
        return torch.cat([head(h) for head in self.heads], dim=1)


def _model(width: int, depth: int, m: int) -> MLP:
    torch.manual_seed(0)
    return MLP(width, depth, m)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def formula(schedule: str, n: int, heads: int, m: int, padded: int, fsdp_padded: int) -> int:
    """Bytes this rank contributes per step (float32 gradients, float64 K and losses, one float32 flag)."""
    if schedule == "ddp all-reduce":
        return 4 * (m * n + n + heads) + 8 * m + 4
    if schedule == "ddp reduce-scatter":
        return 4 * (m * padded + padded // WORLD + heads) + 8 * (m * m + m) + 4
    if schedule == "ddp gather G":
        return 4 * (m * n + heads) + 8 * m + 4
    return 8 * (m * m + m) + 4 * m * fsdp_padded  # K, losses, and FSDP2's reduce-scatters (its all-gathers apart)


def _worker(rank: int, port: int, schedule: str, width: int, depth: int, m: int, steps: int, out: str) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        from mtlsolve.adapters import MultiTaskBackward, comm
        from mtlsolve.adapters.ddp import ReduceScatter

        net = _model(width, depth, m)
        kwargs: dict = {"distributed": True}
        if schedule == "ddp reduce-scatter":
            kwargs = {"distributed": ReduceScatter()}
        elif schedule == "ddp gather G":
            kwargs["path"] = "matrix"
        elif schedule == "fsdp2":
            from torch.distributed.fsdp import fully_shard

            for layer in net.trunk:
                fully_shard(layer)
            fully_shard(net)
            kwargs = {}
        adapter = MultiTaskBackward("upgrad", shared=net.trunk, **kwargs)
        opt = torch.optim.SGD(net.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(rank)
        x, y = torch.randn(BATCH, width, generator=gen), torch.randn(BATCH, m, generator=gen)

        def step() -> None:
            losses = ((net(x) - y) ** 2).mean(0)
            adapter.backward(losses)
            adapter.step(opt)

        step()  # warm-up
        with comm.count() as counter:
            step()
        times = []
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _status_kib("VmRSS")
        for _ in range(steps):
            dist.barrier()
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        peak = (_status_kib("VmHWM") - base) / 1024
        local = sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in net.trunk.parameters())
        gathers = sum(c.bytes for c in counter.calls if c.kind == "all_gather")
        result = {
            "time_ms": 1e3 * statistics.median(times),
            "bytes": sum(c.bytes for c in counter.calls) - (gathers if schedule == "fsdp2" else 0),
            "fsdp_gather_bytes": gathers if schedule == "fsdp2" else 0,
            "wire": counter.wire(),
            "peak_mib": peak,
            "local_params": local,
        }
        torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(schedule: str, width: int, depth: int, m: int, steps: int) -> list[dict]:
    """One schedule on 2 spawned ranks: each rank's figures."""
    with tempfile.TemporaryDirectory() as out:
        args = (_free_port(), schedule, width, depth, m, steps, out)
        torch.multiprocessing.spawn(_worker, args=args, nprocs=WORLD, join=True)
        return [torch.load(os.path.join(out, f"rank{r}.pt")) for r in range(WORLD)]


def sizes(width: int, depth: int, m: int) -> tuple[int, int, int, int]:
    """n, the heads' numel, Σ R·⌈|p|/R⌉ over the trunk, and FSDP2's padded numel of every group."""
    net = _model(width, depth, m)
    trunk = list(net.trunk.parameters())
    n = sum(p.numel() for p in trunk)
    heads = sum(p.numel() for p in net.heads.parameters())
    padded = sum(WORLD * -(-p.numel() // WORLD) for p in trunk)
    fsdp = sum(WORLD * -(-p.shape[0] // WORLD) * (p.numel() // p.shape[0]) for p in net.parameters())
    return n, heads, padded, fsdp


class ShardingSmoke:
    """The smallest case of every schedule (asv)."""

    params = [list(SCHEDULES)]
    param_names = ["schedule"]
    timeout = 300

    def setup_cache(self):
        return {s: run(s, 16, 2, 2, 3) for s in SCHEDULES}

    def track_step_ms(self, cache, schedule):
        return max(r["time_ms"] for r in cache[schedule])

    def track_bytes_per_rank(self, cache, schedule):
        return cache[schedule][0]["bytes"]

    def track_peak_mib(self, cache, schedule):
        return max(r["peak_mib"] for r in cache[schedule])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="width 16, depth 2, m = 2, 3 steps")
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--tasks", default="2,10,40")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    if args.quick:
        args.width, args.depth, args.tasks, args.steps = 16, 2, "2", 3
    print("| m | schedule | trunk params / rank | step ms | bytes / rank | formula | ring bytes / rank | peak MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for m in [int(t) for t in args.tasks.split(",")]:
        n, heads, padded, fsdp = sizes(args.width, args.depth, m)
        for schedule in SCHEDULES:
            ranks = run(schedule, args.width, args.depth, m, args.steps)
            r0 = ranks[0]
            expected = formula(schedule, n, heads, m, padded, fsdp)
            extra = f" (+{r0['fsdp_gather_bytes']} FSDP2 all-gather)" if schedule == "fsdp2" else ""
            print(
                f"| {m} | {schedule} | {r0['local_params']} | {max(r['time_ms'] for r in ranks):.1f} | "
                f"{r0['bytes']}{extra} | {expected} | {r0['wire']:.0f} | {max(r['peak_mib'] for r in ranks):.2f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

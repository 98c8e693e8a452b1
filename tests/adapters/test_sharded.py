"""Sharded (DTensor) parameters train exactly like one process on the concatenated batch.

Two gloo ranks (four in the slow tier) on 127.0.0.1, started by the test: an FSDP2 model (``fully_shard`` on several
blocks of uneven sizes and on the root, which holds a weight tied between the input and the
output projection) and a tensor-parallel Linear stack (colwise then rowwise, with a norm whose
parameters are replicated on the mesh). Each rank's K, weights and parameters after three SGD
steps are compared with a single process on the whole batch: a Gramian solver, a stateful one
checkpointed and resumed mid-run, a loss weighting with learnable parameters, and a solver that
reads G (refused, and exact once the adapter opts in to gathering G). The single-process Gramian
is also checked against per-task ``torch.autograd.grad`` (an independent reference of K).
"""

from __future__ import annotations

import functools
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist

import mtlsolve
from adapter_testing import LearnedScale
from mtlsolve.adapters import MultiTaskBackward, comm
from mtlsolve.adapters.engines import ShardedGramianEngine
from mtlsolve.errors import InvalidConfigError

#: the numbers of ranks tested; 4 is in the slow tier
WORLDS = [2, pytest.param(4, marks=pytest.mark.slow)]
GLOBAL_BATCH = 8
STEPS = 3
M = 3

#: name -> (solver factory, model kind, checkpoint after this many steps or None)
CONFIGS = {
    "fsdp_upgrad": (lambda: mtlsolve.get("upgrad"), "fsdp", None),
    "fsdp_nash_mtl_resumed": (lambda: mtlsolve.get("nash_mtl"), "fsdp", 1),
    "fsdp_learned_scale": (lambda: LearnedScale(m=M), "fsdp", None),
    "tp_upgrad": (lambda: mtlsolve.get("upgrad"), "tp", None),
    "tp_mgda": (lambda: mtlsolve.get("mgda"), "tp", None),
    "fsdp_trimmed_mean_gathered": (lambda: mtlsolve.get("trimmed_mean", trim_number=1), "fsdp", None),
    "tp_trimmed_mean_gathered": (lambda: mtlsolve.get("trimmed_mean", trim_number=1), "tp", None),
}


#: the adapter with the opt-in to gathering G on every rank, for solvers that read G
Gathering = functools.partial(MultiTaskBackward, gather_shards=True)


class FSDPNet(torch.nn.Module):
    """An input projection whose weight is tied to the output projection, three blocks, one head per task."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(5, 7)
        self.blocks = torch.nn.ModuleList(
            [
                torch.nn.Sequential(torch.nn.Linear(7, 9), torch.nn.Tanh()),
                torch.nn.Sequential(torch.nn.Linear(9, 3), torch.nn.Tanh()),
                torch.nn.Sequential(torch.nn.Linear(3, 7), torch.nn.Tanh()),
            ]
        )
        self.heads = torch.nn.ModuleList([torch.nn.Linear(5, 1) for _ in range(M)])

    def shared(self) -> list[torch.nn.Module]:
        return [self.embed, self.blocks]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        z = torch.tanh(self.embed(x))
        for block in self.blocks:
            z = block(z)
        r = z @ self.embed.weight  # the tied weight, transposed
        return [head(r).squeeze(-1) for head in self.heads]


class TPNet(torch.nn.Module):
    """up (colwise), down (rowwise), a norm replicated on the mesh, one head per task."""

    def __init__(self) -> None:
        super().__init__()
        self.up = torch.nn.Linear(5, 8)  # DTensor's matmuls need the hidden width a multiple of the ranks
        self.down = torch.nn.Linear(8, 4)
        self.norm = torch.nn.LayerNorm(4)
        self.heads = torch.nn.ModuleList([torch.nn.Linear(4, 1) for _ in range(M)])

    def shared(self) -> list[torch.nn.Module]:
        return [self.up, self.down, self.norm]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        z = self.norm(self.down(torch.tanh(self.up(x))))
        return [head(z).squeeze(-1) for head in self.heads]


def data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    x = torch.randn(GLOBAL_BATCH, 5, generator=gen, dtype=torch.float64)
    y = torch.randn(GLOBAL_BATCH, M, generator=gen, dtype=torch.float64)
    return x, y


def task_losses(outputs: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    return torch.stack([((out - y[:, i]) ** 2).mean() for i, out in enumerate(outputs)])


def build(kind: str, rank: int | None) -> torch.nn.Module:
    torch.manual_seed(0)
    net = (FSDPNet if kind == "fsdp" else TPNet)().double()
    if rank is None:
        return net
    if kind == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in net.blocks:
            fully_shard(block)
        fully_shard(net)
        return net
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Replicate, distribute_module
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    parallelize_module(net, mesh, {"up": ColwiseParallel(), "down": RowwiseParallel()})
    distribute_module(
        net.norm,
        mesh,
        input_fn=lambda mod, inputs, mesh: tuple(DTensor.from_local(t, mesh, [Replicate()]) for t in inputs),
        output_fn=lambda mod, out, mesh: out.to_local(),
    )
    return net


def full(p: torch.Tensor) -> np.ndarray:
    from torch.distributed.tensor import DTensor

    return (p.full_tensor() if isinstance(p, DTensor) else p).detach().numpy().copy()


def train(name: str, rank: int | None) -> dict[str, np.ndarray]:
    """Train one configuration; rank None is the single process on the whole batch."""
    make_solver, kind, resume_after = CONFIGS[name]
    net = build(kind, rank)
    adapter_class = Gathering if name.endswith("gathered") and rank is not None else MultiTaskBackward
    adapter = adapter_class(make_solver(), shared=net.shared())
    opt = torch.optim.SGD(list(net.parameters()) + adapter.parameters(), lr=0.1)
    out: dict[str, np.ndarray] = {}
    for step in range(STEPS):
        if resume_after is not None and step == resume_after:
            state = adapter.state_dict()
            adapter = adapter_class(make_solver(), shared=net.shared())
            adapter.load_state_dict(state)
        x, y = data(step)
        if rank is not None and kind == "fsdp":  # data parallel: each rank its share
            share = GLOBAL_BATCH // dist.get_world_size()
            x, y = x[rank * share : (rank + 1) * share], y[rank * share : (rank + 1) * share]
        diagnostics = adapter.backward(task_losses(net(x), y))
        out[f"losses{step}"] = diagnostics.losses
        if diagnostics.weights is not None:
            out[f"weights{step}"] = diagnostics.weights
        if diagnostics.gramian is not None:
            out[f"K{step}"] = diagnostics.gramian
        assert adapter.step(opt)
    for i, p in enumerate(net.parameters()):
        out[f"p{i}"] = full(p)
    for i, p in enumerate(adapter.parameters()):
        out[f"s{i}"] = full(p)
    out["engine"] = np.array(type(adapter._engine) is ShardedGramianEngine)
    return out


def reference_gramian(step: int) -> np.ndarray:
    """K of the untrained FSDPNet on the whole batch from per-task autograd.grad."""
    net = build("fsdp", None)
    x, y = data(step)
    losses = task_losses(net(x), y)
    params = [p for module in net.shared() for p in module.parameters()]
    rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(l, params, retain_graph=True)]) for l in losses]
    G = torch.stack(rows).numpy()
    return G @ G.T


def refusals(rank: int) -> dict[str, str]:
    """The messages refusing the solvers that read G; those the gathering adapter accepts are left out."""
    net = build("fsdp", rank)
    out = {}
    for name, kwargs in (("graddrop", {}), ("trimmed_mean", {"trim_number": 1}), ("excess_mtl", {})):
        try:
            MultiTaskBackward(mtlsolve.get(name, **kwargs), shared=net.shared())
        except InvalidConfigError as exc:
            out[name] = str(exc)
        Gathering(mtlsolve.get(name, **kwargs), shared=net.shared())  # the opt-in accepts it
    return out


def measured_bytes(rank: int) -> dict[str, int]:
    """The sharded engine's own collectives in one step (FSDP2's are counted apart)."""
    net = build("fsdp", rank)
    adapter = MultiTaskBackward("upgrad", shared=net.shared())
    x, y = data(0)
    share = GLOBAL_BATCH // dist.get_world_size()
    losses = task_losses(net(x[rank * share : (rank + 1) * share]), y[rank * share : (rank + 1) * share])
    with comm.count() as counter:
        adapter.backward(losses)
    return {name: [c.bytes for c in counter.calls if c.name == name] for name in counter.totals()}


def _worker(rank: int, world: int, port: int, outdir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = {name: train(name, rank) for name in CONFIGS}
        results["refusals"] = refusals(rank)
        results["bytes"] = measured_bytes(rank)
        torch.save(results, os.path.join(outdir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=WORLDS, ids=lambda world: f"{world}ranks")
def ranks(request, tmp_path_factory):
    world = request.param
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    outdir = tmp_path_factory.mktemp("sharded")
    torch.multiprocessing.spawn(_worker, args=(world, _free_port(), str(outdir)), nprocs=world, join=True)
    return [torch.load(outdir / f"rank{r}.pt", weights_only=False) for r in range(world)]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_sharded_ranks_equal_one_process_on_the_concatenated_batch(ranks, name):
    single = train(name, None)
    first = ranks[0][name]
    assert all(bool(rank[name]["engine"]) for rank in ranks), "the sharded engine did not serve the DTensor model"
    assert set(first) == set(single)
    for key, value in single.items():
        if key == "engine":
            continue
        for rank in ranks[1:]:
            np.testing.assert_array_equal(rank[name][key], first[key], err_msg=f"ranks disagree on {key}")
        np.testing.assert_allclose(first[key], value, rtol=1e-12, atol=1e-14, err_msg=key)


def test_the_sharded_gramian_is_the_gramian_of_the_whole_batch(ranks):
    np.testing.assert_allclose(ranks[0]["fsdp_upgrad"]["K0"], reference_gramian(0), rtol=1e-12, atol=1e-15)


def test_solvers_that_read_the_global_matrix_are_refused(ranks):
    for rank in ranks:
        assert set(rank["refusals"]) == {"graddrop", "trimmed_mean", "excess_mtl"}
        assert all("global matrix G" in message for message in rank["refusals"].values())


def test_the_step_sends_an_m_by_m_all_reduce_and_m_reduce_scatters_of_each_shard(ranks):
    """The engine's own collectives are K (m x m) and the m losses, float64; FSDP2's are one
    reduce-scatter of every fully_shard group per task, each parameter padded to R·⌈rows/R⌉ rows."""
    net, R = build("fsdp", None), len(ranks)

    def padded(params) -> int:
        return sum(R * -(-p.shape[0] // R) * (p.numel() // p.shape[0]) for p in params)

    groups = [list(block.parameters()) for block in net.blocks]
    groups.append(list(net.embed.parameters()) + list(net.heads.parameters()))  # the root's own
    per_task = sorted(8 * padded(group) for group in groups)
    for rank in ranks:
        assert rank["bytes"]["all_reduce"] == [8 * M * M, 8 * M]
        assert sorted(rank["bytes"]["reduce_scatter_single"]) == sorted(per_task * M)

"""Sharded (DTensor) parameters train exactly like one process on the concatenated batch.

Two gloo ranks (four in the slow tier) on 127.0.0.1, started by the test: an FSDP2 model (``fully_shard`` on several
blocks of uneven sizes and on the root, which holds a weight tied between the input and the
output projection) and a tensor-parallel Linear stack (colwise then rowwise, with a norm whose
parameters are replicated on the mesh). Each rank's K, weights and parameters after three SGD
steps are compared with a single process on the whole batch: a Gramian solver, a stateful one
checkpointed and resumed mid-run, a loss weighting with learnable parameters, a coordinate-wise
solver (the trimmed mean, run on each rank's own columns of G), and a solver that reads G
(refused, and exact once the adapter opts in to gathering G). The single-process Gramian
is also checked against per-task ``torch.autograd.grad`` (an independent reference of K).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

import mtlsolve
from adapter_testing import LearnedScale, spawn_ranks
from mtlsolve.adapters import MultiTaskBackward, comm
from mtlsolve.adapters.engines import ShardedGramianEngine
from mtlsolve.errors import InvalidConfigError

#: the numbers of ranks tested; 4 is in the slow tier
WORLDS = [2, pytest.param(4, marks=pytest.mark.slow)]
GLOBAL_BATCH = 8
STEPS = 3
M = 3
#: micro-batches a step in the configurations with gradient accumulation
MICRO = 2

#: name -> (solver factory, model kind, checkpoint after this many steps or None)
CONFIGS = {
    "fsdp_upgrad": (lambda: mtlsolve.get("upgrad"), "fsdp", None),
    "fsdp_nash_mtl_resumed": (lambda: mtlsolve.get("nash_mtl"), "fsdp", 1),
    "fsdp_learned_scale": (lambda: LearnedScale(m=M), "fsdp", None),
    "tp_upgrad": (lambda: mtlsolve.get("upgrad"), "tp", None),
    "tp_mgda": (lambda: mtlsolve.get("mgda"), "tp", None),
    "fsdp_trimmed_mean": (lambda: mtlsolve.get("trimmed_mean", trim_number=1), "fsdp", None),
    "tp_trimmed_mean": (lambda: mtlsolve.get("trimmed_mean", trim_number=1), "tp", None),
    "fsdp_upgrad_accumulated": (lambda: mtlsolve.get("upgrad"), "fsdp", None),
    "fsdp_nash_mtl_resumed_accumulated": (lambda: mtlsolve.get("nash_mtl"), "fsdp", 1),
    "fsdp_learned_scale_accumulated": (lambda: LearnedScale(m=M), "fsdp", None),
    "fsdp_trimmed_mean_accumulated": (lambda: mtlsolve.get("trimmed_mean", trim_number=1), "fsdp", None),
    "tp_upgrad_accumulated": (lambda: mtlsolve.get("upgrad"), "tp", None),
    "fsdp_mgda_ub": (lambda: mtlsolve.get("mgda_ub"), "fsdp", None),
    "fsdp_aligned_mtl_ub": (lambda: mtlsolve.get("aligned_mtl_ub"), "fsdp", None),
    "fsdp_excess_mtl_gathered": (lambda: mtlsolve.get("excess_mtl"), "fsdp", None),
    "tp_excess_mtl_gathered": (lambda: mtlsolve.get("excess_mtl"), "tp", None),
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

    def forward(self, x: torch.Tensor, with_features: bool = False):
        z = torch.tanh(self.embed(x))
        for block in self.blocks:
            z = block(z)
        r = z @ self.embed.weight  # the tied weight, transposed: the features H of representation mode
        outputs = [head(r).squeeze(-1) for head in self.heads]
        return (outputs, r) if with_features else outputs


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

    def forward(self, x: torch.Tensor, with_features: bool = False):
        z = self.norm(self.down(torch.tanh(self.up(x))))
        outputs = [head(z).squeeze(-1) for head in self.heads]
        return (outputs, z) if with_features else outputs


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
    """Train one configuration; rank None is the single process on the whole batch. A name ending in
    "accumulated" takes each step's batch in MICRO micro-batches (the same rows on one process)."""
    make_solver, kind, resume_after = CONFIGS[name]
    micro = MICRO if name.endswith("accumulated") else 1
    net = build(kind, rank)
    adapter_class = Gathering if name.endswith("gathered") and rank is not None else MultiTaskBackward
    make_adapter = functools.partial(adapter_class, shared=net.shared(), accumulation_steps=micro)
    adapter = make_adapter(make_solver())
    opt = torch.optim.SGD(list(net.parameters()) + adapter.parameters(), lr=0.1)
    out: dict[str, np.ndarray] = {}
    for step in range(STEPS):
        if resume_after is not None and step == resume_after:
            state = adapter.state_dict()
            adapter = make_adapter(make_solver())
            adapter.load_state_dict(state)
        for xs, ys in zip(*(part.chunk(micro) for part in data(step))):
            x, y = xs, ys
            if rank is not None and kind == "fsdp":  # data parallel: each rank its share
                share = len(xs) // dist.get_world_size()
                x, y = xs[rank * share : (rank + 1) * share], ys[rank * share : (rank + 1) * share]
            if adapter.grads == "representation":
                outputs, H = net(x, with_features=True)
                diagnostics = adapter.backward(task_losses(outputs, y), features=H)
            else:
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


def replicated_features(rank: int) -> str:
    """The message refusing representation mode under tensor parallelism, whose ranks hold the same batch."""
    net = build("tp", rank)
    adapter = MultiTaskBackward("mgda_ub", shared=net.shared())
    x, y = data(0)
    outputs, H = net(x, with_features=True)
    try:
        adapter.backward(task_losses(outputs, y), features=H)
    except InvalidConfigError as exc:
        assert all(p.grad is None for p in net.parameters())
        return str(exc)
    return ""


def measured_bytes(rank: int, solver="upgrad") -> dict[str, int]:
    """The sharded engine's own collectives in one step (FSDP2's are counted apart)."""
    net = build("fsdp", rank)
    adapter = MultiTaskBackward(solver, shared=net.shared())
    x, y = data(0)
    share = GLOBAL_BATCH // dist.get_world_size()
    outputs, H = net(x[rank * share : (rank + 1) * share], with_features=True)
    losses = task_losses(outputs, y[rank * share : (rank + 1) * share])
    with comm.count() as counter:
        adapter.backward(losses, features=H if adapter.grads == "representation" else None)
    return {name: [c.bytes for c in counter.calls if c.name == name] for name in counter.totals()}


def accumulated_bytes(rank: int) -> list[int]:
    """The sharded engine's all-reduces over one step of MICRO micro-batches (upgrad)."""
    net = build("fsdp", rank)
    adapter = MultiTaskBackward("upgrad", shared=net.shared(), accumulation_steps=MICRO)
    x, y = data(0)
    with comm.count() as counter:
        for xs, ys in zip(x.chunk(MICRO), y.chunk(MICRO)):
            share = len(xs) // dist.get_world_size()
            adapter.backward(
                task_losses(net(xs[rank * share : (rank + 1) * share]), ys[rank * share : (rank + 1) * share])
            )
    return [c.bytes for c in counter.calls if c.name == "all_reduce"]


def _worker(rank: int, world: int, port: int, outdir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = {name: train(name, rank) for name in CONFIGS}
        results["refusals"] = refusals(rank)
        results["replicated_features"] = replicated_features(rank)
        results["bytes"] = measured_bytes(rank)
        results["coordinate_bytes"] = measured_bytes(rank, mtlsolve.get("trimmed_mean", trim_number=1))
        results["representation_bytes"] = measured_bytes(rank, "mgda_ub")
        results["accumulated_bytes"] = accumulated_bytes(rank)
        torch.save(results, os.path.join(outdir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module", params=WORLDS, ids=lambda world: f"{world}ranks")
def ranks(request, tmp_path_factory):
    return spawn_ranks(_worker, request.param, tmp_path_factory.mktemp("sharded"))


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
        assert set(rank["refusals"]) == {"graddrop", "excess_mtl"}  # the trimmed mean runs on its own columns
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
        assert sorted(rank["bytes"]["all_reduce"]) == [8 * M, 8 * M * M]
        assert sorted(rank["bytes"]["reduce_scatter_single"]) == sorted(per_task * M)


def test_a_coordinate_wise_solver_sends_k_the_losses_and_the_norm_only(ranks):
    """The trimmed mean gathers nothing of G: the engine sends K (m x m), the m losses and ‖d‖², float64."""
    for rank in ranks:
        assert sorted(rank["coordinate_bytes"]["all_reduce"]) == [8, 8 * M, 8 * M * M]
        fsdp = {name: calls for name, calls in rank["bytes"].items() if name != "all_reduce"}
        assert {name: calls for name, calls in rank["coordinate_bytes"].items() if name != "all_reduce"} == fsdp


def test_representation_mode_sends_k_the_losses_and_a_fingerprint_per_rank(ranks):
    """mgda_ub: K of the feature gradients (m x m), the m losses, two float64 numbers per rank
    checking that the ranks hold their own rows; FSDP2 then runs one backward (one reduce-scatter
    of every fully_shard group) instead of m."""
    groups = 1 + len(build("fsdp", None).blocks)
    for rank in ranks:
        sent = rank["representation_bytes"]
        assert sorted(sent["all_reduce"]) == [8 * M, 8 * M * M]
        assert sent["all_gather"] == [16]
        assert len(sent["reduce_scatter_single"]) == groups
        assert sorted(sent["reduce_scatter_single"] * M) == sorted(rank["bytes"]["reduce_scatter_single"])


def test_representation_mode_refuses_features_replicated_across_tensor_parallel_ranks(ranks):
    for rank in ranks:
        assert "its own batch rows" in rank["replicated_features"]


@pytest.mark.slow
def test_the_fsdp_example_trains_under_accelerate_launch():
    """``accelerate launch --num_processes 2 --cpu`` starts the example's two gloo ranks (accelerate is optional)."""
    pytest.importorskip("accelerate", reason="accelerate (the 'distributed' extra) is not installed")
    example = Path(__file__).resolve().parents[2] / "examples" / "fsdp_launch.py"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--cpu"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*launch, str(example), "--epochs", "1"], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = dict(line.split(" test loss ") for line in done.stdout.splitlines() if " test loss " in line)
    assert "ShardedGramianEngine), 2 ranks" in done.stdout
    assert float(lines["final"]) < float(lines["initial"])


def test_accumulation_all_reduces_k_once_per_step(ranks):
    """The per-task shards are held over the micro-batches (m·n/R numbers): K of their sum and the mean losses
    are all-reduced once, at the last micro-batch."""
    for rank in ranks:
        assert sorted(rank["accumulated_bytes"]) == [8 * M, 8 * M * M]

"""Two (and four) gloo ranks on 127.0.0.1 train exactly like one process on the concatenated batch, with either
Gramian schedule; :mod:`mtlsolve.adapters.comm` checks the bytes each schedule sends."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist

from adapter_testing import LearnedScale, NoisyAverage, NormWeighting, SignMask, TwoTaskNet, data, spawn_ranks
from mtlsolve.adapters import MultiTaskBackward, comm
from mtlsolve.adapters.ddp import ReduceScatter
from mtlsolve.plugins.loss_weighting.ls import LinearScalarization

#: the numbers of ranks tested; 4 is in the slow tier
WORLDS = [2, pytest.param(4, marks=pytest.mark.slow)]
GLOBAL_BATCH = 8
STEPS = 3

#: name -> (solver factory, adapter keyword arguments)
CONFIGS = {
    "ls_mean": (lambda: LinearScalarization(reduction="mean"), {}),
    "learned_scale": (lambda: LearnedScale(m=2), {}),
    "gramian": (NormWeighting, {}),
    "gramian_accumulated": (NormWeighting, {"accumulation_steps": 2}),
    "gramian_held": (NormWeighting, {"path": "matrix"}),
    "matrix": (SignMask, {}),
    "representation_gramian": (NormWeighting, {"grads": "representation"}),
    "representation_matrix": (SignMask, {"grads": "representation"}),
    "gramian_clipped": (NormWeighting, {"max_norm": 0.05}),
    "gramian_scattered": (NormWeighting, {"scatter": True}),
    "noisy_scattered": (NoisyAverage, {"scatter": True}),
    "noisy": (NoisyAverage, {}),
}


def train(name: str, rank: int | None) -> dict[str, np.ndarray]:
    """Train one configuration; rank None is the single-process run on the whole batch."""
    make_solver, kwargs = CONFIGS[name]
    kwargs = dict(kwargs)
    scatter = kwargs.pop("scatter", False)
    torch.manual_seed(0)
    net = TwoTaskNet(dtype=torch.float64)
    solver = make_solver()
    distributed = rank is not None
    model = torch.nn.parallel.DistributedDataParallel(net) if distributed else net
    ddp_reductions = []
    if distributed:

        def count(state, bucket):
            ddp_reductions.append(1)
            fut = torch.futures.Future()
            fut.set_result(bucket.buffer())
            return fut

        model.register_comm_hook(None, count)
    k = kwargs.get("accumulation_steps", 1)
    if not distributed:
        kwargs = {key: v for key, v in kwargs.items() if key != "accumulation_steps"}
        k = 1
    schedule = ReduceScatter() if distributed and scatter else distributed
    adapter = MultiTaskBackward(solver, shared=net.trunk, distributed=schedule, **kwargs)
    opt = torch.optim.SGD(list(net.parameters()) + adapter.parameters(), lr=0.2)
    for step in range(STEPS):
        x, y = data(n=GLOBAL_BATCH, seed=step, dtype=torch.float64)
        if distributed:
            share = GLOBAL_BATCH // dist.get_world_size()
            x, y = x[rank * share : (rank + 1) * share], y[rank * share : (rank + 1) * share]
        for xm, ym in zip(x.chunk(k), y.chunk(k)):
            context = model.no_sync() if distributed else torch.enable_grad()
            with context:
                losses, h = model(xm, ym)
                adapter.backward(losses, features=h)
        assert adapter.step(opt)
    out = {f"p{i}": p.detach().numpy().copy() for i, p in enumerate(net.parameters())}
    out.update({f"s{i}": p.detach().numpy().copy() for i, p in enumerate(adapter.parameters())})
    out["ddp_reductions"] = np.array(len(ddp_reductions))
    return out


def step_bytes(rank: int, scatter: bool) -> dict[str, float]:
    """The collectives of one Gramian step: bytes contributed per collective, and sent per rank by a ring."""
    torch.manual_seed(0)
    net = TwoTaskNet(dtype=torch.float64)
    adapter = MultiTaskBackward(NormWeighting(), shared=net.trunk, distributed=ReduceScatter() if scatter else True)
    x, y = data(n=GLOBAL_BATCH, seed=0, dtype=torch.float64)
    share = GLOBAL_BATCH // dist.get_world_size()
    losses, _ = net(x[rank * share : (rank + 1) * share], y[rank * share : (rank + 1) * share])
    with comm.count() as counter:
        adapter.backward(losses)
    return {**counter.totals(), "wire": counter.wire(), "engine": adapter._engine.name}


def _worker(rank: int, world: int, port: int, outdir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = {name: train(name, rank) for name in CONFIGS}
        results["bytes"] = {scatter: step_bytes(rank, scatter) for scatter in (False, True)}
        torch.save(results, os.path.join(outdir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module", params=WORLDS, ids=lambda world: f"{world}ranks")
def ranks(request, tmp_path_factory):
    return spawn_ranks(_worker, request.param, tmp_path_factory.mktemp("ddp"))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_two_ranks_equal_one_process_on_the_concatenated_batch(ranks, name):
    single = train(name, None)
    first = ranks[0][name]
    for key, value in single.items():
        if key == "ddp_reductions":
            continue
        for rank in ranks[1:]:
            assert np.array_equal(first[key], rank[name][key]), f"ranks disagree on {key}"
        np.testing.assert_allclose(first[key], value, rtol=1e-11, atol=1e-13, err_msg=key)
    # DDP's own all-reduce never ran: the adapter did the only reduction
    assert all(int(rank[name]["ddp_reductions"]) == 0 for rank in ranks)


def test_the_single_process_runs_actually_train():
    before = train("gramian", None)
    torch.manual_seed(0)
    initial = [p.detach().numpy() for p in TwoTaskNet(dtype=torch.float64).parameters()]
    assert not np.allclose(before["p0"], initial[0])


@pytest.mark.slow  # spawns the ranks, as the equality tests (slow in tests/conftest.py)
def test_the_schedules_send_the_bytes_of_their_formulas(ranks):
    """Bytes per step of both schedules against their formulas (float64, b = 8 bytes, m = 2 tasks, R ranks).

    Default: every block all-reduced (m·n), the losses (m), the finiteness flag (one float32) and
    the update with the heads' gradients (n + heads). Reduce-scatter: every block reduce-scattered
    (m·R·⌈|p|/R⌉), K (m²), the losses, the flag and the heads all-reduced, and each rank's
    ⌈|p|/R⌉ columns of the update all-gathered.
    """
    torch.manual_seed(0)
    net = TwoTaskNet(dtype=torch.float64)
    sizes = [p.numel() for p in net.trunk.parameters()]
    heads = sum(p.numel() for p in net.parameters()) - sum(sizes)
    m, n, b, R = 2, sum(sizes), 8, len(ranks)
    padded = sum(R * -(-k // R) for k in sizes)
    default = {"all_reduce": b * (m * n + m + n + heads) + 4}
    scattered = {
        "reduce_scatter_single": b * m * padded,
        "all_reduce": b * (m * m + m + heads) + 4,
        "all_gather_single": b * padded // R,
    }
    for rank in ranks:
        assert rank["bytes"][False].pop("engine") == "folded gramian"
        assert rank["bytes"][True].pop("engine") == "scattered gramian"
        wire = {key: rank["bytes"][key].pop("wire") for key in (False, True)}
        assert rank["bytes"][False] == default
        assert rank["bytes"][True] == scattered
        # a ring all-reduce sends 2(R-1)/R of its buffer per rank, a reduce-scatter (R-1)/R, an all-gather R-1
        assert wire[False] == 2 * (R - 1) / R * default["all_reduce"]
        expected = (R - 1) / R * (scattered["reduce_scatter_single"] + 2 * scattered["all_reduce"])
        assert wire[True] == expected + (R - 1) * scattered["all_gather_single"]
        assert wire[True] < 0.6 * wire[False]


@pytest.mark.slow
def test_both_schedules_give_the_same_training(ranks):
    for rank in ranks:
        for key, value in rank["gramian"].items():
            if key != "ddp_reductions":
                np.testing.assert_allclose(rank["gramian_scattered"][key], value, rtol=1e-12, atol=1e-14, err_msg=key)

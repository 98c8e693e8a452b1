"""Two gloo ranks on 127.0.0.1 train exactly like one process on the concatenated batch."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist

from adapter_testing import LearnedScale, NormWeighting, SignMask, TwoTaskNet, data
from mtlsolve.adapters import MultiTaskBackward
from mtlsolve.plugins.loss_weighting.ls import LinearScalarization

WORLD = 2
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
}


def train(name: str, rank: int | None) -> dict[str, np.ndarray]:
    """Train one configuration; rank None is the single-process run on the whole batch."""
    make_solver, kwargs = CONFIGS[name]
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
    adapter = MultiTaskBackward(solver, shared=net.trunk, distributed=distributed, **kwargs)
    opt = torch.optim.SGD(list(net.parameters()) + adapter.parameters(), lr=0.2)
    for step in range(STEPS):
        x, y = data(n=GLOBAL_BATCH, seed=step, dtype=torch.float64)
        if distributed:
            share = GLOBAL_BATCH // WORLD
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


def _worker(rank: int, port: int, outdir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        results = {name: train(name, rank) for name in CONFIGS}
        torch.save(results, os.path.join(outdir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    outdir = tmp_path_factory.mktemp("ddp")
    torch.multiprocessing.spawn(_worker, args=(_free_port(), str(outdir)), nprocs=WORLD, join=True)
    return [torch.load(outdir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_two_ranks_equal_one_process_on_the_concatenated_batch(ranks, name):
    single = train(name, None)
    first, second = ranks[0][name], ranks[1][name]
    for key, value in single.items():
        if key == "ddp_reductions":
            continue
        assert np.array_equal(first[key], second[key]), f"ranks disagree on {key}"
        np.testing.assert_allclose(first[key], value, rtol=1e-11, atol=1e-13, err_msg=key)
    # DDP's own all-reduce never ran: the adapter did the only reduction
    assert int(first["ddp_reductions"]) == 0 and int(second["ddp_reductions"]) == 0


def test_the_single_process_runs_actually_train():
    before = train("gramian", None)
    torch.manual_seed(0)
    initial = [p.detach().numpy() for p in TwoTaskNet(dtype=torch.float64).parameters()]
    assert not np.allclose(before["p0"], initial[0])

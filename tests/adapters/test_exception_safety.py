"""MultiTaskBackward on tasks that never reach the shared parameters, non-finite losses and gradients,
failing solvers and a changing number of tasks: exact zero rows, and a failed call changes nothing."""

from __future__ import annotations

import contextlib
import copy
import math

import numpy as np
import pytest
import torch

import mtlsolve
from adapter_testing import flat_grad, per_task
from mtlsolve.adapters import MultiTaskBackward
from mtlsolve.errors import InvalidSystemError, NonFiniteError
from mtlsolve.solver import Solver


class ThreeTaskNet(torch.nn.Module):
    """Two Linear layers (factored on the gramian path) and a scale vector (a tapped leaf) shared; three heads.

    Task 2 never reaches the shared parameters: its head reads detached features
    (``placeholder="detached"``), or its loss is ``0 * bias`` or a head-only regulariser;
    with ``placeholder=None`` it is an ordinary task.
    """

    def __init__(self) -> None:
        super().__init__()
        self.trunk = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 6), torch.nn.Tanh())
        self.scale = torch.nn.Parameter(torch.linspace(0.5, 1.5, 6))
        self.heads = torch.nn.ModuleList([torch.nn.Linear(6, 1) for _ in range(3)])

    @property
    def shared(self) -> list:
        return [self.trunk, self.scale]

    def shared_params(self) -> list[torch.Tensor]:
        return [*self.trunk.parameters(), self.scale]

    def losses(self, x, y, placeholder="detached", hook=None, nan=None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x) * self.scale
        if hook is not None:
            h.register_hook(hook)
        l0 = ((self.heads[0](h) - y[:, :1]) ** 2).mean()
        l1 = (torch.sin(self.heads[1](h)) - y[:, 1:]).abs().mean()
        if placeholder is None:
            l2 = (self.heads[2](h) ** 2).mean()
        elif placeholder == "detached":
            l2 = (self.heads[2](h.detach()) ** 2).mean()
        elif placeholder == "zero":
            l2 = 0 * self.heads[2].bias.sum()
        else:
            l2 = self.heads[2].weight.pow(2).sum()
        losses = [l0, l1, l2]
        if nan is not None:
            losses[nan] = losses[nan] * math.nan
        return torch.stack(losses), h


def _data(seed: int):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(4, 5, generator=gen), torch.randn(4, 2, generator=gen)


def _solver(name: str):
    if name in ("graddrop", "pcgrad", "gradvac"):  # randomised: seeded so that two instances agree
        return mtlsolve.from_config({"name": name, "seed": 0, **({"on": "params"} if name == "graddrop" else {})})
    return mtlsolve.get(name)


def _step(adapter, net, seed, **kwargs):
    """One backward on batch ``seed`` (features passed in representation mode)."""
    losses, h = net.losses(*_data(seed), **kwargs)
    return adapter.backward(losses, features=h if adapter.grads == "representation" else None)


def _grads(params):
    return [None if p.grad is None else p.grad.clone() for p in params]


def _same(a, b) -> bool:
    """Bitwise equality of nested states (tensors, arrays, mappings, sequences, numbers)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _grads_equal(a, b) -> bool:
    return len(a) == len(b) and all(
        (x is None and y is None) or (x is not None and y is not None and torch.equal(x, y)) for x, y in zip(a, b)
    )


# ------------------------------------------------------- 1. tasks that never reach the shared parameters
GRADIENT_CASES = [
    (name, path, batched, placeholder)
    for name in ("upgrad", "mgda", "pcgrad")
    for path in ("gramian", "matrix")
    for batched in (True, False, None)
    for placeholder in (("detached", "zero", "regulariser") if name == "upgrad" else ("detached",))
] + [("graddrop", "matrix", batched, "detached") for batched in (True, False)]


@pytest.mark.parametrize("name, path, batched, placeholder", GRADIENT_CASES)
def test_a_task_that_misses_the_shared_parameters_has_an_exact_zero_gramian_row(name, path, batched, placeholder):
    torch.manual_seed(0)
    net = ThreeTaskNet()
    shared = net.shared_params()
    for _ in range(2):  # a stale buffer would show up as a different row on the second call
        adapter = MultiTaskBackward(_solver(name), shared=net.shared, path=path, batched=batched)
        net.zero_grad(set_to_none=True)
        losses, _ = net.losses(*_data(0), placeholder=placeholder)
        G = per_task(losses, shared)
        assert not G[2].any()
        diagnostics = adapter.backward(losses)
        K = diagnostics.gramian
        assert np.isfinite(K).all()
        assert not K[2].any() and not K[:, 2].any()
        np.testing.assert_allclose(K, G @ G.T, rtol=1e-5, atol=1e-7)
        if diagnostics.weights is not None:
            np.testing.assert_allclose(flat_grad(shared), diagnostics.weights @ G, rtol=1e-5, atol=1e-6)
        else:
            assert np.isfinite(flat_grad(shared)).all()
        if placeholder == "detached":  # task 2's head gets the plain gradient of its own loss
            net2 = copy.deepcopy(net)
            expected = per_task(net2.losses(*_data(0))[0], list(net2.heads[2].parameters()))[2]
            np.testing.assert_allclose(flat_grad(list(net.heads[2].parameters())), expected, rtol=1e-6)


@pytest.mark.parametrize("name", ["ls", "mean", "uw", "imtl_l"])
@pytest.mark.parametrize("placeholder", ["detached", "zero"])
def test_a_task_that_misses_the_shared_parameters_adds_nothing_on_the_loss_path(name, placeholder):
    torch.manual_seed(0)
    net = ThreeTaskNet()
    shared = net.shared_params()
    adapter = MultiTaskBackward(name, shared=net.shared)
    losses, _ = net.losses(*_data(0), placeholder=placeholder)
    G = per_task(losses, shared)
    diagnostics = adapter.backward(losses)
    np.testing.assert_allclose(flat_grad(shared), diagnostics.weights @ G, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------- 2. non-finite losses, loss path
LOSS_SOLVERS = ["ls", "mean", "sum", "stl", "rlw", "uw", "imtl_l"]


@pytest.mark.parametrize("value", [math.nan, math.inf])
@pytest.mark.parametrize("task", [0, 2])
@pytest.mark.parametrize("name", LOSS_SOLVERS)
def test_non_finite_losses_raise_on_the_loss_path_before_anything_is_written(name, task, value):
    torch.manual_seed(0)
    net = ThreeTaskNet()
    adapter = MultiTaskBackward(name, shared=net.shared)
    assert adapter.path == "losses"
    _step(adapter, net, 0)  # lazily created solver parameters exist from here on
    state, counters = adapter.solver.state_dict(), adapter.state_dict()
    params = [*net.parameters(), *adapter.parameters()]
    before = _grads(params)
    losses, _ = net.losses(*_data(1))
    bad = losses * torch.tensor([value if i == task else 1.0 for i in range(3)])
    with pytest.raises(NonFiniteError):
        adapter.backward(bad)
    assert _grads_equal(_grads(params), before)
    assert _same(adapter.solver.state_dict(), state) and _same(adapter.state_dict(), counters)


def test_a_failed_first_step_creates_no_solver_parameters():
    net = ThreeTaskNet()
    adapter = MultiTaskBackward("uw", shared=net.shared)
    with pytest.raises(NonFiniteError):
        _step(adapter, net, 0, nan=0)
    assert adapter.parameters() == [] and adapter.solver.state_dict() == {}
    assert all(p.grad is None for p in net.parameters())
    assert _step(adapter, net, 0) is not None and len(adapter.parameters()) == 1


@pytest.mark.parametrize("fault", ["nan_shared", "nan_head_only", "overflow"])
@pytest.mark.parametrize(
    "name, options",
    [("ls", {}), ("uw", {}), ("dwa", {}), ("upgrad", {}), ("upgrad", {"path": "matrix"}), ("mgda", {"batched": False})],
)
def test_grad_scaler_skips_non_finite_steps_on_every_path(name, options, fault):
    torch.manual_seed(0)
    net = ThreeTaskNet()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    adapter = MultiTaskBackward(name, shared=net.shared, scaler=scaler, **options)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    assert not _step(adapter, net, 0).skipped and adapter.step(opt)
    state = adapter.solver.state_dict()
    before = [p.detach().clone() for p in net.parameters()]
    losses, _ = net.losses(*_data(1), nan={"nan_shared": 0, "nan_head_only": 2}.get(fault))
    if fault == "overflow":  # finite losses whose scaled gradients overflow float32
        losses = losses * torch.tensor([1.0, 1e37, 1.0])
    diagnostics = adapter.backward(losses)  # no error: GradScaler's skip
    assert diagnostics.skipped and diagnostics.weights is None
    assert _same(adapter.solver.state_dict(), state)
    assert adapter.step(opt)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    assert scaler.get_scale() == 2.0**7
    assert not _step(adapter, net, 2).skipped and adapter.step(opt)
    assert all(p.grad is None for p in net.parameters())
    assert not all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


# ------------------------------------------------------------ 3. a failed backward changes nothing
PROBES = [
    # (solver, adapter options, the micro-batch that fails)
    ("ls", {}, 0),
    ("uw", {}, 0),
    ("ls", {"accumulation_steps": 2}, 1),
    ("upgrad", {"batched": True}, 0),
    ("upgrad", {"batched": False}, 0),
    ("mgda", {"batched": None}, 0),
    ("gradvac", {"batched": True}, 0),
    ("upgrad", {"path": "matrix", "batched": True}, 0),
    ("upgrad", {"path": "matrix", "batched": False}, 0),
    ("graddrop", {"batched": False}, 0),
    ("gradvac", {"accumulation_steps": 2, "batched": False}, 0),
    ("gradvac", {"accumulation_steps": 2, "batched": True}, 1),
    ("upgrad", {"grads": "representation"}, 0),
    ("gradnorm", {}, 0),  # grads="last_shared": the unfactored gramian path
]
FAULTS = ["solver", "nan_head_only", "nan_shared", "inf_features", "inf_head", "shape"]
EXPECTED = {"solver": RuntimeError, "shape": InvalidSystemError}


@contextlib.contextmanager
def _fault(kind, solver, net, monkeypatch):
    """Yields the keyword arguments of ``net.losses`` that inject the fault (patches undone on exit)."""
    if kind == "solver":  # the solver updates its state, then raises
        cls = type(solver)
        with monkeypatch.context() as patch:
            for method in ("solve", "objective"):
                original = getattr(cls, method)
                if method == "objective" and original is Solver.objective:
                    continue

                def broken(self, *args, _original=original, **kw):
                    _original(self, *args, **kw)
                    raise RuntimeError("probe")

                patch.setattr(cls, method, broken)
            yield {}
    elif kind == "inf_head":
        handle = net.heads[0].weight.register_hook(lambda g: torch.full_like(g, math.inf))
        try:
            yield {}
        finally:
            handle.remove()
    else:
        yield {
            "nan_head_only": {"nan": 2},
            "nan_shared": {"nan": 0},
            "inf_features": {"hook": lambda g: g * math.inf},
            "shape": {},
        }[kind]


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("name, options, at", PROBES)
def test_a_failed_backward_changes_nothing(name, options, at, fault, monkeypatch):
    torch.manual_seed(0)
    net = ThreeTaskNet()
    twin = copy.deepcopy(net)  # the same history without the failure
    pairs = []
    for model in (net, twin):
        adapter = MultiTaskBackward(_solver(name), shared=model.shared, **options)
        pairs.append((model, adapter, torch.optim.SGD(model.parameters(), lr=0.1)))
    k = options.get("accumulation_steps", 1)
    for model, adapter, opt in pairs:  # one clean optimiser step, then the micro-batches before the fault
        for j in range(k):
            _step(adapter, model, j)
        assert adapter.step(opt)
        for j in range(at):
            _step(adapter, model, 10 + j)
        gen = torch.Generator().manual_seed(3)  # pre-existing .grad on some parameters, None on others
        for p in (model.scale, model.trunk[0].weight, model.heads[0].weight):
            p.grad = torch.randn(p.shape, generator=gen)

    (model, adapter, _), (twin_model, twin_adapter, _) = pairs
    if fault == "solver" and at + 1 < k and adapter.path != "losses":
        pytest.skip("the gradient paths run the solver on the last micro-batch only")
    params = [*model.parameters(), *adapter.parameters()]
    before = _grads(params)
    state, counters = adapter.solver.state_dict(), adapter.state_dict()
    with _fault(fault, adapter.solver, model, monkeypatch) as kwargs:
        with pytest.raises(EXPECTED.get(fault, NonFiniteError)):
            if fault == "shape":
                adapter.backward(model.losses(*_data(10 + at))[0][None])
            else:
                _step(adapter, model, 10 + at, **kwargs)
    assert _grads_equal(_grads(params), before)
    assert _same(adapter.solver.state_dict(), state)
    assert _same(adapter.state_dict(), counters)

    # the next clean call is the call the adapter would have made without the failure
    for m, a in ((model, adapter), (twin_model, twin_adapter)):
        out = _step(a, m, 10 + at)
        assert (out is None) == (at + 1 < k)
    assert _grads_equal(
        _grads([*model.parameters(), *adapter.parameters()]),
        _grads([*twin_model.parameters(), *twin_adapter.parameters()]),
    )
    assert _same(adapter.state_dict(), twin_adapter.state_dict())


# ------------------------------------------------------------ 4. the number of tasks
def _two_tasks(net, seed):
    return net.losses(*_data(seed), placeholder=None)[0][:2]


@pytest.mark.parametrize("name", ["nash_mtl", "dwa", "famo", "gradvac", "uw"])
def test_a_stateful_solver_rejects_another_number_of_tasks(name):
    torch.manual_seed(0)
    net = ThreeTaskNet()
    adapter = MultiTaskBackward(name, shared=net.shared)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    _step(adapter, net, 0, placeholder=None)
    adapter.step(opt, closure=lambda: net.losses(*_data(0), placeholder=None)[0])
    _step(adapter, net, 1, placeholder=None)
    params = [*net.parameters(), *adapter.parameters()]
    before, state, counters = _grads(params), adapter.solver.state_dict(), adapter.state_dict()
    with pytest.raises(InvalidSystemError, match=r"3 tasks.*got 2") as info:
        adapter.backward(_two_tasks(net, 1))
    assert isinstance(info.value, ValueError)
    assert _grads_equal(_grads(params), before)
    assert _same(adapter.solver.state_dict(), state) and _same(adapter.state_dict(), counters)

    restored = MultiTaskBackward(name, shared=net.shared)  # the count travels with the checkpoint
    restored.load_state_dict(copy.deepcopy(counters))
    with pytest.raises(InvalidSystemError):
        restored.backward(_two_tasks(net, 1))

    adapter.reset()  # as a fresh adapter: any number of tasks
    net.zero_grad(set_to_none=True)
    assert adapter.backward(_two_tasks(net, 2)) is not None
    net.zero_grad(set_to_none=True)
    assert MultiTaskBackward(name, shared=net.shared).backward(_two_tasks(net, 2)) is not None


@pytest.mark.parametrize("name", ["upgrad", "mgda", "ls", "mean"])
def test_a_stateless_solver_accepts_another_number_of_tasks(name):
    net = ThreeTaskNet()
    adapter = MultiTaskBackward(name, shared=net.shared)
    assert _step(adapter, net, 0) is not None
    net.zero_grad(set_to_none=True)
    diagnostics = adapter.backward(_two_tasks(net, 1))
    assert len(diagnostics.weights) == 2 and adapter.state_dict()["m"] == 2

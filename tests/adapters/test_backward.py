"""MultiTaskBackward: per-task gradients, the three paths, representation mode, hooks and diagnostics."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from adapter_testing import (
    LearnedScale,
    NoisyAverage,
    NormWeighting,
    PostStepScale,
    SignMask,
    TwoTaskNet,
    data,
    flat_grad,
    norm_weights,
    per_task,
    sign_mask,
)
from mtlsolve.adapters import MultiTaskBackward, _grads
from mtlsolve.errors import InvalidSystemError, SolverError
from mtlsolve.plugins.loss_weighting.ls import LinearScalarization


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return list(module.parameters())


def _heads_reference(net: TwoTaskNet, losses: torch.Tensor) -> np.ndarray:
    """Task-specific parameters' plain own-task gradient: ∇L_i for head i, ∇(L_1 + L_2) for the common head."""
    heads = _params(net.heads) + _params(net.common)
    return per_task(losses, heads).sum(0)


# ------------------------------------------------------------------ engines
@pytest.mark.parametrize("engine", [_grads.batched, _grads.loop])
def test_per_task_gradients_match_separate_autograd_calls(engine):
    net = TwoTaskNet()
    x, y = data()
    h = net.features(x)
    losses = net.losses_from(h, y)
    params = _params(net.trunk) + _params(net.heads) + _params(net.common)
    expected = per_task(losses, params)
    expected_h = per_task(losses, [h])
    blocks: dict[int, torch.Tensor] = {}
    consumers = [lambda b, i=i: blocks.__setitem__(i, b.clone()) for i in range(len(params))]
    (Z,) = engine(losses, [h], params, consumers, retain_graph=True)
    got = torch.cat([blocks[i].reshape(2, -1) for i in range(len(params))], dim=1).double().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(Z.reshape(2, -1).double().numpy(), expected_h, rtol=1e-6, atol=1e-7)


def test_reachable_leaves_stops_at_features():
    net = TwoTaskNet()
    x, y = data()
    h = net.features(x)
    losses = net.losses_from(h, y)
    below = {id(p) for p in net.trunk.parameters()}
    above = {id(p) for p in list(net.heads.parameters()) + list(net.common.parameters())}
    assert set(_grads.reachable_leaves([losses])) == below | above
    assert set(_grads.reachable_leaves([losses], stop=[h])) == above


# -------------------------------------------------------------------- paths
CASES = [
    ("gramian", NormWeighting, lambda G: norm_weights(G) @ G),
    ("matrix", NormWeighting, lambda G: norm_weights(G) @ G),
    ("matrix", SignMask, sign_mask),
]


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("path, solver_cls, reference", CASES)
def test_gradient_paths_write_the_reference_update(path, solver_cls, reference, batched):
    net = TwoTaskNet(dtype=torch.float64)
    x, y = data(dtype=torch.float64)
    shared = _params(net.trunk)
    losses = net.losses(x, y)
    G = per_task(losses, shared)
    expected_heads = _heads_reference(net, losses)
    adapter = MultiTaskBackward(solver_cls(), shared=net.trunk, path=path, batched=batched)
    assert adapter.path == path
    diagnostics = adapter.backward(losses)
    np.testing.assert_allclose(flat_grad(shared), reference(G), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(flat_grad(_params(net.heads) + _params(net.common)), expected_heads, rtol=1e-10)
    assert diagnostics.engine == ("batched" if batched else "loop")
    np.testing.assert_allclose(diagnostics.gramian, G @ G.T, rtol=1e-10)


def test_loss_path_is_one_backward_of_the_weighted_objective():
    net = TwoTaskNet(dtype=torch.float64)
    x, y = data(dtype=torch.float64)
    w = np.array([2.0, 0.5])
    losses = net.losses(x, y)
    all_params = _params(net)
    expected = w @ per_task(losses, all_params)
    adapter = MultiTaskBackward(LinearScalarization(weights=w), shared=net.trunk)
    assert adapter.path == "losses"
    diagnostics = adapter.backward(losses)
    np.testing.assert_allclose(flat_grad(all_params), expected, rtol=1e-12)
    np.testing.assert_allclose(diagnostics.weights, w)
    assert diagnostics.gramian is None and diagnostics.cosines is None
    # no Gramian on this path: the logger gets losses and weights only
    assert set(diagnostics.scalars()) == {"loss_0", "loss_1", "weight_0", "weight_1", "clip_factor"}


def test_loss_weighting_on_the_gramian_path_equals_the_loss_path_on_shared():
    net = TwoTaskNet(dtype=torch.float64)
    x, y = data(dtype=torch.float64)
    shared = _params(net.trunk)
    MultiTaskBackward(LinearScalarization(), shared=net.trunk).backward(net.losses(x, y))
    via_losses = flat_grad(shared)
    net.zero_grad(set_to_none=True)
    diagnostics = MultiTaskBackward(LinearScalarization(), shared=net.trunk, path="gramian").backward(net.losses(x, y))
    # factored layers sum the update in another order than autograd: equal to rounding of the largest entry
    np.testing.assert_allclose(flat_grad(shared), via_losses, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(diagnostics.weights, [1.0, 1.0])


def test_path_validation():
    net = TwoTaskNet()
    with pytest.raises(ValueError, match="needs the matrix path"):
        MultiTaskBackward(SignMask(), shared=net.trunk, path="gramian")
    with pytest.raises(ValueError, match="needs the gramian path"):
        MultiTaskBackward(NormWeighting(), shared=net.trunk, path="losses")
    with pytest.raises(ValueError, match="path must be one of"):
        MultiTaskBackward(NormWeighting(), shared=net.trunk, path="fast")
    with pytest.raises(ValueError, match="no tensor that requires grad"):
        MultiTaskBackward(NormWeighting(), shared=[])


class _Numel(TorchDispatchMode):
    """Records the largest tensor any aten op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.untyped_storage().nbytes() // t.element_size())
        return out


def _wide_net(blocks: int = 4, width: int = 32):
    torch.manual_seed(0)
    layers = [torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.Tanh()) for _ in range(blocks)]
    trunk = torch.nn.Sequential(*layers)
    heads = torch.nn.ModuleList([torch.nn.Linear(width, 1) for _ in range(3)])
    x = torch.randn(4, width)

    def losses():
        h = trunk(x)
        return torch.stack([heads[i](h).pow(2).mean() for i in range(3)])

    return trunk, losses


def test_gramian_path_never_materialises_the_task_matrix():
    trunk, losses = _wide_net()
    m, n = 3, sum(p.numel() for p in trunk.parameters())
    largest_block = max(p.numel() for p in trunk.parameters())
    sizes = {}
    for path in ("gramian", "matrix"):
        adapter = MultiTaskBackward(NormWeighting(), shared=trunk, path=path, batched=True)
        L = losses()
        with _Numel() as spy:
            adapter.backward(L)
        sizes[path] = spy.largest
    assert sizes["gramian"] <= m * largest_block < m * n
    assert sizes["matrix"] >= m * n


def test_gramian_path_peak_memory_below_holding_the_matrix(tmp_path):
    """Peak resident memory of one backward: the Gramian path stays far below the m x n bytes of G."""
    import subprocess
    import sys

    if not __import__("os").path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux /proc to reset the peak RSS")
    script = tmp_path / "peak.py"
    script.write_text(
        """
import gc, sys, torch
sys.path.insert(0, HELPERS)
from adapter_testing import NormWeighting
from mtlsolve.adapters import MultiTaskBackward
torch.manual_seed(0)
m, width, depth = 6, 384, 8
trunk = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(depth)])
heads = torch.nn.ModuleList([torch.nn.Linear(width, 1) for _ in range(m)])
x = torch.randn(4, width)
def rss(field):
    for line in open('/proc/self/status'):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
out = []
for path in ("gramian", "matrix", "gramian", "matrix"):  # the first two load code pages
    adapter = MultiTaskBackward(NormWeighting(), shared=trunk, path=path, batched=True)
    h = trunk(x)
    L = torch.stack([heads[i](h).pow(2).mean() for i in range(m)])
    gc.collect()
    open('/proc/self/clear_refs', 'w').write('5')
    base = rss('VmRSS')
    adapter.backward(L)
    out.append(rss('VmHWM') - base)
    del L, h
    trunk.zero_grad(set_to_none=True); heads.zero_grad(set_to_none=True)
n = sum(p.numel() for p in trunk.parameters())
print(m * n * 4, *out[2:])
""".replace("HELPERS", repr(str(__import__("pathlib").Path(__file__).parent)))
    )
    # a fixed mmap threshold makes glibc return every large block to the system when torch frees it,
    # so the peak resident size follows the live tensors
    env = dict(__import__("os").environ, MALLOC_MMAP_THRESHOLD_="65536")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    g_bytes, gramian_peak, matrix_peak = map(int, result.stdout.split())
    assert matrix_peak >= g_bytes
    assert gramian_peak < g_bytes / 4


def test_batched_engine_falls_back_to_the_loop():
    class NoVmap(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            # data-dependent Python control flow: vmap cannot batch it
            return g * 2 if g.abs().sum().item() >= 0 else g

    net = TwoTaskNet(dtype=torch.float64)
    x, y = data(dtype=torch.float64)

    def losses():
        return net.losses_from(NoVmap.apply(net.features(x)), y)

    shared = _params(net.trunk)
    L = losses()
    G = per_task(L, shared)
    heads = _heads_reference(net, L)
    adapter = MultiTaskBackward(NormWeighting(), shared=net.trunk, path="matrix")  # batched unless it fails
    with pytest.warns(RuntimeWarning, match="batched per-task gradients failed") as record:
        diagnostics = adapter.backward(L)
    assert record[0].filename == __file__  # the warning points at the user's call
    assert diagnostics.engine == "loop"
    np.testing.assert_allclose(flat_grad(shared), norm_weights(G) @ G, rtol=1e-10)
    np.testing.assert_allclose(flat_grad(_params(net.heads) + _params(net.common)), heads, rtol=1e-10)
    net.zero_grad(set_to_none=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert adapter.backward(losses()).engine == "loop"


# ------------------------------------------------------- representation mode
def test_representation_mode_equals_parameter_mode_when_the_gramians_coincide():
    """A bias-free linear encoder on one unit-norm input: g_i = z_i xᵀ, so G Gᵀ = Z Zᵀ and both modes agree."""
    torch.manual_seed(1)
    encoder = torch.nn.Linear(4, 6, bias=False).double()
    heads = torch.nn.ModuleList([torch.nn.Linear(6, 1).double() for _ in range(3)])
    x = torch.randn(1, 4, dtype=torch.float64)
    x = x / x.norm()

    def forward():
        h = encoder(x)
        return h, torch.stack([torch.tanh(heads[i](h)).sum() * (i + 1) for i in range(3)])

    grads = {}
    for mode in ("shared", "representation"):
        encoder.zero_grad(set_to_none=True)
        heads.zero_grad(set_to_none=True)
        h, L = forward()
        adapter = MultiTaskBackward(NormWeighting(), shared=encoder, grads=mode)
        diagnostics = adapter.backward(L, features=h)
        grads[mode] = (flat_grad(_params(encoder)), flat_grad(_params(heads)), diagnostics.weights)
    for a, b in zip(grads["shared"], grads["representation"]):
        np.testing.assert_allclose(a, b, rtol=1e-10)


def test_representation_mode_runs_the_encoder_backward_once():
    net = TwoTaskNet(dtype=torch.float64)
    x, y = data(dtype=torch.float64)
    h = net.features(x)
    L = net.losses_from(h, y)
    Z = per_task(L, [h])
    # ls run on the feature gradients: ẑ = Σ z_i, so the encoder gets exactly Σ g_i
    expected = per_task(L, _params(net.trunk)).sum(0)
    expected_heads = _heads_reference(net, L)
    calls = []
    h.grad_fn.register_hook(lambda *args: calls.append(1))
    adapter = MultiTaskBackward(LinearScalarization(), shared=net.trunk, grads="representation", path="gramian")
    diagnostics = adapter.backward(L, features=h)
    assert len(calls) == 1
    np.testing.assert_allclose(flat_grad(_params(net.trunk)), expected, rtol=1e-10)
    np.testing.assert_allclose(flat_grad(_params(net.heads) + _params(net.common)), expected_heads, rtol=1e-10)
    np.testing.assert_allclose(diagnostics.gramian, Z @ Z.T, rtol=1e-10)
    assert diagnostics.kind == "representation"


def test_representation_mode_needs_features():
    net = TwoTaskNet()
    x, y = data()
    adapter = MultiTaskBackward(NormWeighting(), shared=net.trunk, grads="representation")
    with pytest.raises(InvalidSystemError, match="features"):
        adapter.backward(net.losses(x, y))


# ---------------------------------------------------------- accumulation etc.
@pytest.mark.parametrize(
    "solver, path", [(NormWeighting, "gramian"), (SignMask, "matrix"), (LinearScalarization, "losses")]
)
def test_gradient_accumulation_combines_once_on_the_mean_gradients(solver, path):
    net = TwoTaskNet(dtype=torch.float64)
    x, y = data(n=8, dtype=torch.float64)
    params = _params(net)
    full = MultiTaskBackward(solver(), shared=net.trunk, path=path)
    full.backward(net.losses(x, y))
    expected = flat_grad(params)
    net.zero_grad(set_to_none=True)
    solver_instance = solver()
    adapter = MultiTaskBackward(solver_instance, shared=net.trunk, path=path, accumulation_steps=2)
    assert adapter.backward(net.losses(x[:4], y[:4])) is None
    diagnostics = adapter.backward(net.losses(x[4:], y[4:]))
    np.testing.assert_allclose(flat_grad(params), expected, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(diagnostics.losses, to_np(net.losses(x, y)), rtol=1e-12)
    if isinstance(solver_instance, NormWeighting):
        assert solver_instance.state_dict()["calls"] == 1


def to_np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def test_max_norm_clips_the_shared_update_only():
    net = TwoTaskNet(dtype=torch.float64)
    x, y = data(dtype=torch.float64)
    L = net.losses(x, y)
    G = per_task(L, _params(net.trunk))
    d = norm_weights(G) @ G
    heads = _heads_reference(net, L)
    max_norm = 0.1 * np.linalg.norm(d)
    adapter = MultiTaskBackward(NormWeighting(), shared=net.trunk, max_norm=max_norm)
    diagnostics = adapter.backward(L)
    np.testing.assert_allclose(np.linalg.norm(flat_grad(_params(net.trunk))), max_norm, rtol=1e-5)
    np.testing.assert_allclose(flat_grad(_params(net.trunk)), d * diagnostics.clip_factor, rtol=1e-10)
    np.testing.assert_allclose(diagnostics.update_norm, np.linalg.norm(d), rtol=1e-10)
    np.testing.assert_allclose(flat_grad(_params(net.heads) + _params(net.common)), heads, rtol=1e-10)
    with pytest.raises(ValueError, match="max_norm"):
        MultiTaskBackward(NormWeighting(), shared=net.trunk, max_norm=0.0)


# ------------------------------------------------------------- diagnostics
def test_diagnostics_come_from_the_gramian():
    net = TwoTaskNet(dtype=torch.float64)
    x, y = data(dtype=torch.float64)
    L = net.losses(x, y)
    G = per_task(L, _params(net.trunk))
    seen = []
    adapter = MultiTaskBackward(NormWeighting(), shared=net.trunk, callback=seen.append)
    diagnostics = adapter.backward(L)
    assert seen == [diagnostics]
    norms = np.linalg.norm(G, axis=1)
    np.testing.assert_allclose(diagnostics.grad_norms, norms, rtol=1e-10)
    np.testing.assert_allclose(diagnostics.cosines, (G @ G.T) / np.outer(norms, norms), rtol=1e-10)
    s = np.linalg.svd(G, compute_uv=False)
    np.testing.assert_allclose(diagnostics.condition_number, s[0] / s[-1], rtol=1e-8)
    np.testing.assert_allclose(diagnostics.weights, norm_weights(G), rtol=1e-10)
    np.testing.assert_allclose(diagnostics.losses, to_np(L))
    assert diagnostics.solver["calls"] == 1 and not diagnostics.skipped
    scalars = diagnostics.scalars()  # the flat view a logger receives
    assert scalars["cos_0_1"] == pytest.approx(G[0] @ G[1] / (norms[0] * norms[1]), rel=1e-10)
    assert scalars["condition_number"] == pytest.approx(s[0] / s[-1], rel=1e-8)
    assert scalars["update_norm"] == pytest.approx(np.linalg.norm(norm_weights(G) @ G), rel=1e-10)
    for i in range(2):
        assert scalars[f"grad_norm_{i}"] == pytest.approx(norms[i], rel=1e-10)
        assert scalars[f"weight_{i}"] == pytest.approx(norm_weights(G)[i], rel=1e-10)
        assert scalars[f"loss_{i}"] == pytest.approx(float(L[i].detach()), rel=1e-12)
    assert scalars["clip_factor"] == 1.0 and len(scalars) == 10


def test_condition_number_of_dependent_gradients_is_infinite():
    from mtlsolve.adapters import StepDiagnostics

    K = np.array([[1.0, 2.0], [2.0, 4.0]])
    assert StepDiagnostics(path="gramian", kind="shared", losses=np.ones(2), gramian=K).condition_number == math.inf


# ------------------------------------------------------------ solver hooks
def test_training_hooks_are_driven_generically():
    net = TwoTaskNet(dtype=torch.float64)
    x, y = data(dtype=torch.float64)
    solver = PostStepScale(m=2)
    adapter = MultiTaskBackward(solver, shared=net.trunk)
    assert adapter.parameters() == [solver.s]
    opt = torch.optim.SGD(list(net.parameters()) + adapter.parameters(), lr=0.1)
    L = net.losses(x, y)
    expected_s_grad = 0.5 * (1 - to_np(L))  # ∂/∂s of ½(e^{−s}L + s) at s = 0
    diagnostics = adapter.backward(L)
    np.testing.assert_allclose(solver.s.grad.numpy(), expected_s_grad, rtol=1e-12)
    np.testing.assert_allclose(diagnostics.weights, [0.5, 0.5])
    with pytest.raises(SolverError, match="closure"):
        adapter.step(opt)
    adapter.backward(net.losses(x, y))
    assert adapter.step(opt, closure=lambda: net.losses(x, y))
    after = solver.state_dict()["after"]
    np.testing.assert_allclose(after[-1], to_np(net.losses(x, y)), rtol=1e-12)
    assert all(p.grad is None for p in net.parameters())
    assert not adapter.step(opt)  # nothing pending
    adapter.end_epoch()
    assert solver.state_dict()["epochs"] == 1
    with pytest.raises(SolverError, match="accumulation"):
        MultiTaskBackward(PostStepScale(), shared=net.trunk, accumulation_steps=2)


def test_step_waits_for_the_accumulation_cycle():
    net = TwoTaskNet(dtype=torch.float64)
    x, y = data(dtype=torch.float64)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    adapter = MultiTaskBackward(NormWeighting(), shared=net.trunk, accumulation_steps=2)
    before = [p.detach().clone() for p in net.parameters()]
    adapter.backward(net.losses(x[:4], y[:4]))
    assert not adapter.step(opt)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    adapter.backward(net.losses(x[4:], y[4:]))
    assert adapter.step(opt)
    assert not all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


# ------------------------------------------------------ mixed precision etc.
def test_bf16_autocast_on_cpu():
    net = TwoTaskNet()
    x, y = data()
    shared = _params(net.trunk)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        L = net.losses(x, y)
    G = per_task(L, shared)
    adapter = MultiTaskBackward(NormWeighting(), shared=net.trunk)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        diagnostics = adapter.backward(L)
    got = flat_grad(shared)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, norm_weights(G) @ G, rtol=2e-2, atol=2e-3)
    np.testing.assert_allclose(diagnostics.gramian, G @ G.T, rtol=2e-2, atol=1e-4)


def _scaler(init_scale: float):
    return torch.amp.GradScaler("cpu", init_scale=init_scale)


@pytest.mark.parametrize("path", ["gramian", "matrix"])
def test_grad_scaler_unscales_before_the_solver(path):
    net = TwoTaskNet(dtype=torch.float64)
    x, y = data(dtype=torch.float64)
    L = net.losses(x, y)
    G = per_task(L, _params(net.trunk))
    scaler = _scaler(2.0**10)
    adapter = MultiTaskBackward(NormWeighting(), shared=net.trunk, path=path, scaler=scaler, max_norm=1e9)
    diagnostics = adapter.backward(L)
    np.testing.assert_allclose(diagnostics.gramian, G @ G.T, rtol=1e-10)
    np.testing.assert_allclose(flat_grad(_params(net.trunk)), 2.0**10 * (norm_weights(G) @ G), rtol=1e-10)
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    before = torch.cat([p.detach().reshape(-1) for p in net.trunk.parameters()]).numpy().copy()
    assert adapter.step(opt)
    after = torch.cat([p.detach().reshape(-1) for p in net.trunk.parameters()]).numpy()
    np.testing.assert_allclose(before - after, norm_weights(G) @ G, rtol=1e-9)


def test_grad_scaler_skips_inf_steps_without_running_the_solver():
    net = TwoTaskNet()
    x, y = data()
    solver = NormWeighting()
    scaler = _scaler(2.0**16)
    adapter = MultiTaskBackward(solver, shared=net.trunk, scaler=scaler)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    before = [p.detach().clone() for p in net.parameters()]
    L = net.losses(x, y) * torch.tensor([1.0, 1e36])  # the scaled gradients overflow float32
    diagnostics = adapter.backward(L)
    assert diagnostics.skipped and diagnostics.weights is None
    assert "calls" not in solver.state_dict()
    assert adapter.step(opt)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    assert scaler.get_scale() == 2.0**15
    diagnostics = adapter.backward(net.losses(x, y))
    assert not diagnostics.skipped and solver.state_dict()["calls"] == 1
    assert adapter.step(opt)
    assert not all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


# ------------------------------------------------------------- checkpoints
def _train(net, opt, adapter, batches):
    for x, y in batches:
        for part in (slice(0, 4), slice(4, 8)):
            adapter.backward(net.losses(x[part], y[part]))
        adapter.step(opt)


@pytest.mark.parametrize("grads", ["shared", "representation"])
def test_checkpoint_gives_bit_identical_continuation(grads):
    batches = [data(seed=s) for s in range(6)]

    def make():
        torch.manual_seed(0)
        net = TwoTaskNet()
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        k = 2 if grads == "shared" else 1
        adapter = MultiTaskBackward(NoisyAverage(seed=3), shared=net.trunk, grads=grads, accumulation_steps=k)
        return net, opt, adapter

    def train(net, opt, adapter, chunk):
        for x, y in chunk:
            if grads == "shared":
                _train(net, opt, adapter, [(x, y)])
            else:
                h = net.features(x)
                adapter.backward(net.losses_from(h, y), features=h)
                adapter.step(opt)

    net, opt, adapter = make()
    train(net, opt, adapter, batches[:3])
    checkpoint = {"model": net.state_dict(), "opt": opt.state_dict(), "adapter": adapter.state_dict()}
    checkpoint = {k: __import__("copy").deepcopy(v) for k, v in checkpoint.items()}
    train(net, opt, adapter, batches[3:])
    net2, opt2, adapter2 = make()
    net2.load_state_dict(checkpoint["model"])
    opt2.load_state_dict(checkpoint["opt"])
    adapter2.load_state_dict(checkpoint["adapter"])
    train(net2, opt2, adapter2, batches[3:])
    for a, b in zip(net.parameters(), net2.parameters()):
        assert torch.equal(a, b)
    assert adapter.state_dict()["solver"]["w"].tolist() == adapter2.state_dict()["solver"]["w"].tolist()


def test_checkpoint_restores_learnable_solver_parameters():
    solver = LearnedScale(m=2)
    net = TwoTaskNet()
    adapter = MultiTaskBackward(solver, shared=net.trunk)
    with torch.no_grad():
        solver.s.fill_(0.25)
    state = adapter.state_dict()
    other = LearnedScale(m=2)
    MultiTaskBackward(other, shared=net.trunk).load_state_dict(state)
    assert torch.equal(other.s, solver.s)


# -------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("path", ["gramian", "matrix"])
def test_cuda_whole_path_on_device(path):
    net = TwoTaskNet(dtype=torch.float64)
    x, y = data(dtype=torch.float64)
    L = net.losses(x, y)
    G = per_task(L, _params(net.trunk))
    net = net.cuda()
    x, y = x.cuda(), y.cuda()
    adapter = MultiTaskBackward(NormWeighting(), shared=net.trunk, path=path)
    adapter.backward(net.losses(x, y))
    assert all(p.grad.device.type == "cuda" for p in net.parameters())
    got = torch.cat([p.grad.reshape(-1) for p in net.trunk.parameters()]).cpu().numpy()
    np.testing.assert_allclose(got, norm_weights(G) @ G, rtol=1e-9)


def test_checkpoint_mid_accumulation_cycle():
    """Saving between micro-batches carries the accumulated per-task gradients (the heads' .grad is the user's)."""
    batches = [data(seed=s) for s in range(3)]

    def make():
        torch.manual_seed(0)
        net = TwoTaskNet()
        adapter = MultiTaskBackward(NoisyAverage(seed=5), shared=net.trunk, accumulation_steps=2)
        return net, torch.optim.SGD(net.parameters(), lr=0.1), adapter

    net, opt, adapter = make()
    _train(net, opt, adapter, batches[:1])
    x, y = batches[1]
    adapter.backward(net.losses(x[:4], y[:4]))
    state = __import__("copy").deepcopy(adapter.state_dict())
    grads = [None if p.grad is None else p.grad.clone() for p in net.parameters()]
    model = __import__("copy").deepcopy(net.state_dict())
    adapter.backward(net.losses(x[4:], y[4:]))
    adapter.step(opt)
    _train(net, opt, adapter, batches[2:])

    net2, opt2, adapter2 = make()
    net2.load_state_dict(model)
    for p, g in zip(net2.parameters(), grads):
        p.grad = g
    adapter2.load_state_dict(state)
    adapter2.backward(net2.losses(x[4:], y[4:]))
    adapter2.step(opt2)
    _train(net2, opt2, adapter2, batches[2:])
    for a, b in zip(net.parameters(), net2.parameters()):
        assert torch.equal(a, b)


def test_lazily_created_solver_parameters_reach_the_optimiser():
    uw = pytest.importorskip("mtlsolve.plugins.loss_weighting.uw")
    net = TwoTaskNet(dtype=torch.float64)
    x, y = data(dtype=torch.float64)
    solver = uw.UncertaintyWeighting()
    adapter = MultiTaskBackward(solver, shared=net.trunk)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    assert adapter.parameters() == []  # s is created once m is known
    L = net.losses(x, y)
    adapter.backward(L)
    (s,) = adapter.parameters()
    np.testing.assert_allclose(s.grad.numpy(), 0.5 * (1 - to_np(L)), rtol=1e-12)
    assert adapter.step(opt)
    np.testing.assert_allclose(s.detach().numpy(), -0.5 * 0.5 * (1 - to_np(L)), rtol=1e-12)
    assert len(opt.param_groups) == 2 and adapter.add_parameters_to(opt) == []


def test_matrix_is_built_once_in_the_chosen_dtype():
    seen = []

    class Spy(SignMask):
        def solve(self, system):
            seen.append((system.matrix.dtype, tuple(system.matrix.shape)))
            return super().solve(system)

    net = TwoTaskNet()
    x, y = data()
    L = net.losses(x, y)
    G = per_task(L, _params(net.trunk))
    MultiTaskBackward(Spy(), shared=net.trunk, matrix_dtype=torch.float64).backward(L)
    assert seen == [(torch.float64, G.shape)]
    np.testing.assert_allclose(flat_grad(_params(net.trunk)), sign_mask(G), rtol=1e-5, atol=1e-7)


def test_a_missing_closure_raises_before_the_optimiser_steps():
    """FAMO reads the losses after the step: without ``closure=`` the step is refused before any
    parameter moves, so the gradients written by backward() are still there to step with."""
    import mtlsolve

    net = TwoTaskNet(dtype=torch.float64)
    x, y = data(dtype=torch.float64)
    adapter = MultiTaskBackward(mtlsolve.get("famo"), shared=net.trunk)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    adapter.backward(net.losses(x, y))
    before = [p.detach().clone() for p in net.parameters()]
    grads = [None if p.grad is None else p.grad.clone() for p in net.parameters()]
    with pytest.raises(SolverError, match="closure"):
        adapter.step(optimizer)
    for p, b, g in zip(net.parameters(), before, grads):
        assert torch.equal(p, b)
        assert (p.grad is None) == (g is None) and (g is None or torch.equal(p.grad, g))
    assert adapter.step(optimizer, closure=lambda: net.losses(x, y))

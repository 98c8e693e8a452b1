"""COST (Zhou et al., arXiv 2503.04046; docs/methods.md#cost): trigger, HTR, LoRA teleport, checkpointing and a CPU check."""

from __future__ import annotations

import copy
import math

import attrs
import numpy as np
import pytest
import torch
from torch import nn

from mtlsolve.adapters.strategies import _lora, from_config
from mtlsolve.adapters.strategies.cost import COST, htr_adjust_, mean_cosines
from mtlsolve.errors import InvalidConfigError


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- models and data
class TwoHeadNet(nn.Module):
    """The CPU check (docs/problems.md#cost-check): a shared two-layer MLP trunk of width 32 on x ∈ ℝ¹⁰ and one linear head per task."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh())
        self.heads = nn.ModuleList([nn.Linear(32, 1) for _ in range(2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.trunk(x)
        return torch.cat([head(h) for head in self.heads], dim=1)


def sine_problem(samples: int = 2048, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """y₁ = sin(a·x), y₂ = −sin(a·x) + 0.3·cos(b·x), with a, b ~ N(0, I/10) (docs/problems.md#cost-check)."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(10, generator=gen) / math.sqrt(10)
    b = torch.randn(10, generator=gen) / math.sqrt(10)
    X = torch.randn(samples, 10, generator=gen)
    return X, torch.stack([torch.sin(X @ a), -torch.sin(X @ a) + 0.3 * torch.cos(X @ b)], dim=1)


#: task 2's loss is scaled by 5 to create imbalance (docs/problems.md#cost-check)
SCALE = torch.tensor([1.0, 5.0])


def sine_losses(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return ((model(x) - y) ** 2).mean(dim=0) * SCALE


class Scalar(nn.Module):
    """A fully shared one-output MLP (no heads)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).squeeze(-1)


def opposed_losses(model: nn.Module, batch) -> torch.Tensor:
    """L₁ = mse(f, y), L₂ = 0.1·mean(f²) − 2·L₁: g₂ ≈ −2g₁, so cos(g₀, g₁) < 0 and every step fires."""
    x, y = batch
    f = model(x)
    fit = ((f - y) ** 2).mean()
    return torch.stack([fit, 0.1 * (f**2).mean() - 2.0 * fit])


def opposed_data(seed: int = 0, batches: int = 12, size: int = 16):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batches):
        x = torch.randn(size, 3, generator=gen)
        out.append((x, torch.sin(x.sum(1))))
    return out


def build_opposed(seed: int = 0, **settings):
    torch.manual_seed(seed)
    net = Scalar()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    data = opposed_data()
    config = {"strategy": "cost", "base": "ls", "lora_rank": 2, "tele_rounds": 1, "sharp_samples": 2, "seed": 7}
    config.update(settings)
    cost = from_config(config, model=net, optimizer=opt, shared=net, loss_fn=opposed_losses, teleport_loader=data[:2])
    return net, opt, cost, data


def _align_htr(monkeypatch):
    """Give g_prev a component along the teleport displacement Δ (c > 0, HTR modulates).

    On the opposed problem the teleports move against g_prev, so every HTR decision would be a reset.
    """
    real = COST._htr_decision

    def aligned(self, delta, aborted):
        if self._g_prev is not None:
            self._g_prev = delta + delta.flip(0)
        return real(self, delta, aborted)

    monkeypatch.setattr(COST, "_htr_decision", aligned)


# ----------------------------------------------------------------------------- trigger
def test_mean_cosines_match_the_gradients():
    rng = np.random.default_rng(0)
    G = rng.normal(size=(4, 7))
    g0 = G.mean(0)
    expected = [g0 @ g / (np.linalg.norm(g0) * np.linalg.norm(g)) for g in G]
    cos, norm = mean_cosines(G @ G.T)
    np.testing.assert_allclose(cos, expected, rtol=1e-12)
    assert norm == pytest.approx(np.linalg.norm(g0), rel=1e-12)
    # a zero gradient has cosine 0, not NaN
    G[2] = 0.0
    cos, _ = mean_cosines(G @ G.T)
    assert cos[2] == 0.0 and np.isfinite(cos).all()


def _fires(trigger: str, G: np.ndarray, **kw) -> bool:
    _, _, cost, _ = build_opposed(trigger=trigger, **kw)
    K = G @ G.T
    return cost._fires(mean_cosines(K)[0], K)


def test_triggers_on_hand_made_gramians():
    # min-norm task g₁ agrees with g₀, the large task g₃ opposes it: only the official "any task" form fires
    G = np.array([[0.0, 0.0, 1.0], [5.0, 0.0, 0.0], [-4.9, 0.0, 0.0]])
    cos, _ = mean_cosines(G @ G.T)
    assert cos[0] > 0 and cos[2] < 0
    assert _fires("dominated_any", G)
    assert not _fires("dominated_min_norm", G)
    # the min-norm task opposes g₀: both forms fire
    G = np.array([[1.0, 0.0], [-3.0, 0.1]])
    assert _fires("dominated_any", G) and _fires("dominated_min_norm", G)
    # cos exactly 0 (g₀ ⟂ g₂, g₂ the min-norm task): "any" uses ≤ 0, paper Eq. 3 uses < 0
    G = np.array([[10.0, 0.0], [-1.0, 3.0]])
    assert mean_cosines(G @ G.T)[0][1] == pytest.approx(0.0, abs=1e-15)
    assert _fires("dominated_any", G) and not _fires("dominated_min_norm", G)
    # no conflict at all
    G = np.array([[1.0, 0.2], [0.8, 1.0]])
    assert not _fires("dominated_any", G) and not _fires("dominated_min_norm", G)
    # the relaxed form: fraction of tasks with cos < 0 is ≥ ρ (1 of 3 here)
    G = np.array([[0.0, 0.0, 1.0], [5.0, 0.0, 0.0], [-4.9, 0.0, 0.0]])
    assert _fires("fraction", G, trigger_fraction=0.3)
    assert not _fires("fraction", G, trigger_fraction=0.5)


def test_gates_start_step_start_epoch_and_cap():
    _, _, cost, data = build_opposed(start_step=3, start_epoch=1, max_teleports_per_epoch=2)
    fired = []
    for epoch in range(3):
        for b in data[:5]:
            fired.append((epoch, cost.step, cost.train_step(b).teleported))
        cost.end_epoch()
    teleported = [(e, s) for e, s, t in fired if t]
    # nothing in epoch 0 (start_epoch), then exactly the cap of two per epoch, never before step 3
    assert [e for e, _ in teleported] == [1, 1, 2, 2]
    assert all(s >= 3 for _, s in teleported)
    assert cost.teleports == 4 and len(cost.records) == 4


# ----------------------------------------------------------------------------- HTR
@pytest.mark.parametrize("kind", ["adam", "adam_l2", "adamw"])
def test_htr_moments_after_a_real_adam_step(kind):
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(6, dtype=torch.float64))
    lr, b1, b2, eps, wd = 1e-2, 0.9, 0.999, 1e-8, 0.1
    if kind == "adamw":
        opt = torch.optim.AdamW([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    else:
        opt = torch.optim.Adam([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd if kind == "adam_l2" else 0.0)
    for _ in range(3):
        p.grad = torch.randn(6, dtype=torch.float64)
        opt.step()
    m = opt.state[p]["exp_avg"].clone()
    v = opt.state[p]["exp_avg_sq"].clone()
    t = int(opt.state[p]["step"])
    theta = p.detach().clone()
    c = 0.37
    grad = torch.randn(6, dtype=torch.float64)
    p.grad = grad.clone()
    htr_adjust_(opt, c)
    opt.step()
    # independent transcription: g as Adam folds it in, HTR moments, bias correction with the original β and t+1
    g = grad + wd * theta if kind == "adam_l2" else grad
    m1 = c * b1 * m + (1 - c * b1) * g
    v1 = c * b2 * v + (1 - c * b2) * g * g
    torch.testing.assert_close(opt.state[p]["exp_avg"], m1, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(opt.state[p]["exp_avg_sq"], v1, rtol=1e-12, atol=1e-15)
    assert int(opt.state[p]["step"]) == t + 1
    start = theta * (1 - lr * wd) if kind == "adamw" else theta
    expected = start - lr * (m1 / (1 - b1 ** (t + 1))) / ((v1 / (1 - b2 ** (t + 1))).sqrt() + eps)
    torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-14)
    # exactly one step: the following step is plain Adam again
    grad2 = torch.randn(6, dtype=torch.float64)
    theta = p.detach().clone()
    p.grad = grad2.clone()
    opt.step()
    g2 = grad2 + wd * theta if kind == "adam_l2" else grad2
    torch.testing.assert_close(opt.state[p]["exp_avg"], b1 * m1 + (1 - b1) * g2, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(opt.state[p]["exp_avg_sq"], b2 * v1 + (1 - b2) * g2 * g2, rtol=1e-12, atol=1e-15)
    assert opt.param_groups[0]["betas"] == (b1, b2)


def test_htr_is_applied_to_exactly_the_next_step(monkeypatch):
    from mtlsolve.adapters.strategies import cost as cost_module

    calls = []
    real = cost_module.htr_adjust_

    def spy(optimizer, c):
        calls.append((cost.step, c))
        real(optimizer, c)

    monkeypatch.setattr(cost_module, "htr_adjust_", spy)
    net, opt, cost, data = build_opposed(after_teleport="skip", max_teleports_per_epoch=1)
    _align_htr(monkeypatch)
    for i, b in enumerate(data):
        cost.train_step(b)
        if i % 3 == 2:
            cost.end_epoch()
    modulated = [r for r in cost.records if r["htr"] == "modulate"]
    assert len(modulated) >= 2
    # one call per modulating teleport, on the step right after it (the teleport step itself is skipped);
    # a teleport on the last batch leaves its modulation pending
    done = [r for r in modulated if r["step"] + 1 < cost.step]
    assert [(r["step"] + 1, r["htr_cos"]) for r in done] == calls
    pending = [r["htr_cos"] for r in modulated if r["step"] + 1 == cost.step]
    assert cost._htr_pending == (pending[0] if pending else None)


def test_htr_reset_clears_the_state_and_keeps_the_scheduler():
    net, opt, cost, data = build_opposed(max_teleports_per_epoch=1, after_teleport="skip")
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    cost.train_step(data[0])  # a teleport before any step: no g_prev, no HTR decision
    assert cost.records[0]["htr"] == "none"
    cost.end_epoch()
    for b in data[1:3]:
        cost.train_step(b)
    cost._g_prev = torch.zeros_like(cost._g_prev)  # c = 0 (≤ 0) for the next teleport
    cost.end_epoch()
    info = cost.train_step(data[3])
    assert info.teleported and info.record["htr"] == "reset" and info.record["htr_cos"] == 0.0
    assert len(opt.state) == 0
    sched.step()
    assert sched.optimizer is cost.optimizer and opt.param_groups[0]["lr"] == pytest.approx(5e-3)
    cost.train_step(data[4])
    assert all(int(s["step"]) == 1 for s in opt.state.values())  # Adam restarted from scratch


def test_htr_off_leaves_the_optimizer_alone():
    net, opt, cost, data = build_opposed(htr=False, max_teleports_per_epoch=1)
    for b in data[:6]:
        cost.train_step(b)
        cost.end_epoch()
    assert cost.teleports == 6 and {r["htr"] for r in cost.records} == {"off"}
    assert all(int(s["step"]) == 6 for s in opt.state.values())


def test_reset_only_control_clears_adam_and_leaves_the_weights():
    """on_trigger="reset": the same trigger, gates and cap as a teleport, but θ stays and Adam restarts."""
    net, opt, cost, data = build_opposed(
        on_trigger="reset", after_teleport="skip", max_teleports_per_epoch=1, start_step=2
    )
    for b in data[:2]:  # before start_step: plain Adam steps
        assert not cost.train_step(b).teleported
    assert all(int(s["step"]) == 2 for s in opt.state.values())
    before = [p.detach().clone() for p in net.parameters()]
    info = cost.train_step(data[2])  # every step of the opposed problem fires
    assert info.teleported and info.record["action"] == "reset" and info.record["displacement"] == 0.0
    assert info.diagnostics is None and len(opt.state) == 0
    assert all(torch.equal(p, b) for p, b in zip(net.parameters(), before))  # no teleport, no step
    assert not cost.train_step(data[3]).teleported  # the per-epoch cap counts resets
    assert all(int(s["step"]) == 1 for s in opt.state.values())  # Adam restarted from scratch
    # "step": the triggering batch is stepped at the same θ by a fresh Adam, whose first step moves
    # every coordinate with a non-negligible gradient by lr·|g|/(|g| + eps) ≈ lr
    net, opt, cost, data = build_opposed(on_trigger="reset", max_teleports_per_epoch=1, start_step=2)
    for b in data[:2]:
        cost.train_step(b)
    before = torch.cat([p.detach().reshape(-1).clone() for p in net.parameters()])
    info = cost.train_step(data[2])
    assert info.record["action"] == "reset" and info.diagnostics is not None
    assert all(int(s["step"]) == 1 for s in opt.state.values())
    moved = (torch.cat([p.detach().reshape(-1) for p in net.parameters()]) - before).abs()
    lr = opt.param_groups[0]["lr"]
    assert float(moved.max()) <= lr * (1 + 1e-5) and float(moved.median()) == pytest.approx(lr, rel=1e-3)


# ----------------------------------------------------------------------------- LoRA
def _count(model: nn.Module) -> tuple[int, list[int]]:
    params = list(model.parameters())
    return sum(p.numel() for p in params), [id(p) for p in params]


def test_lora_zero_init_is_the_identity_and_merge_keeps_the_parameters():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 25, 5))
    x = torch.randn(2, 3, 5, 5)
    before = model(x).detach()
    count, ids = _count(model)
    weights = [model[0].weight.detach().clone(), model[3].weight.detach().clone()]
    layers = [model[0], model[3]]
    adapters = _lora.inject(layers, rank=2, scale=4.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(model(x), before)  # B = 0
    assert sum(p.numel() for p in model.parameters()) > count  # adapters are extra parameters meanwhile
    # A drawn from U(−1/√fan_in, 1/√fan_in), as peft's kaiming_uniform(a=√5)
    assert adapters[0].A.abs().max() <= 1 / math.sqrt(3 * 9) and adapters[1].A.abs().max() <= 1 / math.sqrt(100)
    with torch.no_grad():
        for a in adapters:
            a.B.normal_()
    adapted = model(x).detach()
    deltas = [4.0 * (a.B @ a.A).detach() for a in adapters]
    _lora.merge(layers)
    assert _count(model) == (count, ids)  # same tensors, same count
    assert not any(hasattr(layer, "parametrizations") for layer in layers)
    torch.testing.assert_close(model[0].weight, weights[0] + deltas[0].view(4, 3, 3, 3))
    torch.testing.assert_close(model[3].weight, weights[1] + deltas[1])
    torch.testing.assert_close(model(x), adapted)
    # the merged convolution is the plain convolution with W + s·BA
    ref = torch.nn.functional.conv2d(x, weights[0] + deltas[0].view(4, 3, 3, 3), model[0].bias, padding=1)
    torch.testing.assert_close(model[0](x), ref)


def test_lora_discard_and_errors():
    torch.manual_seed(0)
    lin = nn.Linear(4, 3)
    w = lin.weight.detach().clone()
    adapters = _lora.inject([lin], rank=1, scale=1.0, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        adapters[0].B.fill_(1.0)
    with _lora.disabled(adapters):
        assert torch.equal(lin.weight, w)
    assert not torch.equal(lin.weight, w)
    with pytest.raises(ValueError, match="already carries"):
        _lora.inject([lin], rank=1, scale=1.0, generator=torch.Generator())
    _lora.discard([lin])
    assert torch.equal(lin.weight, w)
    with pytest.raises(TypeError, match="Linear or Conv"):
        _lora.inject([lin, nn.ReLU()], rank=1, scale=1.0, generator=torch.Generator())
    assert not hasattr(lin, "parametrizations")  # the partial injection was undone


def test_teleport_keeps_architecture_and_parameter_objects():
    net, opt, cost, data = build_opposed(max_teleports_per_epoch=1)
    count, ids = _count(net)
    state_keys = set(net.state_dict())
    info = cost.train_step(data[0])
    assert info.teleported and info.record["displacement"] > 0
    assert _count(net) == (count, ids) and set(net.state_dict()) == state_keys
    assert all(id(p) in {id(q) for g in opt.param_groups for q in g["params"]} for p in net.parameters())


def test_functional_sharpness_equals_a_perturbed_copy():
    """L_g from functional_call equals the loss of a deep copy with the same noise added in place."""
    net, opt, cost, data = build_opposed(perturb="shared")
    x = data[0]
    adapters = _lora.inject(cost._layers, 2, 4.0, torch.Generator().manual_seed(3))
    with torch.no_grad():
        for a in adapters:
            a.B.normal_(std=0.1)
    params = [t for a in adapters for t in (a.A, a.B)]
    named = cost._perturbed(params)
    R = torch.tensor([0.4, 1.6])
    from mtlsolve.adapters.strategies.cost import _Bound

    value = cost._sharpness(_Bound(net, opposed_losses), x, R, named, torch.Generator().manual_seed(11))
    # independent: a plain copy holding the adapted weights, the same draws added in place, in the order
    # of the model's (non-adapter) named parameters
    adapter_ids = {id(t) for t in params}
    order = [
        n.replace(".parametrizations.weight.original", ".weight")
        for n, p in net.named_parameters()
        if id(p) not in adapter_ids
    ]
    merged = Scalar()
    with torch.no_grad():
        for i in (0, 2):
            merged.body[i].weight.copy_(net.body[i].weight)
            merged.body[i].bias.copy_(net.body[i].bias)
    gen = torch.Generator().manual_seed(11)
    L0 = opposed_losses(merged, x).detach()
    worst = torch.zeros(2)
    for _ in range(cost.settings.sharp_samples):
        probe = copy.deepcopy(merged)
        tensors = dict(probe.named_parameters())
        with torch.no_grad():
            for name in order:
                eps = torch.randn(tensors[name].shape, generator=gen)
                tensors[name].add_(eps * (cost.settings.sharp_radius / eps.norm()))
        worst = torch.maximum(worst, R * (opposed_losses(probe, x).detach() - L0).abs() / cost.settings.sharp_radius)
    torch.testing.assert_close(value.detach(), worst.mean(), rtol=2e-3, atol=1e-4)
    # "full" differentiates through the perturbed losses, "official" only through L₀
    full = torch.autograd.grad(value, [a.B for a in adapters])
    cost.settings = attrs.evolve(cost.settings, sharpness_grad="official")
    official = cost._sharpness(_Bound(net, opposed_losses), x, R, named, torch.Generator().manual_seed(11))
    off = torch.autograd.grad(official, [a.B for a in adapters])
    assert all(torch.isfinite(g).all() for g in full)
    assert any(not torch.allclose(f, o) for f, o in zip(full, off))
    _lora.discard(cost._layers)


# ----------------------------------------------------------------------------- checkpointing
@pytest.mark.parametrize("after", ["skip", "step"])
def test_checkpoint_resume_is_bit_identical(after, monkeypatch):
    _align_htr(monkeypatch)

    def run(steps, net, opt, cost, data, start=0):
        for i in range(start, steps):
            cost.train_step(data[i % len(data)])
            if i % 4 == 3:
                cost.end_epoch()

    net, opt, cost, data = build_opposed(after_teleport=after, max_teleports_per_epoch=1)
    run(5, net, opt, cost, data)  # a teleport at step 4 ("skip": its HTR is still pending)
    assert cost.records[-1]["step"] == 4
    if after == "skip":
        assert cost._htr_pending is not None
    saved = copy.deepcopy((net.state_dict(), opt.state_dict(), cost.state_dict()))
    run(14, net, opt, cost, data, start=5)
    assert cost.teleports >= 3

    net2, opt2, cost2, _ = build_opposed(seed=1, after_teleport=after, max_teleports_per_epoch=1)
    net2.load_state_dict(saved[0])
    opt2.load_state_dict(saved[1])
    cost2.load_state_dict(saved[2])
    run(14, net2, opt2, cost2, data, start=5)
    for p, q in zip(net.parameters(), net2.parameters()):
        assert torch.equal(p, q)
    assert cost2.records == cost.records and cost2.step == cost.step


# ----------------------------------------------------------------------------- configuration
def test_built_from_a_config_mapping_with_a_named_or_mapped_base():
    torch.manual_seed(0)
    net = TwoHeadNet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    cost = from_config({"strategy": "cost"}, model=net, optimizer=opt, shared=net.trunk, loss_fn=sine_losses)
    assert cost.solver.name == "fairgrad" and cost.adapter.max_norm == 1.0
    assert [id(m) for m in cost._layers] == [id(net.trunk[0]), id(net.trunk[2])]
    cost = from_config(
        {"strategy": "teleport", "base": {"name": "fairgrad", "alpha": 0.5}, "lora_targets": "trunk.2"},
        model=net,
        optimizer=opt,
        shared=net.trunk,
        loss_fn=sine_losses,
    )
    assert cost.solver.name == "fairgrad" and [id(m) for m in cost._layers] == [id(net.trunk[2])]
    X, Y = sine_problem(64)
    info = cost.train_step((X[:32], Y[:32]))
    assert np.isfinite(info.losses).all() and info.cosines.shape == (2,)


@pytest.mark.parametrize(
    "settings, runtime, match",
    [
        ({"trigger": "weak"}, {}, "trigger"),
        ({"trigger_fraction": 0.0}, {}, "trigger_fraction"),
        ({"lora_rank": 0}, {}, "lora_rank"),
        ({"sharp_radius": -1.0}, {}, "sharp_radius"),
        ({"lora_targets": "heads.0"}, {}, "not part of the shared"),
        ({"lora_targets": "trunk.1"}, {}, "not a Linear/Conv"),
        ({"lora_targets": "nowhere"}, {}, "not a submodule"),
        ({"backward_options": {"max_norm": 2.0}}, {}, "cannot set"),
        ({}, {"optimizer": "sgd"}, "htr=True"),
        ({}, {"shared": "foreign"}, "parameter of model"),
        ({"base": "no_such_solver"}, {}, "no_such_solver"),
    ],
)
def test_clear_errors(settings, runtime, match):
    torch.manual_seed(0)
    net = TwoHeadNet()
    kwargs = {
        "model": net,
        "optimizer": torch.optim.Adam(net.parameters()),
        "shared": net.trunk,
        "loss_fn": sine_losses,
    }
    if runtime.get("optimizer") == "sgd":
        kwargs["optimizer"] = torch.optim.SGD(net.parameters(), lr=0.1)
    if runtime.get("shared") == "foreign":
        kwargs["shared"] = nn.Linear(2, 2)
    with pytest.raises((ValueError, TypeError, LookupError), match=match):
        from_config({"strategy": "cost", **settings}, **kwargs)
    with pytest.raises(InvalidConfigError, match="no strategy named"):
        from_config({"strategy": "costly"}, **kwargs)


# ----------------------------------------------------------------------------- CPU check
STEPS, START, EPOCH = 1000, 300, 100


def train(cost_on: bool, seed: int = 0, **settings):
    """docs/problems.md#cost-check: LS base, Adam 1e-3, teleports from step 300, at most one per 100 steps, 512-sample teleport set."""
    torch.manual_seed(seed)
    X, Y = sine_problem()
    net = TwoHeadNet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    teleport = [(X[i : i + 64], Y[i : i + 64]) for i in range(0, 512, 64)]
    config = {
        "strategy": "cost",
        "base": "ls",
        "lora_rank": 2,
        "tele_rounds": 1,
        "start_step": START,
        "max_teleports_per_epoch": 1 if cost_on else 0,
        "max_norm": None,
        "monitor": True,
        "seed": seed,
        "lora_lr": 1e-4,
    }
    config.update(settings)
    cost = from_config(
        config, model=net, optimizer=opt, shared=net.trunk, loss_fn=sine_losses, teleport_loader=teleport
    )
    gen = torch.Generator().manual_seed(seed + 1)
    for s in range(STEPS):
        idx = torch.randint(0, len(X), (32,), generator=gen)
        cost.train_step((X[idx], Y[idx]))
        if (s + 1) % EPOCH == 0:
            cost.end_epoch()
    with torch.no_grad():
        final = sine_losses(net, (X, Y)).numpy()
    return cost, final


@pytest.fixture(scope="module")
def sine_runs():
    torch.set_num_threads(1)
    return {
        "base": train(False),
        "cost": train(True),
        "cost_no_htr": train(True, htr=False),
        "reset_only": train(True, on_trigger="reset"),
    }


def test_teleports_happen_within_the_gates(sine_runs):
    cost, _ = sine_runs["cost"]
    steps = [r["step"] for r in cost.records]
    assert len(steps) >= 3
    assert all(s >= START for s in steps)
    assert len({s // EPOCH for s in steps}) == len(steps)  # at most one per 100-step epoch
    assert all(r["min_cos_before"] <= 0 for r in cost.records)  # dominated conflict fired


def test_losses_stay_on_their_contour_during_teleports(sine_runs):
    """(i): after every adapter step, max_i |L_i − L*_i| / L*_i ≤ 2 % on the teleport set."""
    cost, _ = sine_runs["cost"]
    for r in cost.records:
        assert len(r["deviation"]) == r["adapter_steps"] == 8 and not r["aborted"]
        assert r["max_deviation"] <= 0.02, r


def test_teleports_reduce_the_dominated_conflict(sine_runs):
    """(ii): min_i cos(g₀, g_i) on the triggering batch is higher after the teleport in most teleports."""
    cost, _ = sine_runs["cost"]
    rises = sum(r["min_cos_after"] > r["min_cos_before"] for r in cost.records)
    assert rises > len(cost.records) / 2


def test_cost_is_not_less_stable_than_the_base(sine_runs):
    """(iii): final losses finite and within 25 % of training without teleports, with HTR on and off."""
    _, base = sine_runs["base"]
    for name in ("cost", "cost_no_htr"):
        _, final = sine_runs[name]
        assert np.isfinite(final).all()
        assert final.sum() <= 1.25 * base.sum(), (name, final, base)


def test_the_gain_is_an_optimiser_restart_not_the_teleport(sine_runs):
    """At this budget (8 adapter steps at lora_lr 1e-4) the teleports barely move the weights: without
    HTR, COST ends within 1 % of the base, and the reset-only control (Adam's state cleared at the
    trigger steps, no teleport) improves on the base by more than 10 %. Both held in each of seeds 0–4
    (no-HTR/base 0.9998–1.002; reset/base 0.67–0.82; COST with HTR/base 0.72–0.91, and reset-only
    against COST went either way, mean 0.0489 vs 0.0506), and are asserted here for seed 0."""
    _, base = sine_runs["base"]
    _, no_htr = sine_runs["cost_no_htr"]
    reset, reset_final = sine_runs["reset_only"]
    cost, _ = sine_runs["cost"]
    assert abs(no_htr.sum() / base.sum() - 1.0) <= 0.01, (no_htr, base)
    assert reset_final.sum() <= 0.9 * base.sum(), (reset_final, base)
    assert reset.records and reset.records[0]["step"] == cost.records[0]["step"]  # the same first trigger


def test_tradeoff_rows_a_larger_lora_lr_leaves_the_contour():
    """The bench's trade-off curve (mtlsolve.bench.cost_tradeoff): one teleport from the same weights per
    LoRA learning rate. In seeds 0–2 lora_lr 1e-2 moved the weights 30–80x further than 1e-4 and left
    the contour by 38–77 % (1e-4: under 0.4 %); asserted here for seed 0 with wide margins."""
    from mtlsolve.bench.cost_tradeoff import summary, tradeoff

    rows = tradeoff(budgets=(1,), lora_lrs=(1e-4, 1e-2), seeds=(0,))
    assert len(rows) == 2 and all(r["adapter_steps"] == 8 and not r["aborted"] for r in rows)
    small, large = sorted(rows, key=lambda r: r["lora_lr"])
    assert small["min_cos_before"] == large["min_cos_before"] <= 0  # the same triggering batch and weights
    assert small["max_deviation"] < 0.02 < 0.1 < large["max_deviation"]
    assert large["displacement"] > 10 * small["displacement"]
    for r in rows:
        assert r["conflict_reduction"] == pytest.approx(r["min_cos_after"] - r["min_cos_before"])
    table = summary(rows)
    assert [(t["lora_lr"], t["seeds"]) for t in table] == [(1e-4, 1), (1e-2, 1)]

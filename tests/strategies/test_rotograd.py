"""RotoGrad (Javaloy & Valera, arXiv 2103.02631; docs/methods.md#rotograd): rotations orthogonal after every
update, the backbone gradient and the rotation gradients against the official algorithm written out
with autograd (relative-convergence scaling with its burn-in reset, the RotateOnly and GradNorm
variants), frozen identity rotations without scaling reduce to `ls`, the rotations align the task
gradients, checkpoints."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import mtlsolve
from mtlsolve.adapters.strategies import from_config, strategy_class
from mtlsolve.adapters.strategies.rotograd import RotoGrad
from mtlsolve.errors import InvalidConfigError, InvalidSystemError, StateError


def make(seed=0, dtype=torch.float64, d=5, s=4, **settings):
    torch.manual_seed(seed)
    backbone = torch.nn.Sequential(torch.nn.Linear(3, d), torch.nn.Tanh()).to(dtype)
    heads = [torch.nn.Linear(d, 2).to(dtype) for _ in range(3)]
    params = [*backbone.parameters(), *(p for h in heads for p in h.parameters())]
    opt = torch.optim.SGD(params, lr=0.05)
    rg = RotoGrad(backbone=backbone, heads=heads, optimizer=opt, num_tasks=3, rotation_size=s, **settings)
    return backbone, heads, opt, rg


def task_losses(preds, ys):
    return torch.stack([((p - y) ** 2).mean() for p, y in zip(preds, ys)])


def data(seed, dtype=torch.float64, n=8):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=gen, dtype=dtype), [
        torch.randn(n, 2, generator=gen, dtype=dtype) for _ in range(3)
    ]


def reference(backbone, heads, generators, x, ys, scaling, state, normalize=False, log_w=None, alpha=1.5):
    """The official algorithm written out: per-task grads at z and at r_k, the rotation losses, the backbone's
    gradient at z; returns (grads of backbone params, grads of heads, grads of generators, grad of log_w)."""
    s = generators[0].shape[0]
    Ws = [W.detach().clone().requires_grad_(True) for W in generators]
    Rs = [torch.linalg.matrix_exp(W - W.T) for W in Ws]
    z = backbone(x)
    bparams = list(backbone.parameters())
    g, g_hat, losses, head_grads = [], [], [], []
    for k, head in enumerate(heads):
        zk = z.detach().requires_grad_(True)
        rk = torch.cat((zk[:, :s] @ Rs[k].detach().T, zk[:, s:]), dim=1)
        Lk = ((head(rk) - ys[k]) ** 2).mean()
        losses.append(Lk.detach())
        scale = 1.0 / state["init_losses"][k] if normalize else 1.0
        gz, gr, *gh = torch.autograd.grad(Lk * scale, [zk, rk, *head.parameters()])
        g.append(gz)
        g_hat.append(gr)
        head_grads.append(gh)
    g, g_hat = torch.stack(g), torch.stack(g_hat)
    # rotation losses: v = mean_k g_k ‖ḡ‖/‖g_k‖;  loss_k = mean_n ‖R_k v_n − ĝ_kn‖²
    mean_norm = g.mean(0).norm()
    v = sum(g[k] * mean_norm / g[k].norm() for k in range(3)) / 3
    rot_grads = []
    for k in range(3):
        res = torch.cat((v[:, :s] @ Rs[k].T, v[:, s:]), dim=1) - g_hat[k]
        rot_grads.append(torch.autograd.grad((res**2).sum(1).mean(), Ws[k])[0])
    norms = torch.stack([gk.norm() for gk in g])
    lw_grad = None
    if scaling == "none":
        rep = g.sum(0)
    elif scaling == "rotograd":
        if state["init_norms"] is None:
            state["init_norms"] = norms.clone()
        r = norms / state["init_norms"]
        a = r / r.sum()
        C = (a * norms).sum()
        rep = sum(g[k] / norms[k] * C for k in range(3))
    else:
        lw = log_w.detach().clone().requires_grad_(True)
        w = lw.exp() + 1e-15
        w = w * 3 / w.sum()
        Ln = torch.stack(losses) / state["init_losses"]
        target = (g * w.detach()[:, None, None]).sum(0).norm() / 3 * (Ln / Ln.mean()) ** alpha
        lw_grad = torch.autograd.grad((w * norms - target).abs().sum(), lw)[0]
        rep = (g * w.detach()[:, None, None]).sum(0)
    bgrads = torch.autograd.grad(z, bparams, grad_outputs=rep)
    return bgrads, head_grads, rot_grads, lw_grad


@pytest.mark.parametrize("scaling", ["rotograd", "none", "gradnorm"])
@pytest.mark.parametrize("normalize", [False, True])
def test_gradients_match_the_official_algorithm_written_out(scaling, normalize):
    backbone, heads, opt, rg = make(scaling=scaling, normalize_losses=normalize, burn_in_period=3, rotation_lr=0.05)
    state = {"init_norms": None, "init_losses": None}
    for t in range(5):
        x, ys = data(t)
        if t in (0, 3):  # the first step and the end of the burn-in take new references
            state["init_losses"] = state["init_norms"] = None
        ref_b = copy.deepcopy(backbone)
        ref_h = copy.deepcopy(heads)
        gens = [W.detach().clone() for W in rg.generators]
        log_w = rg.log_weights.detach().clone()
        preds = rg(x)
        losses = task_losses(preds, ys)
        if state["init_losses"] is None:
            state["init_losses"] = losses.detach().clone()
        bg, hg, rgrads, lwg = reference(ref_b, ref_h, gens, x, ys, scaling, state, normalize, log_w)
        rg.backward(losses)
        for p, e in zip(backbone.parameters(), bg):
            torch.testing.assert_close(p.grad, e, rtol=1e-10, atol=1e-13)
        for head, eh in zip(heads, hg):
            for p, e in zip(head.parameters(), eh):
                torch.testing.assert_close(p.grad, e, rtol=1e-10, atol=1e-13)
        for W, e in zip(rg.generators, rgrads):
            torch.testing.assert_close(W.grad, e, rtol=1e-10, atol=1e-13)
        if scaling == "gradnorm":
            torch.testing.assert_close(rg.log_weights.grad, lwg, rtol=1e-10, atol=1e-13)
        opt.step()
        rg.rotation_optimizer.step()
        opt.zero_grad()
        rg.rotation_optimizer.zero_grad()


def test_rotations_stay_orthogonal_after_every_update():
    backbone, heads, opt, rg = make(dtype=torch.float32, rotation_lr=0.1)
    for t in range(30):
        x, ys = data(t, torch.float32)
        rg.step(task_losses(rg(x), ys))
        for k in range(3):
            R = rg.rotation(k).detach()
            # float32: R rounded once from float64 (6e-8 per entry) and one 4-term product: well below 1e-6
            assert (R.T @ R - torch.eye(4)).abs().max() < 1e-6
            assert torch.linalg.det(R) == pytest.approx(1.0, abs=1e-5)
    assert max((rg.rotation(k) - torch.eye(4)).abs().max().item() for k in range(3)) > 0.1  # they did move


def test_frozen_identity_rotations_without_scaling_are_ls():
    backbone, heads, opt, rg = make(scaling="none", rotation_lr=0.0, d=4, s=4)
    ref = torch.nn.ModuleList([copy.deepcopy(backbone), *copy.deepcopy(heads)])
    for t in range(3):
        x, ys = data(t)
        rg.backward(task_losses(rg(x), ys))
        z = ref[0](x)
        total = mtlsolve.get("ls")(losses=task_losses([h(z) for h in ref[1:]], ys).detach())  # ls: weights 1
        loss = (torch.as_tensor(total.weights) * task_losses([h(z) for h in ref[1:]], ys)).sum()
        grads = torch.autograd.grad(loss, list(ref.parameters()))
        mine = [*backbone.parameters(), *(p for h in heads for p in h.parameters())]
        for p, e in zip(mine, grads):
            torch.testing.assert_close(p.grad, e, rtol=1e-12, atol=1e-14)
        opt.step()
        rg.rotation_optimizer.step()
        opt.zero_grad()
        rg.rotation_optimizer.zero_grad()
        with torch.no_grad():
            for p, q in zip(mine, ref.parameters()):
                q.copy_(p)
        assert all(torch.equal(rg.rotation(k), torch.eye(4, dtype=torch.float64)) for k in range(3))


def test_rotations_align_the_task_gradients():
    """The paper's aim (§4): after the rotations are learned, the task gradients at z point the same way."""
    torch.manual_seed(3)
    backbone = torch.nn.Linear(3, 4).double()
    heads = [torch.nn.Linear(4, 1).double() for _ in range(2)]
    heads[1].load_state_dict(heads[0].state_dict())  # one head, two opposite targets: g₂ = −c·g₁ at R = I
    opt = torch.optim.SGD(backbone.parameters(), lr=0.0)  # only the rotations learn
    rg = RotoGrad(backbone=backbone, heads=heads, optimizer=opt, num_tasks=2, rotation_size=4, rotation_lr=0.05)
    x = torch.randn(32, 3, dtype=torch.float64)
    ys = [torch.full((32, 1), 2.0, dtype=torch.float64), torch.full((32, 1), -2.0, dtype=torch.float64)]

    def cosine():
        rg(x)
        g = [torch.autograd.grad(((p - y) ** 2).mean(), z_k)[0] for p, y, z_k in zip(rg(x), ys, rg._inputs)]
        return float(torch.nn.functional.cosine_similarity(g[0].flatten(), g[1].flatten(), dim=0))

    before = cosine()
    for _ in range(150):
        rg.step(task_losses(rg(x), ys))
    after = cosine()
    assert before < -0.9 and after > 0.9


def test_checkpoint_resume_is_bit_identical():
    def train(backbone, heads, opt, rg, steps):
        for t in steps:
            x, ys = data(t, torch.float32)
            rg.step(task_losses(rg(x), ys))

    backbone, heads, opt, rg = make(dtype=torch.float32, burn_in_period=5, rotation_lr=0.05)
    train(backbone, heads, opt, rg, range(3))
    saved = {
        "backbone": copy.deepcopy(backbone.state_dict()),
        "heads": [copy.deepcopy(h.state_dict()) for h in heads],
        "opt": copy.deepcopy(opt.state_dict()),
        "rg": rg.state_dict(),
    }
    train(backbone, heads, opt, rg, range(3, 10))
    backbone2, heads2, opt2, rg2 = make(seed=9, dtype=torch.float32, burn_in_period=5, rotation_lr=0.05)
    backbone2.load_state_dict(saved["backbone"])
    for h, sd in zip(heads2, saved["heads"]):
        h.load_state_dict(sd)
    opt2.load_state_dict(saved["opt"])
    rg2.load_state_dict(saved["rg"])
    train(backbone2, heads2, opt2, rg2, range(3, 10))
    assert rg2.steps == rg.steps == 10
    for a, b in zip(
        [*backbone.parameters(), *heads[0].parameters()], [*backbone2.parameters(), *heads2[0].parameters()]
    ):
        assert torch.equal(a, b)
    for W, W2 in zip(rg.generators, rg2.generators):
        assert torch.equal(W, W2)


def test_config_names_and_errors():
    backbone, heads, opt, rg = make()
    assert strategy_class("RotoGrad") is RotoGrad
    assert mtlsolve.get_strategy("rotate-only", num_tasks=2, rotation_size=3).scaling == "none"
    assert mtlsolve.get_strategy("RotoGradNorm", num_tasks=2, rotation_size=3).scaling == "gradnorm"
    built = from_config(
        {"strategy": "rotograd", "num_tasks": 3, "rotation_size": 2}, backbone=backbone, heads=heads, optimizer=opt
    )
    assert built.rotation(0).shape == (2, 2)
    for bad in (
        {"num_tasks": 2},
        {"num_tasks": 2, "rotation_size": 0},
        {"num_tasks": 2, "rotation_size": 2, "scaling": "x"},
    ):
        with pytest.raises(InvalidConfigError):
            mtlsolve.get_strategy("rotograd", **bad)
    with pytest.raises(InvalidConfigError, match="2 heads for num_tasks=3"):
        RotoGrad(backbone=backbone, heads=heads[:2], optimizer=opt, num_tasks=3, rotation_size=2)
    with pytest.raises(StateError, match="call the strategy"):
        rg.step(torch.ones(3))
    with pytest.raises(InvalidSystemError, match="rotation_size is 4"):
        RotoGrad(backbone=torch.nn.Linear(3, 2).double(), heads=heads, optimizer=opt, num_tasks=3, rotation_size=4)(
            torch.ones(1, 3, dtype=torch.float64)
        )
    x, ys = data(0)
    with pytest.raises(InvalidSystemError, match="2 losses for num_tasks=3"):
        rg.step(task_losses(rg(x), ys)[:2])
    with torch.no_grad():
        preds = rg(x)
    assert len(preds) == 3 and np.isfinite(torch.cat(preds).numpy()).all()

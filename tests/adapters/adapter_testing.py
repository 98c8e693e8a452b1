"""Small models, test solvers and independent references shared by the adapter tests (and the DDP workers)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np
import pytest
import torch

from mtlsolve.solver import GramianWeighting, Need, Result, Solver
from mtlsolve.system import GradientSystem


@attrs.define(kw_only=True, eq=False)
class NormWeighting(GramianWeighting):
    """w_i = 1/(m‖g_i‖): the mean of the unit task gradients (a non-linear function of K)."""

    name: ClassVar[str] = "test_norm_weighting"

    def weights_from_gramian(self, gramian: np.ndarray, system: GradientSystem) -> tuple[np.ndarray, Mapping[str, Any]]:
        norms = np.sqrt(np.diag(gramian))
        w = np.where(norms > 0, 1.0 / (len(norms) * np.where(norms > 0, norms, 1.0)), 0.0)
        self._state["calls"] = self._state.get("calls", 0) + 1
        return w, {"calls": self._state["calls"]}


def norm_weights(G: np.ndarray) -> np.ndarray:
    """numpy reference of NormWeighting."""
    return 1.0 / (len(G) * np.linalg.norm(G, axis=1))


@attrs.define(kw_only=True, eq=False)
class SignMask(Solver):
    """d = Σ_i g_i ⊙ 1[g_i · sign(Σ_j g_j) > 0]: an element-wise direction that needs G itself."""

    name: ClassVar[str] = "test_sign_mask"
    family: ClassVar[str] = "FM"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.MATRIX})

    def solve(self, system: GradientSystem) -> Result:
        G = system.matrix
        keep = (G * torch.sign(G.sum(0))) > 0
        return Result(direction=(G * keep).sum(0))


def sign_mask(G: np.ndarray) -> np.ndarray:
    """numpy reference of SignMask."""
    return (G * ((G * np.sign(G.sum(0))) > 0)).sum(0)


@attrs.define(kw_only=True, eq=False)
class NoisyAverage(GramianWeighting):
    """Stateful, randomised: w_t = β w_{t−1} + (1 − β)·u_t ⊙ (1 + 0.1 ε_t), u_t the NormWeighting weights."""

    name: ClassVar[str] = "test_noisy_average"
    stateful: ClassVar[bool] = True
    randomized: ClassVar[bool] = True

    beta: float = 0.5
    seed: int | None = 0

    def weights_from_gramian(self, gramian: np.ndarray, system: GradientSystem) -> tuple[np.ndarray, Mapping[str, Any]]:
        m = len(gramian)
        state = self._state_for(m)
        gen = self._rng(self.seed)
        u = 1.0 / (m * np.sqrt(np.diag(gramian))) * (1.0 + 0.1 * gen.standard_normal(m))
        self._save_rng(gen)
        w = u if "w" not in state else self.beta * state["w"] + (1 - self.beta) * u
        state["w"] = w
        return w, {}


@attrs.define(kw_only=True, eq=False)
class LearnedScale(Solver):
    """A loss weighting with learnable s: objective Σ ½(e^{−s_i}L_i + s_i); records the hook calls."""

    name: ClassVar[str] = "test_learned_scale"
    family: ClassVar[str] = "LW"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.LOSSES})
    stateful: ClassVar[bool] = True

    m: int = 2
    s: torch.nn.Parameter = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.s = torch.nn.Parameter(torch.zeros(self.m, dtype=torch.float64))

    def parameters(self) -> list[torch.Tensor]:
        return [self.s]

    def objective(self, losses: torch.Tensor) -> torch.Tensor:
        self._state["objective_calls"] = self._state.get("objective_calls", 0) + 1
        s = self.s.to(losses.dtype)
        return 0.5 * (torch.exp(-s) * losses + s).sum()

    def solve(self, system: GradientSystem) -> Result:
        return Result(weights=0.5 * np.exp(-self.s.detach().numpy()))

    def after_step(self, losses: Any) -> None:
        self._state.setdefault("after", []).append(np.asarray(losses, dtype=np.float64).tolist())

    def end_epoch(self) -> None:
        self._state["epochs"] = self._state.get("epochs", 0) + 1


@attrs.define(kw_only=True, eq=False)
class PostStepScale(LearnedScale):
    """LearnedScale that asks for the post-step call."""

    name: ClassVar[str] = "test_post_step_scale"
    post_step: ClassVar[bool] = True


class TwoTaskNet(torch.nn.Module):
    """A trunk, one head per task and one head used by both tasks."""

    def __init__(self, d_in: int = 5, d_hidden: int = 6, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.trunk = torch.nn.Sequential(
            torch.nn.Linear(d_in, 7), torch.nn.Tanh(), torch.nn.Linear(7, d_hidden), torch.nn.Tanh()
        )
        self.heads = torch.nn.ModuleList([torch.nn.Linear(d_hidden, 1) for _ in range(2)])
        self.common = torch.nn.Linear(d_hidden, 1)
        self.to(dtype)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def losses_from(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        c = self.common(h)
        return torch.stack(
            [((self.heads[0](h) + c - y[:, :1]) ** 2).mean(), (torch.sin(self.heads[1](h)) * c - y[:, 1:]).abs().mean()]
        )

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.losses_from(self.features(x), y)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(task losses, shared features)."""
        h = self.features(x)
        return self.losses_from(h, y), h


def data(n: int = 8, d_in: int = 5, seed: int = 0, dtype: torch.dtype = torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d_in, generator=gen, dtype=dtype), torch.randn(n, 2, generator=gen, dtype=dtype)


def per_task(losses: torch.Tensor, params: list[torch.Tensor]) -> np.ndarray:
    """The m x n matrix of separate autograd.grad calls, one per task (float64 numpy)."""
    rows = []
    for i in range(len(losses)):
        grads = torch.autograd.grad(losses[i], params, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)]))
    return torch.stack(rows).double().numpy()


def flat_grad(params: list[torch.Tensor]) -> np.ndarray:
    return torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1) for p in params]).double().numpy()


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for a gloo rendezvous."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_ranks(worker, world: int, outdir) -> list:
    """Run ``worker(rank, world, port, outdir)`` on ``world`` spawned processes (each saves
    ``rank{r}.pt`` under ``outdir``) and return what every rank saved; skips without gloo."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    torch.multiprocessing.spawn(worker, args=(world, free_port(), str(outdir)), nprocs=world, join=True)
    return [torch.load(os.path.join(outdir, f"rank{r}.pt"), weights_only=False) for r in range(world)]

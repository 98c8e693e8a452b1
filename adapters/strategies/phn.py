"""Pareto HyperNetworks (PHN) — one hypernetwork for the whole Pareto front (docs/methods.md#phn).

Navon, Shamsian, Chechik, Fetaya, "Learning the Pareto Front with Hypernetworks", ICLR 2021,
arXiv 2010.04104, §4 (eq. 2–4); official code AvivNavon/pareto-hypernetworks. A hypernetwork
h(r; φ) maps a preference ray r ∈ Δ_m to the weights θ = h(r; φ) of the target network. Each step
draws r ~ Dir(α), evaluates the m losses L(θ(r)) on the batch and steps φ on

* PHN-LS: Σ_i r_i L_i(h(r; φ)), the linear scalarisation at the drawn ray;
* PHN-EPO: Σ_i β_i L_i with β the EPO weights (Mahapatra & Rajan, ICML 2020) on the Gramian of the
  task gradients with respect to φ and the preference r (the registered ``epo`` solver), so that
  h(r) tends to the exact Pareto point where r_i L_i are equal.

The hypernetwork is an MLP on r (``layers`` x ``hidden``, ReLU) with one linear head per parameter
of the target network; each head's bias starts at that parameter's initial value and its weight at
``head_scale`` x PyTorch's default initialisation, so h(r) starts near the target's initialisation
for every r.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import numpy as np
import torch
from torch.func import functional_call

from mtlsolve._array import to_numpy64
from mtlsolve.adapters.backward import _loss_vector
from mtlsolve.adapters.strategies.phn_settings import PHNSettings
from mtlsolve.errors import InvalidConfigError, InvalidSystemError
from mtlsolve.metrics import hypervolume
from mtlsolve.strategy import settings_for

__all__ = ["PHN", "PHNSettings", "PHNStep", "HyperNetwork"]


class HyperNetwork(torch.nn.Module):
    """h(r; φ): a preference ray r (m,) to a dict of the target's trainable parameters (name -> tensor)."""

    def __init__(self, target: torch.nn.Module, num_tasks: int, hidden: int, layers: int, head_scale: float) -> None:
        super().__init__()
        params = [(n, p) for n, p in target.named_parameters() if p.requires_grad]
        if not params:
            raise InvalidConfigError("phn: the target network has no parameter that requires grad")
        first = params[0][1]
        blocks: list[torch.nn.Module] = []
        width = num_tasks
        for _ in range(layers):
            blocks += [torch.nn.Linear(width, hidden), torch.nn.ReLU()]
            width = hidden
        self.trunk = torch.nn.Sequential(*blocks).to(dtype=first.dtype, device=first.device)
        self.names = [n for n, _ in params]
        self.shapes = [tuple(p.shape) for _, p in params]
        self.heads = torch.nn.ModuleList()
        with torch.no_grad():
            for _, p in params:
                head = torch.nn.Linear(hidden, p.numel()).to(dtype=p.dtype, device=p.device)
                head.weight.mul_(head_scale)
                head.bias.copy_(p.detach().flatten())
                self.heads.append(head)

    def forward(self, ray: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.trunk(ray)
        return {n: head(features).view(shape) for n, shape, head in zip(self.names, self.shapes, self.heads)}


@attrs.frozen(kw_only=True)
class PHNStep:
    """One step: the drawn ray, the m losses at h(ray) and the loss weights used (r for PHN-LS)."""

    ray: np.ndarray
    losses: np.ndarray
    weights: np.ndarray


class PHN:
    """Pareto HyperNetworks: a hypernetwork trained on rays drawn from Dir(α), scalarised by LS or EPO.

    Runtime objects: ``model`` (the target network: its architecture and, through the heads' biases,
    its initial parameters; buffers are used as they are), ``optimizer`` (optional callable
    ``params -> optimizer`` over the hypernetwork's parameters; default Adam with ``lr``).

    Settings (``settings=``, a :class:`~mtlsolve.adapters.strategies.phn_settings.PHNSettings`, or the
    same names as keywords): ``num_tasks`` m, ``solver`` (``"ls"``, PHN-LS, or ``"epo"``, PHN-EPO),
    ``dirichlet_alpha`` (0.2, the official code), ``hidden`` (100) and ``layers`` (2) of the ray MLP,
    ``head_scale`` (0.1), ``lr`` (1e-4), ``epo_eps`` (EPO's non-uniformity tolerance, 1e-4), ``seed``
    (of the ray draws), ``reference`` (the hypervolume reference point; default 1.1 x the per-task
    maximum of the first losses :meth:`evaluate` sees, docs/problems.md#hypervolume).

    ``step(closure)``: ``closure(net)`` returns the m losses of ``net``, a callable evaluating the
    target network at the drawn ray's weights. :meth:`network` gives that callable for any ray.
    """

    def __init__(
        self, *, model: torch.nn.Module, optimizer: Any = None, settings: PHNSettings | None = None, **options: Any
    ) -> None:
        import mtlsolve

        self.settings: PHNSettings = settings_for(PHNSettings, settings, options)
        config = self.settings
        self.model = model
        self.hypernet = HyperNetwork(model, config.num_tasks, config.hidden, config.layers, config.head_scale)
        params = list(self.hypernet.parameters())
        self.optimizer = torch.optim.Adam(params, lr=config.lr) if optimizer is None else optimizer(params)
        self.solver = mtlsolve.get("epo", eps=config.epo_eps) if config.solver == "epo" else None
        self.reference: tuple[float, ...] | None = config.reference
        self._rng = np.random.default_rng(config.seed)
        self._steps = 0

    @property
    def steps(self) -> int:
        return self._steps

    def _ray(self, ray: Any) -> torch.Tensor:
        first = next(self.hypernet.parameters())
        r = torch.as_tensor(np.asarray(ray, dtype=np.float64), dtype=first.dtype, device=first.device)
        if r.shape != (self.settings.num_tasks,) or not torch.isfinite(r).all() or (r < 0).any() or r.sum() <= 0:
            raise InvalidSystemError(
                f"phn: a ray must be {self.settings.num_tasks} non-negative weights, not all 0; got {ray!r}"
            )
        return r / r.sum()

    def sample_ray(self) -> np.ndarray:
        """A ray r ~ Dir(α, …, α) from the strategy's generator (advances it)."""
        return self._rng.dirichlet(np.full(self.settings.num_tasks, self.settings.dirichlet_alpha))

    def weights(self, ray: Any) -> dict[str, torch.Tensor]:
        """θ = h(r; φ), the target's parameters at ``ray`` (normalised to sum 1)."""
        return self.hypernet(self._ray(ray))

    def network(self, ray: Any) -> Callable[..., Any]:
        """The target network at ``ray``: a callable with the target module's signature."""
        weights = self.weights(ray)
        buffers = dict(self.model.named_buffers())

        def net(*args: Any, **kwargs: Any) -> Any:
            return functional_call(self.model, {**buffers, **weights}, args, kwargs)

        return net

    def step(self, closure: Callable[[Callable[..., Any]], Any]) -> PHNStep:
        """One step of the hypernetwork at a ray drawn from Dir(α)."""
        ray = self.sample_ray()
        r = self._ray(ray)
        losses = _loss_vector(closure(self.network(ray)))
        m = self.settings.num_tasks
        if losses.numel() != m:
            raise InvalidSystemError(f"phn: {losses.numel()} losses for num_tasks={m}")
        if self.solver is None:
            beta = r
        else:
            params = list(self.hypernet.parameters())
            rows = []
            for i in range(m):
                grads = torch.autograd.grad(losses[i], params, retain_graph=True, allow_unused=True)
                rows.append(
                    torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(params, grads)])
                )
            result = self.solver(torch.stack(rows), losses=losses.detach(), preference=tuple(to_numpy64(r).clip(1e-12)))
            beta = torch.as_tensor(result.weights, dtype=losses.dtype, device=losses.device)
        self.optimizer.zero_grad(set_to_none=True)
        (beta.detach() * losses).sum().backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._steps += 1
        return PHNStep(ray=to_numpy64(r), losses=to_numpy64(losses.detach()), weights=to_numpy64(beta.detach()))

    def evaluate(self, fn: Callable[[Callable[..., Any]], Any], rays: Sequence[Any]) -> np.ndarray:
        """The K x m losses ``fn(net)`` at each of the K rays, without grad (fixes the HV reference point
        on the first call when none was given)."""
        with torch.no_grad():
            L = np.stack([to_numpy64(_loss_vector(fn(self.network(r)))) for r in rays])
        if self.reference is None:
            self.reference = tuple(float(v) for v in 1.1 * L.max(axis=0))
        return L

    def hypervolume(self, losses: np.ndarray) -> float:
        """HV of a K x m loss array against :attr:`reference`."""
        if self.reference is None:
            raise InvalidConfigError("phn: no reference point yet (call evaluate first, or pass one)")
        return hypervolume(losses, self.reference)

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """The hypernetwork, its optimizer, the ray generator, the step counter and the HV reference."""
        return {
            "hypernet": copy.deepcopy(self.hypernet.state_dict()),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "rng": copy.deepcopy(self._rng.bit_generator.state),
            "steps": self._steps,
            "reference": self.reference,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        try:
            self.hypernet.load_state_dict(state["hypernet"])
        except RuntimeError as exc:
            raise InvalidConfigError(f"phn: the checkpoint's hypernetwork does not fit this one ({exc})") from exc
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self._rng.bit_generator.state = copy.deepcopy(state["rng"])
        self._steps = int(state["steps"])
        self.reference = None if state["reference"] is None else tuple(state["reference"])

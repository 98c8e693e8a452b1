"""COST: continual optimisation with symmetry teleportation (docs/methods.md#cost).

Zhou, Meng, Wu, Zhao, Miao — "Continual Optimization with Symmetry Teleportation for Multi-Task
Learning", NeurIPS 2025, arXiv 2503.04046; official code zzpustc/COST (``methods/teleportation.py``,
``FairGrad.get_weighted_loss`` in ``methods/weight_methods.py``).

Every step runs the base solver through :class:`~mtlsolve.adapters.MultiTaskBackward`. When the gates
are open (epoch ≥ ``start_epoch``, step ≥ ``start_step``, fewer than ``max_teleports_per_epoch``
teleports this epoch) and the step shows a *dominated conflict* (step 2 of docs/methods.md#cost; g₀ = mean_i g_i)

* ``"dominated_any"`` (default, official code): min_i cos(g₀, g_i) ≤ 0,
* ``"dominated_min_norm"`` (paper Eq. 3): cos(g₀, g_{i*}) < 0 with i* = argmin_i ‖g_i‖,
* ``"fraction"`` (a relaxed trigger, not in the paper): the fraction of tasks with cos(g₀, g_i) < 0 is ≥ ρ,

the update is discarded and the model is *teleported* (step 3): contour targets L*_i (the mean
loss over the teleport loader in eval mode, or with ``contour="batch"`` each batch's own loss before the
teleport), ratios R_i = m(1 − ‖g_i‖/Σ_j‖g_j‖), LoRA adapters ΔΘ = s·BA on the shared Linear/Conv layers
(:mod:`._lora`, torch parametrizations), optimised with a fresh Adam for ``tele_rounds`` passes on

    w_inv · (1/m) Σ_i |L_i(θ+Δθ; b) − L*_i|  −  w_sharp · (1/m) Σ_i max_{s≤n} R_i |L_i(θ+Δθ+ε_s; x) − L_i(θ+Δθ; x)| / δ

(x the triggering batch, ε_s Gaussian noise scaled to norm δ per parameter tensor), then merged into
the weights: architecture, parameter objects and parameter count are unchanged. The perturbed losses
come from ``torch.func.functional_call``, so the sharpness term is differentiable in Δθ
(``sharpness_grad="full"``); ``"official"`` detaches them as the official code's deep copies do.
The whole teleport runs in eval mode, as the official code does.

Historical trajectory reuse (step 4), with Δ = θ_after − θ_before on the shared parameters and
c = cos(g_prev, Δ), g_prev the combined gradient of the last normal step: c ≤ 0 clears the optimiser
state (a fresh Adam, same object, so the LR scheduler stays attached); c > 0 makes exactly the next
optimiser step use m ← cβ₁m + (1 − cβ₁)g and v ← cβ₂v + (1 − cβ₂)g² with the bias-correction step
counter and betas unchanged. That is done by setting m ← c·m + (1 − c)g and v ← c·v + (1 − c)g²
just before torch's own Adam/AdamW update, which then gives exactly the formulas above (torch's Adam
with betas set to (cβ₁, cβ₂) would also change its bias correction). The triggering batch is then
recomputed at the teleported θ and stepped with the base solver (``after_teleport="step"``, the
Cityscapes trainer) or skipped (``"skip"``, the NYUv2 trainer).

Usage (the settings, :class:`~mtlsolve.adapters.strategies.settings.COSTSettings`, may also be built
first, ``mtlsolve.get_strategy("cost", ...)``, and passed as ``settings=``)::

    cost = COST(model=net, optimizer=opt, shared=net.trunk, loss_fn=task_losses,
                teleport_loader=loader, base={"name": "fairgrad", "alpha": 2.0})
    for epoch in range(E):
        for batch in loader:
            info = cost.train_step(batch)     # forward, base step or teleport, optimizer.step()
        cost.end_epoch()

``loss_fn(model, batch)`` returns the m task losses as a 1-D tensor; it is called with the adapted
model during a teleport and must take every parameter from ``model``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
import numpy as np
import torch
from torch import nn

from mtlsolve._array import to_numpy64
from mtlsolve.adapters import _grads
from mtlsolve.adapters.backward import MultiTaskBackward, StepDiagnostics, _resolve
from mtlsolve.adapters.strategies import _lora
from mtlsolve.adapters.strategies.settings import COSTSettings
from mtlsolve.errors import InvalidConfigError
from mtlsolve.gramian import norms
from mtlsolve.strategy import settings_for


def mean_cosines(gramian: np.ndarray) -> tuple[np.ndarray, float]:
    """cos(g₀, g_i) for every task and ‖g₀‖, with g₀ = (1/m)Σ_i g_i, from K = GGᵀ (0 where a norm is 0)."""
    K = np.asarray(gramian, dtype=np.float64)
    m = len(K)
    s = K.sum(1) / m  # g₀·g_i
    g0 = math.sqrt(max(float(s.sum()) / m, 0.0))
    denom = g0 * norms(K)
    return np.where(denom > 0, s / np.where(denom > 0, denom, 1.0), 0.0), g0


def htr_adjust_(optimizer: torch.optim.Optimizer, c: float) -> None:
    """Pre-scale Adam/AdamW moments so torch's next step applies HTR's σ-modulated moments (factor c).

    With m ← c·m + (1 − c)g and v ← c·v + (1 − c)g² here, torch's β₁m + (1 − β₁)g becomes
    cβ₁m + (1 − cβ₁)g (likewise for v), and its bias correction keeps the original betas and step
    count. g is the gradient Adam folds into its moments (with L2 weight decay for plain Adam,
    negated with ``maximize``). Parameters without Adam state yet are left alone.
    """
    decoupled_default = isinstance(optimizer, torch.optim.AdamW)
    for group in optimizer.param_groups:
        wd = group.get("weight_decay", 0.0)
        decoupled = group.get("decoupled_weight_decay", decoupled_default)
        for p in group["params"]:
            state = optimizer.state.get(p)
            if p.grad is None or not state or "exp_avg" not in state:
                continue
            g = p.grad.detach()
            if group.get("maximize", False):
                g = -g
            if wd and not decoupled:
                g = g + wd * p.detach()
            state["exp_avg"].mul_(c).add_(g, alpha=1.0 - c)
            state["exp_avg_sq"].mul_(c).addcmul_(g, g, value=1.0 - c)


class _Bound(nn.Module):
    """``loss_fn(model, batch)`` as a module, so ``functional_call`` can swap the model's parameters."""

    def __init__(self, model: nn.Module, loss_fn: Callable[[nn.Module, Any], torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> torch.Tensor:
        return self.loss_fn(self.model, batch)


def _check_runtime(model: Any, optimizer: Any, loss_fn: Any) -> None:
    """Raise :class:`InvalidConfigError` unless COST got a module, an optimiser and a callable loss."""
    if not isinstance(model, nn.Module):
        raise InvalidConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise InvalidConfigError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if not callable(loss_fn):
        raise InvalidConfigError(f"loss_fn must be callable, got {loss_fn!r}")


@attrs.define
class _AdapterRun:
    """How the adapter optimisation of one teleport went: the steps taken, whether a non-finite objective
    stopped it, the last objective terms and the contour deviations (``monitor``; ``contour="batch"``)."""

    steps: int = 0
    aborted: bool = False
    last: dict[str, float] = attrs.Factory(dict)
    deviations: list[float] = attrs.Factory(list)
    batch_deviation: float = 0.0


@attrs.frozen(kw_only=True)
class StepInfo:
    """What :meth:`COST.train_step` did.

    ``losses`` and ``cosines`` (cos(g₀, g_i), None when not computed) are those of the batch at the
    start of the step; ``diagnostics`` those of the base step applied (None when a teleport step was
    skipped); ``record`` the teleport record (see :attr:`COST.records`) when one happened.
    """

    losses: np.ndarray
    cosines: np.ndarray | None
    teleported: bool
    diagnostics: StepDiagnostics | None
    record: Mapping[str, Any] | None = None


class COST:
    """Continual optimisation with symmetry teleportation around any registered base solver.

    Runtime objects: ``model``, ``optimizer`` (Adam or AdamW when ``htr``), ``shared`` (module, tensors
    or an iterable of them, all parameters of ``model``), ``loss_fn(model, batch) -> (m,) losses``,
    ``teleport_loader`` (re-iterable batches; None: the triggering batch alone) and ``scaler``.

    Settings (``settings=``, a :class:`~mtlsolve.adapters.strategies.settings.COSTSettings`, or the same
    names as keywords; defaults of the official code; the paper's values where they differ in brackets):
    ``base`` name, config mapping or solver (FairGrad α = 2); ``trigger``, ``trigger_fraction`` (ρ of the
    ``"fraction"`` trigger); ``start_epoch`` (0; Cityscapes 50), ``start_step`` (0),
    ``max_teleports_per_epoch`` (1); ``on_trigger`` (``"teleport"``; ``"reset"`` is the reset-only
    control: the same trigger and gates, but the optimiser state is cleared and θ is left where it
    is — what a teleport whose HTR resets Adam does, without the teleport); ``lora_rank`` (5),
    ``lora_alpha`` (8, peft's default; scale α/r), ``lora_targets`` (module names; default every Linear/Conv layer whose weight is shared),
    ``lora_lr`` (None: the optimiser's current lr); ``tele_rounds`` (2), ``sharp_samples`` (5),
    ``sharp_radius`` δ (1e-4), ``w_inv`` (10), ``w_sharp`` (0.5) [paper: 1 and 0.1];
    ``sharpness_grad`` ("full"; "official"), ``perturb`` ("shared"; "all" adds noise to the heads as
    the code does), ``contour`` ("dataset"; "batch"), ``after_teleport`` ("step"; "skip"), ``htr``
    (True), ``max_norm`` (1.0: clipping of the shared gradient, FairGrad code; None for none),
    ``backward_options`` (more :class:`MultiTaskBackward` keywords), ``monitor`` (evaluate the
    teleport-set losses after every adapter step and record the deviation from the contour),
    ``seed`` (adapter initialisation and sharpness noise).

    The paper trains the adapter at the main learning rate, 1e-4. With a larger main rate pass a smaller
    ``lora_lr``: on the CPU check of docs/problems.md#cost-check (main lr 1e-3) ``lora_lr=1e-4`` keeps every task loss within 0.6 % of
    its contour, the default (1e-3) lets it drift by up to about 8 % (``contour="batch"``: 2 %).
    :func:`mtlsolve.bench.cost_tradeoff.tradeoff` measures the whole curve of contour deviation against
    conflict reduction over the adapter budget and ``lora_lr`` (docs/methods.md#cost).
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        shared: Any,
        loss_fn: Callable[[nn.Module, Any], torch.Tensor],
        teleport_loader: Iterable[Any] | None = None,
        scaler: Any = None,
        settings: COSTSettings | None = None,
        **options: Any,
    ) -> None:
        self.settings: COSTSettings = settings_for(COSTSettings, settings, options)
        _check_runtime(model, optimizer, loss_fn)
        self.model = model
        self.optimizer = optimizer
        self.shared = shared
        self.loss_fn = loss_fn
        self.teleport_loader = teleport_loader
        self.scaler = scaler
        #: one dict per teleport (see :meth:`_teleport`)
        self.records: list[dict[str, Any]] = []
        self._epoch = 0
        self._step = 0
        self._teleports_epoch = 0
        self._teleports = 0
        self._g_prev: torch.Tensor | None = None
        self._htr_pending: float | None = None
        self._gen: torch.Generator | None = None
        self._layers: list[nn.Module] = []
        config = self.settings
        if config.htr and not isinstance(self.optimizer, (torch.optim.Adam, torch.optim.AdamW)):
            raise InvalidConfigError(
                f"htr=True reuses Adam/AdamW moments; got {type(self.optimizer).__name__} (pass htr=False)"
            )
        self.solver = _resolve(config.base)
        self.adapter = MultiTaskBackward(
            self.solver, self.shared, max_norm=config.max_norm, scaler=self.scaler, **config.backward_options
        )
        model_ids = {id(p) for p in self.model.parameters()}
        if any(id(p) not in model_ids for p in self.adapter.shared):
            raise InvalidConfigError(
                "every shared tensor must be a parameter of model (the teleport perturbs it by name)"
            )
        self._layers = self._lora_layers()

    def _lora_layers(self) -> list[nn.Module]:
        """The layers that get LoRA adapters: ``lora_targets``, or every Linear/Conv layer whose weight is shared."""
        shared_ids = {id(p) for p in self.adapter.shared}
        if self.settings.lora_targets is not None:
            return [self._lora_target(name, shared_ids) for name in self.settings.lora_targets]
        layers = [mod for mod in self.model.modules() if isinstance(mod, _lora.LAYERS) and id(mod.weight) in shared_ids]
        if not layers:
            raise InvalidConfigError(
                "no Linear/Conv layer has a shared weight; name the LoRA targets with lora_targets"
            )
        return layers

    def _lora_target(self, name: str, shared_ids: set[int]) -> nn.Module:
        """The submodule ``name`` of the model, checked to be a Linear/Conv layer with a shared weight."""
        try:
            mod = self.model.get_submodule(name)
        except AttributeError:
            raise InvalidConfigError(f"LoRA target {name!r} is not a submodule of model") from None
        if not isinstance(mod, _lora.LAYERS):
            raise InvalidConfigError(f"LoRA target {name!r} is a {type(mod).__name__}, not a Linear/Conv layer")
        if id(mod.weight) not in shared_ids:
            raise InvalidConfigError(f"LoRA target {name!r} is not part of the shared parameters")
        return mod

    # ------------------------------------------------------------------ loop
    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def step(self) -> int:
        """Batches seen by :meth:`train_step` (teleport steps included)."""
        return self._step

    @property
    def teleports(self) -> int:
        return self._teleports

    def end_epoch(self) -> None:
        """Start a new epoch: the per-epoch teleport cap resets and the base solver hears of it."""
        self._epoch += 1
        self._teleports_epoch = 0
        self.adapter.end_epoch()

    def train_step(self, batch: Any) -> StepInfo:
        """One training step on ``batch``: a base step, or a teleport followed by the base step."""
        gate = (
            self._epoch >= self.settings.start_epoch
            and self._step >= self.settings.start_step
            and self._teleports_epoch < self.settings.max_teleports_per_epoch
        )
        snapshot = self.adapter.state_dict() if gate else None
        losses = self.loss_fn(self.model, batch)
        K = self._loss_path_gramian(losses) if gate and self.adapter.path == "losses" else None
        diagnostics = self.adapter.backward(losses)
        if K is None:
            K = diagnostics.gramian
        cosines = None
        if K is not None:
            cosines, _ = mean_cosines(K)
        if gate and cosines is not None and self._fires(cosines, K):
            return self._teleport_step(batch, diagnostics, K, snapshot)
        self._finish(batch, diagnostics)
        return StepInfo(losses=diagnostics.losses, cosines=cosines, teleported=False, diagnostics=diagnostics)

    def _fires(self, cosines: np.ndarray, K: np.ndarray) -> bool:
        if not np.isfinite(cosines).all():
            return False
        if self.settings.trigger == "dominated_any":
            return bool(cosines.min() <= 0.0)
        if self.settings.trigger == "dominated_min_norm":
            return bool(cosines[int(np.argmin(np.diag(K)))] < 0.0)
        return bool(np.mean(cosines < 0.0) >= self.settings.trigger_fraction)

    def _finish(self, batch: Any, diagnostics: StepDiagnostics) -> None:
        """Keep g_prev, apply a pending HTR modulation and step the optimiser through the adapter."""
        if self.settings.htr and not diagnostics.skipped:
            self._g_prev = torch.cat(
                [
                    (p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1)
                    for p in self.adapter.shared
                ]
            ).clone()
        if self._htr_pending is not None:
            self._apply_htr()
        self.adapter.step(self.optimizer, closure=lambda: self.loss_fn(self.model, batch))
        self._step += 1

    def _apply_htr(self) -> None:
        if self.scaler is not None and self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
            grads = [p.grad for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
            if not all(bool(torch.isfinite(g).all()) for g in grads):
                return  # the scaler skips this step; modulate the next one
        htr_adjust_(self.optimizer, self._htr_pending)
        self._htr_pending = None

    def _loss_path_gramian(self, losses: torch.Tensor) -> np.ndarray:
        """K for a loss-only base (the trigger still needs the per-task gradients)."""
        m = losses.shape[0]
        reach = _grads.reachable_leaves([losses])
        used = [p for p in self.adapter.shared if id(p) in reach]
        K = torch.zeros(m, m, dtype=torch.float64, device=losses.device)

        def consume(block: torch.Tensor) -> None:
            flat = block.reshape(m, -1)
            flat = flat if flat.dtype == torch.float64 else flat.float()
            K.add_((flat @ flat.T).to(torch.float64))

        consumers = [consume] * len(used)
        try:
            _grads.batched(losses, [], used, consumers, retain_graph=True)
        except Exception:
            K.zero_()
            _grads.loop(losses, [], used, consumers, retain_graph=True)
        return to_numpy64(K)

    # -------------------------------------------------------------- teleport
    def _teleport_step(
        self, batch: Any, diagnostics: StepDiagnostics, K: np.ndarray, snapshot: Mapping[str, Any]
    ) -> StepInfo:
        # drop the update written at the old θ and the base solver's view of it
        self.model.zero_grad(set_to_none=True)
        self.optimizer.zero_grad(set_to_none=True)
        for p in self.solver.parameters():
            p.grad = None
        self.adapter.load_state_dict(snapshot)
        cosines, g0 = mean_cosines(K)
        record = self._teleport(batch, K) if self.settings.on_trigger == "teleport" else self._reset()
        record.update(
            losses=diagnostics.losses.tolist(),
            cos_before=cosines.tolist(),
            min_cos_before=float(cosines.min()),
            g0_norm_before=g0,
        )
        after = None
        if self.settings.after_teleport == "step":
            losses = self.loss_fn(self.model, batch)
            K2 = self._loss_path_gramian(losses) if self.adapter.path == "losses" else None
            after = self.adapter.backward(losses)
            K2 = after.gramian if K2 is None else K2
            if K2 is not None:
                cos2, g02 = mean_cosines(K2)
                record.update(
                    losses_after=after.losses.tolist(),
                    cos_after=cos2.tolist(),
                    min_cos_after=float(cos2.min()),
                    g0_norm_after=g02,
                )
            self._finish(batch, after)
        else:
            self._step += 1
        return StepInfo(losses=diagnostics.losses, cosines=cosines, teleported=True, diagnostics=after, record=record)

    def _reset(self) -> dict[str, Any]:
        """The reset-only control: clear the optimiser state where COST would teleport; θ stays."""
        self.optimizer.state.clear()
        self._htr_pending = None
        self._teleports += 1
        self._teleports_epoch += 1
        record = {"step": self._step, "epoch": self._epoch, "action": "reset", "displacement": 0.0}
        record.update(htr="reset", htr_cos=None, max_deviation=0.0)
        self.records.append(record)
        return record

    def _generator(self, device: torch.device) -> torch.Generator:
        if self._gen is None:
            seed = self.settings.seed
            if seed is None:
                seed = int(torch.randint(0, 2**62, (1,)).item())
            self._gen = torch.Generator(device=device)
            self._gen.manual_seed(seed)
        return self._gen

    @torch.no_grad()
    def _mean_losses(self, loader: Iterable[Any]) -> torch.Tensor:
        total, count = None, 0
        for b in loader:
            L = self.loss_fn(self.model, b).detach().to(torch.float64)
            total = L if total is None else total + L
            count += 1
        if count == 0:
            raise ValueError("the teleport loader yielded no batch")
        return total / count

    def _teleport(self, batch: Any, K: np.ndarray) -> dict[str, Any]:
        """Inject, optimise and merge the adapters; apply HTR. Returns the teleport record."""
        shared = self.adapter.shared
        m = len(K)
        norms = np.sqrt(np.clip(np.diag(K), 0.0, None))
        ratios = m * (1.0 - norms / norms.sum()) if norms.sum() > 0 else np.ones(m)
        loader = self.teleport_loader if self.teleport_loader is not None else [batch]
        before = [p.detach().clone() for p in shared]
        gen = self._generator(shared[0].device)
        was_training = self.model.training
        self.model.eval()
        try:
            config = self.settings
            targets = self._mean_losses(loader) if (config.contour == "dataset" or config.monitor) else None
            run = self._optimise_adapters(batch, loader, targets, ratios, gen)
            (_lora.discard if run.aborted else _lora.merge)(self._layers)
        except BaseException:
            _lora.discard(self._layers)
            raise
        finally:
            self.model.train(was_training)

        self._teleports += 1
        self._teleports_epoch += 1
        delta = torch.cat([(p.detach() - b).reshape(-1) for p, b in zip(shared, before)])
        record: dict[str, Any] = {
            "step": self._step,
            "epoch": self._epoch,
            "action": "teleport",
            "targets": None if targets is None else targets.tolist(),
            "ratios": ratios.tolist(),
            "adapter_steps": run.steps,
            "aborted": run.aborted,
            "objective": run.last,
            "deviation": run.deviations,
            "max_deviation": max(run.deviations) if run.deviations else None,
            "batch_deviation": run.batch_deviation if self.settings.contour == "batch" else None,
            "displacement": float(torch.linalg.vector_norm(delta)),
        }
        record.update(self._htr_decision(delta, run.aborted))
        self.records.append(record)
        return record

    def _optimise_adapters(
        self, batch: Any, loader: Iterable[Any], targets: torch.Tensor | None, ratios: np.ndarray, gen: torch.Generator
    ) -> _AdapterRun:
        """Inject the LoRA adapters and run ``tele_rounds`` passes of Adam over ``loader`` on
        w_inv · invariance − w_sharp · sharpness (docs/methods.md#cost, step 3); stops at a non-finite objective."""
        config = self.settings
        adapters = _lora.inject(self._layers, config.lora_rank, config.lora_alpha / config.lora_rank, gen)
        params = [t for a in adapters for t in (a.A, a.B)]
        lr = config.lora_lr if config.lora_lr is not None else self.optimizer.param_groups[0]["lr"]
        inner = torch.optim.Adam(params, lr=lr)
        named = self._perturbed(params)
        bound = _Bound(self.model, self.loss_fn)
        run = _AdapterRun()
        R = None
        for _ in range(config.tele_rounds):
            for b in loader:
                L = self.loss_fn(self.model, b)
                if R is None:
                    R = torch.as_tensor(ratios, dtype=L.dtype, device=L.device)
                invariance = (L - self._contour(b, L, targets, adapters, run)).abs().mean()
                sharpness = self._sharpness(bound, batch, R, named, gen)
                objective = config.w_inv * invariance - config.w_sharp * sharpness
                if not bool(torch.isfinite(objective)):
                    run.aborted = True
                    return run
                grads = torch.autograd.grad(objective, params)
                for t, g in zip(params, grads):
                    t.grad = g
                inner.step()
                run.steps += 1
                run.last = {"invariance": invariance.item(), "sharpness": sharpness.item()}
                if config.monitor:
                    mean = self._mean_losses(loader)
                    run.deviations.append(float(((mean - targets).abs() / targets.abs().clamp_min(1e-12)).max()))
        return run

    def _contour(
        self, b: Any, L: torch.Tensor, targets: torch.Tensor | None, adapters: list[_lora.LoRA], run: _AdapterRun
    ) -> torch.Tensor:
        """The losses L* the adapters keep batch ``b`` at: the dataset means ``targets``, or (``contour="batch"``)
        the batch's own losses without the adapters, whose largest relative gap to ``L`` goes to ``run``."""
        if self.settings.contour != "batch":
            return targets.to(L.dtype)
        with torch.no_grad(), _lora.disabled(adapters):
            target = self.loss_fn(self.model, b).detach()
        gap = ((L.detach() - target).abs() / target.abs().clamp_min(1e-12)).max()
        run.batch_deviation = max(run.batch_deviation, float(gap))
        return target

    def _perturbed(self, adapter_params: list[torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
        """(functional_call key, tensor) of every parameter the sharpness noise perturbs."""
        skip = {id(t) for t in adapter_params}
        if self.settings.perturb == "shared":
            keep = {id(p) for p in self.adapter.shared}
        else:
            keep = {id(p) for p in self.model.parameters() if p.requires_grad}
        return [("model." + n, p) for n, p in self.model.named_parameters() if id(p) in keep and id(p) not in skip]

    def _sharpness(
        self, bound: _Bound, x: Any, R: torch.Tensor, named: list[tuple[str, torch.Tensor]], gen: torch.Generator
    ) -> torch.Tensor:
        """(1/m) Σ_i max_s R_i |L_i(θ+Δθ+ε_s; x) − L_i(θ+Δθ; x)| / δ with per-tensor ‖ε_s‖ = δ."""
        delta = self.settings.sharp_radius
        L0 = self.loss_fn(self.model, x)
        worst = None
        for _ in range(self.settings.sharp_samples):
            swapped = {}
            for key, p in named:
                eps = torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype)
                swapped[key] = p.detach() + eps * (delta / torch.linalg.vector_norm(eps).clamp_min(1e-30))
            Lp = torch.func.functional_call(bound, swapped, (x,))
            if self.settings.sharpness_grad == "official":
                Lp = Lp.detach()
            term = R * (Lp - L0).abs() / delta
            worst = term if worst is None else torch.maximum(worst, term)
        return worst.mean()

    def _htr_decision(self, delta: torch.Tensor, aborted: bool) -> dict[str, Any]:
        if not self.settings.htr:
            return {"htr": "off", "htr_cos": None}
        if aborted or self._g_prev is None:
            return {"htr": "none", "htr_cos": None}
        g = self._g_prev.to(torch.float64)
        d = delta.to(torch.float64)
        denom = float(torch.linalg.vector_norm(g) * torch.linalg.vector_norm(d))
        c = float(g @ d) / denom if denom > 0 else 0.0
        if c <= 0.0:
            self.optimizer.state.clear()
            self._htr_pending = None
            return {"htr": "reset", "htr_cos": c}
        self._htr_pending = c
        return {"htr": "modulate", "htr_cos": c}

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Counters, RNG, HTR state, the base solver's state (through the adapter) and the records."""
        return {
            "epoch": self._epoch,
            "step": self._step,
            "teleports_epoch": self._teleports_epoch,
            "teleports": self._teleports,
            "rng": None if self._gen is None else self._gen.get_state(),
            "g_prev": None if self._g_prev is None else self._g_prev.clone(),
            "htr_pending": self._htr_pending,
            "adapter": self.adapter.state_dict(),
            "records": copy.deepcopy(self.records),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (the model and optimiser restore their own)."""
        self._epoch = int(state["epoch"])
        self._step = int(state["step"])
        self._teleports_epoch = int(state["teleports_epoch"])
        self._teleports = int(state["teleports"])
        self._gen = None
        if state["rng"] is not None:
            self._gen = torch.Generator(device=self.adapter.shared[0].device)
            self._gen.set_state(state["rng"])
        self._g_prev = None if state["g_prev"] is None else state["g_prev"].clone()
        self._htr_pending = state["htr_pending"]
        self.adapter.load_state_dict(state["adapter"])
        self.records = copy.deepcopy(list(state["records"]))

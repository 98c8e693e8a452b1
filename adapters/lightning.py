"""Lightning integration: :class:`MultiTaskBackward` under manual optimisation, solver state in checkpoints.

Mix :class:`MultiTaskLightningMixin` in *before* ``LightningModule``, create
the adapter in ``__init__`` with :meth:`~MultiTaskLightningMixin.configure_multitask`
(it switches ``automatic_optimization`` off) and hand the m task losses to
:meth:`~MultiTaskLightningMixin.multitask_step` in ``training_step``::

    class Model(MultiTaskLightningMixin, lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = Net()
            self.configure_multitask("upgrad", shared=self.net.trunk)

        def training_step(self, batch, batch_idx):
            x, y = batch
            losses = task_losses(self.net(x), y)
            self.multitask_step(losses, closure=lambda: task_losses(self.net(x), y))

        def configure_optimizers(self):
            return torch.optim.Adam(self.net.parameters(), lr=1e-3)

What the mixin does for you:

* ``multitask_step`` runs the adapter's backward in place of
  ``self.manual_backward`` and, once an update is in ``.grad`` (every
  ``accumulation_steps`` batches), steps the ``LightningOptimizer`` (so the
  Trainer's step counter, ``max_steps`` and ``on_before_optimizer_step``
  work), drives the solver's hooks (``after_step`` with ``closure()`` for
  post-step solvers such as FAMO) and zeroes the gradients. LR schedulers
  stay yours: step ``self.lr_schedulers()`` when it returns diagnostics.
* Mixed precision comes from the Trainer's precision plugin: under
  ``"bf16-mixed"`` or ``"16-mixed"`` ``training_step`` runs in autocast as
  usual; when the plugin holds a ``GradScaler`` (``"16-mixed"`` on CUDA, or a
  ``MixedPrecision`` plugin given one) the adapter scales the losses with it,
  unscales the per-task gradients before the solver, skips Inf/NaN steps, and
  the plugin's optimiser step unscales, steps and updates the scaler exactly
  as after ``manual_backward``. Do not give the adapter a scaler of its own.
* ``multitask_step(..., log=True)`` logs the step's diagnostics (task
  weights, gradient norms, pairwise cosines, condition number; see
  :meth:`~mtlsolve.adapters.StepDiagnostics.scalars`) as ``mtl/<name>``.
* ``on_train_epoch_end`` calls the adapter's ``end_epoch`` (DWA, STCH).
* Checkpoints carry the adapter's state (solver state, learnable solver
  parameters, counters) under the key ``"mtlsolve"``, with numpy arrays
  stored as tensors so that Lightning's ``weights_only`` loading accepts it; ``on_fit_start`` adds
  learnable solver parameters the optimiser lacks as its last param group (as
  the adapter's first step does), so a resumed run's optimiser state matches.

If you override ``on_save_checkpoint``, ``on_load_checkpoint``,
``on_fit_start`` or ``on_train_epoch_end``, call ``super()``. Gradient
clipping is the adapter's ``max_norm`` (Lightning forbids ``gradient_clip_val``
under manual optimisation). Only single-process strategies are covered; for
data parallelism use the plain loop with ``distributed=True``
(:mod:`mtlsolve.adapters.ddp`).

This module does not import Lightning; the mixin only relies on the
``LightningModule`` methods it is mixed into.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from mtlsolve.adapters.backward import MultiTaskBackward, StepDiagnostics

CHECKPOINT_KEY = "mtlsolve"
_NUMPY = "__mtlsolve_numpy__"


def _to_tensors(obj: Any) -> Any:
    """Numpy arrays and scalars in solver state as tagged tensors, so ``torch.load(weights_only=True)`` reads them."""
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype != object:
        return {_NUMPY: torch.from_numpy(np.array(obj, copy=True)), "scalar": isinstance(obj, np.generic)}
    if isinstance(obj, dict):
        return {key: _to_tensors(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_tensors(value) for value in obj)
    return obj


def _from_tensors(obj: Any) -> Any:
    if isinstance(obj, dict) and _NUMPY in obj:
        array = obj[_NUMPY].numpy().copy()
        return array[()] if obj["scalar"] else array
    if isinstance(obj, dict):
        return {key: _from_tensors(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_from_tensors(value) for value in obj)
    return obj


class MultiTaskLightningMixin:
    """Manual-optimisation helper for a ``LightningModule`` (list it first among the bases)."""

    multitask: MultiTaskBackward

    def configure_multitask(self, solver: Any, shared: Any, **kwargs: Any) -> MultiTaskBackward:
        """Create the adapter (arguments as :class:`MultiTaskBackward`) and switch to manual optimisation."""
        if kwargs.get("scaler") is not None:
            raise ValueError("under Lightning the GradScaler comes from the Trainer's precision plugin; pass none")
        self.automatic_optimization = False
        self.multitask = MultiTaskBackward(solver, shared, **kwargs)
        return self.multitask

    def multitask_step(
        self,
        losses: Any,
        features: Any = None,
        *,
        closure: Callable[[], Any] | None = None,
        log: bool = False,
        present: Any = None,
    ) -> StepDiagnostics | None:
        """Back-propagate the task losses and, at the end of an accumulation cycle, step the optimiser(s).

        Returns the step's :class:`StepDiagnostics`, or None between
        micro-batches. ``features`` is the shared representation in
        ``grads="representation"`` mode; ``closure`` recomputes the losses on
        the same batch (needed by post-step solvers). ``log=True`` logs the
        step's diagnostics (:meth:`StepDiagnostics.scalars`: losses, weights,
        gradient norms, pairwise cosines, condition number, update norm) as
        ``mtl/<name>`` with ``self.log_dict``. ``present`` (a boolean mask
        over the tasks) drops the absent tasks from this step, as
        :meth:`MultiTaskBackward.backward` (docs/methods.md#missing-tasks).
        """
        adapter = self.multitask
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if adapter.scaler is not scaler:
            if adapter.scaler is not None:
                raise ValueError("the adapter holds a GradScaler that is not the precision plugin's")
            adapter.scaler = scaler
        diagnostics = adapter.backward(losses, features, present=present)
        if diagnostics is None:
            return None
        optimizers = self.optimizers()
        optimizers = list(optimizers) if isinstance(optimizers, (list, tuple)) else [optimizers]
        adapter.add_parameters_to([getattr(opt, "optimizer", opt) for opt in optimizers])
        # the LightningOptimizer's step goes through the precision plugin, which steps its own scaler
        adapter.step(optimizers, closure=closure, scaler_step=False)
        if log:
            self.log_dict({f"mtl/{k}": v for k, v in diagnostics.scalars().items()}, on_step=True, on_epoch=False)
        return diagnostics

    # ---------------------------------------------------------------- hooks
    def on_fit_start(self) -> None:
        super().on_fit_start()
        self.multitask.add_parameters_to(list(self.trainer.optimizers))

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        self.multitask.end_epoch()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[CHECKPOINT_KEY] = _to_tensors(self.multitask.state_dict())

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if CHECKPOINT_KEY in checkpoint:
            self.multitask.load_state_dict(_from_tensors(checkpoint[CHECKPOINT_KEY]))

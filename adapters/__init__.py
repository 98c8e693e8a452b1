"""PyTorch glue: per-task gradients from a model, writing the combined update to ``.grad``,
and the training strategies that change the loop.

The entry point is :class:`MultiTaskBackward`::

    adapter = mtlsolve.adapters.MultiTaskBackward("mgda", shared=model.trunk)
    diagnostics = adapter.backward(losses)      # fills .grad
    adapter.step(optimizer)                     # optimizer.step(), solver hooks, zero_grad
"""

from mtlsolve.adapters.backward import GRADS, PATHS, MultiTaskBackward, StepDiagnostics

__all__ = ["GRADS", "PATHS", "MultiTaskBackward", "StepDiagnostics"]

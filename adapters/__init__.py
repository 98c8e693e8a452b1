"""PyTorch glue: per-task gradients from a model, writing the combined update to ``.grad``,
and the training strategies that change the loop.

The entry point is :class:`MultiTaskBackward`::

    adapter = mtlsolve.adapters.MultiTaskBackward("mgda", shared=model.trunk)
    diagnostics = adapter.backward(losses)      # fills .grad
    adapter.step(optimizer)                     # optimizer.step(), solver hooks, zero_grad
"""

__all__ = ["GRADS", "PATHS", "MultiTaskBackward", "StepDiagnostics"]


def __getattr__(name: str):
    """Load the adapter (and torch) on first use, so that the registry can import
    ``mtlsolve.adapters.strategies`` (the built-in strategies' plugin) without torch."""
    if name in __all__:
        from mtlsolve.adapters import backward

        return getattr(backward, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""PyTorch glue: per-task gradients from a model, writing the combined update to ``.grad``,
and the training strategies that change the loop."""

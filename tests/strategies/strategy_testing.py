"""The small model and task losses the bilevel strategy tests (Auto-Lambda, MoML, FORUM) share."""

from __future__ import annotations

import torch


class Net(torch.nn.Module):
    """A 4 → 5 (tanh) → 3 network: three regression tasks on a shared trunk."""

    def __init__(self):
        super().__init__()
        self.trunk = torch.nn.Linear(4, 5)
        self.head = torch.nn.Linear(5, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.trunk(x)))


def task_losses(model, x, y):
    """The per-task mean squared errors."""
    return ((model(x) - y) ** 2).mean(dim=0)

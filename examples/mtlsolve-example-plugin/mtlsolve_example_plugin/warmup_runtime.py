"""The runtime object of the example ``solver_warmup`` strategy (see :mod:`mtlsolve_example_plugin.warmup`)."""

from __future__ import annotations

from typing import Any

from mtlsolve.adapters import MultiTaskBackward, StepDiagnostics
from mtlsolve_example_plugin.warmup import SolverWarmupSettings


class SolverWarmup:
    """Combines the task losses with ``ls`` for the first ``settings.warmup_steps`` optimiser steps,
    then with ``settings.solver``; ``shared`` are the shared parameters (a module or tensors)."""

    def __init__(self, *, settings: SolverWarmupSettings, shared: Any) -> None:
        self.settings = settings
        self.warmup = MultiTaskBackward("ls", shared=shared)
        self.main = MultiTaskBackward(settings.solver, shared=shared)
        self.steps = 0

    @property
    def adapter(self) -> MultiTaskBackward:
        """The adapter the current step uses."""
        return self.warmup if self.steps < self.settings.warmup_steps else self.main

    def backward(self, losses: Any) -> StepDiagnostics:
        """Write the combined update of the task losses to the shared parameters' ``.grad``."""
        return self.adapter.backward(losses)

    def step(self, optimizer: Any) -> None:
        """Step the optimizer through the current adapter and count the step."""
        self.adapter.step(optimizer)
        self.steps += 1

"""What the population strategies (MTGD, MOO-SVGD) share: their members' losses and the hypervolume
of them against a reference point fixed on first use (docs/problems.md#hypervolume)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from mtlsolve._array import to_numpy64
from mtlsolve.adapters.backward import _loss_vector
from mtlsolve.errors import InvalidConfigError
from mtlsolve.metrics import hypervolume


class ScoredPopulation:
    """A mixin over ``self.models`` (the population) and ``self.reference`` (the hypervolume reference
    point, or None until the first losses are seen); ``label`` names the strategy in errors."""

    label = "population"
    models: list[torch.nn.Module]
    reference: tuple[float, ...] | None

    def _set_reference(self, L: np.ndarray) -> None:
        if self.reference is None:
            self.reference = tuple(float(v) for v in 1.1 * L.max(axis=0))

    def evaluate(self, fn: Callable[[torch.nn.Module], Any]) -> np.ndarray:
        """The K x m losses ``fn(model)`` of every member, without grad (fixes the HV reference point
        on the first call when none was given)."""
        with torch.no_grad():
            L = np.stack([to_numpy64(_loss_vector(fn(model))) for model in self.models])
        self._set_reference(L)
        return L

    def hypervolume(self, losses: np.ndarray) -> float:
        """HV of a K x m loss array against :attr:`reference`."""
        if self.reference is None:
            raise InvalidConfigError(f"{self.label}: no reference point yet (call evaluate or step first, or pass one)")
        return hypervolume(losses, self.reference)

"""Single-task learning: only the main task's loss (docs/methods.md#stl)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from mtlsolve.errors import InvalidSystemError
from mtlsolve.solver import Need, Weighting
from mtlsolve.system import GradientSystem
from mtlsolve.validation import non_negative_int


@attrs.define(kw_only=True, eq=False)
class SingleTask(Weighting):
    """The single-task baseline (nash-mtl ``stl``): one-hot weights, d = g_main_task."""

    name: ClassVar[str] = "stl"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {"single_task": {}}
    family: ClassVar[str] = "LW"
    needs: ClassVar[frozenset[Need]] = frozenset()
    properties: ClassVar[frozenset[str]] = frozenset({"positive_homogeneous", "linear", "simplex_weights"})
    paper: ClassVar[str] = "single-task baseline (no single source; nash-mtl `stl`)"

    main_task: int = attrs.field(default=0, validator=non_negative_int)

    def weights(self, system: GradientSystem) -> tuple[np.ndarray, Mapping[str, Any]]:
        if self.main_task >= system.m:
            raise InvalidSystemError(f"stl: main_task={self.main_task} but the system has only {system.m} tasks")
        w = np.zeros(system.m)
        w[self.main_task] = 1.0
        return w, {}

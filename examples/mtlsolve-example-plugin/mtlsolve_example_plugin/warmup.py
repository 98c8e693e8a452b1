"""``solver_warmup``: the settings of an example third-party training strategy.

An example, not a published method: the plain sum of the task losses for the first
``warmup_steps`` optimiser steps, then ``solver``. This module holds only the settings (plain values,
no torch), so that looking up names stays cheap; the runtime class lives in
:mod:`mtlsolve_example_plugin.warmup_runtime` and is imported when a strategy is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs

from mtlsolve import StrategySettings
from mtlsolve.strategy import check_solver_spec


@attrs.frozen(kw_only=True)
class SolverWarmupSettings(StrategySettings):
    """``solver``: a registered solver name, config mapping or solver; ``warmup_steps``: the steps that use the sum."""

    name: ClassVar[str] = "solver_warmup"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {"warmup": {}}
    runtime: ClassVar[str] = "mtlsolve_example_plugin.warmup_runtime:SolverWarmup"
    paper: ClassVar[str] = "none: an example third-party plugin for mtlsolve"

    solver: Any = attrs.field(default="mgda", validator=check_solver_spec)
    warmup_steps: int = attrs.field(default=100, validator=[attrs.validators.instance_of(int), attrs.validators.ge(0)])

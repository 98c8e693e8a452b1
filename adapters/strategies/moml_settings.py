"""Settings of MoML (plain validated values, no torch); the runtime is
:class:`mtlsolve.adapters.strategies.moml.MoML`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs

from mtlsolve.strategy import StrategySettings, check_solver_spec
from mtlsolve.validation import count, integer_at_least, optional, positive


@attrs.frozen(kw_only=True)
class MoMLSettings(StrategySettings):
    """Settings of MoML, multi-objective meta learning of the task weights (Ye, Lin, Yue, Guo, Xiao,
    Zhang, NeurIPS 2021, arXiv 2102.07121); each is described on
    :class:`~mtlsolve.adapters.strategies.moml.MoML`."""

    name: ClassVar[str] = "moml"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    runtime: ClassVar[str] = "mtlsolve.adapters.strategies.moml:MoML"
    paper: ClassVar[str] = "Ye, Lin, Yue, Guo, Xiao, Zhang — NeurIPS 2021 — arXiv 2102.07121"

    num_tasks: int = attrs.field(validator=integer_at_least(2))
    solver: Any = attrs.field(default="mgda", validator=check_solver_spec)
    outer_lr: float = attrs.field(default=1e-3, converter=float, validator=positive)
    inner_lr: float | None = attrs.field(
        default=0.1, converter=attrs.converters.optional(float), validator=optional(positive)
    )
    update_every: int = attrs.field(default=1, validator=count)

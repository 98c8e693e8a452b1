"""Settings of MOO-SVGD (plain validated values, no torch); the runtime is
:class:`mtlsolve.adapters.strategies.moo_svgd.MOOSVGD`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs

from mtlsolve.errors import InvalidConfigError
from mtlsolve.strategy import StrategySettings, check_solver_spec
from mtlsolve.validation import (
    flag,
    integer_at_least,
    non_negative,
    non_negative_int,
    optional,
    positive,
    vector_converter,
)


@attrs.frozen(kw_only=True)
class MOOSVGDSettings(StrategySettings):
    """Settings of MOO-SVGD, a particle approximation of the Pareto set by multi-objective Stein
    variational gradient descent (Liu, Tong, Liu, NeurIPS 2021); each is described on
    :class:`~mtlsolve.adapters.strategies.moo_svgd.MOOSVGD`."""

    name: ClassVar[str] = "moo_svgd"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    runtime: ClassVar[str] = "mtlsolve.adapters.strategies.moo_svgd:MOOSVGD"
    paper: ClassVar[str] = (
        "Liu, Tong, Liu — NeurIPS 2021 — 'Profiling Pareto Front With Multi-Objective Stein Variational Gradient Descent'"
    )

    num_tasks: int = attrs.field(validator=integer_at_least(2))
    n_particles: int = attrs.field(default=8, validator=integer_at_least(2))
    solver: Any = attrs.field(default="mgda", validator=check_solver_spec)
    repulsion: float = attrs.field(default=1.0, converter=float, validator=non_negative)
    bandwidth: float | None = attrs.field(
        default=None, converter=attrs.converters.optional(float), validator=optional(positive)
    )
    reinit: bool = attrs.field(default=True, validator=flag)
    seed: int = attrs.field(default=0, validator=non_negative_int)
    reference: tuple[float, ...] | None = attrs.field(default=None, converter=vector_converter("reference"))

    def __attrs_post_init__(self) -> None:
        if self.reference is not None and len(self.reference) != self.num_tasks:
            raise InvalidConfigError(f"reference has {len(self.reference)} entries for {self.num_tasks} tasks")

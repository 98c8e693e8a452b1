"""Settings of FORUM (plain validated values, no torch); the runtime is
:class:`mtlsolve.adapters.strategies.forum.FORUM`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs

from mtlsolve.strategy import StrategySettings
from mtlsolve.validation import count, integer_at_least, non_negative, positive


@attrs.frozen(kw_only=True)
class FORUMSettings(StrategySettings):
    """Settings of FORUM, a first-order multi-gradient method for multi-objective bilevel learning of
    the task weights (Ye, Lin, Cao, Zhang, Tsang, ECAI 2024, arXiv 2401.09257); each is described on
    :class:`~mtlsolve.adapters.strategies.forum.FORUM`."""

    name: ClassVar[str] = "forum"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    runtime: ClassVar[str] = "mtlsolve.adapters.strategies.forum:FORUM"
    paper: ClassVar[str] = "Ye, Lin, Cao, Zhang, Tsang — ECAI 2024 — arXiv 2401.09257"

    num_tasks: int = attrs.field(validator=integer_at_least(2))
    outer_lr: float = attrs.field(default=1e-3, converter=float, validator=positive)
    inner_lr: float = attrs.field(default=0.1, converter=float, validator=positive)
    inner_steps: int = attrs.field(default=5, validator=count)
    rho: float = attrs.field(default=0.1, converter=float, validator=non_negative)

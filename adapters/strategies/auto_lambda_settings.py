"""Settings of Auto-Lambda (plain validated values, no torch); the runtime is
:class:`mtlsolve.adapters.strategies.auto_lambda.AutoLambda`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs

from mtlsolve.errors import InvalidConfigError
from mtlsolve.strategy import StrategySettings
from mtlsolve.validation import count, integer_at_least, non_negative, one_of, optional, positive

HYPERGRADIENTS = ("exact", "finite_difference")


def _tasks(value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    tasks = (value,) if isinstance(value, int) else tuple(value)
    if not tasks or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in tasks):
        raise ValueError(f"primary must be one or more task indices, got {value!r}")
    return tuple(sorted(set(tasks)))


@attrs.frozen(kw_only=True)
class AutoLambdaSettings(StrategySettings):
    """Settings of Auto-Lambda, task weights from a one-step lookahead on a validation loss (Liu, James,
    Davison, Johns, TMLR 2022, arXiv 2202.03091); each is described on
    :class:`~mtlsolve.adapters.strategies.auto_lambda.AutoLambda`."""

    name: ClassVar[str] = "auto_lambda"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {"autol": {}}
    runtime: ClassVar[str] = "mtlsolve.adapters.strategies.auto_lambda:AutoLambda"
    paper: ClassVar[str] = "Liu, James, Davison, Johns — TMLR 2022 — arXiv 2202.03091"

    num_tasks: int = attrs.field(validator=integer_at_least(2))
    primary: tuple[int, ...] | None = attrs.field(default=None, converter=_tasks)
    weight_init: float = attrs.field(default=0.1, converter=float, validator=non_negative)
    outer_lr: float = attrs.field(default=1e-3, converter=float, validator=positive)
    inner_lr: float | None = attrs.field(
        default=0.1, converter=attrs.converters.optional(float), validator=optional(positive)
    )
    update_every: int = attrs.field(default=1, validator=count)
    hypergradient: str = attrs.field(default="exact", validator=one_of(*HYPERGRADIENTS))
    fd_radius: float = attrs.field(default=0.01, converter=float, validator=positive)

    def __attrs_post_init__(self) -> None:
        if self.primary is not None and max(self.primary) >= self.num_tasks:
            raise InvalidConfigError(f"primary tasks {list(self.primary)} are not all below num_tasks={self.num_tasks}")

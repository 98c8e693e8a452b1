"""Settings of BayesAgg-MTL (plain validated values, no torch); the runtime is
:class:`mtlsolve.adapters.strategies.bayesagg_mtl.BayesAggMTL`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs

from mtlsolve.strategy import StrategySettings
from mtlsolve.validation import flag, integer_at_least, non_negative, non_negative_int, positive

TASK_TYPES = ("regression", "binary", "multiclass")


def _task_types(value: Any) -> Any:
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _supported_task_type(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    types = value if isinstance(value, tuple) else (value,)
    if not types or any(not isinstance(t, str) or t not in TASK_TYPES for t in types):
        raise ValueError(f"task_type must be one of {TASK_TYPES} or a sequence of them, one per task, got {value!r}")
    if isinstance(value, tuple) and len(value) != instance.num_tasks:
        raise ValueError(f"task_type has {len(value)} entries for num_tasks={instance.num_tasks}")


@attrs.frozen(kw_only=True)
class BayesAggMTLSettings(StrategySettings):
    """Settings of BayesAgg-MTL, task gradients at the shared representation aggregated by their
    uncertainty under a Bayesian posterior over each task's last layer (Achituve, Diamant, Netzer,
    Chechik, Fetaya, ICML 2024, arXiv 2402.04005); each is described on
    :class:`~mtlsolve.adapters.strategies.bayesagg_mtl.BayesAggMTL`."""

    name: ClassVar[str] = "bayesagg_mtl"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {"bayesagg": {}}
    runtime: ClassVar[str] = "mtlsolve.adapters.strategies.bayesagg_mtl:BayesAggMTL"
    paper: ClassVar[str] = "Achituve, Diamant, Netzer, Chechik, Fetaya — ICML 2024 — arXiv 2402.04005"

    num_tasks: int = attrs.field(validator=integer_at_least(2))
    task_type: str | tuple[str, ...] = attrs.field(
        default="regression", converter=_task_types, validator=_supported_task_type
    )
    prior_variance: float = attrs.field(default=1.0, converter=float, validator=positive)
    noise_variance: float = attrs.field(default=1.0, converter=float, validator=positive)
    variance_power: float = attrs.field(default=0.5, converter=float, validator=non_negative)
    classification_variance_power: float = attrs.field(default=0.5, converter=float, validator=non_negative)
    mc_samples: int = attrs.field(default=1024, validator=integer_at_least(2))
    seed: int = attrs.field(default=0, validator=non_negative_int)
    bias: bool = attrs.field(default=False, validator=flag)
    warmup_epochs: int = attrs.field(default=0, validator=non_negative_int)

    @property
    def task_types(self) -> tuple[str, ...]:
        """One task type per task."""
        return self.task_type if isinstance(self.task_type, tuple) else (self.task_type,) * self.num_tasks

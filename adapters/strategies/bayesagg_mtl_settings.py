"""Settings of BayesAgg-MTL (plain validated values, no torch); the runtime is
:class:`mtlsolve.adapters.strategies.bayesagg_mtl.BayesAggMTL`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs

from mtlsolve.strategy import StrategySettings
from mtlsolve.validation import flag, integer_at_least, non_negative, non_negative_int, positive

TASK_TYPES = ("regression",)


def _supported_task_type(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value not in TASK_TYPES:
        raise ValueError(
            f"only 'regression' tasks are supported (Gaussian likelihood, exact posterior); {value!r} tasks "
            "need the paper's approximate classification posterior, which is not implemented"
        )


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
    task_type: str = attrs.field(default="regression", validator=_supported_task_type)
    prior_variance: float = attrs.field(default=1.0, converter=float, validator=positive)
    noise_variance: float = attrs.field(default=1.0, converter=float, validator=positive)
    variance_power: float = attrs.field(default=0.5, converter=float, validator=non_negative)
    bias: bool = attrs.field(default=False, validator=flag)
    warmup_epochs: int = attrs.field(default=0, validator=non_negative_int)

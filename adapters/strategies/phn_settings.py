"""Settings of Pareto HyperNetworks (plain validated values, no torch); the runtime is
:class:`mtlsolve.adapters.strategies.phn.PHN`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs

from mtlsolve.errors import InvalidConfigError
from mtlsolve.strategy import StrategySettings
from mtlsolve.validation import count, integer_at_least, non_negative_int, one_of, positive, vector_converter

SOLVERS = ("ls", "epo")


@attrs.frozen(kw_only=True)
class PHNSettings(StrategySettings):
    """Settings of Pareto HyperNetworks (Navon, Shamsian, Chechik, Fetaya, ICLR 2021, arXiv 2010.04104);
    each is described on :class:`~mtlsolve.adapters.strategies.phn.PHN`."""

    name: ClassVar[str] = "phn"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "pareto_hypernetwork": {},
        "phn_ls": {"solver": "ls"},
        "phn_epo": {"solver": "epo"},
    }
    runtime: ClassVar[str] = "mtlsolve.adapters.strategies.phn:PHN"
    paper: ClassVar[str] = "Navon, Shamsian, Chechik, Fetaya — ICLR 2021 — arXiv 2010.04104"

    num_tasks: int = attrs.field(validator=integer_at_least(2))
    solver: str = attrs.field(default="ls", validator=one_of(*SOLVERS))
    dirichlet_alpha: float = attrs.field(default=0.2, converter=float, validator=positive)
    hidden: int = attrs.field(default=100, validator=count)
    layers: int = attrs.field(default=2, validator=count)
    head_scale: float = attrs.field(default=0.1, converter=float, validator=positive)
    lr: float = attrs.field(default=1e-4, converter=float, validator=positive)
    epo_eps: float = attrs.field(default=1e-4, converter=float, validator=positive)
    seed: int = attrs.field(default=0, validator=non_negative_int)
    reference: tuple[float, ...] | None = attrs.field(default=None, converter=vector_converter("reference"))

    def __attrs_post_init__(self) -> None:
        if self.reference is not None and len(self.reference) != self.num_tasks:
            raise InvalidConfigError(f"reference has {len(self.reference)} entries for {self.num_tasks} tasks")

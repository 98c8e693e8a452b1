"""Settings of RotoGrad (plain validated values, no torch); the runtime is
:class:`mtlsolve.adapters.strategies.rotograd.RotoGrad`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs

from mtlsolve.strategy import StrategySettings
from mtlsolve.validation import count, flag, integer_at_least, non_negative, non_negative_int, one_of

SCALINGS = ("rotograd", "gradnorm", "none")


@attrs.frozen(kw_only=True)
class RotoGradSettings(StrategySettings):
    """Settings of RotoGrad, gradient homogenisation by learned feature rotations and gradient scaling
    (Javaloy & Valera, ICLR 2022, arXiv 2103.02631); each is described on
    :class:`~mtlsolve.adapters.strategies.rotograd.RotoGrad`."""

    name: ClassVar[str] = "rotograd"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "rotate_only": {"scaling": "none"},
        "rotograd_norm": {"scaling": "gradnorm"},
    }
    runtime: ClassVar[str] = "mtlsolve.adapters.strategies.rotograd:RotoGrad"
    paper: ClassVar[str] = "Javaloy & Valera — ICLR 2022 — arXiv 2103.02631"

    num_tasks: int = attrs.field(validator=integer_at_least(2))
    rotation_size: int = attrs.field(validator=count)
    scaling: str = attrs.field(default="rotograd", validator=one_of(*SCALINGS))
    burn_in_period: int = attrs.field(default=20, validator=non_negative_int)
    normalize_losses: bool = attrs.field(default=False, validator=flag)
    rotation_lr: float = attrs.field(default=1e-3, converter=float, validator=non_negative)
    gradnorm_alpha: float = attrs.field(default=1.5, converter=float, validator=non_negative)

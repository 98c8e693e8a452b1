"""Training strategies: methods that change the loop rather than combine one step's gradients.

The built-in strategies (COST, STGU, MTGD) are registered like any plugin's: this module implements the
``register_strategies`` hook and is named by the ``strategies`` entry point of the ``mtlsolve`` group.
A strategy's settings are looked up by name and validated without torch; ``build`` adds the runtime
objects (model, optimizer, loss function, ...)::

    settings = mtlsolve.get_strategy("cost", base={"name": "fairgrad", "alpha": 2.0})
    cost = settings.build(model=model, optimizer=opt, shared=model.trunk, loss_fn=task_losses)

or, in one call from a config mapping of plain values (what a YAML or Hydra config gives)::

    cost = mtlsolve.adapters.strategies.from_config(
        {"strategy": "cost", "base": {"name": "fairgrad", "alpha": 2.0}}, model=model, optimizer=opt, ...)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mtlsolve import registry
from mtlsolve.adapters.strategies.auto_lambda_settings import AutoLambdaSettings
from mtlsolve.adapters.strategies.bayesagg_mtl_settings import BayesAggMTLSettings
from mtlsolve.adapters.strategies.forum_settings import FORUMSettings
from mtlsolve.adapters.strategies.moml_settings import MoMLSettings
from mtlsolve.adapters.strategies.moo_svgd_settings import MOOSVGDSettings
from mtlsolve.adapters.strategies.phn_settings import PHNSettings
from mtlsolve.adapters.strategies.rotograd_settings import RotoGradSettings
from mtlsolve.adapters.strategies.settings import COSTSettings, MTGDSettings, STGUSettings
from mtlsolve.errors import InvalidConfigError
from mtlsolve.hookspecs import hookimpl

__all__ = [
    "AutoLambdaSettings",
    "BayesAggMTLSettings",
    "COSTSettings",
    "FORUMSettings",
    "MOOSVGDSettings",
    "MoMLSettings",
    "MTGDSettings",
    "PHNSettings",
    "RotoGradSettings",
    "STGUSettings",
    "from_config",
    "strategy_class",
]


@hookimpl
def register_strategies(register):
    for cls in (
        COSTSettings,
        STGUSettings,
        MTGDSettings,
        AutoLambdaSettings,
        MOOSVGDSettings,
        RotoGradSettings,
        PHNSettings,
        MoMLSettings,
        FORUMSettings,
        BayesAggMTLSettings,
    ):
        register(cls)


def strategy_class(name: str) -> type:
    """The runtime class of the strategy registered under ``name`` (case-, dash- and underscore-insensitive)."""
    entry, _ = registry.resolve_strategy(name)
    return entry.cls.runtime_class()


def from_config(config: Mapping[str, Any], **runtime: Any) -> Any:
    """A runtime strategy from ``{"strategy": name, **settings}`` plus runtime objects (model, optimizer, ...)."""
    if not isinstance(config, Mapping) or "strategy" not in config:
        raise InvalidConfigError(f"a strategy config must be a mapping with a 'strategy' key, got {config!r}")
    settings = dict(config)
    name = settings.pop("strategy")
    return registry.get_strategy(name, **settings).build(**runtime)

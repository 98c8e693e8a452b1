"""Training strategies: methods that change the loop rather than combine one step's gradients.

Each strategy wraps a model, an optimizer and one or more registered solvers, and is built
by name from a config mapping the same way solvers are::

    strategy = mtlsolve.adapters.strategies.from_config(
        {"strategy": "cost", "base": {"name": "fairgrad", "alpha": 2.0}}, model=model, optimizer=opt)

``model``, ``optimizer`` and any other runtime objects are passed as keyword arguments; the
mapping holds only plain values (what a YAML or Hydra config gives).
"""

from __future__ import annotations

import importlib
from typing import Any, Mapping

from mtlsolve.errors import InvalidConfigError
from mtlsolve.registry import normalise

#: canonical name -> "module:Class"; aliases map to the canonical name.
STRATEGIES = {
    "cost": "mtlsolve.adapters.strategies.cost:COST",
    "stgu": "mtlsolve.adapters.strategies.stgu:STGU",
    "mtgd": "mtlsolve.adapters.strategies.mtgd:MTGD",
}
ALIASES = {
    "teleport": "cost",
    "selupdate": "stgu",
    "selectivetaskgroupupdates": "stgu",
    "taskgrouping": "stgu",
    "mtlmto": "mtgd",
    "mgd": "mtgd",
}


def strategy_class(name: str) -> type:
    """The strategy class registered under ``name`` (case-, dash- and underscore-insensitive)."""
    key = normalise(name)
    key = ALIASES.get(key, key)
    if key not in STRATEGIES:
        raise InvalidConfigError(f"no strategy named {name!r}; available: {', '.join(sorted(STRATEGIES))}")
    module, cls = STRATEGIES[key].split(":")
    return getattr(importlib.import_module(module), cls)


def from_config(config: Mapping[str, Any], **runtime: Any) -> Any:
    """A strategy from ``{"strategy": name, **settings}`` plus runtime objects (model, optimizer, ...)."""
    if not isinstance(config, Mapping) or "strategy" not in config:
        raise InvalidConfigError(f"a strategy config must be a mapping with a 'strategy' key, got {config!r}")
    settings = dict(config)
    cls = strategy_class(settings.pop("strategy"))
    return cls(**settings, **runtime)

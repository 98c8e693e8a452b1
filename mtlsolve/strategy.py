"""Training strategies: validated settings, kept apart from the runtime objects they drive.

A strategy changes the training loop rather than one step's combination (COST, STGU and MTGD in
:mod:`mtlsolve.adapters.strategies`). It has two parts:

* its *settings*: a frozen attrs subclass of :class:`StrategySettings` that holds only plain values
  (what a YAML or Hydra config gives) and checks them when it is built. A plugin registers this class
  through the ``register_strategies`` hook, and :func:`mtlsolve.get_strategy` builds it by name;
* its *runtime* object: built by :meth:`StrategySettings.build` from the settings and the live
  objects (model, optimiser, loss function, ...). ``runtime`` names its class; a ``"module:Class"``
  path is imported only at that point, so looking up names does not import torch.

The runtime class takes ``settings=`` (an instance of its settings class) and the live objects as
keyword arguments.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs

from mtlsolve.errors import MtlsolveError, PluginError


@attrs.frozen(kw_only=True)
class StrategySettings:
    """Base class of a strategy's settings.

    Subclasses are decorated with ``@attrs.frozen(kw_only=True)``, declare their settings as fields
    (with validators and converters that raise ``ValueError`` or ``TypeError``; cross-field checks go
    in ``__attrs_post_init__`` and raise :class:`mtlsolve.InvalidConfigError`) and set:

    * ``name``: the canonical name (lower case with underscores);
    * ``aliases``: other names, each mapped to the settings it presets;
    * ``runtime``: the runtime class, or its ``"module:Class"`` path;
    * ``paper``: the reference (authors, venue, arXiv id).
    """

    name: ClassVar[str] = ""
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    runtime: ClassVar[str | type | None] = None
    paper: ClassVar[str] = ""

    @classmethod
    def runtime_class(cls) -> type:
        """The class of the runtime object (imported now when ``runtime`` is a path)."""
        target = cls.runtime
        if isinstance(target, str):
            module, _, attribute = target.partition(":")
            try:
                target = getattr(importlib.import_module(module), attribute)
            except (ImportError, AttributeError) as exc:
                raise PluginError(f"strategy {cls.name!r}: cannot import its runtime {cls.runtime!r} ({exc})") from exc
        if not isinstance(target, type):
            raise PluginError(f"strategy {cls.name!r}: its runtime {cls.runtime!r} is not a class")
        return target

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> StrategySettings:
        """``cls(**options)``; an unknown or refused setting raises InvalidConfigError naming it."""
        from mtlsolve.registry import construct_settings

        return construct_settings(cls, options)

    def build(self, **runtime: Any) -> Any:
        """The runtime object that trains with these settings and the given live objects."""
        return self.runtime_class()(settings=self, **runtime)

    def config(self) -> dict[str, Any]:
        """``{"name": name, **settings}``, the mapping :func:`mtlsolve.strategy_from_config` takes back."""
        fields = [f for f in attrs.fields(type(self)) if f.init]
        return {"name": self.name, **{f.alias or f.name: getattr(self, f.name) for f in fields}}


def settings_for(cls: type[StrategySettings], settings: Any, options: Mapping[str, Any]) -> StrategySettings:
    """The settings a runtime object runs with: ``settings`` (an instance of ``cls``) or, when it is
    None, ``cls`` built from the keyword ``options``; passing both is refused."""
    from mtlsolve.errors import InvalidConfigError

    if settings is None:
        return cls.from_options(options)
    if not isinstance(settings, cls):
        raise InvalidConfigError(f"settings must be a {cls.__name__}, got {type(settings).__name__}")
    if options:
        raise InvalidConfigError(f"pass the settings either as settings= or as keywords, not both: {sorted(options)}")
    return settings


def check_solver_spec(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    """A field validator for a solver setting: None, a :class:`mtlsolve.Solver`, a registered name or a
    config mapping ``{"name": ..., **hyperparameters}`` whose name is registered."""
    from mtlsolve import registry
    from mtlsolve.solver import Solver

    if value is None or isinstance(value, Solver):
        return
    if isinstance(value, Mapping):
        name = value.get("name")
        if name is None:
            raise ValueError(f"{attribute.name}: a solver config needs a 'name' key, got {dict(value)!r}")
    elif isinstance(value, str):
        name = value
    else:
        raise TypeError(f"{attribute.name} must be a solver name, config mapping or solver, got {value!r}")
    try:
        registry.resolve(name)
    except MtlsolveError as exc:
        raise ValueError(f"{attribute.name}: {exc}") from exc

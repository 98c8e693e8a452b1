"""The hooks a plugin implements.

A plugin is a module (or object) named by an entry point in the ``mtlsolve``
group. It implements the hooks below with ``@mtlsolve.hookimpl``::

    from mtlsolve import hookimpl

    @hookimpl
    def register_solvers(register):
        register(MySolver)

    @hookimpl
    def register_strategies(register):
        register(MyStrategySettings)

A plugin may implement either hook or both.
"""

from __future__ import annotations

import pluggy

PROJECT = "mtlsolve"
ENTRY_POINT_GROUP = "mtlsolve"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_solvers(register):
    """Register solver classes by calling ``register(SolverClass)`` once for each.

    The class supplies its canonical ``name``, its ``aliases`` (each alias may
    preset keyword arguments) and the rest of its metadata.
    """


@hookspec
def register_strategies(register):
    """Register training strategies by calling ``register(SettingsClass)`` once for each.

    The class is a :class:`mtlsolve.strategy.StrategySettings` subclass: its fields are the
    strategy's settings, and it supplies the canonical ``name``, the ``aliases`` and the
    ``runtime`` class (or its ``"module:Class"`` path, imported only when a strategy is built).
    """

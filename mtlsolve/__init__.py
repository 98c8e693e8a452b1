"""mtlsolve: multi-task-learning gradient-combination methods as interchangeable plugins.

>>> import numpy as np, mtlsolve
>>> G = np.array([[1.0, 0.0], [-1.0, 1.0]])
>>> mtlsolve.get("mgda")(G).direction
array([0.2, 0.4])
"""

from __future__ import annotations

from mtlsolve import registry  # the module; it mirrors the process-wide Registry
from mtlsolve.errors import (
    ConvergenceWarning,
    InvalidConfigError,
    InvalidSystemError,
    MtlsolveError,
    NonFiniteError,
    PluginError,
    PluginWarning,
    SolverError,
    StateError,
    UnknownSolverError,
    UnknownStrategyError,
)
from mtlsolve.hookspecs import hookimpl
from mtlsolve.registry import available, available_strategies, from_config, get, get_strategy, strategy_from_config
from mtlsolve.solver import FAMILIES, PROPERTIES, Capabilities, GramianWeighting, Need, Result, Solver, Weighting
from mtlsolve.strategy import StrategySettings
from mtlsolve.system import GradientSystem

__version__ = "0.1.0"

__all__ = [
    "Capabilities",
    "ConvergenceWarning",
    "FAMILIES",
    "PROPERTIES",
    "GradientSystem",
    "GramianWeighting",
    "InvalidConfigError",
    "InvalidSystemError",
    "MtlsolveError",
    "Need",
    "NonFiniteError",
    "PluginError",
    "PluginWarning",
    "Result",
    "Solver",
    "SolverError",
    "StateError",
    "StrategySettings",
    "UnknownSolverError",
    "UnknownStrategyError",
    "Weighting",
    "available",
    "available_strategies",
    "from_config",
    "get",
    "get_strategy",
    "hookimpl",
    "registry",
    "strategy_from_config",
]

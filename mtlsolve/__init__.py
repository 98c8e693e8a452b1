"""mtlsolve: multi-task-learning gradient-combination methods as interchangeable plugins.

>>> import numpy as np, mtlsolve
>>> G = np.array([[1.0, 0.0], [-1.0, 1.0]])
>>> mtlsolve.get("mgda")(G).direction
array([0.2, 0.4])
"""

from __future__ import annotations

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
)
from mtlsolve.hookspecs import hookimpl
from mtlsolve import registry  # the module; it mirrors the process-wide Registry
from mtlsolve.registry import available, from_config, get
from mtlsolve.solver import FAMILIES, PROPERTIES, GramianWeighting, Need, Result, Solver, Weighting
from mtlsolve.system import GradientSystem

__version__ = "0.1.0"

__all__ = [
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
    "UnknownSolverError",
    "Weighting",
    "available",
    "from_config",
    "get",
    "hookimpl",
    "registry",
]


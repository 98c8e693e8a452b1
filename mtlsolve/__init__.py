"""mtlsolve: multi-task-learning gradient-combination methods as interchangeable plugins.

>>> import numpy as np, mtlsolve
>>> G = np.array([[1.0, 0.0], [-1.0, 1.0]])
>>> mtlsolve.get("mgda")(G).direction
array([0.2, 0.4])
"""

from __future__ import annotations

from typing import Any, Mapping

from mtlsolve.errors import (
    InvalidConfigError,
    InvalidSystemError,
    MtlsolveError,
    NonFiniteError,
    PluginError,
    PluginWarning,
    SolverError,
    UnknownSolverError,
)
from mtlsolve.hookspecs import hookimpl
from mtlsolve.registry import registry
from mtlsolve.solver import FAMILIES, PROPERTIES, GramianWeighting, Need, Result, Solver, Weighting
from mtlsolve.system import GradientSystem

__version__ = "0.1.0"

__all__ = [
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
    "UnknownSolverError",
    "Weighting",
    "available",
    "from_config",
    "get",
    "hookimpl",
    "registry",
]


def available() -> list[str]:
    """The sorted canonical names of every registered solver."""
    return registry.available()


def get(name: str, **kwargs: Any) -> Solver:
    """A new solver instance by name or alias (case-, dash- and underscore-insensitive)."""
    return registry.get(name, **kwargs)


def from_config(config: Mapping[str, Any]) -> Solver:
    """A new solver from a mapping ``{"name": ..., **kwargs}`` such as a YAML or Hydra config gives."""
    return registry.from_config(config)

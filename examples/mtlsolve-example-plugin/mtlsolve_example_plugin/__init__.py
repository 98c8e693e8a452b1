"""An example third-party mtlsolve plugin.

mtlsolve discovers it through the ``mtlsolve`` entry-point group declared in
this distribution's ``pyproject.toml``; the module implements the
``register_solvers`` hook and registers one solver, :class:`NormalizedSum`.
"""

from mtlsolve import hookimpl
from mtlsolve_example_plugin.normalized_sum import NormalizedSum

__all__ = ["NormalizedSum"]


@hookimpl
def register_solvers(register):
    register(NormalizedSum)

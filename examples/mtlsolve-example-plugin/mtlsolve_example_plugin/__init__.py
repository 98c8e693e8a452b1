"""An example third-party mtlsolve plugin.

mtlsolve discovers it through the ``mtlsolve`` entry-point group declared in
this distribution's ``pyproject.toml``; the module implements the
``register_solvers`` hook, registering one solver (:class:`NormalizedSum`),
and the ``register_strategies`` hook, registering one training strategy
(:class:`SolverWarmupSettings`).
"""

from mtlsolve import hookimpl
from mtlsolve_example_plugin.normalized_sum import NormalizedSum
from mtlsolve_example_plugin.warmup import SolverWarmupSettings

__all__ = ["NormalizedSum", "SolverWarmupSettings"]


@hookimpl
def register_solvers(register):
    register(NormalizedSum)


@hookimpl
def register_strategies(register):
    register(SolverWarmupSettings)

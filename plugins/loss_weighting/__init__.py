"""Loss weightings (catalogue §3.1): the update is one backward of Σ w_i L_i."""

from mtlsolve import hookimpl
from mtlsolve.plugins.loss_weighting.ls import LinearScalarization


@hookimpl
def register_solvers(register):
    register(LinearScalarization)

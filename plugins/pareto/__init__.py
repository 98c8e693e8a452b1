"""Pareto scalarisations (catalogue §3.6): one backward of a scalarisation of the losses,
given a preference vector λ and an ideal point z: a value in the system extras
(``preference``, ``ideal``) takes precedence over the solver field, which takes precedence
over the default (λ uniform 1/m, z = 0)."""

from mtlsolve import hookimpl
from mtlsolve.plugins.pareto.pbi import PBI
from mtlsolve.plugins.pareto.tchebycheff import ModifiedTchebycheff, Tchebycheff


@hookimpl
def register_solvers(register):
    for cls in (Tchebycheff, ModifiedTchebycheff, PBI):
        register(cls)

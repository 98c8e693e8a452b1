"""Pareto methods (docs/methods.md#pareto-methods). Scalarisations: one backward of a scalarisation of the
losses, given a preference vector λ and an ideal point z. Preference-guided directions on the
Gramian: EPO, PMGDA and the Pareto MTL subproblem. Populations: Pareto MTL and HVGrad
(one solver instance per model). A value in the system extras
(``preference``, ``ideal``) takes precedence over the solver field, which takes precedence
over the default (λ uniform 1/m, z = 0)."""

from mtlsolve import hookimpl
from mtlsolve.plugins.pareto.cosmos import COSMOS
from mtlsolve.plugins.pareto.epo import EPO
from mtlsolve.plugins.pareto.hvgrad import HVGrad
from mtlsolve.plugins.pareto.pbi import PBI
from mtlsolve.plugins.pareto.pmgda import PMGDA
from mtlsolve.plugins.pareto.pmtl import ParetoMTL
from mtlsolve.plugins.pareto.tchebycheff import ModifiedTchebycheff, Tchebycheff


@hookimpl
def register_solvers(register):
    for cls in (Tchebycheff, ModifiedTchebycheff, PBI, COSMOS, EPO, ParetoMTL, PMGDA, HVGrad):
        register(cls)

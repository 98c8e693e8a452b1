"""Directions needing the full task-gradient matrix G (docs/methods.md#full-matrix-directions): element-wise
operations on G or state with n coordinates per task, so G must be materialised."""

from mtlsolve import hookimpl
from mtlsolve.plugins.full_matrix.db_mtl import DBMTL
from mtlsolve.plugins.full_matrix.excess_mtl import ExcessMTL
from mtlsolve.plugins.full_matrix.graddrop import GradDrop
from mtlsolve.plugins.full_matrix.moco import MoCo
from mtlsolve.plugins.full_matrix.trimmed_mean import TrimmedMean


@hookimpl
def register_solvers(register):
    for cls in (GradDrop, MoCo, DBMTL, ExcessMTL, TrimmedMean):
        register(cls)

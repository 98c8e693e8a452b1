"""Loss weightings (docs/methods.md#loss-weightings): the update is one backward of Σ w_i L_i."""

from mtlsolve import hookimpl
from mtlsolve.plugins.loss_weighting.dwa import DynamicWeightAverage
from mtlsolve.plugins.loss_weighting.famo import FAMO
from mtlsolve.plugins.loss_weighting.gls import GeometricLoss
from mtlsolve.plugins.loss_weighting.go4align import GO4Align
from mtlsolve.plugins.loss_weighting.imtl_l import IMTLL
from mtlsolve.plugins.loss_weighting.ldc_mtl import LDCMTL
from mtlsolve.plugins.loss_weighting.ls import LinearScalarization
from mtlsolve.plugins.loss_weighting.rlw import RandomLossWeighting
from mtlsolve.plugins.loss_weighting.si import ScaleInvariant
from mtlsolve.plugins.loss_weighting.stch import SmoothTchebycheff
from mtlsolve.plugins.loss_weighting.stl import SingleTask
from mtlsolve.plugins.loss_weighting.uw import UncertaintyWeighting


@hookimpl
def register_solvers(register):
    for cls in (
        LinearScalarization,
        SingleTask,
        ScaleInvariant,
        UncertaintyWeighting,
        DynamicWeightAverage,
        GeometricLoss,
        RandomLossWeighting,
        IMTLL,
        FAMO,
        SmoothTchebycheff,
        GO4Align,
        LDCMTL,
    ):
        register(cls)

"""Gradient weightings on the Gramian (docs/methods.md#gramian-weightings): w from K = G Gᵀ, update d = Gᵀw."""

from mtlsolve import hookimpl
from mtlsolve.plugins.gramian.aligned_mtl import AlignedMTL
from mtlsolve.plugins.gramian.cagrad import CAGrad
from mtlsolve.plugins.gramian.config import ConFIG
from mtlsolve.plugins.gramian.cr_mogm import CRMOGM
from mtlsolve.plugins.gramian.dualproj import DualProj
from mtlsolve.plugins.gramian.fairgrad import FairGrad
from mtlsolve.plugins.gramian.gradnorm import GradNorm
from mtlsolve.plugins.gramian.gradvac import GradVac
from mtlsolve.plugins.gramian.imtl_g import IMTLG
from mtlsolve.plugins.gramian.imtl_hybrid import IMTLHybrid
from mtlsolve.plugins.gramian.krum import Krum
from mtlsolve.plugins.gramian.mgda import MGDA
from mtlsolve.plugins.gramian.modo import MoDo
from mtlsolve.plugins.gramian.nash_mtl import NashMTL
from mtlsolve.plugins.gramian.pcd import PCD
from mtlsolve.plugins.gramian.pcgrad import PCGrad
from mtlsolve.plugins.gramian.sdmgrad import SDMGrad
from mtlsolve.plugins.gramian.upgrad import UPGrad


@hookimpl
def register_solvers(register):
    for cls in (
        AlignedMTL,
        CAGrad,
        ConFIG,
        CRMOGM,
        DualProj,
        FairGrad,
        GradNorm,
        GradVac,
        IMTLG,
        IMTLHybrid,
        Krum,
        MGDA,
        MoDo,
        NashMTL,
        PCD,
        PCGrad,
        SDMGrad,
        UPGrad,
    ):
        register(cls)

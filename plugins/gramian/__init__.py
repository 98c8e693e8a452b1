"""Gradient weightings on the Gramian (catalogue §3.2): w from K = G Gᵀ, update d = Gᵀw."""

from mtlsolve import hookimpl
from mtlsolve.plugins.gramian.aligned_mtl import AlignedMTL
from mtlsolve.plugins.gramian.cagrad import CAGrad
from mtlsolve.plugins.gramian.config import ConFIG
from mtlsolve.plugins.gramian.cr_mogm import CRMOGM
from mtlsolve.plugins.gramian.gradvac import GradVac
from mtlsolve.plugins.gramian.imtl_g import IMTLG
from mtlsolve.plugins.gramian.krum import Krum
from mtlsolve.plugins.gramian.mgda import MGDA
from mtlsolve.plugins.gramian.nash_mtl import NashMTL
from mtlsolve.plugins.gramian.pcgrad import PCGrad
from mtlsolve.plugins.gramian.upgrad import UPGrad


@hookimpl
def register_solvers(register):
    for cls in (AlignedMTL, CAGrad, ConFIG, CRMOGM, GradVac, IMTLG, Krum, MGDA, NashMTL, PCGrad, UPGrad):
        register(cls)

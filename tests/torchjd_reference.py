"""TorchJD 0.18.0 pieces the parity tests need, adapted only where a dependency is missing."""

from __future__ import annotations

from torchjd.aggregation import _nash_mtl


class ClarabelNashMTLWeighting(_nash_mtl._NashMTLWeighting):
    """TorchJD's Nash-MTL weighting, unchanged except that its conic problem is solved by Clarabel
    (ECOS, which it asks for, is not a dependency here)."""

    _REQUIRED_DEPS = ["numpy", "cvxpy", "clarabel"]

    def _init_optim_problem(self) -> None:
        import cvxpy as cp

        super()._init_optim_problem()
        solve = self.prob.solve
        self.prob.solve = lambda **_ecos_options: solve(solver=cp.CLARABEL)

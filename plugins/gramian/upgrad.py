"""UPGrad: the mean of the task gradients projected onto the dual cone (docs/methods.md#upgrad)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from mtlsolve.errors import InvalidSystemError
from mtlsolve.gramian import certificate_tolerance, psd_part, rank_threshold
from mtlsolve.solver import REDUCTIONS, GramianWeighting
from mtlsolve.system import GradientSystem
from mtlsolve.validation import non_negative, one_of, vector_converter

_optional_pref = vector_converter("pref", non_negative=True)


@attrs.define(kw_only=True, eq=False)
class DualConeWeighting(GramianWeighting):
    """What UPGrad and DualProj share: projections onto the dual cone {x : Gx ≥ 0} in weight
    space (Quinton & Rey, arXiv 2406.16232, Prop. 1), on TorchJD's regularised Gramian
    K' = K/tr K (the zero matrix when the trace is below ``norm_eps``) + ``reg_eps``·I;
    ``reg_eps=0`` gives the exact projection (solved on the PSD part of K when ``reg_eps``
    does not dominate the round-off of the system). ``reduction="sum"`` multiplies the
    mean-scale weights by m. Subclasses name the projected vectors u_r in :meth:`preferences`.

    Certificate (``diagnostics``): ``residual`` = the largest scale-free violation of the KKT
    conditions of every projection v = argmin_{v ≥ u} ½vᵀK'v — v ≥ u, K'v ≥ 0 (g_i·d ≥ 0 on
    K'), (v − u)_i(K'v)_i = 0 — relative to √K'_ii and Σ_j|v_j|√K'_jj
    (:func:`mtlsolve.kernels.cone_projection.dual_cone_certificate`); ``tolerance`` =
    certificate_tolerance(ρ); ``converged`` exactly when the residual is within it (else
    fallback "none: the uncertified result is returned").
    """

    # Not claimed: positive homogeneity holds only while tr(c²K) ≥ norm_eps (below it K' = reg_eps·I
    # and d = g_0); d·g_j ≥ 0 holds exactly for reg_eps = 0, the default only gives
    # d·g_j ≥ −reg_eps·tr(K)·w_j (for g_2 = −g_1 it leaves both d·g_i slightly negative).
    properties: ClassVar[frozenset[str]] = frozenset({"permutation_equivariant"})
    paper: ClassVar[str] = "Quinton & Rey — arXiv 2406.16232 (2024)"

    norm_eps: float = attrs.field(default=1e-4, converter=float, validator=non_negative)
    reg_eps: float = attrs.field(default=1e-4, converter=float, validator=non_negative)
    reduction: str = attrs.field(default="mean", validator=one_of(*REDUCTIONS))

    def preferences(self, m: int) -> tuple[np.ndarray, float]:
        """(U, c): the vectors u_r (rows of U) whose projections v_r are summed, w = Σ_r v_r / c."""
        raise NotImplementedError(f"{type(self).__name__} must implement preferences()")

    def weights_from_gramian(self, gramian: np.ndarray, system: GradientSystem) -> tuple[np.ndarray, Mapping[str, Any]]:
        from mtlsolve.kernels.cone_projection import certified_dual_cone_weights

        m = gramian.shape[0]
        U, divisor = self.preferences(m)
        solved = psd_unless_regularised(gramian, self.reg_eps, system)
        # solved on the repair, certified by the KKT conditions on the system's own K' (not its repair)
        w, iterations, finished, residual = certified_dual_cone_weights(gramian, solved, U, self.norm_eps, self.reg_eps)
        w = w / divisor
        if self.reduction == "sum":
            w *= m
        tolerance = float(certificate_tolerance(system.roundoff))
        converged = bool(residual <= tolerance)  # an iteration cap with a certified iterate is a solve
        diagnostics: dict[str, Any] = {
            "iterations": int(iterations),
            "residual": residual,
            "tolerance": tolerance,
            "converged": converged,
        }
        if not converged:
            diagnostics["fallback"] = "none: the uncertified result is returned"
            diagnostics["message"] = f"{self.name}: " + (
                "the active-set solve reached its iteration cap" if not finished else "KKT residual above tolerance"
            )
        return w, diagnostics


@attrs.define(kw_only=True, eq=False)
class UPGrad(DualConeWeighting):
    """Unconflicting projection of gradients, Quinton & Rey, arXiv 2406.16232 (2024), eq. (5)
    with the uniform preference: d = (1/m) Σ_i π_J(g_i), π_J the projection onto the dual
    cone {x : Gx ≥ 0}.

    Weight form (their Prop. 1, as in TorchJD): π_J(Gᵀe_i) = Gᵀv_i with
    v_i = argmin_{v ≥ e_i} ½vᵀK'v, solved exactly by an active-set method
    (:func:`mtlsolve.kernels.cone_projection.dual_cone_weights`), and w = mean_i v_i.
    K' is K divided by its trace (the zero matrix when the trace is below ``norm_eps``)
    plus ``reg_eps``·I, TorchJD's regularisation; ``reg_eps=0`` gives the exact
    projection (solved on the PSD part of K when ``reg_eps`` does not dominate the
    round-off of the system). ``reduction="sum"`` multiplies the weights by m. Certificate:
    :class:`DualConeWeighting`.

    ``pref`` (a non-negative m-vector p, default uniform 1/m) is the paper's preference
    (TorchJD's ``pref_vector``): d = Σ_i p_i π_J(g_i), i.e. w = Σ_i v(p_i e_i). A non-uniform
    p is tied to the task order, so the permutation equivariance holds for the default only.
    """

    name: ClassVar[str] = "upgrad"

    pref: tuple[float, ...] | None = attrs.field(default=None, converter=_optional_pref)

    def preferences(self, m: int) -> tuple[np.ndarray, float]:
        if self.pref is None:
            return np.eye(m), float(m)
        if len(self.pref) != m:
            raise InvalidSystemError(f"upgrad pref has {len(self.pref)} entries for {m} tasks")
        return np.diag(self.pref), 1.0


def psd_unless_regularised(gramian: np.ndarray, reg_eps: float, system: GradientSystem) -> np.ndarray:
    """K, or its PSD part when ``reg_eps`` does not dominate the round-off of the system.

    The dual-cone QP is unbounded below on a negative eigenvalue: a Gramian's round-off ρ·n_i·n_j
    moves the eigenvalues of K/tr K by up to m·ρ, so unless ``reg_eps`` exceeds the rank cut-off
    4·m·ρ (:func:`mtlsolve.gramian.rank_threshold`) the QP is solved on D·psd(D⁻¹KD⁻¹)·D
    (UPGrad, DualProj): repaired on the normalised Gramian, so that the change is round-off
    relative to n_i·n_j in every entry (on K itself an eigendecomposition would blur the rows of
    small gradients by ε·λ_max).
    """
    if reg_eps >= rank_threshold(gramian.shape[0], system.roundoff):
        return gramian
    return psd_part(gramian)

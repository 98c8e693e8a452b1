"""UPGrad: the mean of the task gradients projected onto the dual cone (catalogue §3.2, row ``upgrad``)."""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Mapping

import attrs
import numpy as np

from mtlsolve._array import is_torch
from mtlsolve.errors import InvalidSystemError
from mtlsolve.solver import REDUCTIONS, GramianWeighting
from mtlsolve.system import GradientSystem


def _optional_pref(value: Any) -> tuple[float, ...] | None:
    if value is None:
        return None
    pref = tuple(float(v) for v in np.asarray(value, dtype=np.float64).ravel())
    if not pref or not np.isfinite(pref).all() or min(pref) < 0:
        raise ValueError(f"pref must be a non-empty vector of finite non-negative numbers, got {value!r}")
    return pref


@attrs.define(kw_only=True, eq=False)
class DualConeWeighting(GramianWeighting):
    """What UPGrad and DualProj share: projections onto the dual cone {x : Gx ≥ 0} in weight
    space (Quinton & Rey, arXiv 2406.16232, Prop. 1), on TorchJD's regularised Gramian
    K' = K/tr K (the zero matrix when the trace is below ``norm_eps``) + ``reg_eps``·I;
    ``reg_eps=0`` gives the exact projection (solved on the PSD part of K when ``reg_eps``
    does not dominate the round-off of the input dtype). ``reduction="sum"`` multiplies the
    mean-scale weights by m. Subclasses name the kernel in :meth:`kernel`.
    """

    # Not claimed: positive homogeneity holds only while tr(c²K) ≥ norm_eps (below it K' = reg_eps·I
    # and d = g_0); d·g_j ≥ 0 holds exactly for reg_eps = 0, the default only gives
    # d·g_j ≥ −reg_eps·tr(K)·w_j (for g_2 = −g_1 it leaves both d·g_i slightly negative).
    properties: ClassVar[frozenset[str]] = frozenset({"permutation_equivariant"})
    paper: ClassVar[str] = "Quinton & Rey — arXiv 2406.16232 (2024)"

    norm_eps: float = attrs.field(default=1e-4, converter=float, validator=attrs.validators.ge(0.0))
    reg_eps: float = attrs.field(default=1e-4, converter=float, validator=attrs.validators.ge(0.0))
    reduction: str = attrs.field(default="mean", validator=attrs.validators.in_(REDUCTIONS))

    def kernel(self) -> Callable[[np.ndarray, float, float], tuple[np.ndarray, int, bool]]:
        """(K, norm_eps, reg_eps) → (mean-scale w, iterations, converged)."""
        raise NotImplementedError(f"{type(self).__name__} must implement kernel()")

    def weights_from_gramian(
        self, gramian: np.ndarray, system: GradientSystem
    ) -> tuple[np.ndarray, Mapping[str, Any]]:
        m = gramian.shape[0]
        gramian = psd_unless_regularised(gramian, self.reg_eps, system)
        w, iterations, converged = self.kernel()(gramian, self.norm_eps, self.reg_eps)
        if self.reduction == "sum":
            w *= m
        return w, {"iterations": int(iterations), "converged": bool(converged)}


@attrs.define(kw_only=True, eq=False)
class UPGrad(DualConeWeighting):
    """Unconflicting projection of gradients, Quinton & Rey, arXiv 2406.16232 (2024), eq. (5)
    with the uniform preference: d = (1/m) Σ_i π_J(g_i), π_J the projection onto the dual
    cone {x : Gx ≥ 0}.

    Weight form (their Prop. 1, as in TorchJD): π_J(Gᵀe_i) = Gᵀv_i with
    v_i = argmin_{v ≥ e_i} ½vᵀK'v, solved exactly
    (:func:`mtlsolve.kernels.cone_projection.upgrad_weights`), and w = mean_i v_i.
    K' is K divided by its trace (the zero matrix when the trace is below ``norm_eps``)
    plus ``reg_eps``·I, TorchJD's regularisation; ``reg_eps=0`` gives the exact
    projection (solved on the PSD part of K when ``reg_eps`` does not dominate the
    round-off of the input dtype). ``reduction="sum"`` multiplies the weights by m.

    ``pref`` (a non-negative m-vector p, default uniform 1/m) is the paper's preference
    (TorchJD's ``pref_vector``): d = Σ_i p_i π_J(g_i), i.e. w = Σ_i v(p_i e_i). A non-uniform
    p is tied to the task order, so the permutation equivariance holds for the default only.
    """

    name: ClassVar[str] = "upgrad"

    pref: tuple[float, ...] | None = attrs.field(default=None, converter=_optional_pref)

    def kernel(self) -> Callable[[np.ndarray, float, float], tuple[np.ndarray, int, bool]]:
        from mtlsolve.kernels.cone_projection import upgrad_weights

        if self.pref is None:
            return upgrad_weights
        return lambda K, norm_eps, reg_eps: _preference_weights(K, np.array(self.pref), norm_eps, reg_eps)


def _preference_weights(K: np.ndarray, pref: np.ndarray, norm_eps: float, reg_eps: float):
    """w = Σ_i v_i, v_i = argmin_{v ≥ p_i e_i} ½vᵀK'v, on TorchJD's K' (as ``upgrad_weights``)."""
    from mtlsolve.kernels.cone_projection import project_dual_cone

    m = K.shape[0]
    if pref.shape != (m,):
        raise InvalidSystemError(f"upgrad pref has {pref.size} entries for {m} tasks")
    trace = float(np.trace(K))
    regularised = (K / trace if trace >= norm_eps and trace > 0 else np.zeros_like(K)) + reg_eps * np.eye(m)
    V, iterations, converged = project_dual_cone(regularised, np.diag(pref))
    return V.sum(axis=0), iterations, converged


def psd_unless_regularised(gramian: np.ndarray, reg_eps: float, system: GradientSystem) -> np.ndarray:
    """K, or its PSD part when ``reg_eps`` does not dominate the round-off of the input dtype.

    The dual-cone QP is unbounded below on a negative eigenvalue: without a regularisation that
    dominates the round-off of K (a float32 Gramian is indefinite at ~1e-7), it is solved on the
    PSD part of K (UPGrad, DualProj).
    """
    if reg_eps >= 10 * gramian.shape[0] * _eps(system.reference):
        return gramian
    lam, Q = np.linalg.eigh(gramian)
    return (Q * np.clip(lam, 0.0, None)) @ Q.T


def _eps(x) -> float:
    """The machine epsilon of an array's or tensor's dtype."""
    if is_torch(x):
        import torch

        return float(torch.finfo(x.dtype).eps)
    return float(np.finfo(x.dtype).eps)

"""ConFIG: conflict-free update direction (catalogue §3.2, row ``config``)."""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import attrs
import numpy as np

from mtlsolve.errors import InvalidSystemError
from mtlsolve.solver import GramianWeighting
from mtlsolve.system import GradientSystem

#: machine epsilon of float32: the default relative eigenvalue cut-off is m·ε_float32 (as aligned_mtl)
EPS_FLOAT32 = float(np.finfo(np.float32).eps)


def _optional_preference(value: Any) -> tuple[float, ...] | None:
    if value is None:
        return None
    pref = tuple(float(v) for v in np.asarray(value, dtype=np.float64).ravel())
    if not pref or not np.isfinite(pref).all():
        raise ValueError(f"preference must be a non-empty sequence of finite numbers, got {value!r}")
    return pref


def _optional_non_negative(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and not (np.isfinite(value) and value >= 0):
        raise ValueError(f"{attribute.name} must be a non-negative number or None, got {value!r}")


@attrs.define(kw_only=True, eq=False)
class ConFIG(GramianWeighting):
    """ConFIG, Liu, Chu, Thuerey, "ConFIG: Towards Conflict-free Training of Physics Informed
    Neural Networks", ICLR 2025, arXiv 2408.11104, eq. (2) (as TorchJD ``ConFIG``):
    d_u = U⁺p with rows u_i = g_i/‖g_i‖ and preference p (all ones), d̂ = d_u/‖d_u‖,
    d = (Σ_i g_i·d̂)·d̂.

    Gramian form: D = diag(1/√K_ii) (0 for a zero row, whose unit vector is taken
    as 0), K̄ = DKD = UUᵀ and U⁺ = Uᵀ(UUᵀ)⁺, so d_u = GᵀDK̄⁺p = Gᵀa; then
    ‖d_u‖² = aᵀKa, Σ_i g_i·d_u = 1ᵀKa and d = Gᵀw with w = (1ᵀKa/aᵀKa)·a.
    K̄⁺ is the eigen pseudo-inverse dropping eigenvalues ≤ ``rank_tol``·λ_max
    (default m·ε_float32); ``least_squares=True`` solves K̄x = p by least squares
    (SVD, same cut-off) instead, as the official code's ``use_least_square``;
    both give the minimum-norm solution. When p is (almost) orthogonal to the range
    of K̄ (‖K̄x‖² ≤ ``rank_tol``·‖p‖², e.g. a zero system, or one coordinate whose
    signs cancel), d_u has no direction and the weights are zero.
    """

    name: ClassVar[str] = "config"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {"conflict_free": {}}
    properties: ClassVar[frozenset[str]] = frozenset({"permutation_equivariant", "positive_homogeneous"})
    paper: ClassVar[str] = "Liu, Chu, Thuerey — ICLR 2025 — arXiv 2408.11104"

    preference: tuple[float, ...] | None = attrs.field(default=None, converter=_optional_preference)
    least_squares: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    rank_tol: float | None = attrs.field(default=None, validator=_optional_non_negative)

    def weights_from_gramian(
        self, gramian: np.ndarray, system: GradientSystem
    ) -> tuple[np.ndarray, Mapping[str, Any]]:
        m = gramian.shape[0]
        if self.preference is None:
            p = np.ones(m)
        elif len(self.preference) != m:
            raise InvalidSystemError(f"config was given {len(self.preference)} preference values for {m} tasks")
        else:
            p = np.array(self.preference)
        norms = np.sqrt(np.clip(np.diag(gramian), 0.0, None))
        scale = np.divide(1.0, norms, out=np.zeros(m), where=norms > 0.0)
        unit = gramian * np.outer(scale, scale)
        rel = m * EPS_FLOAT32 if self.rank_tol is None else self.rank_tol
        if self.least_squares:
            x, _, rank, _ = np.linalg.lstsq(unit, p, rcond=rel)
        else:
            lam, V = np.linalg.eigh(unit)
            keep = lam > max(rel * lam[-1], 0.0)
            rank = int(keep.sum())
            x = V[:, keep] @ ((V[:, keep].T @ p) / lam[keep])
        a = scale * x
        Ka = gramian @ a
        norm_sq = float(a @ Ka)
        reached = unit @ x  # the projection of p onto the range of K̄
        if norm_sq <= 0.0 or reached @ reached <= rel * (p @ p):
            return np.zeros(m), {"rank": int(rank)}
        w = (Ka.sum() / norm_sq) * a
        return w, {"rank": int(rank)}

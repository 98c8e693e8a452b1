"""Krum and Multi-Krum: Byzantine-robust selection of task gradients (docs/methods.md#krum)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from mtlsolve.errors import InvalidSystemError
from mtlsolve.gramian import norms as gradient_norms
from mtlsolve.solver import GramianWeighting
from mtlsolve.system import GradientSystem
from mtlsolve.validation import count, non_negative_int, one_of

DISTANCES = ("squared", "euclidean")


@attrs.define(kw_only=True, eq=False)
class Krum(GramianWeighting):
    """Krum, Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with Adversaries:
    Byzantine Tolerant Gradient Descent", NeurIPS 2017 (arXiv 1703.02757), Section 4:
    score_i = Σ_{j ∈ N_i} ‖g_i − g_j‖² over the m − f − 2 rows N_i closest to g_i,
    with ‖g_i − g_j‖² = K_ii + K_jj − 2K_ij read from the Gramian; Krum returns the
    row of lowest score, Multi-Krum (``n_selected`` k > 1) the mean of the k rows of
    lowest scores (weights 1/k; rows tied at the k-th place within the Gramian's round-off share its
    weight, so the choice never depends on the task order). The paper's
    condition m ≥ 2f + 3 is checked. ``distance="euclidean"`` scores with
    unsquared distances and checks m ≥ f + 3, as torchjd 0.18.0 ``Krum``.
    ``diagnostics``: ``scores`` and ``selected``.
    """

    name: ClassVar[str] = "krum"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {"multi_krum": {}}
    properties: ClassVar[frozenset[str]] = frozenset({"permutation_equivariant", "positive_homogeneous"})
    paper: ClassVar[str] = "Blanchard, El Mhamdi, Guerraoui, Stainer — NeurIPS 2017 — arXiv 1703.02757"

    n_byzantine: int = attrs.field(validator=non_negative_int)
    n_selected: int = attrs.field(default=1, validator=count)
    distance: str = attrs.field(default="squared", validator=one_of(*DISTANCES))

    def weights_from_gramian(self, gramian: np.ndarray, system: GradientSystem) -> tuple[np.ndarray, Mapping[str, Any]]:
        m, f, k = gramian.shape[0], int(self.n_byzantine), int(self.n_selected)
        least = 2 * f + 3 if self.distance == "squared" else f + 3
        if m < least:
            rule = "2f + 3 (paper)" if self.distance == "squared" else "f + 3 (distance='euclidean')"
            raise InvalidSystemError(
                f"krum with n_byzantine f = {f} needs at least {rule} = {least} tasks, got m = {m}"
            )
        if k > m:
            raise InvalidSystemError(f"krum cannot select n_selected = {k} rows out of m = {m}")
        diag = np.diag(gramian)
        dist = np.clip(diag[:, None] + diag[None, :] - 2.0 * gramian, 0.0, None)
        if self.distance == "euclidean":
            dist = np.sqrt(dist)
        np.fill_diagonal(dist, np.inf)
        nearest = np.argsort(dist, axis=1, kind="stable")[:, : m - f - 2]
        scores = np.take_along_axis(dist, nearest, axis=1).sum(axis=1)
        # scores equal within the Gramian's round-off are ties: the tied rows at the k-th place share
        # its weight, so the choice never depends on the order of the tasks. |δ‖g_i − g_j‖²| ≤
        # 4ρ(n_i + n_j)² (and the square root of that for unsquared distances)
        norms = gradient_norms(gramian)
        pair = 4.0 * system.roundoff * (norms[:, None] + norms[nearest]) ** 2
        error = (np.sqrt(pair) if self.distance == "euclidean" else pair).sum(axis=1)
        kth = np.argsort(scores, kind="stable")[k - 1]
        sure = scores < scores[kth] - error - error[kth]
        tied = ~sure & (np.abs(scores - scores[kth]) <= error + error[kth])
        w = np.zeros(m)
        w[sure] = 1.0 / k
        w[tied] = (k - sure.sum()) / (k * tied.sum())
        return w, {"scores": scores, "selected": np.flatnonzero(w > 0), "ties": int(tied.sum())}

"""The baselines every training table of ``mtlsolve bench`` carries (docs/problems.md#baselines).

* linear scalarisation with task weights tuned on a validation split over a small grid
  (:func:`ls_grid`), the baseline Xin, Ghorbani, Garg, Firat & Gilmer (NeurIPS 2022,
  arXiv 2209.11379) and Kurin et al. (NeurIPS 2022, arXiv 2201.04122) find hard to beat;
* gradient-norm-scaled weights (:class:`GradNormScaled`);
* the single-task models (``stl`` with ``main_task = i``), a reference line that is not ranked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import attrs
import numpy as np

from mtlsolve import GradientSystem, GramianWeighting
from mtlsolve.bench._common import Spec

#: task-1 weights w of the tuning grid (task 2 gets 1 − w; both scaled by 2 so that w = 0.5 is the plain sum)
LS_GRID: Mapping[str, Sequence[float]] = {"full": (0.2, 0.35, 0.5, 0.65, 0.8), "quick": (0.3, 0.5, 0.7)}


@attrs.define(kw_only=True, eq=False)
class GradNormScaled(GramianWeighting):
    """Gradient-norm-scaled weights w_i = mean_j ‖g_j‖ / ‖g_i‖ (w_i = 0 for a zero gradient): every task
    gradient rescaled to the mean norm, the equal-norm target that GradNorm (Chen, Badrinarayanan, Lee &
    Rabinovich, ICML 2018, arXiv 1711.02257, §3.2, Eq. 2 with asymmetry α = 0) approaches by learning the
    weights, here met exactly at every step. A bench baseline, not a registered solver."""

    name: ClassVar[str] = "gradnorm_scaled"
    paper: ClassVar[str] = "GradNorm, Chen et al., ICML 2018 (arXiv 1711.02257), §3.2, Eq. 2 with α = 0"

    def weights_from_gramian(self, gramian: np.ndarray, system: GradientSystem) -> tuple[np.ndarray, Mapping[str, Any]]:
        norms = np.sqrt(np.clip(np.diag(gramian), 0.0, None))
        positive = norms > 0
        w = np.zeros(len(norms))
        w[positive] = norms.mean() / norms[positive]
        return w, {"zero_rows": int((~positive).sum())}


def ls_grid(grid: Sequence[float]) -> list[Spec]:
    """Linear scalarisation with weights (2w, 2(1 − w)) for every w of ``grid``."""
    return [
        Spec(f"ls(w1={w:.2f})", {"name": "ls", "weights": (round(2 * w, 9), round(2 * (1 - w), 9))}, role="baseline")
        for w in grid
    ]


def gradnorm_scaled() -> Spec:
    return Spec("gradnorm-scaled", {"name": GradNormScaled.name}, factory=GradNormScaled, role="baseline")


def stl_specs(tasks: int = 2) -> list[Spec]:
    """The single-task models: ``stl`` with ``main_task = i``."""
    return [Spec(f"stl(main_task={i})", {"name": "stl", "main_task": i}, role="reference") for i in range(tasks)]

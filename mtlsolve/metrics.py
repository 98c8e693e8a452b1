"""Multi-task metrics: Δm% and hypervolume (docs/problems.md#delta-m, docs/problems.md#hypervolume)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def delta_m(
    method: Sequence[float] | Sequence[Sequence[float]],
    base: Sequence[float] | Sequence[Sequence[float]],
    higher_is_better: Sequence[bool] | Sequence[Sequence[bool]],
    weighting: str = "metric",
) -> float:
    """Relative multi-task performance Δm% against single-task baselines (lower is better).

    ``weighting="metric"``: Δm% = (100/K) Σ_k (−1)^{δ_k} (M_k − B_k)/B_k over all K metrics,
    δ_k = 1 when higher is better. ``weighting="task"`` (Aligned-MTL): the inputs are one
    sequence of metrics per task, averaged within each task first, then over tasks.
    """
    if weighting == "metric":
        per_task = [
            (
                np.ravel(np.asarray(method, float)),
                np.ravel(np.asarray(base, float)),
                np.ravel(np.asarray(higher_is_better, bool)),
            )
        ]
    elif weighting == "task":
        if not (len(method) == len(base) == len(higher_is_better)):
            raise ValueError("method, base and higher_is_better need one entry per task")
        per_task = [
            (np.asarray(m, float), np.asarray(b, float), np.asarray(h, bool))
            for m, b, h in zip(method, base, higher_is_better)
        ]
    else:
        raise ValueError(f"weighting must be 'metric' or 'task', got {weighting!r}")
    means = []
    for m, b, h in per_task:
        if not (m.shape == b.shape == h.shape) or m.ndim != 1 or m.size == 0:
            raise ValueError("method, base and higher_is_better must have the same non-zero length")
        if (b == 0).any():
            raise ValueError("a baseline metric of 0 makes the relative change undefined")
        sign = np.where(h, -1.0, 1.0)
        means.append(float(np.mean(sign * (m - b) / b)))
    return 100.0 * float(np.mean(means))


def hypervolume(points: np.ndarray | Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """HV(S; r): the measure of the region dominated by ``points`` and bounded by ``reference`` (minimisation).

    Points that do not strictly dominate r contribute nothing. Exact: a sort for d = 2, a
    sweep along the last objective for d ≥ 3 (slices are (d−1)-D hypervolumes: HSO), which
    is exact for any d and fast for the few objectives MTL populations have.
    """
    P = np.asarray(points, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64).ravel()
    if P.size == 0:
        return 0.0
    if P.ndim != 2 or P.shape[1] != r.size:
        raise ValueError(f"points must be (k, {r.size}) for a {r.size}-D reference, got shape {P.shape}")
    if not (np.isfinite(P).all() and np.isfinite(r).all()):
        raise ValueError("points and reference must be finite")
    P = P[(P < r).all(axis=1)]
    if len(P) == 0:
        return 0.0
    return _hv(P, r)


def _hv(P: np.ndarray, r: np.ndarray) -> float:
    d = P.shape[1]
    if d == 1:
        return float(r[0] - P[:, 0].min())
    if d == 2:
        return _hv2(P, r)
    # Sweep along the last objective: between consecutive levels, the dominated
    # slice is the (d−1)-D hypervolume of the points already passed.
    order = np.argsort(P[:, -1], kind="stable")
    P = P[order]
    levels = np.append(P[:, -1], r[-1])
    total = 0.0
    for j in range(len(P)):
        height = levels[j + 1] - levels[j]
        if height > 0:
            total += height * _hv(P[: j + 1, :-1], r[:-1])
    return total


def _hv2(P: np.ndarray, r: np.ndarray) -> float:
    P = P[np.lexsort((P[:, 1], P[:, 0]))]
    total, best_f2 = 0.0, r[1]
    for f1, f2 in P:
        if f2 < best_f2:
            total += (r[0] - f1) * (best_f2 - f2)
            best_f2 = f2
    return float(total)

"""Helpers shared by the full-matrix solvers: one body for numpy arrays and torch tensors."""

from __future__ import annotations

from typing import Any

import numpy as np

from mtlsolve._array import is_torch, like, to_numpy64
from mtlsolve.errors import InvalidSystemError
from mtlsolve.solver import Solver
from mtlsolve.system import GradientSystem


def state_for(solver: Solver, m: int, n: int) -> dict[str, Any]:
    """The solver's state for m tasks and n coordinates; InvalidSystemError when it was built for
    another m or n (``reset()`` starts over)."""
    state = solver._state_for(m)
    known = state.setdefault("n", n)
    if known != n:
        raise InvalidSystemError(
            f"{solver.name} holds state for gradients of {known} coordinates and got {n}; "
            "call reset() to start over with another model"
        )
    return state


def working(G: Any) -> Any:
    """G in the dtype the solver computes in: half precision (float16, bfloat16) is raised to
    float32, so that products and state of a half-precision G neither overflow nor underflow."""
    if is_torch(G):
        import torch

        return G.float() if G.dtype in (torch.float16, torch.bfloat16) else G
    return G.astype(np.float32) if G.dtype == np.float16 else G


def fit_to(d: Any, G: Any) -> tuple[Any, float]:
    """``d`` (computed in :func:`working` precision) in G's dtype, and the factor it was scaled by:
    1, unless its largest entry exceeds the largest finite value of G's dtype; then d is scaled
    down to fit, so the direction is kept and the output stays finite."""
    if d.dtype == G.dtype:
        return d, 1.0
    largest = float(_finfo(G).max)
    top = float(d.abs().max()) if is_torch(d) else float(np.abs(d).max(initial=0.0))
    factor = 1.0 if top <= 0.5 * largest else 0.5 * largest / top
    if factor != 1.0:
        d = d * factor
    return (d.to(G.dtype) if is_torch(d) else d.astype(G.dtype)), factor


def _finfo(x: Any) -> Any:
    if is_torch(x):
        import torch

        return torch.finfo(x.dtype)
    return np.finfo(x.dtype)


def match(x: Any, ref: Any) -> Any:
    """Array ``x`` (numpy or torch, e.g. restored state) in the array type, dtype and device of ``ref``."""
    if is_torch(ref):
        import torch

        return torch.as_tensor(x).to(device=ref.device, dtype=ref.dtype)
    if is_torch(x):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=ref.dtype)


def row_norms(G: Any) -> np.ndarray:
    """‖g_i‖ for every row, as a float64 host vector (one small device-to-host copy). A norm that
    overflows G's dtype (or vanishes into its subnormals) is recomputed on the row scaled by its
    largest entry, so every finite row gets its finite float64 norm."""
    if is_torch(G):
        import torch

        norms = to_numpy64(torch.linalg.vector_norm(G, dim=1))
    else:
        with np.errstate(over="ignore", under="ignore"):
            norms = np.linalg.norm(G, axis=1).astype(np.float64)
    info = _finfo(G)
    # a norm whose square is below tiny/ε lost digits to subnormals (0 included: the squares underflowed)
    floor = float(np.sqrt(float(info.tiny) / float(info.eps))) if G.shape[1] else 0.0
    redo = ~np.isfinite(norms) | (norms < floor)
    for i in np.flatnonzero(redo):
        row = to_numpy64(G[i])
        top = np.abs(row).max()
        if np.isfinite(top) and top > 0:
            norms[i] = top * np.linalg.norm(row / top)
    return norms


def scale_rows(G: Any, scale: np.ndarray) -> Any:
    """diag(scale)·G for a float64 host vector ``scale``, in G's type, dtype and device."""
    return G * like(scale, G)[:, None]


def combine_rows(weights: np.ndarray, rows: Any) -> Any:
    """Σ_i weights_i·rows_i for a float64 host vector ``weights``, in the rows' dtype; weights
    beyond that dtype's range (a huge factor on a tiny row) are applied in float64."""
    if np.abs(weights).max(initial=0.0) < 0.5 * float(_finfo(rows).max):
        return like(weights, rows) @ rows
    if is_torch(rows):
        import torch

        w = torch.as_tensor(weights, dtype=torch.float64, device=rows.device)
        return (w @ rows.to(torch.float64)).to(rows.dtype)
    return (weights @ rows.astype(np.float64)).astype(rows.dtype)


def largest(x: Any) -> float:
    """The largest finite value of x's dtype."""
    return float(_finfo(x).max)


def safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num/den where den > 0, else 0."""
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)


def reject_representation(system: GradientSystem, name: str) -> None:
    if system.kind == "representation":
        raise InvalidSystemError(
            f"{name} does not support representation gradients (as LibMTL, which raises for rep_grad=True): "
            "run it on the gradients of the shared parameters (adapter option grads='shared')"
        )

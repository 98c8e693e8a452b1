"""Helpers shared by the full-matrix solvers: one body for numpy arrays and torch tensors."""

from __future__ import annotations

from typing import Any

import numpy as np

from mtlsolve._array import is_torch, like, to_numpy64
from mtlsolve.errors import InvalidSystemError
from mtlsolve.solver import Solver
from mtlsolve.system import GradientSystem


def state_for(solver: Solver, m: int, n: int) -> dict[str, Any]:
    """The solver's state, cleared first when the number of tasks m or of coordinates n changed."""
    state = solver._state_for(m)
    if state.get("n") != n:
        state.clear()
        state.update(m=m, n=n)
    return state


def match(x: Any, ref: Any) -> Any:
    """Array ``x`` (numpy or torch, e.g. restored state) in the array type, dtype and device of ``ref``."""
    if is_torch(ref):
        import torch

        return torch.as_tensor(x).to(device=ref.device, dtype=ref.dtype)
    if is_torch(x):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=ref.dtype)


def row_norms(G: Any) -> np.ndarray:
    """‖g_i‖ for every row, as a float64 host vector (one small device-to-host copy)."""
    if is_torch(G):
        import torch

        return to_numpy64(torch.linalg.vector_norm(G, dim=1))
    return np.linalg.norm(G, axis=1).astype(np.float64)


def scale_rows(G: Any, scale: np.ndarray) -> Any:
    """diag(scale)·G for a float64 host vector ``scale``, in G's type, dtype and device."""
    return G * like(scale, G)[:, None]


def combine_rows(weights: np.ndarray, rows: Any) -> Any:
    """Σ_i weights_i·rows_i for a float64 host vector ``weights``."""
    return like(weights, rows) @ rows


def safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num/den where den > 0, else 0."""
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)


def reject_representation(system: GradientSystem, name: str) -> None:
    if system.kind == "representation":
        raise InvalidSystemError(
            f"{name} does not support representation gradients (as LibMTL, which raises for rep_grad=True): "
            "run it on the gradients of the shared parameters (adapter option grads='shared')"
        )

"""Small helpers that let one solver body serve numpy arrays and torch tensors.

torch is never imported here: a value can only be a tensor if torch is
already loaded, so checking ``sys.modules`` keeps ``import mtlsolve`` light.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np


def is_torch(x: Any) -> bool:
    """True when ``x`` is a ``torch.Tensor``."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def to_numpy64(x: Any) -> np.ndarray:
    """A float64 numpy copy of a small array or tensor (moves it to the host)."""
    if is_torch(x):
        return x.detach().to("cpu", dtype=_torch().float64).numpy()
    return np.asarray(x, dtype=np.float64)


def like(values: np.ndarray, ref: Any) -> Any:
    """``values`` (numpy) converted to the array type, dtype and device of ``ref``."""
    if is_torch(ref):
        torch = _torch()
        values = np.ascontiguousarray(values)
        if values.flags.writeable:  # from_numpy shares the memory: copy=True makes the result independent
            return torch.from_numpy(values).to(device=ref.device, dtype=ref.dtype, copy=True)
        return torch.tensor(values, device=ref.device, dtype=ref.dtype)
    return np.asarray(values, dtype=ref.dtype)


def combine(weights: Any, matrix: Any) -> Any:
    """The update ``wᵀG`` in the type, dtype and device of ``matrix``."""
    w = like(weights, matrix) if not _same_kind(weights, matrix) else weights
    return w @ matrix


def _same_kind(a: Any, b: Any) -> bool:
    if is_torch(b):
        return is_torch(a) and a.device == b.device and a.dtype == b.dtype
    return isinstance(a, np.ndarray) and a.dtype == b.dtype


def _torch():
    """The torch module; only called for a value that is a tensor, so torch is loaded."""
    return sys.modules["torch"]

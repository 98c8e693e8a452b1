"""Field converters and validators shared by the solvers' hyperparameters."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from mtlsolve._array import to_numpy64


def vector_converter(what: str, *, non_negative: bool = False) -> Callable[[Any], tuple[float, ...] | None]:
    """A field converter to None or a non-empty tuple of finite floats (non-negative if asked); a 2-D
    (or deeper) array is refused rather than flattened, naming the hyperparameter ``what``."""

    def convert(value: Any) -> tuple[float, ...] | None:
        if value is None:
            return None
        array = to_numpy64(value)
        if array.ndim > 1:
            raise ValueError(f"{what} must be a vector (one number per task), got an array of shape {array.shape}")
        vector = tuple(float(v) for v in array.ravel())
        kind = "finite non-negative numbers" if non_negative else "finite numbers"
        if not vector or not np.isfinite(vector).all() or (non_negative and min(vector) < 0):
            raise ValueError(f"{what} must be a non-empty sequence of {kind}, got {value!r}")
        return vector

    return convert

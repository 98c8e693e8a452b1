"""Validators and checks shared by the loss weightings."""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from mtlsolve.errors import InvalidSystemError


def finite(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not np.isfinite(value):
        raise ValueError(f"{attribute.name} must be a finite number, got {value!r}")


def positive(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name} must be a positive number, got {value!r}")


def non_negative(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not (np.isfinite(value) and value >= 0):
        raise ValueError(f"{attribute.name} must be a non-negative number, got {value!r}")


def non_negative_int(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{attribute.name} must be a non-negative integer, got {value!r}")


def optional_vector(value: Any) -> tuple[float, ...] | None:
    """None, or a non-empty tuple of finite floats."""
    if value is None:
        return None
    vector = tuple(float(v) for v in np.asarray(value, dtype=np.float64).ravel())
    if not vector or not np.isfinite(vector).all():
        raise ValueError(f"expected a non-empty sequence of finite numbers, got {value!r}")
    return vector


def vector_for(value: tuple[float, ...] | None, m: int, what: str, default: float) -> np.ndarray:
    """``value`` as a float64 vector of length m (``default`` everywhere when None)."""
    if value is None:
        return np.full(m, default)
    if len(value) != m:
        raise InvalidSystemError(f"{what} has {len(value)} entries for {m} tasks")
    return np.array(value)


def positive_losses(losses: np.ndarray, name: str, shift: np.ndarray | float = 0.0) -> np.ndarray:
    """``losses − shift``, raising a clear error unless every entry is > 0."""
    shifted = losses - shift
    if (shifted <= 0).any():
        bad = [i for i in range(len(losses)) if shifted[i] <= 0]
        what = "losses" if np.all(np.asarray(shift) == 0) else "losses minus their lower bounds"
        raise InvalidSystemError(
            f"{name} takes the logarithm of the {what}, which must be > 0; tasks {bad} have {shifted[bad].tolist()}"
        )
    return shifted

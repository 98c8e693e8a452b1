"""The preference vector and ideal point of the scalarisations, and their precedence."""

from __future__ import annotations

from typing import Any

import numpy as np

from mtlsolve._array import to_numpy64
from mtlsolve.errors import InvalidSystemError
from mtlsolve.system import GradientSystem
from mtlsolve.validation import vector_converter


def preference_and_ideal(
    system: GradientSystem,
    preference: tuple[float, ...] | None,
    ideal: tuple[float, ...] | None,
    name: str,
    strictly_positive: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """λ and z for one step, as float64 vectors of length m.

    Precedence: a value in the system extras (``system.extras["preference"]``,
    ``system.extras["ideal"]``, e.g. a preference sampled per step by a training
    loop) overrides the solver's field, which overrides the default (λ uniform
    1/m, z = 0). λ must be non-negative and not all zero (``strictly_positive``:
    every entry > 0).
    """
    m = system.m
    lam = _pick(system.extras.get("preference"), preference, m, f"{name} preference", 1.0 / m)
    z = _pick(system.extras.get("ideal"), ideal, m, f"{name} ideal point", 0.0)
    if strictly_positive and (lam <= 0).any():
        raise InvalidSystemError(f"{name} divides by the preference, which must be > 0; got {lam.tolist()}")
    if (lam < 0).any() or not (lam > 0).any():
        raise InvalidSystemError(f"{name} needs a non-negative, non-zero preference; got {lam.tolist()}")
    return lam, z


def _pick(extra: Any, field: tuple[float, ...] | None, m: int, what: str, default: float) -> np.ndarray:
    value = extra if extra is not None else field
    if value is None:
        return np.full(m, default)
    try:
        vector = to_numpy64(value)
    except (TypeError, ValueError) as exc:
        raise InvalidSystemError(f"{what} must be a vector of numbers ({exc})") from None
    if vector.ndim > 1:
        raise InvalidSystemError(f"{what} must be a vector (one number per task), got an array of shape {vector.shape}")
    vector = vector.ravel()
    if vector.shape != (m,):
        raise InvalidSystemError(f"{what} has {vector.size} entries for {m} tasks")
    if not np.isfinite(vector).all():
        raise InvalidSystemError(f"{what} must be finite, got {vector.tolist()}")
    return vector


#: None, or a non-empty tuple of finite floats (the field converter)
optional_vector = vector_converter("the vector")

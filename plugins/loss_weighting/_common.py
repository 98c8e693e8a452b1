"""Validators and checks shared by the loss weightings."""

from __future__ import annotations

from typing import Any

import numpy as np

from mtlsolve._array import is_torch
from mtlsolve.errors import InvalidSystemError, StateError
from mtlsolve.validation import vector_converter

#: the converter of a vector hyperparameter whose name the error message need not give
optional_vector = vector_converter("the vector")


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


def softmax(x: np.ndarray) -> np.ndarray:
    """softmax(x) for a float64 vector, also at x's limits: entries equal to +∞ share all the mass
    (the limit of a finite softmax), −∞ entries get 0; NaN never arises from finite or infinite x."""
    x = np.asarray(x, dtype=np.float64)
    top = x.max()
    if np.isposinf(top):
        e = (x == top).astype(np.float64)
    else:
        e = np.exp(x - top)
    return e / e.sum()


def objective_losses(losses: Any, name: str, needs_grad: bool = True) -> Any:
    """Check the losses given to ``objective``: a 1-D floating torch tensor (that requires grad when
    ``needs_grad``, i.e. when the objective has no learnable parameter of its own to reach)."""
    if not is_torch(losses):
        raise InvalidSystemError(
            f"{name}.objective takes the task losses as a 1-D torch tensor (the scalar it returns is "
            f"back-propagated), got {type(losses).__name__}; for numpy losses call {name}(losses=L) for the weights"
        )
    if losses.ndim != 1 or not losses.is_floating_point():
        raise InvalidSystemError(
            f"{name}.objective takes a 1-D floating tensor of m losses, got dtype {losses.dtype} "
            f"and shape {tuple(losses.shape)}"
        )
    if needs_grad and not losses.requires_grad:
        raise InvalidSystemError(
            f"{name}.objective needs losses that require grad: these were computed under torch.no_grad(), "
            "detached, or from tensors that need no gradient, so the returned scalar could not be back-propagated"
        )
    return losses


def losses_vector(losses: Any, what: str) -> np.ndarray:
    """``losses`` (a list, array or tensor of m numbers) as a float64 numpy vector, checked finite;
    an InvalidSystemError (NonFiniteError for NaN/Inf) names ``what`` otherwise."""
    from mtlsolve.system import GradientSystem

    try:
        return GradientSystem(losses=losses).losses64
    except InvalidSystemError as exc:
        raise type(exc)(f"{what}: {exc}") from None


def checked_counts(state: dict[str, Any], name: str, *keys: str) -> dict[str, Any]:
    """A loaded state whose entries ``keys`` (step or epoch counts) are made ints; StateError unless
    each present one is a non-negative whole number."""
    for key in keys:
        if key in state:
            value = state[key]
            if isinstance(value, bool) or not (float(value).is_integer() and value >= 0):
                raise StateError(f"{name} state entry {key!r} must be a count (an integer >= 0), got {value!r}")
            state[key] = int(value)
    return state


def checked_positive(state: dict[str, Any], name: str, what: str, *keys: str) -> dict[str, Any]:
    """StateError unless every entry ``keys`` present in a loaded state is > 0 (``what`` says why)."""
    for key in keys:
        if state.get(key) is not None and not (np.asarray(state[key]) > 0).all():
            raise StateError(f"{name} state entry {key!r} holds {what}, which must be > 0")
    return state


def checked_non_negative(state: dict[str, Any], name: str, what: str, *keys: str) -> dict[str, Any]:
    """StateError unless every entry ``keys`` present in a loaded state is >= 0 (``what`` says why)."""
    for key in keys:
        if state.get(key) is not None and (np.asarray(state[key]) < 0).any():
            raise StateError(f"{name} state entry {key!r} holds {what}, which must be >= 0")
    return state


def keep_dtypes(checked: dict[str, Any], state: Any, *keys: str) -> dict[str, Any]:
    """Loaded learnable parameters (``keys``) as tensors of the dtype they were saved in: the base
    validates them as float64 arrays, and a parameter created from those would change dtype."""
    for key in keys:
        saved = state.get(key) if hasattr(state, "get") else None
        if key in checked and is_torch(saved) and saved.is_floating_point():
            import torch

            checked[key] = torch.as_tensor(checked[key]).to(saved.dtype)
    return checked

"""Field converters and validators shared by the hyperparameters of the solvers and the strategy
settings: each validator refuses a value with one message naming the field and the value."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import attrs
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


#: how :func:`in_range` writes each kind of interval, and which ends it includes
_INTERVALS = {"both": ("[", "]"), "left": ("[", ")"), "right": ("(", "]"), "neither": ("(", ")")}


@attrs.frozen(repr=False)
class Requirement:
    """An attrs field validator that accepts a value when ``accepts(value)`` is true and otherwise
    raises ``error`` (ValueError; TypeError for :data:`flag`) with one message and no other
    argument: "<field> must be <requirement>, got <value>". The registry turns it into an
    :class:`mtlsolve.errors.InvalidConfigError` naming the solver or strategy.

    attrs' own ``ge``/``gt``/``lt`` accept bools and ±inf, and ``in_`` raises with the attrs
    Attribute and the options as extra arguments, which a wrapped message would show."""

    requirement: str
    accepts: Callable[[Any], bool]
    error: type[Exception] = ValueError

    def __call__(self, _instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if not self.accepts(value):
            raise self.error(f"{attribute.name} must be {self.requirement}, got {value!r}")

    def __repr__(self) -> str:
        return f"<validator: {self.requirement}>"


def is_number(value: Any) -> bool:
    """A real number (Python or numpy) that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_integer(value: Any) -> bool:
    """An integer (Python or numpy) that is not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _finite_number(value: Any) -> bool:
    return is_number(value) and bool(np.isfinite(value))


#: a finite real number
finite = Requirement("a finite number", _finite_number)
#: a finite real number > 0
positive = Requirement("a positive number", lambda value: _finite_number(value) and value > 0)
#: a finite real number ≥ 0
non_negative = Requirement("a non-negative number", lambda value: _finite_number(value) and value >= 0)
#: True or False (not 0/1 nor a numpy bool)
flag = Requirement("True or False", lambda value: isinstance(value, bool), TypeError)


def in_range(low: float, high: float, closed: str = "both") -> Requirement:
    """A real number in the interval from ``low`` to ``high``, ``closed`` on "both" ends, the
    "left" or "right" one only, or "neither"; NaN is in no interval."""
    left, right = _INTERVALS[closed]
    above = (lambda v: v >= low) if left == "[" else (lambda v: v > low)
    below = (lambda v: v <= high) if right == "]" else (lambda v: v < high)
    return Requirement(f"a number in {left}{low:g}, {high:g}{right}", lambda v: is_number(v) and above(v) and below(v))


def integer_at_least(minimum: int) -> Requirement:
    """An integer (Python or numpy, not a bool) ≥ ``minimum``."""
    words = {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f"an integer ≥ {minimum}")
    return Requirement(words, lambda value: is_integer(value) and value >= minimum)


#: a positive integer (an iteration or step count)
count = integer_at_least(1)
#: a non-negative integer (an index, or a number of steps that may be 0)
non_negative_int = integer_at_least(0)


def one_of(*choices: Any) -> Requirement:
    """One of ``choices`` (a bool is not taken for the int 0 or 1)."""

    def accepts(value: Any) -> bool:
        if isinstance(value, np.ndarray) or (isinstance(value, bool) and not any(isinstance(c, bool) for c in choices)):
            return False
        try:
            return value in choices
        except TypeError:  # a value that cannot be compared with a choice
            return False

    return Requirement(f"one of {', '.join(map(repr, choices))}", accepts)


def optional(validator: Requirement) -> Requirement:
    """None, or what ``validator`` accepts."""
    return Requirement(
        f"{validator.requirement} or None", lambda value: value is None or validator.accepts(value), validator.error
    )


#: None, or a seed ``numpy.random.default_rng`` accepts (a non-negative integer)
optional_seed = optional(non_negative_int)

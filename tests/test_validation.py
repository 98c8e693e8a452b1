"""The field validators of mtlsolve.validation: what each accepts and refuses, and its message."""

from __future__ import annotations

import attrs
import numpy as np
import pytest

import mtlsolve
from mtlsolve.errors import InvalidConfigError
from mtlsolve.validation import (
    count,
    finite,
    flag,
    in_range,
    integer_at_least,
    non_negative,
    non_negative_int,
    one_of,
    optional,
    optional_seed,
    positive,
)

NAN, INF = float("nan"), float("inf")


def check(validator, value):
    """Run ``validator`` on a field named ``knob`` holding ``value``."""

    @attrs.define
    class Holder:
        knob: object = attrs.field(validator=validator)

    return Holder(value)


def refused(validator, value, error=ValueError):
    with pytest.raises(error) as info:
        check(validator, value)
    message = str(info.value)
    assert message.startswith("knob must be "), message
    assert message.endswith(f"got {value!r}"), message
    assert "Attribute(" not in message and "attrs" not in message
    return message


CASES = [
    # validator, accepted, refused (ValueError), refused (TypeError)
    (finite, [0, -3, 2.5, np.float32(1.5), np.int64(-2)], [NAN, INF, -INF, True, "1", None, np.float64(NAN)], []),
    (positive, [1, 1e-300, 2.5, np.float32(0.5), np.int8(3)], [0, -1, 0.0, NAN, INF, True, "1", None], []),
    (non_negative, [0, 0.0, 3, np.float64(2.0)], [-1e-300, NAN, INF, True, False, "0", None], []),
    (count, [1, 7, np.int64(2)], [0, -1, 1.0, 2.5, True, NAN, "3", None], []),
    (non_negative_int, [0, 5, np.int32(0)], [-1, 0.0, False, NAN, None], []),
    (integer_at_least(2), [2, 9], [1, 2.0, True, None], []),
    (in_range(0.0, 1.0), [0, 0.0, 0.5, 1.0, np.float32(1.0)], [-0.1, 1.1, NAN, INF, True, "0.5", None], []),
    (in_range(0.0, 1.0, closed="left"), [0.0, 0.999], [1.0, -0.1, NAN], []),
    (in_range(0.0, 1.0, closed="right"), [1.0, 1e-9], [0.0, 1.5, NAN], []),
    (in_range(0.0, 1.0, closed="neither"), [0.5], [0.0, 1.0, NAN], []),
    (one_of("sum", "mean"), ["sum", np.str_("mean")], ["max", None, 1, ["sum"]], []),
    (one_of(0, 1, 2), [0, 2, np.int64(1)], [True, False, 3, "0", np.array([1])], []),
    (one_of(None, "log"), [None, "log"], ["exp", 0], []),
    (optional(positive), [None, 2.0], [0.0, NAN, INF, True], []),
    (optional_seed, [None, 0, 12345, np.uint32(7)], [-1, 1.5, True, NAN], []),
    (flag, [True, False], [], [0, 1, np.bool_(True), "True", None]),
]


@pytest.mark.parametrize(("validator", "accepted", "refused_values", "refused_types"), CASES)
def test_accepted_and_refused_values(validator, accepted, refused_values, refused_types):
    for value in accepted:
        assert check(validator, value).knob is value
    for value in refused_values:
        refused(validator, value)
    for value in refused_types:
        refused(validator, value, TypeError)


@pytest.mark.parametrize(
    ("validator", "value", "says"),
    [
        (finite, NAN, "knob must be a finite number, got nan"),
        (positive, -1.0, "knob must be a positive number, got -1.0"),
        (non_negative, INF, "knob must be a non-negative number, got inf"),
        (count, True, "knob must be a positive integer, got True"),
        (non_negative_int, -2, "knob must be a non-negative integer, got -2"),
        (integer_at_least(2), 1, "knob must be an integer ≥ 2, got 1"),
        (in_range(0.0, 1.0, closed="left"), 1.0, "knob must be a number in [0, 1), got 1.0"),
        (in_range(0.5, 1.0, closed="right"), 0.5, "knob must be a number in (0.5, 1], got 0.5"),
        (one_of("sum", "mean"), "max", "knob must be one of 'sum', 'mean', got 'max'"),
        (optional(positive), 0.0, "knob must be a positive number or None, got 0.0"),
        (optional_seed, -1, "knob must be a non-negative integer or None, got -1"),
        (flag, 1, "knob must be True or False, got 1"),
    ],
)
def test_messages_name_the_field_the_requirement_and_the_value(validator, value, says):
    with pytest.raises((ValueError, TypeError)) as info:
        check(validator, value)
    assert str(info.value) == says
    assert len(info.value.args) == 1  # no attrs Attribute or option tuple riding along


def test_in_range_refuses_an_unknown_kind_of_interval():
    with pytest.raises(KeyError):
        in_range(0.0, 1.0, closed="half")


def test_numpy_non_finite_scalars_are_refused():
    for value in (np.float64(NAN), np.float32(INF), np.float16(-INF)):
        refused(finite, value)
        refused(positive, value)
        refused(in_range(0.0, 1.0), value)


@pytest.mark.parametrize(
    ("name", "kwargs", "says"),
    [
        ("dwa", {"temperature": -1.0}, "temperature must be a positive number, got -1.0"),
        ("mgda", {"normalisation": "l3"}, "normalisation must be one of 'none', "),
        ("cagrad", {"rescale": True}, "rescale must be one of 0, 1, 2, got True"),
        ("fairgrad", {"max_iter": 0}, "max_iter must be a positive integer, got 0"),
        ("db_mtl", {"beta": 1.0}, r"beta must be a number in [0, 1), got 1.0"),
        ("pcgrad", {"seed": -3}, "seed must be a non-negative integer or None, got -3"),
        ("imtl_g", {"rtol": 0.0}, "rtol must be a positive number or None, got 0.0"),
        ("hvgrad", {"fronts": 1}, "fronts must be True or False, got 1"),
    ],
)
def test_the_registry_reports_the_refused_field_as_invalid_config(name, kwargs, says):
    with pytest.raises(InvalidConfigError) as info:
        mtlsolve.get(name, **kwargs)
    message = str(info.value)
    assert message.startswith(f"{name}: ") and says in message, message
    assert "Attribute(" not in message


def test_strategy_settings_report_the_refused_setting():
    with pytest.raises(InvalidConfigError) as info:
        mtlsolve.get_strategy("cost", trigger_fraction=0.0)
    message = str(info.value)
    assert "trigger_fraction=0.0" in message and "must be a number in (0, 1], got 0.0" in message, message

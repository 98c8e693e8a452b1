"""The exception hierarchy: every mtlsolve error is an MtlsolveError and the built-in it claims."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import mtlsolve
from mtlsolve import errors

# error -> the built-in exception (or warning) a caller may catch it as
BUILTINS = {
    errors.MtlsolveError: Exception,
    errors.InvalidSystemError: ValueError,
    errors.NonFiniteError: ValueError,
    errors.UnknownSolverError: LookupError,
    errors.UnknownStrategyError: LookupError,
    errors.InvalidConfigError: ValueError,
    errors.PluginError: Exception,
    errors.SolverError: RuntimeError,
    errors.StateError: ValueError,
    errors.PluginWarning: UserWarning,
    errors.ConvergenceWarning: UserWarning,
}


def test_every_public_error_is_listed_and_exported():
    defined = {obj for _, obj in inspect.getmembers(errors, inspect.isclass) if obj.__module__ == errors.__name__}
    assert defined == set(BUILTINS)
    for cls in defined:
        assert getattr(mtlsolve, cls.__name__) is cls
        assert cls.__name__ in mtlsolve.__all__


@pytest.mark.parametrize("cls, builtin", list(BUILTINS.items()), ids=lambda c: getattr(c, "__name__", ""))
def test_each_error_is_the_builtin_it_claims(cls, builtin):
    assert issubclass(cls, builtin)
    with pytest.raises(builtin):
        raise cls("message")


@pytest.mark.parametrize("cls", [c for c in BUILTINS if not issubclass(c, Warning)])
def test_each_error_is_an_mtlsolve_error(cls):
    assert issubclass(cls, errors.MtlsolveError)


def test_specific_relations():
    assert issubclass(errors.NonFiniteError, errors.InvalidSystemError)
    for warning in (errors.PluginWarning, errors.ConvergenceWarning):
        assert not issubclass(warning, errors.MtlsolveError)  # a warning, not an error
    assert not issubclass(errors.UnknownSolverError, KeyError)  # str(KeyError) would quote the message


def test_raised_errors_are_catchable_as_builtins():
    with pytest.raises(LookupError, match="no solver named"):
        mtlsolve.get("no-such-solver")
    with pytest.raises(ValueError, match="unknown argument"):
        mtlsolve.get("ls", no_such_argument=1)
    with pytest.raises(ValueError, match="must hold real numbers"):
        mtlsolve.GradientSystem(np.ones((2, 2), dtype=complex))
    with pytest.raises(ValueError, match="NaN or Inf"):
        mtlsolve.get("ls")(np.array([[np.nan, 0.0], [0.0, 1.0]]))
    with pytest.raises(errors.NonFiniteError):
        mtlsolve.GradientSystem(losses=[np.inf]).losses64
    with pytest.raises(ValueError, match="belongs to solver"):
        mtlsolve.get("dwa").load_state_dict({"solver": "famo"})
    with pytest.raises(ValueError, match="weights must be a vector"):
        mtlsolve.get("ls", weights=[[0.5, 0.5], [0.5, 0.5]])

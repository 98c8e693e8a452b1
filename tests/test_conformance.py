"""One conformance suite over every registered solver (built-in or third-party).

Every test is parametrized over ``mtlsolve.available()``, so a solver registered
later is covered without editing this file. The checks themselves live in
:mod:`mtlsolve.testing.conformance` (a plugin author runs the same ones with
:func:`mtlsolve.testing.check_solver`); matrices come from hypothesis
(derandomized, so CI is deterministic). A solver is built from its
:class:`~mtlsolve.testing.conformance.Target`; hyperparameters without a default
come from ``REQUIRED`` in that module, and a solver needing one that is not there
fails loudly.

The suite checks the protocol every solver owes (shapes; result type, dtype and
device; determinism; finite output on degenerate systems; NonFiniteError on
NaN/Inf; state round-trip; backend agreement) and then exactly the properties
each solver claims in ``cls.properties`` (keys of ``mtlsolve.PROPERTIES``).

Fast tier (``pytest -m "not slow"``): every check on every solver in at least one
backend and dtype; the other backend/dtype combinations, Inf (NaN stays) and two of
the degenerate cases are marked ``slow``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mtlsolve
from mtlsolve import PROPERTIES, Need
from mtlsolve.testing import check_solver
from mtlsolve.testing import conformance as ct
from mtlsolve.testing.conformance import MIN_TASKS, REQUIRED  # noqa: F401 - test_robustness.py reads them here
from mtlsolve.testing.robustness import PRECISION_EXEMPT

# A step that certifies nothing (ConvergenceWarning) is legitimate on the degenerate systems here;
# tests/test_robustness.py checks that warning, its fallback and its certificate precisely.
pytestmark = pytest.mark.filterwarnings("ignore::mtlsolve.errors.ConvergenceWarning")

SOLVERS = mtlsolve.available()
TARGETS = {name: ct.target(name) for name in SOLVERS}
CLASSES = {name: TARGETS[name].cls for name in SOLVERS}
CLAIMS = [(name, prop) for name in SOLVERS for prop in sorted(CLASSES[name].properties)]

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
SLOW = pytest.mark.slow
BACKENDS = [
    pytest.param("numpy", "cpu", id="numpy"),
    pytest.param("torch", "cpu", id="torch-cpu"),
    pytest.param("torch", "cuda", id="torch-cuda", marks=[pytest.mark.cuda, CUDA]),
]
DTYPES = list(ct.DTYPES)
#: the (dtype, backend) pairs of test_result_shapes_types_and_combination the fast tier keeps
FAST_RESULT_CASES = {("float64", "numpy"), ("float32", "torch")}

FAST = settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROPS = settings(FAST, max_examples=20)


def make(name: str, **kwargs: Any) -> mtlsolve.Solver:
    """A fresh instance: required hyperparameters from REQUIRED, seed 0 for randomized solvers."""
    return TARGETS[name].make(**kwargs)


def step(solver: mtlsolve.Solver, G: Any = None, L: Any = None, gramian: Any = None) -> mtlsolve.Result:
    """One training step as an adapter runs it: solve, then the post-step call where the solver asks for it."""
    return TARGETS[solver.name].step(solver, G, L, gramian)


# Each check runs only on the solvers it applies to, chosen from their declared needs.
NEEDS = {name: TARGETS[name].needs() for name in SOLVERS}
#: solvers that run on the losses alone
LOSS_ONLY = [name for name in SOLVERS if not NEEDS[name] & {Need.GRAMIAN, Need.MATRIX}]
#: solvers that never need G itself: the Gramian (or nothing) will do
GRAMIAN_SUFFICES = [name for name in SOLVERS if Need.MATRIX not in NEEDS[name]]
#: (solver, input holding a NaN or Inf) for every input the solver reads
NON_FINITE_CASES = [(name, where) for name in SOLVERS for where in ct.non_finite_inputs(TARGETS[name])]


# ---------------------------------------------------------------- metadata
def test_some_solvers_are_registered():
    assert "ls" in SOLVERS


@pytest.mark.parametrize("name", SOLVERS)
def test_metadata_and_aliases_construct(name):
    assert CLASSES[name].name == name
    assert TARGETS[name].registered
    ct.check_metadata(TARGETS[name])


# ------------------------------------------------------- shapes and types
def _result_cases():
    for p in BACKENDS:
        for dtype in DTYPES:
            slow = [] if (dtype, p.values[0]) in FAST_RESULT_CASES or p.values[1] == "cuda" else [SLOW]
            yield pytest.param(dtype, *p.values, id=f"{dtype}-{p.id}", marks=[*p.marks, *slow])


@pytest.mark.parametrize("dtype, backend, device", list(_result_cases()))
@pytest.mark.parametrize("name", SOLVERS)
@FAST
@given(data=st.data())
def test_result_shapes_types_and_combination(name, dtype, backend, device, data):
    ct.check_result(TARGETS[name], data, dtype, backend, device)


@pytest.mark.parametrize("name", LOSS_ONLY)
@FAST
@given(data=st.data())
def test_losses_only(name, data):
    ct.check_losses_only(TARGETS[name], data)


@pytest.mark.parametrize("name", GRAMIAN_SUFFICES)
@FAST
@given(data=st.data())
def test_gramian_only_gives_the_same_weights(name, data):
    ct.check_gramian_only(TARGETS[name], data)


# ---------------------------------------------------------------- determinism
@pytest.mark.parametrize("name", SOLVERS)
@FAST
@given(data=st.data())
def test_deterministic(name, data):
    ct.check_deterministic(TARGETS[name], data)


# ------------------------------------------------------ degenerate systems
# the fast tier runs numpy float64 and leaves out a zero row and duplicated rows (the zero and
# rank-deficient cases are of their kind); the full run adds them and torch float32
SLOW_DEGENERATE = {"zero_row", "duplicated_rows"}
DEGENERATE_BACKENDS = [
    pytest.param("numpy", "float64", id="numpy64"),
    pytest.param("torch", "float32", id="torch32", marks=SLOW),
]


@pytest.mark.parametrize("backend, dtype", DEGENERATE_BACKENDS)
@pytest.mark.parametrize("case", [pytest.param(c, marks=[SLOW] if c in SLOW_DEGENERATE else []) for c in ct.DEGENERATE])
@pytest.mark.parametrize("name", SOLVERS)
@settings(FAST, max_examples=5)
@given(data=st.data())
def test_finite_on_degenerate_systems(name, case, backend, dtype, data):
    ct.check_degenerate(TARGETS[name], data, case, backend, dtype)


# --------------------------------------------------------- non-finite input
# numpy warns on the way to the error
@pytest.mark.filterwarnings("ignore:(invalid value|overflow) encountered:RuntimeWarning")
@pytest.mark.parametrize("backend", ["numpy", pytest.param("torch", marks=SLOW)])
@pytest.mark.parametrize("bad", [pytest.param(np.nan, id="nan"), pytest.param(np.inf, id="inf", marks=SLOW)])
@pytest.mark.parametrize("name, where", NON_FINITE_CASES)
@settings(FAST, max_examples=4)
@given(data=st.data())
def test_non_finite_input_raises(name, where, bad, backend, data):
    ct.check_non_finite(TARGETS[name], data, where, bad, backend)


# ------------------------------------------------------------------ state
@pytest.mark.parametrize("name", SOLVERS)
@settings(FAST, max_examples=5)
@given(data=st.data())
def test_state_dict_round_trip(name, data):
    ct.check_state_round_trip(TARGETS[name], data)


# ------------------------------------------------------ backend agreement
# every backend and dtype against numpy float64; torch float32 (the usual training input) in the fast tier
OTHER_CONFIGS = [
    pytest.param(
        p.values[0],
        p.values[1],
        dtype,
        id=f"{p.id}-{dtype}",
        marks=[*p.marks, *([] if (p.values[0], dtype) == ("torch", "float32") else [SLOW])],
    )
    for p in BACKENDS
    for dtype in DTYPES
    if (p.values[0], dtype) != ("numpy", "float64")
]


@pytest.mark.parametrize("backend, device, dtype", OTHER_CONFIGS)
@pytest.mark.parametrize("name", SOLVERS)
@FAST
@given(data=st.data())
def test_backends_and_dtypes_agree(name, backend, device, dtype, data):
    if dtype != "float64" and name in PRECISION_EXEMPT:
        pytest.skip(f"{name}: {PRECISION_EXEMPT[name]}")
    ct.check_backends_agree(TARGETS[name], data, backend, device, dtype)


# ------------------------------------------------------------- properties
def test_every_property_has_a_checker():
    assert set(ct.CHECKERS) == set(PROPERTIES)


@pytest.mark.parametrize("name, prop", CLAIMS, ids=[f"{n}-{p}" for n, p in CLAIMS])
@PROPS
@given(data=st.data())
def test_claimed_property(name, prop, data):
    ct.CHECKERS[prop](TARGETS[name], data)


# ------------------------------------------------------ for plugin authors
def test_check_solver_passes_the_example_plugin():
    """The example third-party plugin (examples/mtlsolve-example-plugin) passes the public entry point."""
    if "normalized_sum" not in SOLVERS:
        pytest.skip("mtlsolve-example-plugin is not installed: pip install -e examples/mtlsolve-example-plugin")
    check_solver("normalized_sum")


def test_check_solver_reports_a_broken_claim():
    """A solver claiming a property it lacks fails check_solver with a message naming the solver and check."""
    cls = CLASSES["ls"]
    assert "scale_invariant" not in cls.properties
    broken = type(
        "BrokenLS",
        (cls,),
        {
            "name": "broken_ls",
            "aliases": {},
            "__module__": __name__,
            "properties": cls.properties | {"scale_invariant"},
        },
    )
    with pytest.raises(
        AssertionError, match="broken_ls fails the conformance check 'claimed property scale_invariant'"
    ):
        check_solver(broken)

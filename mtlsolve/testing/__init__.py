"""The checks mtlsolve runs on every solver, for a plugin author to run on their own.

    from mtlsolve.testing import check_solver

    def test_my_solver_conforms():
        check_solver("my_solver")  # a registered name, a Solver class or an instance

:func:`check_solver` runs the conformance suite (:mod:`mtlsolve.testing.conformance`: protocol,
determinism, degenerate and non-finite input, state, backends, and every property the class claims
in ``properties``) and raises AssertionError naming the solver, the check and the falsifying input.
:mod:`mtlsolve.testing.robustness` holds the seeded hard systems (κ up to 1e12, mixed scales,
dependent rows, …) and :func:`~mtlsolve.testing.robustness.check_call`, the no-silent-failure check
of one call. Needs hypothesis (``pip install "mtlsolve[test]"``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtlsolve.errors import ConvergenceWarning
from mtlsolve.solver import Need, Solver
from mtlsolve.testing import conformance, robustness
from mtlsolve.testing.conformance import CHECKERS, Target, target

__all__ = ["CHECKERS", "Target", "check_solver", "conformance", "robustness", "target"]


def check_solver(
    solver: str | type[Solver] | Solver,
    *,
    args: Mapping[str, Any] | None = None,
    min_tasks: int | None = None,
    extras: Callable[[int, int | None], dict[str, Any]] | None = None,
    max_examples: int = 8,
) -> None:
    """Run every conformance check on one solver; raise AssertionError at the first that fails.

    ``args``: hyperparameters the class has no default for; ``min_tasks``: the fewest tasks it
    accepts; ``extras``: keyword inputs besides G, K and the losses, as a function of (m, n)
    (see :class:`~mtlsolve.testing.conformance.Target`). Each check draws ``max_examples``
    systems (the claimed properties 2.5 times as many), derandomized so a run is reproducible.
    A step that certifies nothing (ConvergenceWarning) is accepted on these systems; its fallback
    is checked by :func:`~mtlsolve.testing.robustness.check_call`.
    """
    t = target(solver, args=args, min_tasks=min_tasks, extras=extras)
    cases = _cases(t, max_examples)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        _run(t, "metadata", lambda: conformance.check_metadata(t))
        for label, check, params, examples in cases:
            _run(t, label, _given(check, t, params, examples))


#: one conformance check to run: (label, check, its keyword arguments, hypothesis examples)
Case = tuple[str, Callable[..., None], dict[str, Any], int]


def _cases(t: Target, max_examples: int) -> list[Case]:
    """Every check :func:`check_solver` runs after the metadata, in the order it runs them."""
    needs = t.needs()
    backends = [(lib, dev) for lib, dev in conformance.BACKENDS if dev == "cpu" or torch.cuda.is_available()]
    claimed: list[Case] = [
        (f"claimed property {prop}", CHECKERS[prop], {}, max_examples * 5 // 2) for prop in sorted(t.cls.properties)
    ]
    return (
        _call_cases(needs, backends, max_examples)
        + _bad_input_cases(t, max_examples)
        + [("state round trip", conformance.check_state_round_trip, {}, max(1, max_examples * 5 // 8))]
        + _agreement_cases(backends, max_examples)
        + claimed
    )


def _call_cases(needs: frozenset[Need], backends: list[tuple[str, str]], max_examples: int) -> list[Case]:
    """The result on every backend and dtype, the calls with fewer inputs, and determinism."""
    c = conformance
    cases: list[Case] = [
        (f"result {lib}-{dev} {dtype}", c.check_result, {"dtype": dtype, "backend": lib, "device": dev}, max_examples)
        for lib, dev in backends
        for dtype in c.DTYPES
    ]
    if not needs & {Need.GRAMIAN, Need.MATRIX}:
        cases.append(("losses only", c.check_losses_only, {}, max_examples))
    if Need.MATRIX not in needs:
        cases.append(("Gramian only", c.check_gramian_only, {}, max_examples))
    cases.append(("deterministic", c.check_deterministic, {}, max_examples))
    return cases


def _bad_input_cases(t: Target, max_examples: int) -> list[Case]:
    """The degenerate systems, then a NaN or an infinity in every input the solver reads."""
    c = conformance
    degenerate: list[Case] = [
        (
            f"degenerate {case} {lib} {dtype}",
            c.check_degenerate,
            {"case": case, "backend": lib, "dtype": dtype},
            max(1, max_examples * 5 // 8),
        )
        for case in c.DEGENERATE
        for lib, dtype in c.DEGENERATE_BACKENDS
    ]
    non_finite: list[Case] = [
        (
            f"non-finite {bad} in the {where} ({lib})",
            c.check_non_finite,
            {"where": where, "bad": bad, "backend": lib},
            max(1, max_examples // 2),
        )
        for where in c.non_finite_inputs(t)
        for bad in (np.nan, np.inf)
        for lib in ("numpy", "torch")
    ]
    return degenerate + non_finite


def _agreement_cases(backends: list[tuple[str, str]], max_examples: int) -> list[Case]:
    """Every backend and dtype but numpy float64 against numpy float64."""
    return [
        (
            f"agrees with numpy float64: {lib}-{dev} {dtype}",
            conformance.check_backends_agree,
            {"backend": lib, "device": dev, "dtype": dtype},
            max_examples,
        )
        for lib, dev in backends
        for dtype in conformance.DTYPES
        if (lib, dtype) != ("numpy", "float64")
    ]


def _given(check: Callable[..., None], t: Target, params: dict[str, Any], examples: int) -> Callable[[], None]:
    """``check(t, data, **params)`` as a hypothesis test over ``examples`` derandomized draws."""

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(data=st.data())
    def run(data):
        with warnings.catch_warnings():
            if check is conformance.check_non_finite:  # numpy warns on the way to the NonFiniteError
                warnings.filterwarnings("ignore", r"(invalid value|overflow) encountered", RuntimeWarning)
            check(t, data, **params)

    return run


def _run(t: Target, label: str, call: Callable[[], None]) -> None:
    try:
        call()
    except Exception as exc:
        what = str(exc) if isinstance(exc, AssertionError) else f"raised {type(exc).__name__}: {exc}"
        raise AssertionError(f"{t.name} fails the conformance check '{label}': {what}") from exc

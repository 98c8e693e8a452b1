"""Hypothesis fuzzing of every registered solver with the robustness checks of test_robustness.

Four examples in five draw a hard system (family, dtype, m ≤ 20, n ≤ 50, seed; Gramian readers are
given K in half of them) and check (i), (iv) and the claimed pointwise properties (ii), plus one
claimed comparative property (permutation, scaling, linearity) when the solver has any; one in five
draws a well-conditioned system and checks (iii), float32 against float64.

By default (CI) each solver gets ``CI_EXAMPLES`` systems. The long run spreads 20,000 systems over
all solvers:

    pytest tests/test_fuzz.py --hypothesis-profile=fuzz       # 20,000 systems in total
    MTLSOLVE_FUZZ_EXAMPLES=50000 pytest tests/test_fuzz.py    # any other total

Both are derandomized (the same systems on every run) and use no example database.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtlsolve.testing import robustness as rb
from test_conformance import CLASSES, SOLVERS
from test_robustness import (
    COMPARATIVE,
    GRAMIAN_READERS,
    Failure,
    comparative_problem,
    given_gramian,
    pointwise_failures,
    precision_failures,
    solve,
    task_count,
)

#: systems per solver in a default run
CI_EXAMPLES = 25
#: systems in total over all solvers in the long run
FUZZ_TOTAL = 20_000


def _profile() -> str | None:
    getter = getattr(settings, "get_current_profile_name", None)
    return getter() if getter else getattr(settings, "_current_profile", None)


def examples_per_solver() -> int:
    """CI_EXAMPLES, or the long run's total (MTLSOLVE_FUZZ_EXAMPLES, else 20,000 under the fuzz profile)
    spread evenly over the registered solvers."""
    total = os.environ.get("MTLSOLVE_FUZZ_EXAMPLES")
    if total:
        return max(1, math.ceil(int(total) / len(SOLVERS)))
    if _profile() == "fuzz":
        return math.ceil(FUZZ_TOTAL / len(SOLVERS))
    return CI_EXAMPLES


PER_SOLVER = examples_per_solver()
FUZZ = settings(
    max_examples=PER_SOLVER,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@st.composite
def cases(draw, name: str) -> tuple[rb.Case, str]:
    """A generated system for ``name`` and how it is given ("G" or "K")."""
    family = draw(st.sampled_from(rb.FAMILIES), label="family")
    dtype = draw(st.sampled_from(rb.DTYPES), label="dtype")
    m = task_count(name, draw(st.integers(1, 20), label="m"))
    n = draw(st.integers(1, 50), label="n")
    seed = draw(st.integers(0, 2**16), label="seed")
    how = draw(st.sampled_from(["G", "K"]), label="input") if name in GRAMIAN_READERS else "G"
    return rb.system(family, m, n, dtype, seed), how


@pytest.mark.fuzz
@pytest.mark.parametrize("name", SOLVERS)
@FUZZ
@given(data=st.data())
def test_fuzz(name, data):
    if data.draw(st.integers(0, 4), label="precision check") == 0:  # one in five: (iii)
        m = task_count(name, data.draw(st.integers(1, 20), label="m"))
        n = data.draw(st.integers(m, 50), label="n") if m <= 50 else m
        seed = data.draw(st.integers(0, 2**16), label="seed")
        losses = np.random.default_rng(seed).uniform(0.5, 2.0, m)
        failures = precision_failures(name, rb.well_conditioned(m, n, seed), losses, seed) if m <= n else []
    else:
        failures = hard_system_failures(name, data)
    if failures:
        raise AssertionError("\n".join(f"{f.check}: {f.message}" for f in failures))


def hard_system_failures(name, data) -> list[Failure]:
    case, how = data.draw(cases(name), label="case")
    if how == "K":
        out = solve(name, case, gramian=given_gramian(case))
    else:
        out = solve(name, case)
    failures = pointwise_failures(name, case, out, "given K" if how == "K" else "G")
    claims = sorted(CLASSES[name].properties & set(COMPARATIVE))
    if claims and not failures:
        prop = data.draw(st.sampled_from(claims), label="property")
        bad = comparative_problem(name, prop, case, np.random.default_rng(case.seed))
        if bad:
            failures.append(Failure(name, f"(ii) {prop}", case.m * case.n, f"{bad}\n    input: {case.describe()}"))
    return failures

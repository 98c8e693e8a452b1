"""Robustness of every registered solver on hard systems, at tolerances derived from the input dtype.

Systems come from :mod:`mtlsolve.testing.robustness` (seeded numpy generators: κ(K) up to 1e12, row scales over
1e-20…1e3, dependent rows, near-opposed pairs, 0 near the convex hull, zero rows) in float64,
float32, float16 (numpy and torch) and bfloat16 (torch). Solvers are built and stepped with the
conformance suite's helpers (``make``/``step``: REQUIRED, MIN_TASKS, EXTRAS). Checks:

(i)   no silent wrong answer: finite output or an MtlsolveError with a message; nothing else;
(ii)  a result not flagged ``converged = False`` has every property its solver claims, at the
      dtype-scaled tolerance; a flagged one warned (ConvergenceWarning) and names its fallback;
(iii) float32 and float64 answers agree on well-conditioned systems;
(iv)  ``converged == (residual <= tolerance)`` whenever both are reported;
and a given Gramian that is not one (non-symmetric, indefinite, negative diagonal) raises
InvalidSystemError in every solver that reads the Gramian.

Each test collects every failing case and reports, per check, the smallest one with the call that
rebuilds it (``robustness.system(...)``). ``python tests/test_robustness.py`` prints the table of
failures of every solver.
"""

from __future__ import annotations

import math
import sys
from typing import NamedTuple

import numpy as np
import pytest

from mtlsolve import InvalidSystemError, Need
from mtlsolve.testing import robustness as rb
from test_conformance import CLASSES, MIN_TASKS, NEEDS, SOLVERS, make, step

#: solvers that read a given Gramian (and so must reject one that is not a Gramian)
GRAMIAN_READERS = [name for name in SOLVERS if Need.GRAMIAN in NEEDS[name] and Need.MATRIX not in NEEDS[name]]
COMPARATIVE = ("permutation_equivariant", "positive_homogeneous", "scale_invariant", "linear")
CLAIMS = [(name, p) for name in SOLVERS for p in sorted(CLASSES[name].properties) if p in COMPARATIVE]
#: (m, n) pairs, small and large; each (family, dtype) runs one of each
SMALL = [(1, 1), (2, 1), (2, 3), (3, 2), (3, 5), (4, 4)]
LARGE = [(5, 12), (8, 3), (8, 30), (12, 50), (20, 50), (20, 7)]
#: a comparative check needs tol·κ below this, else the system is too ill-conditioned to decide it
DECIDABLE = 0.05


class Failure(NamedTuple):
    solver: str
    check: str
    size: int  # m·n of the failing input, to report the smallest
    message: str


def task_count(name: str, m: int) -> int:
    """m raised to what the solver accepts: MIN_TASKS, and whole batches of at least two tasks for b > 1."""
    b = CLASSES[name].batches
    m = max(m, MIN_TASKS.get(name, 1), 2 * b if b > 1 else 1)
    return -(-m // b) * b


def case_for(name: str, family: str, m: int, n: int, dtype: str, seed: int) -> rb.Case:
    return rb.system(family, task_count(name, m), n, dtype, seed)


def solve(name: str, case: rb.Case, X=None, L=None, gramian=None) -> rb.Outcome:
    """One checked step of a fresh instance on the case's input (or on X, or a given Gramian)."""
    X = case.X if X is None and gramian is None else X
    L = case.L if L is None else L
    return rb.check_call(lambda: step(make(name), X, L, gramian))


def given_gramian(case: rb.Case):
    """K = GGᵀ of the input, accumulated in float64 and given in the case's dtype (at least float32)."""
    lib, dtype = case.dtype.split(".")
    return rb.cast(case.G @ case.G.T, case.dtype if dtype == "float64" else f"{lib}.float32")


def pointwise_failures(name: str, case: rb.Case, out: rb.Outcome, how: str = "G") -> list[Failure]:
    """(i), (iv) and, unless the solver flagged the step unconverged, (ii) for the pointwise properties."""
    problems = list(out.problems)
    if out.result is not None and out.converged:
        for prop in sorted(CLASSES[name].properties & rb.POINTWISE.keys()):
            bad = rb.POINTWISE[prop](case, out.result)
            if bad:
                problems.append((f"(ii) {prop}", bad))
    size = case.m * case.n
    return [Failure(name, check, size, f"{msg}\n    input ({how}): {case.describe()}") for check, msg in problems]


def report(failures: list[Failure]) -> None:
    """Fail with the smallest failing input of each check."""
    if failures:
        lines = []
        for check, group in _by_check(failures).items():
            lines.append(f"{check}: {len(group)} case(s); smallest: {group[0].message}")
        pytest.fail("\n".join(lines), pytrace=False)


def _by_check(failures: list[Failure]) -> dict[str, list[Failure]]:
    groups: dict[str, list[Failure]] = {}
    for f in sorted(failures, key=lambda f: f.size):
        groups.setdefault(f.check, []).append(f)
    return groups


# -------------------------------------------------- (i), (ii) pointwise, (iv)
def sweep_pointwise(name: str, family: str) -> list[Failure]:
    """Every dtype, a small and a large system of the family; Gramian readers also get K = GGᵀ given."""
    rng = np.random.default_rng([SOLVERS.index(name), rb.FAMILIES.index(family)])
    failures = []
    for k, dtype in enumerate(rb.DTYPES):
        for m, n in (SMALL[rng.integers(len(SMALL))], LARGE[rng.integers(len(LARGE))]):
            case = case_for(name, family, m, n, dtype, seed=k)
            failures += pointwise_failures(name, case, solve(name, case))
            if name in GRAMIAN_READERS:
                failures += pointwise_failures(name, case, solve(name, case, gramian=given_gramian(case)), "given K")
    return failures


@pytest.mark.parametrize("family", rb.FAMILIES)
@pytest.mark.parametrize("name", SOLVERS)
def test_no_silent_wrong_answer(name, family):
    """Finite output or an mtlsolve error; claimed pointwise properties unless flagged unconverged."""
    report(sweep_pointwise(name, family))


# ------------------------------------------------ (ii) comparative properties
def _scale_factor(case: rb.Case, rng: np.random.Generator) -> float:
    """c = 2^k such that the row norms of cG lie in [1e-20, 1e3]·√n (as far as G's own spread allows)
    and every entry of cG is a normal number of the dtype, so that cG is exact."""
    info = rb.finfo(case.dtype)
    G = np.abs(case.G)
    norms = np.linalg.norm(case.G, axis=1)
    if not G.any():
        return 1.0
    low = max(1e-20 / norms[norms > 0].min(), float(info.tiny) / G[G > 0].min())
    with np.errstate(over="ignore"):
        high = min(1e3 * math.sqrt(case.n) / norms.max(), float(info.max) / 1e3 / G.max())
    lo, hi = math.ceil(math.log2(low)), math.floor(math.log2(high))
    if lo > hi:
        return 1.0
    # the ends of the range (the smallest and largest gradients) half of the time: that is where
    # squares underflow or overflow
    return 2.0 ** int(rng.choice([lo, hi]) if rng.random() < 0.5 else rng.integers(lo, hi + 1))


def comparative_problem(
    name: str, prop: str, case: rb.Case, rng: np.random.Generator, c: float | None = None
) -> str | None:
    """Whether ``prop`` holds between results on ``case`` and on its transform (None: it holds, or is
    undecidable: an error, an unconverged step, or a system too ill-conditioned for the dtype).
    ``c``: the scale factor of the scaling properties (default: drawn by :func:`_scale_factor`)."""
    a = solve(name, case)
    if a.result is None or not a.converged:
        return None
    kappa = 1.0 if prop == "linear" else rb.normalised_condition(case.G)
    tol = rb.property_tolerance(case, a.result) * max(kappa, 1.0)
    if not tol < DECIDABLE:
        return None
    S = rb.scale_of(case.G, a.result)
    da, wa = a.result.direction, a.result.weights
    w_scale = None if wa is None else max(np.abs(rb.as64(wa)).max(), 1e-300)
    if prop == "permutation_equivariant":
        perm = rng.permutation(case.m)
        b = solve(name, case, X=case.X[perm], L=case.L[perm])
        if b.result is None or not b.converged:
            return None
        bad = rb.compare(b.result.direction, da, tol, S, "d(PG) vs d(G)")
        if not bad and wa is not None and rb.regular(case.G):  # weights unique only when K is regular
            bad = rb.compare(b.result.weights, rb.as64(wa)[perm], tol, w_scale, "w(PG) vs P·w(G)")
        return bad and f"{bad} (permutation {perm.tolist()})"
    if prop in ("positive_homogeneous", "scale_invariant"):
        c = _scale_factor(case, rng) if c is None else c
        b = solve(name, case, X=rb.cast(c * case.G, case.dtype))
        if b.result is None or not b.converged:
            return None
        db = rb.as64(b.result.direction)
        if prop == "positive_homogeneous":
            return rb.compare(db / c, da, tol, S, f"d(cG)/c vs d(G), c = {c:.3g}")
        return rb.compare(db, da, tol, S, f"d(cG) vs d(G), c = {c:.3g}")
    if prop == "linear":
        other = rb.system(case.family, case.m, case.n, case.dtype, case.seed + 1000)
        b = solve(name, other, L=case.L)
        both_G = case.G - 2.5 * other.G
        both = solve(name, case, X=rb.cast(both_G, case.dtype))
        if any(o.result is None or not o.converged for o in (b, both)):
            return None
        scale = S + 2.5 * rb.scale_of(other.G, b.result) + rb.scale_of(both_G, both.result)
        expected = rb.as64(da) - 2.5 * rb.as64(b.result.direction)
        bad = rb.compare(both.result.direction, expected, tol, scale, "d(G1 − 2.5·G2) vs d(G1) − 2.5·d(G2)")
        if not bad and wa is not None:
            bad = rb.compare(b.result.weights, wa, tol, w_scale, "w(G2) vs w(G1)")
        return bad
    raise AssertionError(prop)


def sweep_comparative(name: str, prop: str) -> list[Failure]:
    """Every family in every dtype, one size each."""
    rng = np.random.default_rng([SOLVERS.index(name), COMPARATIVE.index(prop)])
    failures = []
    for f, family in enumerate(rb.FAMILIES):
        for dtype in rb.DTYPES:
            m, n = (SMALL + LARGE)[rng.integers(len(SMALL) + len(LARGE))]
            case = case_for(name, family, m, n, dtype, seed=f)
            bad = comparative_problem(name, prop, case, rng)
            if bad:
                failures.append(Failure(name, f"(ii) {prop}", case.m * case.n, f"{bad}\n    input: {case.describe()}"))
    return failures


@pytest.mark.parametrize("name, prop", CLAIMS, ids=[f"{n}-{p}" for n, p in CLAIMS])
def test_claimed_comparative_property(name, prop):
    """Permutation equivariance, positive homogeneity, scale invariance (c = 2^k, exact in the dtype)
    and linearity, at the dtype tolerance times κ(normalised K)."""
    report(sweep_comparative(name, prop))


# ------------------------------------------------------------------- (iii)
PRECISION_EXEMPT = rb.PRECISION_EXEMPT


def precision_failures(name: str, G: np.ndarray, losses: np.ndarray, seed: int = 0) -> list[Failure]:
    """numpy and torch float32 against numpy float64 on one well-conditioned system."""
    if name in PRECISION_EXEMPT:
        return []
    m, n = G.shape
    ref_case = rb.Case("well_conditioned", G, losses, "numpy.float64", seed)
    ref = solve(name, ref_case)
    if ref.result is None or not ref.converged:
        message = f"{ref.error or 'unconverged'}: {ref_case.describe()}"
        return [Failure(name, "(iii) float64 reference failed", m * n, message)]
    failures = []
    for dtype in ("numpy.float32", "torch.float32"):
        case = rb.Case("well_conditioned", G, losses, dtype, seed)
        out = solve(name, case)
        if out.result is None or not out.converged:
            failures.append(
                Failure(
                    name,
                    "(iii) float32 failed where float64 converged",
                    m * n,
                    f"{out.error or 'unconverged'}: {case.describe()}",
                )
            )
            continue
        tol = case.tol * rb.normalised_condition(case.G)  # a solve on K amplifies the rounding of K by up to κ
        S = rb.scale_of(case.G, ref.result)
        bad = rb.compare(out.result.direction, ref.result.direction, tol, S, "d float32 vs float64")
        w = ref.result.weights
        if not bad and w is not None:
            bad = rb.compare(out.result.weights, w, tol, max(np.abs(rb.as64(w)).max(), 1e-300), "w float32 vs float64")
        if bad:
            failures.append(Failure(name, "(iii) float32 vs float64", m * n, f"{bad}\n    input: {case.describe()}"))
    return failures


def sweep_precision(name: str) -> list[Failure]:
    """Systems with κ(K) ≤ 1e3 and row norms in [0.5, 2], four sizes."""
    failures = []
    for seed, (m, n) in enumerate([(2, 3), (3, 8), (5, 20), (8, 50)]):
        m = task_count(name, m)
        if m <= n:
            losses = np.random.default_rng(seed).uniform(0.5, 2.0, m)
            failures += precision_failures(name, rb.well_conditioned(m, n, seed), losses, seed)
    return failures


@pytest.mark.parametrize("name", SOLVERS)
def test_float32_agrees_with_float64(name):
    """float32 results equal the float64 one within the float32 tolerance times κ(normalised K) ≤ 1e3."""
    if name in PRECISION_EXEMPT:
        pytest.skip(f"{name}: {PRECISION_EXEMPT[name]}")
    report(sweep_precision(name))


# ----------------------------------------------------------- invalid Gramians
def sweep_invalid_gramian(name: str, kind: str) -> list[Failure]:
    """Each defect, in four dtypes and three scales."""
    failures = []
    for dtype in ("numpy.float64", "numpy.float32", "torch.float64", "torch.float32"):
        for m, scale in ((2, 1.0), (5, 1e-12), (7, 1e6)):
            m = task_count(name, m)
            K = rb.invalid_gramian(kind, m, seed=m, scale=scale)
            L = rb.cast(np.linspace(1.0, 2.0, m), dtype)
            out = rb.check_call(lambda: step(make(name), None, L, rb.cast(K, dtype)))
            if not isinstance(out.error, InvalidSystemError):
                got = "a result" if out.error is None else f"{type(out.error).__name__}: {out.error}"
                failures.append(
                    Failure(
                        name,
                        f"invalid Gramian accepted ({kind})",
                        m * m,
                        f"{dtype}, m={m}: got {got}\n    K = "
                        + np.array2string(K, precision=6, separator=", ").replace("\n", "\n        "),
                    )
                )
    return failures


@pytest.mark.parametrize("kind", rb.INVALID_GRAMIANS)
@pytest.mark.parametrize("name", GRAMIAN_READERS)
def test_invalid_gramian_raises(name, kind):
    """A given matrix that is not a Gramian is rejected with InvalidSystemError, in any dtype or scale."""
    report(sweep_invalid_gramian(name, kind))


# ------------------------------------------------ inputs the fuzzer found
#: (family, m, n, dtype, seed, given K?) of systems that broke a solver once: every solver runs them
PINNED = [
    ("mixed_scales", 8, 1, "torch.float32", 225, True),  # mgda/mgda_ub/cr_mogm: ZeroDivisionError
    ("mixed_scales", 12, 1, "numpy.float32", 171, True),  # the same
    ("mixed_scales", 2, 1, "numpy.float64", 0, False),  # mgda: conflicts with the smaller gradient
    ("mixed_scales", 4, 4, "torch.float64", 3, False),  # mgda_ub: the same
    ("gaussian", 3, 1, "torch.bfloat16", 0, False),  # fairgrad/nash_mtl: converged != (residual <= tol)
    ("mixed_scales", 4, 3, "numpy.float64", 0, False),  # imtl_g/imtl_hybrid: unconverged, no fallback
]
#: (family, m, n, dtype, seed, property, c) of comparative failures
PINNED_COMPARATIVE = [
    ("gaussian", 2, 3, "numpy.float32", 1190, "positive_homogeneous", 2.0**-64),  # db_mtl: float32 norms underflow
    ("gaussian", 6, 9, "numpy.float64", 2, "positive_homogeneous", 2.0**-65),  # sdmgrad: unnormalised cross block
    ("mixed_scales", 4, 5, "numpy.float64", 0, "permutation_equivariant", None),  # imtl_g
    ("mixed_scales", 3, 3, "numpy.float64", 0, "permutation_equivariant", None),  # imtl_hybrid
]
#: (m, n, seed) of well-conditioned systems where float32 and float64 disagreed
PINNED_PRECISION = [(6, 6, 49), (15, 38, 3105)]  # sdmgrad


def sweep_pinned(name: str) -> list[Failure]:
    failures = []
    for family, m, n, dtype, seed, given in PINNED:
        if task_count(name, m) == m and (name in GRAMIAN_READERS or not given):
            case = rb.system(family, m, n, dtype, seed)
            out = solve(name, case, gramian=given_gramian(case)) if given else solve(name, case)
            failures += pointwise_failures(name, case, out, "given K" if given else "G")
    for family, m, n, dtype, seed, prop, c in PINNED_COMPARATIVE:
        if prop in CLASSES[name].properties and task_count(name, m) == m:
            case = rb.system(family, m, n, dtype, seed)
            bad = comparative_problem(name, prop, case, np.random.default_rng(seed), c)
            if bad:
                failures.append(Failure(name, f"(ii) {prop}", case.m * case.n, f"{bad}\n    input: {case.describe()}"))
    for m, n, seed in PINNED_PRECISION:
        if task_count(name, m) == m:
            losses = np.random.default_rng(seed).uniform(0.5, 2.0, m)
            failures += precision_failures(name, rb.well_conditioned(m, n, seed), losses, seed)
    return failures


@pytest.mark.parametrize("name", SOLVERS)
def test_pinned_inputs(name):
    """Systems the fuzzer once found failing (for some solver), run through every solver's checks."""
    report(sweep_pinned(name))


# -------------------------------------------------------------- the table
def failure_table(failures: list[Failure]) -> str:
    """A markdown table: solver, check, number of failing cases, the smallest failing input."""
    rows = ["| solver | check | cases | smallest failing input |", "|---|---|---|---|"]
    by_solver: dict[str, list[Failure]] = {}
    for f in failures:
        by_solver.setdefault(f.solver, []).append(f)
    for solver in sorted(by_solver):
        for check, group in _by_check(by_solver[solver]).items():
            msg = group[0].message.replace("\n", " ").replace("|", "\\|")
            msg = " ".join(msg.split())
            rows.append(f"| {solver} | {check} | {len(group)} | {msg} |")
    return "\n".join(rows)


def all_failures(names: list[str] = SOLVERS) -> list[Failure]:
    failures = []
    for name in names:
        for family in rb.FAMILIES:
            failures += sweep_pointwise(name, family)
        for solver, prop in CLAIMS:
            if solver == name:
                failures += sweep_comparative(name, prop)
        failures += sweep_precision(name)
        failures += sweep_pinned(name)
        if name in GRAMIAN_READERS:
            for kind in rb.INVALID_GRAMIANS:
                failures += sweep_invalid_gramian(name, kind)
    return failures


if __name__ == "__main__":  # python tests/test_robustness.py [solver ...]
    print(failure_table(all_failures(sys.argv[1:] or SOLVERS)))

"""One conformance suite over every registered solver (built-in or third-party).

Every test is parametrized over ``mtlsolve.available()``, so a solver registered
later is covered without editing this file. Matrices come from hypothesis
(derandomized, so CI is deterministic). A solver is built with
``mtlsolve.get(name)``; hyperparameters without a default come from
``REQUIRED`` below, and a solver needing one that is not there fails loudly.

The suite checks the protocol every solver owes (shapes; result type, dtype and
device; determinism; finite output on degenerate systems; NonFiniteError on
NaN/Inf; state round-trip; backend agreement) and then exactly the properties
each solver claims in ``cls.properties`` (keys of ``mtlsolve.PROPERTIES``).
"""

from __future__ import annotations

import pickle
from typing import Any, Callable

import attrs
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mtlsolve
from mtlsolve import PROPERTIES, Need, NonFiniteError
from mtlsolve.registry import hyperparameters

# Hyperparameters that have no default, by canonical name (catalogue §3).
REQUIRED: dict[str, dict[str, Any]] = {
    "krum": {"n_byzantine": 1},
    "trimmed_mean": {"trim_number": 1},
    "cosmos": {"penalty": 1.0},
    # graddrop defaults to representation gradients with the features H in the extras; the suite's
    # systems are parameter gradients without H, so it runs GradDrop's parameter mode (FAMO, TorchJD)
    "graddrop": {"on": "params"},
}
# The fewest tasks a solver accepts with the arguments above (krum: m ≥ 2f + 3; trimmed mean: m ≥ 2t + 1).
MIN_TASKS: dict[str, int] = {"krum": 5, "trimmed_mean": 3}
# Extras a solver reads from the system besides G, K and the losses, as a function of (m, n):
# graddrop (on="representation") needs the shared features H, one value per coordinate of G.
EXTRAS: dict[str, Callable[[int, int | None], dict[str, Any]]] = {
    "graddrop": lambda m, n: {"features": np.cos(1.7 * np.arange(n) + 0.3)},
}

# A step that certifies nothing (ConvergenceWarning) is legitimate on the degenerate systems here;
# tests/test_robustness.py checks that warning, its fallback and its certificate precisely.
pytestmark = pytest.mark.filterwarnings("ignore::mtlsolve.errors.ConvergenceWarning")

SOLVERS = mtlsolve.available()
CLASSES = {name: mtlsolve.registry.resolve(name)[0].cls for name in SOLVERS}
CLAIMS = [(name, prop) for name in SOLVERS for prop in sorted(CLASSES[name].properties)]

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
BACKENDS = [
    pytest.param("numpy", "cpu", id="numpy"),
    pytest.param("torch", "cpu", id="torch-cpu"),
    pytest.param("torch", "cuda", id="torch-cuda", marks=[pytest.mark.cuda, CUDA]),
]
DTYPES = ["float32", "float64"]
# relative tolerance of a result computed in each dtype, against float64 on the same or another backend
TOL = {"float32": 1e-4, "float64": 1e-8}
# relative tolerance of a claimed property, checked in float64 (inner kernels solve to about 1e-10)
PROP_TOL = 1e-7

FAST = settings(max_examples=8, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PROPS = settings(FAST, max_examples=20)


# ----------------------------------------------------------------- helpers
def make(name: str, **kwargs: Any) -> mtlsolve.Solver:
    """A fresh instance: required hyperparameters from REQUIRED, seed 0 for randomized solvers."""
    cls = CLASSES[name]
    fields = hyperparameters(cls)
    args = dict(REQUIRED.get(name, {}))
    missing = sorted(f for f, d in fields.items() if d is attrs.NOTHING and f not in args)
    if missing:
        pytest.fail(f"{name} requires {missing} without defaults: add them to REQUIRED in tests/test_conformance.py")
    if cls.randomized:
        if "seed" not in fields:
            pytest.fail(f"{name} is randomized but has no 'seed' hyperparameter")
        args["seed"] = 0
    return mtlsolve.get(name, **{**args, **kwargs})


def step(solver: mtlsolve.Solver, G: Any = None, L: Any = None, gramian: Any = None) -> mtlsolve.Result:
    """One training step as an adapter runs it: solve, then the post-step call where the solver asks for it."""
    m = next(x for x in (G, gramian, L) if x is not None).shape[0]
    extras = EXTRAS[solver.name](m, None if G is None else G.shape[1]) if solver.name in EXTRAS else {}
    result = solver(G, gramian=gramian, losses=L, **extras)
    if solver.post_step:  # the losses recomputed after the model step: every task improved, by different amounts
        factors = np.linspace(0.8, 0.95, m)
        solver.after_step(L * (torch.tensor(factors, dtype=L.dtype, device=L.device) if torch.is_tensor(L) else factors))
    return result


def convert(x: np.ndarray, backend: str, dtype: str, device: str = "cpu") -> Any:
    if backend == "numpy":
        return x.astype(dtype)
    return torch.tensor(x, dtype=getattr(torch, dtype), device=device)


def np64(x: Any) -> np.ndarray:
    if torch.is_tensor(x):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def scale_of(G: np.ndarray, result: mtlsolve.Result) -> float:
    """The natural size of d's rounding error: Σ|w_i|‖g_i‖ (≥ ‖d‖), or ‖d‖ + max‖g_i‖ without weights."""
    norms = np.linalg.norm(G, axis=1)
    if result.weights is not None:
        s = float(np.abs(np64(result.weights)) @ norms)
    else:
        s = float(np.linalg.norm(np64(result.direction)) + norms.max())
    return max(s, 1e-300)


def assert_close(actual: Any, expected: Any, tol: float, scale: float, what: str) -> None:
    np.testing.assert_allclose(np64(actual), np64(expected), rtol=tol, atol=tol * scale, err_msg=what)


def assert_same_result(a: mtlsolve.Result, b: mtlsolve.Result, what: str) -> None:
    for field in ("direction", "weights"):
        x, y = getattr(a, field), getattr(b, field)
        assert (x is None) == (y is None), f"{what}: {field} is None in one result only"
        if x is not None:
            np.testing.assert_array_equal(np64(x), np64(y), err_msg=f"{what}: {field}")


def requirements(name: str) -> frozenset[Need]:
    return make(name).requirements()


# Each check runs only on the solvers it applies to, chosen from their declared needs.
NEEDS = {name: requirements(name) for name in SOLVERS}
#: solvers that run on the losses alone
LOSS_ONLY = [name for name in SOLVERS if not NEEDS[name] & {Need.GRAMIAN, Need.MATRIX}]
#: solvers that never need G itself: the Gramian (or nothing) will do
GRAMIAN_SUFFICES = [name for name in SOLVERS if Need.MATRIX not in NEEDS[name]]
#: (solver, input holding a NaN or Inf) for every input the solver reads
NON_FINITE_CASES = (
    [(name, "matrix") for name in SOLVERS]
    + [(name, "gramian") for name in GRAMIAN_SUFFICES if Need.GRAMIAN in NEEDS[name]]
    + [(name, "losses") for name in SOLVERS if Need.LOSSES in NEEDS[name]]
)


@st.composite
def problems(draw, name: str, min_m: int = 1, max_m: int = 5, max_n: int = 6, n_lt_m: bool = False,
             well_conditioned: bool = False):
    """(G, L): an m x n float64 matrix and positive losses.

    For a solver reading b > 1 batches (``cls.batches``) G stacks b perturbed copies of the
    m task gradients (b·m rows, batch after batch), and L likewise.

    By default the rows are Gaussian with norms spread over two decades and the whole matrix
    scaled by 10^[-2, 2]; ``n_lt_m`` makes G rank-deficient (n < m); ``well_conditioned``
    gives independent rows (m ≤ n) with condition number below 12, where every backend and
    dtype must agree to that dtype's precision.
    """
    low = max(min_m, MIN_TASKS.get(name, 1), 2 if n_lt_m else 1)
    m = draw(st.integers(low, max(low, max_m)), label="m")
    if n_lt_m:
        n = draw(st.integers(1, m - 1), label="n")
    else:
        n = draw(st.integers(m if well_conditioned else 1, max(m, max_n)), label="n")
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="seed"))
    if well_conditioned:
        U = np.linalg.qr(rng.standard_normal((m, m)))[0]
        V = np.linalg.qr(rng.standard_normal((n, m)))[0]
        G = (U * rng.uniform(1.0, 3.0, m)) @ V.T * rng.uniform(0.5, 2.0, m)[:, None]
    else:
        scales = np.array(draw(st.lists(st.floats(0.1, 10.0), min_size=m, max_size=m), label="row scales"))
        G = rng.standard_normal((m, n)) * scales[:, None] * 10.0 ** draw(st.floats(-2, 2), label="log10 scale")
    L = rng.uniform(0.2, 5.0, size=m)
    b = CLASSES[name].batches
    if b > 1:  # MoDo, SDMGrad: b independent batches of the same m tasks, stacked batch after batch
        noise = 0.3 * rng.standard_normal((b,) + G.shape) * np.linalg.norm(G, axis=1, keepdims=True) / np.sqrt(n)
        G = np.concatenate(G + noise)
        L = np.concatenate(L * rng.uniform(0.8, 1.2, (b, m)))
    return G, L


@st.composite
def sequences(draw, name: str, steps: int = 5, well_conditioned: bool = False):
    """A few consecutive steps (G_t, L_t) of one m x n problem, losses drifting down."""
    out = [draw(problems(name, well_conditioned=well_conditioned))]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="drift seed"))
    for t in range(1, steps):
        G, L = out[-1]
        G = G + 0.1 * rng.standard_normal(G.shape) * np.linalg.norm(G, axis=1, keepdims=True) / np.sqrt(G.shape[1])
        out.append((G, L * rng.uniform(0.85, 1.0, L.shape)))
    return out


def run_sequence(solver: mtlsolve.Solver, seq: list, backend: str = "numpy", dtype: str = "float64") -> list:
    """Steps through ``seq``, with an epoch end every two steps (DWA, STCH use it)."""
    results = []
    for t, (G, L) in enumerate(seq):
        results.append(step(solver, convert(G, backend, dtype), convert(L, backend, dtype)))
        if t % 2 == 1:
            solver.end_epoch()
    return results


# ---------------------------------------------------------------- metadata
def test_some_solvers_are_registered():
    assert "ls" in SOLVERS


@pytest.mark.parametrize("name", SOLVERS)
def test_metadata_and_aliases_construct(name):
    solver = make(name)
    cls = CLASSES[name]
    assert type(solver) is cls and cls.name == name
    assert cls.family in mtlsolve.FAMILIES and set(cls.properties) <= set(PROPERTIES)
    assert solver.requirements() >= cls.needs
    repr(solver)
    config = {"name": name, **REQUIRED.get(name, {})}
    assert type(mtlsolve.from_config(config)) is cls
    G = np.array([[1.0, 0.0, 2.0], [-1.0, 1.0, 0.5], [0.5, 0.5, -1.0], [2.0, -1.0, 0.0], [0.0, 1.0, 1.0]])
    L = np.arange(1.0, 6.0)
    m = max(MIN_TASKS.get(name, 2), 2)
    m = -(-m // cls.batches) * cls.batches  # whole batches for the solvers reading several
    for alias, preset in cls.aliases.items():
        entry, got = mtlsolve.registry.resolve(alias)
        assert entry.cls is cls and dict(got) == dict(preset), alias
        args = {**REQUIRED.get(name, {}), **({"seed": 0} if cls.randomized else {})}
        result = step(mtlsolve.get(alias, **args), G[:m], L[:m])
        assert np.isfinite(np64(result.direction)).all(), alias


# ------------------------------------------------------- shapes and types
@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", SOLVERS)
@FAST
@given(data=st.data())
def test_result_shapes_types_and_combination(name, dtype, backend, device, data):
    G, L = data.draw(problems(name))
    m, n = G.shape
    X, Lx = convert(G, backend, dtype, device), convert(L, backend, dtype, device)
    result = step(make(name), X, Lx)
    assert isinstance(result, mtlsolve.Result)
    d = result.direction
    assert d is not None, f"{name} returned no direction for a system with G"
    arrays = {"direction": (d, (n,))}
    if result.weights is not None:
        arrays["weights"] = (result.weights, (m,))
    for what, (x, shape) in arrays.items():
        assert tuple(x.shape) == shape, f"{what} shape {tuple(x.shape)} != {shape}"
        if backend == "numpy":
            assert isinstance(x, np.ndarray) and x.dtype == X.dtype, f"{what}: {type(x)} {x.dtype}"
        else:
            assert torch.is_tensor(x) and x.dtype == X.dtype and x.device == X.device, f"{what}: {x.dtype} {x.device}"
        assert np.isfinite(np64(x)).all(), what
    if result.weights is not None:  # the contract of Result: d = Gᵀw
        assert_close(d, np64(result.weights) @ np64(X), TOL[dtype], scale_of(G, result), "d = Gᵀw")


@pytest.mark.parametrize("name", LOSS_ONLY)
@FAST
@given(data=st.data())
def test_losses_only(name, data):
    G, L = data.draw(problems(name))
    result = step(make(name), L=L)
    assert result.direction is None
    assert isinstance(result.weights, np.ndarray) and result.weights.shape == L.shape
    with_g = step(make(name), G, L)
    assert_close(result.weights, with_g.weights, TOL["float64"], np.abs(with_g.weights).max(), "weights")


@pytest.mark.parametrize("name", GRAMIAN_SUFFICES)
@FAST
@given(data=st.data())
def test_gramian_only_gives_the_same_weights(name, data):
    G, L = data.draw(problems(name))
    from_k = step(make(name), gramian=G @ G.T, L=L)
    from_g = step(make(name), G, L)
    assert from_k.direction is None
    assert from_k.weights is not None, f"{name} does not read G but returned no weights"
    assert_close(from_k.weights, from_g.weights, TOL["float64"] * 10, np.abs(np64(from_g.weights)).max(), "weights")


# ---------------------------------------------------------------- determinism
@pytest.mark.parametrize("name", SOLVERS)
@FAST
@given(data=st.data())
def test_deterministic(name, data):
    seq = data.draw(sequences(name, steps=3))
    cls = CLASSES[name]
    if cls.randomized or cls.stateful:
        first, second = run_sequence(make(name), seq), run_sequence(make(name), seq)
    else:
        solver = make(name)
        first, second = run_sequence(solver, seq), run_sequence(solver, seq)
    for t, (a, b) in enumerate(zip(first, second)):
        assert_same_result(a, b, f"step {t}")


# ------------------------------------------------------ degenerate systems
def _zero(G):
    return np.zeros_like(G)


def _zero_row(G):
    G = G.copy()
    G[-1] = 0.0
    return G


def _duplicated(G):
    G = G.copy()
    G[1] = G[0]
    return G


def _badly_scaled(G):
    G = G.copy()
    G[0] *= 1e-6
    G[1] *= 1e6
    return G


DEGENERATE = {"zero": _zero, "zero_row": _zero_row, "duplicated_rows": _duplicated, "badly_scaled": _badly_scaled,
              "rank_deficient": None}
DEGENERATE_BACKENDS = [("numpy", "float64"), ("torch", "float32")]


@pytest.mark.parametrize("backend, dtype", DEGENERATE_BACKENDS, ids=["numpy64", "torch32"])
@pytest.mark.parametrize("case", list(DEGENERATE))
@pytest.mark.parametrize("name", SOLVERS)
@settings(FAST, max_examples=5)
@given(data=st.data())
def test_finite_on_degenerate_systems(name, case, backend, dtype, data):
    if case == "rank_deficient":
        G, L = data.draw(problems(name, min_m=3, n_lt_m=True))
    else:
        G, L = data.draw(problems(name, min_m=2))
        G = DEGENERATE[case](G)
    solver = make(name)
    for call in range(2):  # the second call starts from whatever state the first one left
        result = step(solver, convert(G, backend, dtype), convert(L, backend, dtype))
        for field in ("direction", "weights"):
            x = getattr(result, field)
            assert x is None or np.isfinite(np64(x)).all(), f"call {call}: {field} = {x}"
        if case == "zero" and call == 0:
            np.testing.assert_array_equal(np64(result.direction), 0.0, err_msg="G = 0 must give d = 0")


# --------------------------------------------------------- non-finite input
@pytest.mark.filterwarnings("ignore:(invalid value|overflow) encountered:RuntimeWarning")  # numpy on the way to the error
@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("name, where", NON_FINITE_CASES)
@settings(FAST, max_examples=4)
@given(data=st.data())
def test_non_finite_input_raises(name, where, bad, backend, data):
    G, L = data.draw(problems(name))
    i = data.draw(st.integers(0, G.shape[0] - 1), label="bad task")
    if where == "matrix":
        G = G.copy()
        G[i, data.draw(st.integers(0, G.shape[1] - 1), label="bad coordinate")] = bad
    elif where == "losses":
        L = L.copy()
        L[i] = bad
    args = {"L": convert(L, backend, "float64")}
    if where == "gramian":
        K = G @ G.T
        K[i, i] = bad
        args["gramian"] = convert(K, backend, "float64")
    else:
        args["G"] = convert(G, backend, "float64")
    with pytest.raises(NonFiniteError) as info:
        step(make(name), **args)
    assert isinstance(info.value, ValueError)


# ------------------------------------------------------------------ state
@pytest.mark.parametrize("name", SOLVERS)
@settings(FAST, max_examples=5)
@given(data=st.data())
def test_state_dict_round_trip(name, data):
    seq = data.draw(sequences(name, steps=6))
    k = data.draw(st.integers(1, 4), label="k")
    solver = make(name)
    first = run_sequence(solver, seq[:k])
    snapshot = solver.state_dict()
    pickled = pickle.dumps(snapshot)  # a checkpoint is pickled in practice
    expected = run_sequence(solver, seq[k:k + 2])  # must leave the snapshot as it was
    for label, state in (("restored", snapshot), ("restored again", snapshot), ("unpickled", pickle.loads(pickled))):
        copy = make(name)
        copy.load_state_dict(state)
        for t, (a, b) in enumerate(zip(run_sequence(copy, seq[k:k + 2]), expected)):
            assert_same_result(a, b, f"{label}, step {k + t}")
    # reset() forgets everything: the next output is a fresh instance's first output
    solver.reset()
    assert_same_result(run_sequence(solver, seq[:1])[0], first[0], "after reset()")


# ------------------------------------------------------ backend agreement
# every backend and dtype against numpy float64
OTHER_CONFIGS = [
    pytest.param(p.values[0], p.values[1], dtype, id=f"{p.id}-{dtype}", marks=p.marks)
    for p in BACKENDS for dtype in DTYPES if (p.values[0], dtype) != ("numpy", "float64")
]


@pytest.mark.parametrize("backend, device, dtype", OTHER_CONFIGS)
@pytest.mark.parametrize("name", SOLVERS)
@FAST
@given(data=st.data())
def test_backends_and_dtypes_agree(name, backend, device, dtype, data):
    seq = data.draw(sequences(name, steps=2, well_conditioned=True))
    reference = run_sequence(make(name), seq)
    solver = make(name)
    for t, (G, L) in enumerate(seq):
        got = step(solver, convert(G, backend, dtype, device), convert(L, backend, dtype, device))
        if t % 2 == 1:
            solver.end_epoch()
        ref = reference[t]
        scale = scale_of(G, ref)
        assert_close(got.direction, ref.direction, TOL[dtype], scale, f"step {t}: direction")
        assert (got.weights is None) == (ref.weights is None)
        if ref.weights is not None:
            w_scale = np.abs(np64(ref.weights)).max()
            assert_close(got.weights, ref.weights, TOL[dtype], w_scale, f"step {t}: weights")


# ------------------------------------------------------------- properties
def _solve(name: str, G: np.ndarray, L: np.ndarray) -> mtlsolve.Result:
    return step(make(name), G, L)


def _full_rank(G: np.ndarray) -> bool:
    s = np.linalg.svd(G, compute_uv=False)
    return G.shape[0] <= G.shape[1] and s[-1] > 1e-3 * s[0]


def check_permutation_equivariant(name, data):
    G, L = data.draw(problems(name))
    perm = np.array(data.draw(st.permutations(range(G.shape[0])), label="permutation"))
    a, b = _solve(name, G, L), _solve(name, G[perm], L[perm])
    assert_close(b.direction, a.direction, PROP_TOL, scale_of(G, a), "d must not change")
    if a.weights is not None and _full_rank(G):  # the weights are unique only then
        assert_close(b.weights, np64(a.weights)[perm], PROP_TOL, np.abs(a.weights).max(), "w must be permuted")


def _positive_factor(data) -> float:
    return data.draw(st.sampled_from([1e-4, 1e-3, 0.01, 0.3, 3.0, 100.0, 1e4]), label="c")


def check_positive_homogeneous(name, data):
    G, L = data.draw(problems(name))
    c = _positive_factor(data)
    a, b = _solve(name, G, L), _solve(name, c * G, L)
    assert_close(b.direction, c * np64(a.direction), PROP_TOL, c * scale_of(G, a), f"d(cG) = c·d(G), c = {c}")


def check_scale_invariant(name, data):
    G, L = data.draw(problems(name))
    c = _positive_factor(data)
    a, b = _solve(name, G, L), _solve(name, c * G, L)
    assert_close(b.direction, a.direction, PROP_TOL, scale_of(G, a), f"d(cG) = d(G), c = {c}")


def check_non_conflicting(name, data):
    G, L = data.draw(problems(name))
    result = _solve(name, G, L)
    products = G @ np64(result.direction)
    slack = PROP_TOL * np.linalg.norm(G, axis=1) * scale_of(G, result)
    assert (products >= -slack).all(), f"d·g_i = {products}"


def check_simplex_weights(name, data):
    G, L = data.draw(problems(name))
    w = _solve(name, G, L).weights
    assert w is not None, f"{name} claims simplex weights but returns none"
    w = np64(w)
    assert (w >= -PROP_TOL).all() and abs(w.sum() - 1.0) <= PROP_TOL, f"w = {w}"


def check_linear(name, data):
    G1, L = data.draw(problems(name))
    seed = data.draw(st.integers(0, 2**32 - 1), label="second seed")
    G2 = np.random.default_rng(seed).standard_normal(G1.shape)
    a, b, both = _solve(name, G1, L), _solve(name, G2, L), _solve(name, G1 - 2.5 * G2, L)
    scale = scale_of(G1, a) + 2.5 * scale_of(G2, b)
    expected = np64(a.direction) - 2.5 * np64(b.direction)
    assert_close(both.direction, expected, PROP_TOL, scale, "d(G1 - 2.5 G2) = d(G1) - 2.5 d(G2)")
    if a.weights is not None:
        assert_close(b.weights, a.weights, PROP_TOL, np.abs(a.weights).max(), "w must not depend on G")


CHECKERS = {
    "permutation_equivariant": check_permutation_equivariant,
    "positive_homogeneous": check_positive_homogeneous,
    "scale_invariant": check_scale_invariant,
    "non_conflicting": check_non_conflicting,
    "simplex_weights": check_simplex_weights,
    "linear": check_linear,
}


def test_every_property_has_a_checker():
    assert set(CHECKERS) == set(PROPERTIES)


@pytest.mark.parametrize("name, prop", CLAIMS, ids=[f"{n}-{p}" for n, p in CLAIMS])
@PROPS
@given(data=st.data())
def test_claimed_property(name, prop, data):
    CHECKERS[prop](name, data)

"""The conformance checks every solver owes, built-in or third-party.

The protocol (shapes; result type, dtype and device; d = Gᵀw; losses-only and Gramian-only
solves; determinism; finite output on degenerate systems; NonFiniteError on NaN/Inf; state
round-trip; backend and dtype agreement) and then exactly the properties a solver claims in
``cls.properties`` (keys of :data:`mtlsolve.PROPERTIES`). Matrices come from hypothesis.

Each ``check_*`` function takes a :class:`Target` (the solver class and how to build and step it),
a hypothesis ``data`` object and the case's parameters, and raises AssertionError with a message
naming what broke. :func:`mtlsolve.testing.check_solver` runs them all; tests/test_conformance.py
runs them parametrized over every registered solver.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import numpy as np
import torch

try:
    from hypothesis import strategies as st
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError('mtlsolve.testing needs hypothesis: pip install "mtlsolve[test]"') from exc

import mtlsolve
from mtlsolve.errors import NonFiniteError
from mtlsolve.registry import construct, hyperparameters
from mtlsolve.solver import FAMILIES, PROPERTIES, Need, Result, Solver

# Hyperparameters of the built-in solvers that have no default, by canonical name.
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

DTYPES = ("float32", "float64")
#: (array library, device) pairs; "cuda" runs only where torch sees a device
BACKENDS = (("numpy", "cpu"), ("torch", "cpu"), ("torch", "cuda"))
# relative tolerance of a result computed in each dtype, against float64 on the same or another backend
TOL = {"float32": 1e-4, "float64": 1e-8}
# relative tolerance of a claimed property, checked in float64 (inner kernels solve to about 1e-10)
PROP_TOL = 1e-7


# ----------------------------------------------------------------- targets
@attrs.frozen
class Target:
    """A solver class under test and how to build and step it.

    ``args``: hyperparameters without a default; ``min_tasks``: the fewest tasks it accepts with
    them; ``extras``: keyword inputs it reads besides G, K and the losses, as a function of (m, n).
    """

    cls: type[Solver]
    args: Mapping[str, Any] = attrs.field(factory=dict, converter=dict)
    min_tasks: int = 1
    extras: Callable[[int, int | None], dict[str, Any]] | None = None

    @property
    def name(self) -> str:
        return self.cls.name

    @property
    def registered(self) -> bool:
        """Whether ``mtlsolve.get(name)`` builds this class (so configs and aliases can be checked)."""
        try:
            return mtlsolve.registry.resolve(self.name)[0].cls is self.cls
        except mtlsolve.UnknownSolverError:
            return False

    def make(self, **kwargs: Any) -> Solver:
        """A fresh instance: the required hyperparameters from ``args``, seed 0 for randomized solvers."""
        fields = hyperparameters(self.cls)
        args = dict(self.args)
        missing = sorted(f for f, d in fields.items() if d is attrs.NOTHING and f not in args and f not in kwargs)
        if missing:
            raise AssertionError(f"{self.name} requires {missing} without defaults: pass them in args=")
        if self.cls.randomized:
            if "seed" not in fields:
                raise AssertionError(f"{self.name} is randomized but has no 'seed' hyperparameter")
            args["seed"] = 0
        return construct(self.cls, {**args, **kwargs})

    def step(self, solver: Solver, G: Any = None, L: Any = None, gramian: Any = None) -> Result:
        """One training step as an adapter runs it: solve, then the post-step call where the solver asks for it."""
        m = next(x for x in (G, gramian, L) if x is not None).shape[0]
        extras = self.extras(m, None if G is None else G.shape[1]) if self.extras else {}
        result = solver(G, gramian=gramian, losses=L, **extras)
        if solver.post_step:  # the losses recomputed after the model step: every task improved, by different amounts
            factors = np.linspace(0.8, 0.95, m)
            improved = torch.tensor(factors, dtype=L.dtype, device=L.device) if torch.is_tensor(L) else factors
            solver.after_step(L * improved)
        return result

    def needs(self) -> frozenset[Need]:
        return self.make().requirements()


def target(
    solver: str | type[Solver] | Solver,
    *,
    args: Mapping[str, Any] | None = None,
    min_tasks: int | None = None,
    extras: Callable[[int, int | None], dict[str, Any]] | None = None,
) -> Target:
    """The :class:`Target` of a registered name, a Solver class or an instance (whose class is taken;
    pass its hyperparameters in ``args``). The built-in solvers' defaults come from :data:`REQUIRED`,
    :data:`MIN_TASKS` and :data:`EXTRAS`; arguments given here replace them."""
    if isinstance(solver, str):
        cls = mtlsolve.registry.resolve(solver)[0].cls
    elif isinstance(solver, Solver):
        cls = type(solver)
    else:
        cls = solver
    if not (isinstance(cls, type) and issubclass(cls, Solver)):
        raise TypeError(f"expected a solver name, a Solver class or instance, got {solver!r}")
    return Target(
        cls,
        args=REQUIRED.get(cls.name, {}) if args is None else args,
        min_tasks=MIN_TASKS.get(cls.name, 1) if min_tasks is None else min_tasks,
        extras=EXTRAS.get(cls.name) if extras is None else extras,
    )


# ------------------------------------------------------------ array helpers
def convert(x: np.ndarray, backend: str, dtype: str, device: str = "cpu") -> Any:
    """A float64 numpy array as a numpy array or torch tensor of ``dtype`` on ``device``."""
    if backend == "numpy":
        return x.astype(dtype)
    return torch.tensor(x, dtype=getattr(torch, dtype), device=device)


def np64(x: Any) -> np.ndarray:
    if torch.is_tensor(x):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def scale_of(G: np.ndarray, result: Result) -> float:
    """The natural size of d's rounding error: Σ|w_i|‖g_i‖ (≥ ‖d‖), or ‖d‖ + max‖g_i‖ without weights."""
    norms = np.linalg.norm(G, axis=1)
    if result.weights is not None:
        s = float(np.abs(np64(result.weights)) @ norms)
    else:
        s = float(np.linalg.norm(np64(result.direction)) + norms.max())
    return max(s, 1e-300)


def assert_close(actual: Any, expected: Any, tol: float, scale: float, what: str) -> None:
    np.testing.assert_allclose(np64(actual), np64(expected), rtol=tol, atol=tol * scale, err_msg=what)


def assert_same_result(a: Result, b: Result, what: str) -> None:
    for field in ("direction", "weights"):
        x, y = getattr(a, field), getattr(b, field)
        assert (x is None) == (y is None), f"{what}: {field} is None in one result only"
        if x is not None:
            np.testing.assert_array_equal(np64(x), np64(y), err_msg=f"{what}: {field}")


# ------------------------------------------------------------- generators
@st.composite
def problems(
    draw,
    t: Target,
    min_m: int = 1,
    max_m: int = 5,
    max_n: int = 6,
    n_lt_m: bool = False,
    well_conditioned: bool = False,
):
    """(G, L): an m x n float64 matrix and positive losses.

    For a solver reading b > 1 batches (``cls.batches``) G stacks b perturbed copies of the
    m task gradients (b·m rows, batch after batch), and L likewise.

    By default the rows are Gaussian with norms spread over two decades and the whole matrix
    scaled by 10^[-2, 2]; ``n_lt_m`` makes G rank-deficient (n < m); ``well_conditioned``
    gives independent rows (m ≤ n) with condition number below 12, where every backend and
    dtype must agree to that dtype's precision.
    """
    low = max(min_m, t.min_tasks, 2 if n_lt_m else 1)
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
    b = t.cls.batches
    if b > 1:  # MoDo, SDMGrad: b independent batches of the same m tasks, stacked batch after batch
        noise = 0.3 * rng.standard_normal((b,) + G.shape) * np.linalg.norm(G, axis=1, keepdims=True) / np.sqrt(n)
        G = np.concatenate(G + noise)
        L = np.concatenate(L * rng.uniform(0.8, 1.2, (b, m)))
    return G, L


@st.composite
def sequences(draw, t: Target, steps: int = 5, well_conditioned: bool = False):
    """A few consecutive steps (G_t, L_t) of one m x n problem, losses drifting down."""
    out = [draw(problems(t, well_conditioned=well_conditioned))]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="drift seed"))
    for _ in range(1, steps):
        G, L = out[-1]
        G = G + 0.1 * rng.standard_normal(G.shape) * np.linalg.norm(G, axis=1, keepdims=True) / np.sqrt(G.shape[1])
        out.append((G, L * rng.uniform(0.85, 1.0, L.shape)))
    return out


def run_sequence(t: Target, solver: Solver, seq: list, backend: str = "numpy", dtype: str = "float64") -> list:
    """Steps through ``seq``, with an epoch end every two steps (DWA, STCH use it)."""
    results = []
    for i, (G, L) in enumerate(seq):
        results.append(t.step(solver, convert(G, backend, dtype), convert(L, backend, dtype)))
        if i % 2 == 1:
            solver.end_epoch()
    return results


# ---------------------------------------------------------------- metadata
def check_metadata(t: Target) -> None:
    """Class attributes are consistent; for a registered solver, configs and every alias build it and run."""
    solver = t.make()
    cls = t.cls
    assert type(solver) is cls
    assert cls.family in FAMILIES, f"family {cls.family!r} not in mtlsolve.FAMILIES"
    assert set(cls.properties) <= set(PROPERTIES), f"unknown properties {set(cls.properties) - set(PROPERTIES)}"
    assert solver.requirements() >= cls.needs
    repr(solver)
    if not t.registered:
        return
    assert type(mtlsolve.from_config({"name": t.name, **t.args})) is cls
    G = np.array([[1.0, 0.0, 2.0], [-1.0, 1.0, 0.5], [0.5, 0.5, -1.0], [2.0, -1.0, 0.0], [0.0, 1.0, 1.0]])
    L = np.arange(1.0, 6.0)
    m = max(t.min_tasks, 2)
    m = -(-m // cls.batches) * cls.batches  # whole batches for the solvers reading several
    for alias, preset in cls.aliases.items():
        entry, got = mtlsolve.registry.resolve(alias)
        assert entry.cls is cls and dict(got) == dict(preset), alias
        args = {**t.args, **({"seed": 0} if cls.randomized else {})}
        result = t.step(mtlsolve.get(alias, **args), G[:m], L[:m])
        assert np.isfinite(np64(result.direction)).all(), alias


# ------------------------------------------------------- shapes and types
def check_result(t: Target, data, dtype: str = "float64", backend: str = "numpy", device: str = "cpu") -> None:
    """Result type; direction (and weights) shape, array type, dtype, device; finite; d = Gᵀw."""
    G, L = data.draw(problems(t))
    m, n = G.shape
    X, Lx = convert(G, backend, dtype, device), convert(L, backend, dtype, device)
    result = t.step(t.make(), X, Lx)
    assert isinstance(result, Result)
    d = result.direction
    assert d is not None, f"{t.name} returned no direction for a system with G"
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


def check_losses_only(t: Target, data) -> None:
    """A solver needing neither G nor K gives weights from the losses alone, the same as with G."""
    G, L = data.draw(problems(t))
    result = t.step(t.make(), L=L)
    assert result.direction is None
    assert isinstance(result.weights, np.ndarray) and result.weights.shape == L.shape
    with_g = t.step(t.make(), G, L)
    assert_close(result.weights, with_g.weights, TOL["float64"], np.abs(with_g.weights).max(), "weights")


def check_gramian_only(t: Target, data) -> None:
    """A solver not needing G gives the same weights from K = GGᵀ as from G."""
    G, L = data.draw(problems(t))
    from_k = t.step(t.make(), gramian=G @ G.T, L=L)
    from_g = t.step(t.make(), G, L)
    assert from_k.direction is None
    assert from_k.weights is not None, f"{t.name} does not read G but returned no weights"
    assert_close(from_k.weights, from_g.weights, TOL["float64"] * 10, np.abs(np64(from_g.weights)).max(), "weights")


# ---------------------------------------------------------------- determinism
def check_deterministic(t: Target, data) -> None:
    """The same steps give bit-identical results (a stateful or randomized solver: a fresh instance each run)."""
    seq = data.draw(sequences(t, steps=3))
    if t.cls.randomized or t.cls.stateful:
        first, second = run_sequence(t, t.make(), seq), run_sequence(t, t.make(), seq)
    else:
        solver = t.make()
        first, second = run_sequence(t, solver, seq), run_sequence(t, solver, seq)
    for i, (a, b) in enumerate(zip(first, second)):
        assert_same_result(a, b, f"step {i}")


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


DEGENERATE = {
    "zero": _zero,
    "zero_row": _zero_row,
    "duplicated_rows": _duplicated,
    "badly_scaled": _badly_scaled,
    "rank_deficient": None,
}
DEGENERATE_BACKENDS = (("numpy", "float64"), ("torch", "float32"))


def check_degenerate(t: Target, data, case: str, backend: str = "numpy", dtype: str = "float64") -> None:
    """Finite output on a degenerate system (:data:`DEGENERATE`), twice in a row; G = 0 gives d = 0."""
    if case == "rank_deficient":
        G, L = data.draw(problems(t, min_m=3, n_lt_m=True))
    else:
        G, L = data.draw(problems(t, min_m=2))
        G = DEGENERATE[case](G)
    solver = t.make()
    for call in range(2):  # the second call starts from whatever state the first one left
        result = t.step(solver, convert(G, backend, dtype), convert(L, backend, dtype))
        for field in ("direction", "weights"):
            x = getattr(result, field)
            assert x is None or np.isfinite(np64(x)).all(), f"call {call}: {field} = {x}"
        if case == "zero" and call == 0:
            np.testing.assert_array_equal(np64(result.direction), 0.0, err_msg="G = 0 must give d = 0")


# --------------------------------------------------------- non-finite input
def non_finite_inputs(t: Target) -> list[str]:
    """The inputs the solver reads that can hold a NaN or Inf: "matrix", "gramian", "losses"."""
    needs = t.needs()
    out = ["matrix"]
    if Need.GRAMIAN in needs and Need.MATRIX not in needs:
        out.append("gramian")
    if Need.LOSSES in needs:
        out.append("losses")
    return out


def check_non_finite(t: Target, data, where: str, bad: float = np.nan, backend: str = "numpy") -> None:
    """A NaN or Inf in an input the solver reads raises NonFiniteError (a ValueError)."""
    G, L = data.draw(problems(t))
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
    try:
        t.step(t.make(), **args)
    except NonFiniteError as exc:
        assert isinstance(exc, ValueError)
    else:
        raise AssertionError(f"{t.name}: {bad} in the {where} did not raise NonFiniteError")


# ------------------------------------------------------------------ state
def check_state_round_trip(t: Target, data) -> None:
    """state_dict() restored (twice, and after pickling) continues exactly; reset() forgets everything."""
    seq = data.draw(sequences(t, steps=6))
    k = data.draw(st.integers(1, 4), label="k")
    solver = t.make()
    first = run_sequence(t, solver, seq[:k])
    snapshot = solver.state_dict()
    pickled = pickle.dumps(snapshot)  # a checkpoint is pickled in practice
    expected = run_sequence(t, solver, seq[k : k + 2])  # must leave the snapshot as it was
    for label, state in (("restored", snapshot), ("restored again", snapshot), ("unpickled", pickle.loads(pickled))):
        copy = t.make()
        copy.load_state_dict(state)
        for i, (a, b) in enumerate(zip(run_sequence(t, copy, seq[k : k + 2]), expected)):
            assert_same_result(a, b, f"{label}, step {k + i}")
    # reset() forgets everything: the next output is a fresh instance's first output
    solver.reset()
    assert_same_result(run_sequence(t, solver, seq[:1])[0], first[0], "after reset()")


# ------------------------------------------------------ backend agreement
def check_backends_agree(t: Target, data, backend: str, device: str, dtype: str) -> None:
    """A backend and dtype agree with numpy float64 on well-conditioned systems, to the dtype's precision."""
    seq = data.draw(sequences(t, steps=2, well_conditioned=True))
    reference = run_sequence(t, t.make(), seq)
    solver = t.make()
    for i, (G, L) in enumerate(seq):
        got = t.step(solver, convert(G, backend, dtype, device), convert(L, backend, dtype, device))
        if i % 2 == 1:
            solver.end_epoch()
        ref = reference[i]
        scale = scale_of(G, ref)
        assert_close(got.direction, ref.direction, TOL[dtype], scale, f"step {i}: direction")
        assert (got.weights is None) == (ref.weights is None)
        if ref.weights is not None:
            w_scale = np.abs(np64(ref.weights)).max()
            assert_close(got.weights, ref.weights, TOL[dtype], w_scale, f"step {i}: weights")


# ------------------------------------------------------------- properties
def _solve(t: Target, G: np.ndarray, L: np.ndarray) -> Result:
    return t.step(t.make(), G, L)


def _full_rank(G: np.ndarray) -> bool:
    s = np.linalg.svd(G, compute_uv=False)
    return G.shape[0] <= G.shape[1] and s[-1] > 1e-3 * s[0]


def check_permutation_equivariant(t: Target, data) -> None:
    G, L = data.draw(problems(t))
    perm = np.array(data.draw(st.permutations(range(G.shape[0])), label="permutation"))
    a, b = _solve(t, G, L), _solve(t, G[perm], L[perm])
    assert_close(b.direction, a.direction, PROP_TOL, scale_of(G, a), "d must not change")
    if a.weights is not None and _full_rank(G):  # the weights are unique only then
        assert_close(b.weights, np64(a.weights)[perm], PROP_TOL, np.abs(a.weights).max(), "w must be permuted")


def _positive_factor(data) -> float:
    return data.draw(st.sampled_from([1e-4, 1e-3, 0.01, 0.3, 3.0, 100.0, 1e4]), label="c")


def check_positive_homogeneous(t: Target, data) -> None:
    G, L = data.draw(problems(t))
    c = _positive_factor(data)
    a, b = _solve(t, G, L), _solve(t, c * G, L)
    assert_close(b.direction, c * np64(a.direction), PROP_TOL, c * scale_of(G, a), f"d(cG) = c·d(G), c = {c}")


def check_scale_invariant(t: Target, data) -> None:
    G, L = data.draw(problems(t))
    c = _positive_factor(data)
    a, b = _solve(t, G, L), _solve(t, c * G, L)
    assert_close(b.direction, a.direction, PROP_TOL, scale_of(G, a), f"d(cG) = d(G), c = {c}")


def check_non_conflicting(t: Target, data) -> None:
    G, L = data.draw(problems(t))
    result = _solve(t, G, L)
    products = G @ np64(result.direction)
    slack = PROP_TOL * np.linalg.norm(G, axis=1) * scale_of(G, result)
    assert (products >= -slack).all(), f"d·g_i = {products}"


def check_simplex_weights(t: Target, data) -> None:
    G, L = data.draw(problems(t))
    w = _solve(t, G, L).weights
    assert w is not None, f"{t.name} claims simplex weights but returns none"
    w = np64(w)
    assert (w >= -PROP_TOL).all() and abs(w.sum() - 1.0) <= PROP_TOL, f"w = {w}"


def check_linear(t: Target, data) -> None:
    G1, L = data.draw(problems(t))
    seed = data.draw(st.integers(0, 2**32 - 1), label="second seed")
    G2 = np.random.default_rng(seed).standard_normal(G1.shape)
    a, b, both = _solve(t, G1, L), _solve(t, G2, L), _solve(t, G1 - 2.5 * G2, L)
    scale = scale_of(G1, a) + 2.5 * scale_of(G2, b)
    expected = np64(a.direction) - 2.5 * np64(b.direction)
    assert_close(both.direction, expected, PROP_TOL, scale, "d(G1 - 2.5 G2) = d(G1) - 2.5 d(G2)")
    if a.weights is not None:
        assert_close(b.weights, a.weights, PROP_TOL, np.abs(a.weights).max(), "w must not depend on G")


#: the check of each property in :data:`mtlsolve.PROPERTIES`
CHECKERS: Mapping[str, Callable[[Target, Any], None]] = {
    "permutation_equivariant": check_permutation_equivariant,
    "positive_homogeneous": check_positive_homogeneous,
    "scale_invariant": check_scale_invariant,
    "non_conflicting": check_non_conflicting,
    "simplex_weights": check_simplex_weights,
    "linear": check_linear,
}

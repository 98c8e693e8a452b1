"""Seeded generators of hard gradient systems and the checks every solver owes on them.

Plain numpy (torch only to build bf16/fp16 tensors), importable by a plugin's own tests
(``from mtlsolve.testing import robustness``; tests/test_robustness.py runs them over every
registered solver). Nothing here depends on a particular solver: checks take a call or a result
and a :class:`Case`.

Generators build an exact float64 matrix G64 first ("before rounding"); the input is G64 cast to
the case's dtype, and every check reads the *float64 version of that input* (:attr:`Case.G`), so
rounding to float16 is the input's business, not an error of the solver.

Tolerances derive from the input dtype's unit round-off u (never float64's ε for float32 data):
a Gramian accumulated from the input has entry-wise error about 2√n·u_acc·n_i·n_j, u_acc = min(u,
u_f32) (Higham & Mary, SIAM J. Sci. Comput. 41(5), 2019, Thm. 3.1, the probabilistic bound on an
n-term inner product), and forming d = Gᵀw in the input dtype errs by about √m·u·Σ|w_i|‖g_i‖;
a property is checked relative to the row norms ‖g_i‖ and that scale Σ|w_i|‖g_i‖.
"""

from __future__ import annotations

import math
import signal
import threading
import warnings
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import mtlsolve
from mtlsolve.errors import ConvergenceWarning, MtlsolveError

# ------------------------------------------------------------------- dtypes
#: every input dtype a system is generated in: "numpy.<dtype>" or "torch.<dtype>"
DTYPES = (
    "numpy.float64",
    "numpy.float32",
    "numpy.float16",
    "torch.float64",
    "torch.float32",
    "torch.bfloat16",
    "torch.float16",
)
F32_EPS = float(np.finfo(np.float32).eps)


def _torch():
    import torch

    return torch


def finfo(dtype: str) -> Any:
    """``np.finfo`` / ``torch.finfo`` of a dtype label."""
    lib, name = dtype.split(".")
    return np.finfo(getattr(np, name)) if lib == "numpy" else _torch().finfo(getattr(_torch(), name))


def eps(dtype: str) -> float:
    """Machine epsilon of a dtype label (bf16: 2⁻⁷, fp16: 2⁻¹⁰, float32: 2⁻²³)."""
    return float(finfo(dtype).eps)


def cast(x: np.ndarray, dtype: str) -> Any:
    """A float64 numpy array as an array/tensor of the dtype label (rounded to nearest)."""
    lib, name = dtype.split(".")
    if lib == "numpy":
        return np.asarray(x, dtype=np.float64).astype(getattr(np, name))
    torch = _torch()
    return torch.tensor(np.asarray(x, dtype=np.float64)).to(getattr(torch, name))


def as64(x: Any) -> np.ndarray:
    """Any array or tensor as a float64 numpy array (exact for every dtype here)."""
    if x is None:
        return None
    if hasattr(x, "detach"):
        return x.detach().to("cpu").double().numpy()
    return np.asarray(x, dtype=np.float64)


def tolerance(dtype: str, m: int, n: int) -> float:
    """The relative tolerance of a property of a result computed from an m x n input of this dtype,
    checked against the float64 version of that input (so the input's own rounding is no error):
    8× the Gramian's accumulation error 2√n·u_acc, plus 4(√m + 1)·u for rounding the weights and
    forming d = Gᵀw in the input dtype, plus 1e-10 for float64 inner kernels. A solver that reports
    a larger certified ``tolerance`` is held to that one instead (:func:`property_tolerance`)."""
    u = eps(dtype)
    accumulation = 2.0 * math.sqrt(max(n, 1)) * min(u, F32_EPS)
    return 8.0 * accumulation + 4.0 * (math.sqrt(m) + 1.0) * u + 1e-10


def scale_range(dtype: str) -> tuple[float, float]:
    """The row scales a dtype can hold with its normal numbers: [1e-20, 1e3] clipped (fp16: ~[6e-3, 655])."""
    info = finfo(dtype)
    return max(1e-20, 100.0 * float(info.tiny)), min(1e3, float(info.max) / 100.0)


# -------------------------------------------------------------- generators
# Each takes a generator, m, n (and parameters) and returns an exact float64 m x n matrix.
def _unit_rows(rng: np.random.Generator, m: int, n: int) -> np.ndarray:
    G = rng.standard_normal((m, n))
    norms = np.linalg.norm(G, axis=1, keepdims=True)
    return G / np.where(norms > 0, norms, 1.0)


def gaussian(rng: np.random.Generator, m: int, n: int, scale: float = 1.0) -> np.ndarray:
    """Independent N(0, scale²) entries."""
    return scale * rng.standard_normal((m, n))


def conditioned(rng: np.random.Generator, m: int, n: int, kappa: float = 1e6) -> np.ndarray:
    """U·diag(s)·Vᵀ with singular values log-spaced from 1 to 1/√κ, so κ(K) = κ when m ≤ n
    (for m > n, K is singular and the n non-zero eigenvalues span κ)."""
    r = min(m, n)
    U = np.linalg.qr(rng.standard_normal((m, r)))[0]
    V = np.linalg.qr(rng.standard_normal((n, r)))[0]
    s = np.sqrt(kappa) ** -np.linspace(0.0, 1.0, r) if r > 1 else np.ones(1)
    return (U * s) @ V.T


def row_scaled(
    rng: np.random.Generator, m: int, n: int, low: float = 1e-20, high: float = 1e3, mixed: bool = True
) -> np.ndarray:
    """Gaussian rows scaled log-uniformly over [low, high]: one scale per row (``mixed``) or one for all."""
    k = m if mixed else 1
    scales = 10.0 ** rng.uniform(np.log10(low), np.log10(high), size=(k, 1))
    return rng.standard_normal((m, n)) * scales


def dependent(rng: np.random.Generator, m: int, n: int, rank: int | None = None) -> np.ndarray:
    """Rows linearly dependent before rounding: the first ``rank`` (< m) rows are Gaussian and the others
    exact small-integer combinations of them (exact in float64; their rounding makes them independent)."""
    rank = max(1, min(n, m - 1 if m > 1 else 1, rank if rank is not None else rng.integers(1, max(2, m))))
    base = rng.standard_normal((rank, n))
    coeffs = rng.integers(-3, 4, size=(m - rank, rank)).astype(np.float64)
    return rng.permutation(np.concatenate([base, coeffs @ base]), axis=0)


def opposed(rng: np.random.Generator, m: int, n: int, gap: float = 1e-8) -> np.ndarray:
    """g_1 = −g_0 + gap·‖g_0‖·(unit noise): a nearly opposed pair, the other rows Gaussian (m ≥ 2)."""
    G = rng.standard_normal((m, n))
    if m >= 2:
        G[1] = -G[0] + gap * np.linalg.norm(G[0]) * _unit_rows(rng, 1, n)[0]
    return G


def hull_zero(rng: np.random.Generator, m: int, n: int, gap: float = 0.0) -> np.ndarray:
    """Rows with 0 in (gap = 0) or within gap of their convex hull: Σ λ_i g_i = gap·(unit vector)
    for λ on the simplex. Built as g_i = h_i − Σ_j λ_j h_j (exactly 0 in the hull) plus gap·u."""
    H = rng.standard_normal((m, n))
    lam = rng.dirichlet(np.ones(m))
    return H - lam @ H + gap * _unit_rows(rng, 1, n)[0]


def zero_rows(rng: np.random.Generator, m: int, n: int, zeros: int | None = None) -> np.ndarray:
    """Gaussian with ``zeros`` rows (default 1…m) set to exactly 0."""
    G = rng.standard_normal((m, n))
    k = int(zeros if zeros is not None else rng.integers(1, m + 1))
    G[rng.permutation(m)[:k]] = 0.0
    return G


def tiny_rows(rng: np.random.Generator, m: int, n: int, low: float = 1e-22, high: float = 1e-18) -> np.ndarray:
    """Gaussian rows of which 1…m−1 (or the only one) are scaled into [low, high]: their squared norms
    are subnormal in float32, so a float32 Gramian holds subnormal entries next to normal ones."""
    G = rng.standard_normal((m, n))
    k = int(rng.integers(1, max(m, 2)))
    rows = rng.permutation(m)[:k]
    G[rows] *= 10.0 ** rng.uniform(np.log10(low), np.log10(high), size=(k, 1))
    return G


def _draw(family: str, rng: np.random.Generator, m: int, n: int, dtype: str) -> tuple[np.ndarray, str]:
    """A matrix of a family with its parameters drawn from ``rng``, and a note naming them."""
    low, high = scale_range(dtype)
    if family not in _DRAWS:
        raise ValueError(f"unknown family {family!r}")
    return _DRAWS[family](rng, m, n, low, high)


def _draw_gaussian(rng: np.random.Generator, m: int, n: int, low: float, high: float) -> tuple[np.ndarray, str]:
    c = 10.0 ** rng.uniform(-1, 1)
    return gaussian(rng, m, n, c), f"scale={c:.3g}"


def _draw_conditioned(rng: np.random.Generator, m: int, n: int, low: float, high: float) -> tuple[np.ndarray, str]:
    kappa = 10.0 ** rng.uniform(0, 12)
    return conditioned(rng, m, n, kappa), f"kappa={kappa:.3g}"


def _draw_scaled(rng: np.random.Generator, m: int, n: int, low: float, high: float) -> tuple[np.ndarray, str]:
    """Every row the same scale: the scale-invariance case."""
    return row_scaled(rng, m, n, low, high, mixed=False), "uniform row scale"


def _draw_mixed_scales(rng: np.random.Generator, m: int, n: int, low: float, high: float) -> tuple[np.ndarray, str]:
    return row_scaled(rng, m, n, low, high, mixed=True), "per-row scales"


def _draw_dependent(rng: np.random.Generator, m: int, n: int, low: float, high: float) -> tuple[np.ndarray, str]:
    if n < m and rng.random() < 0.5:  # n < m: dependent by dimension
        return gaussian(rng, m, n), "n < m"
    return dependent(rng, m, n), "exact integer combinations"


def _draw_opposed(rng: np.random.Generator, m: int, n: int, low: float, high: float) -> tuple[np.ndarray, str]:
    gap = 10.0 ** -rng.integers(0, 17)
    return opposed(rng, m, n, gap), f"gap={gap:.0e}"


def _draw_hull_zero(rng: np.random.Generator, m: int, n: int, low: float, high: float) -> tuple[np.ndarray, str]:
    gap = float(rng.choice([0.0, 1e-12, 1e-8, 1e-4]))
    return hull_zero(rng, m, n, gap), f"gap={gap:.0e}"


def _draw_zero_rows(rng: np.random.Generator, m: int, n: int, low: float, high: float) -> tuple[np.ndarray, str]:
    return zero_rows(rng, m, n), "zero rows"


def _draw_tiny_rows(rng: np.random.Generator, m: int, n: int, low: float, high: float) -> tuple[np.ndarray, str]:
    return tiny_rows(rng, m, n), "rows of norm 1e-22…1e-18"


#: how each family's parameters are drawn: (rng, m, n, lowest and highest row scale of the dtype) -> (G, note)
_DRAWS: dict[str, Callable[[np.random.Generator, int, int, float, float], tuple[np.ndarray, str]]] = {
    "gaussian": _draw_gaussian,
    "conditioned": _draw_conditioned,
    "scaled": _draw_scaled,
    "mixed_scales": _draw_mixed_scales,
    "dependent": _draw_dependent,
    "opposed": _draw_opposed,
    "hull_zero": _draw_hull_zero,
    "zero_rows": _draw_zero_rows,
    "tiny_rows": _draw_tiny_rows,
}


#: the generated families (``system(family, ...)``)
FAMILIES = tuple(_DRAWS)


@dataclass(frozen=True)
class Case:
    """One generated system: the exact matrix, its input dtype, positive losses and how to rebuild it."""

    family: str
    G64: np.ndarray = field(repr=False)
    losses64: np.ndarray = field(repr=False)
    dtype: str
    seed: int
    note: str = ""

    @property
    def m(self) -> int:
        return self.G64.shape[0]

    @property
    def n(self) -> int:
        return self.G64.shape[1]

    @property
    def X(self) -> Any:
        """G in the input dtype: what the solver gets."""
        return cast(self.G64, self.dtype)

    @property
    def G(self) -> np.ndarray:
        """The float64 version of the input (after rounding): what checks compare against."""
        return as64(self.X)

    @property
    def L(self) -> Any:
        return cast(self.losses64, self.dtype)

    @property
    def tol(self) -> float:
        return tolerance(self.dtype, self.m, self.n)

    def describe(self) -> str:
        """How to rebuild it, and the input itself when small."""
        if self.family in FAMILIES:
            text = f"system({self.family!r}, m={self.m}, n={self.n}, dtype={self.dtype!r}, seed={self.seed})"
        else:  # built by hand, e.g. from well_conditioned(m, n, seed)
            text = f"{self.family}(m={self.m}, n={self.n}, seed={self.seed}) in {self.dtype}"
        text += f" [{self.note}]" if self.note else ""
        if self.m * self.n <= 24:
            text += "\n    G = " + np.array2string(self.G, precision=17, separator=", ").replace("\n", "\n        ")
        return text


def system(family: str, m: int, n: int, dtype: str = "numpy.float64", seed: int = 0) -> Case:
    """A seeded system of a family (see :data:`FAMILIES`), m x n, in a dtype of :data:`DTYPES`."""
    rng = np.random.default_rng([seed, m, n, FAMILIES.index(family)])
    G64, note = _draw(family, rng, m, n, dtype)
    losses = rng.uniform(0.2, 5.0, size=m)
    return Case(family, G64, losses, dtype, seed, note)


def well_conditioned(m: int, n: int, seed: int = 0, kappa: float = 1e3) -> np.ndarray:
    """Rows of norm ~1 (within a factor 2) with κ(K) ≤ ``kappa`` (needs m ≤ n)."""
    rng = np.random.default_rng([seed, m, n, 99])
    G = conditioned(rng, m, n, 10.0 ** rng.uniform(0, np.log10(kappa)))
    G = G / np.linalg.norm(G, axis=1, keepdims=True) * rng.uniform(0.5, 2.0, size=(m, 1))
    return G


# -------------------------------------------------------- invalid Gramians
INVALID_GRAMIANS = ("non_symmetric", "indefinite", "negative_diagonal")

#: Solvers whose answer is not a certified solve but a fixed iteration count that float32 and
#: float64 legitimately follow to different points (each documents why in its docstring): exempt
#: from every float32/float64 agreement check, by name, with the reason.
PRECISION_EXEMPT = {
    "sdmgrad": "the paper's inner projected SGD (lr 5) expands differences where lr·eig(C) > 2",
}


def invalid_gramian(kind: str, m: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    """A matrix that is no Gramian, each defect far above any round-off: ``non_symmetric`` (K_01 off by
    0.3·n_0·n_1), ``indefinite`` (symmetric, cosine 1.5 between two tasks; both need m ≥ 2),
    ``negative_diagonal`` (K_mm → −K_mm)."""
    rng = np.random.default_rng([seed, m, INVALID_GRAMIANS.index(kind)])
    G = rng.standard_normal((m, max(m, 2)))
    K = G @ G.T
    n = np.sqrt(np.diag(K))
    if kind == "non_symmetric":
        K[0, 1] += 0.3 * n[0] * n[1]
    elif kind == "indefinite":
        K[0, 1] = K[1, 0] = 1.5 * n[0] * n[1]
    elif kind == "negative_diagonal":
        K[-1, -1] = -K[-1, -1]
    else:
        raise ValueError(kind)
    return K * scale


# ----------------------------------------------------------------- checks
class Hang(Exception):
    """A solve ran past its time limit."""


@contextmanager
def time_limit(seconds: float):
    """Raise :class:`Hang` in the main thread after ``seconds`` (POSIX; a no-op elsewhere). The
    signal is handled between Python bytecodes, so a loop inside a compiled kernel is caught when it
    returns; the default limit of :func:`check_call` leaves room for a first call's JIT compilation."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Hang(f"no answer after {seconds} s")

    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Outcome:
    """What one call did: its result or error, the ConvergenceWarnings it issued, and the rules it
    broke as (check, message) pairs."""

    result: mtlsolve.Result | None = None
    error: BaseException | None = None
    warned: list = field(default_factory=list)
    problems: list = field(default_factory=list)

    @property
    def converged(self) -> bool:
        """False only when the solver said so; a solver without an inner problem is exact."""
        if self.result is None:
            return False
        converged = self.result.diagnostics.get("converged")
        return converged is None or bool(converged)


def scale_of(G: np.ndarray, result: mtlsolve.Result) -> float:
    """Σ|w_i|‖g_i‖ (the size of d's rounding error, ≥ ‖d‖), or ‖d‖ + max‖g_i‖ without weights."""
    norms = np.linalg.norm(G, axis=1)
    if result.weights is not None and tuple(result.weights.shape) == (G.shape[0],):
        s = float(np.abs(as64(result.weights)) @ norms)
    else:
        s = float(np.linalg.norm(as64(result.direction)) + norms.max(initial=0.0))
    return max(s, 1e-300)


def check_call(call: Callable[[], mtlsolve.Result], seconds: float = 60.0) -> Outcome:
    """Run one solve and check the protocol of (i) and (iv):

    it returns finite weights/direction or raises an MtlsolveError with a message (never another
    exception, never NaN/Inf, never a hang); a result with converged False issued a
    ConvergenceWarning and names its ``fallback``; a result reporting any of ``converged``,
    ``residual``, ``tolerance`` reports all three, converged is a bool, and converged ==
    (residual <= tolerance).
    """
    out = _outcome(call, seconds)
    if out.result is None:
        return out
    out.problems += _non_finite_outputs(out.result)
    out.problems += _certificate_problems(out.result.diagnostics, bool(out.warned))
    return out


def _outcome(call: Callable[[], mtlsolve.Result], seconds: float) -> Outcome:
    """The result or error of ``call()`` and its ConvergenceWarnings, with any error that breaks (i)."""
    out = Outcome()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            with time_limit(seconds):
                out.result = call()
        except MtlsolveError as exc:
            out.error = exc
            if not str(exc).strip():
                out.problems.append(("(i) error without a message", type(exc).__name__))
        except Hang as exc:
            out.error = exc
            out.problems.append(("(i) hang", str(exc)))
        except Exception as exc:  # noqa: BLE001 - exactly what the check is about
            out.error = exc
            out.problems.append(("(i) non-mtlsolve exception", f"{type(exc).__name__}: {exc}"))
    out.warned = [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    return out


def _non_finite_outputs(r: mtlsolve.Result) -> list[tuple[str, str]]:
    """(i): a NaN or an infinity in the direction or the weights."""
    problems = []
    for what in ("direction", "weights"):
        x = getattr(r, what)
        if x is not None and not np.isfinite(as64(x)).all():
            problems.append(("(i) non-finite output", f"{what} = {as64(x)}"))
    return problems


def _certificate_problems(diagnostics: Mapping[str, Any], warned: bool) -> list[tuple[str, str]]:
    """(ii) and (iv): an unconverged result warns and names its fallback; the certificate is complete,
    ``converged`` a bool, and converged == (residual <= tolerance)."""
    problems = []
    converged = diagnostics.get("converged")
    if converged is not None and type(converged) is not bool:  # the base class tests `is True`/`is False`
        problems.append(
            (
                "(iv) 'converged' not a Python bool",
                f"{type(converged).__module__}.{type(converged).__name__} {converged!r}",
            )
        )
        converged = bool(converged)
    if converged is False:
        problems += _unconverged_problems(diagnostics, warned)
    return problems + _certificate_consistency(converged, diagnostics.get("residual"), diagnostics.get("tolerance"))


def _unconverged_problems(diagnostics: Mapping[str, Any], warned: bool) -> list[tuple[str, str]]:
    """(ii): an unconverged result issued a ConvergenceWarning and names its ``fallback``."""
    problems = []
    if not warned:
        problems.append(("(ii) unconverged without ConvergenceWarning", f"diagnostics {sorted(diagnostics)}"))
    fallback = diagnostics.get("fallback")
    if not (isinstance(fallback, str) and fallback.strip()):
        problems.append(("(ii) unconverged without a named fallback", f"fallback = {fallback!r}"))
    return problems


def _certificate_consistency(converged: bool | None, residual: Any, tol: Any) -> list[tuple[str, str]]:
    """(iv): all or none of converged, residual and tolerance, and converged == (residual <= tolerance)."""
    if residual is not None and tol is not None and converged is not None:
        if converged != bool(residual <= tol):
            return [
                (
                    "(iv) converged != (residual <= tolerance)",
                    f"converged = {converged}, residual {residual:.3g}, tolerance {tol:.3g}",
                )
            ]
    elif residual is not None or tol is not None or converged is not None:
        return [("(iv) incomplete certificate", f"converged {converged!r}, residual {residual!r}, tolerance {tol!r}")]
    return []


# ----------------------------------------------------- claimed properties
# Pointwise properties of one result on the float64 version of the input.
def property_tolerance(case: Case, result: mtlsolve.Result) -> float:
    """The case's dtype tolerance, or the solver's own certified tolerance when larger."""
    reported = result.diagnostics.get("tolerance")
    return max(case.tol, float(reported) if isinstance(reported, (int, float)) else 0.0)


def non_conflicting_violation(case: Case, result: mtlsolve.Result) -> str | None:
    """g_i·d ≥ −tol·‖g_i‖·S in float64 (S = Σ|w_i|‖g_i‖ ≥ ‖d‖, as d is rounded in the input dtype);
    for a result without a direction (a given Gramian), d = Gᵀw in float64."""
    G, d = case.G, as64(result.direction)
    if d is None:
        if result.weights is None:
            return None
        d = as64(result.weights) @ G
    tol = property_tolerance(case, result)
    norms = np.linalg.norm(G, axis=1)
    products = G @ d
    slack = tol * norms * scale_of(G, result)
    bad = products < -slack
    if bad.any():
        i = int(np.argmin(products / np.where(norms > 0, norms, 1.0)))
        cos = products[i] / max(norms[i] * np.linalg.norm(d), 1e-300)
        return f"g_{i}·d = {products[i]:.3g} < −{slack[i]:.3g} (cosine {cos:.3g}, tol {tol:.2g})"
    return None


def simplex_violation(case: Case, result: mtlsolve.Result) -> str | None:
    """w ≥ −tol and |Σw − 1| ≤ tol."""
    if result.weights is None:
        return "claims simplex weights but returns none"
    w, tol = as64(result.weights), property_tolerance(case, result)
    if (w < -tol).any() or abs(w.sum() - 1.0) > tol:
        return f"w = {np.array2string(w, precision=6)} (sum {w.sum():.8g}, tol {tol:.2g})"
    return None


POINTWISE = {"non_conflicting": non_conflicting_violation, "simplex_weights": simplex_violation}


def normalised_condition(G: np.ndarray) -> float:
    """κ of D⁻¹KD⁻¹ over the non-zero rows (inf when singular): how much a solve on K may amplify ρ."""
    norms = np.linalg.norm(G, axis=1)
    U = G[norms > 0] / norms[norms > 0, None]
    if U.shape[0] == 0:
        return 1.0
    lam = np.linalg.eigvalsh(U @ U.T)
    return float(lam[-1] / lam[0]) if lam[0] > 0 else math.inf


def regular(G: np.ndarray) -> bool:
    """Whether K = GGᵀ is non-singular (no zero row, finite κ): the weights of a solve are unique."""
    return bool(np.linalg.norm(G, axis=1).all()) and math.isfinite(normalised_condition(G))


def compare(a: Any, b: Any, tol: float, scale: float, what: str) -> str | None:
    """None when |a − b| ≤ tol·scale entry-wise, else a message."""
    if a is None or b is None:
        return None if a is None and b is None else f"{what}: present in one result only"
    a, b = as64(a), as64(b)
    err = float(np.abs(a - b).max(initial=0.0))
    if not err <= tol * scale:
        return f"{what}: max |Δ| = {err:.3g} > {tol:.2g}·{scale:.3g}"
    return None

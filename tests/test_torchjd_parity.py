"""Parity with TorchJD 0.18.0 on random systems, for every method both libraries have.

Each method is compared on ≥ 200 random float64 systems spread over
m ∈ {2, 3, 5, 10, 40} (fewer at m = 40), with n ≥ m and, where the method is
defined for them, rank-deficient systems with n < m. The measure is
‖d_mtlsolve − d_torchjd‖ / ‖d_torchjd‖ per system.

Semantic mapping (TorchJD class and settings → mtlsolve config, factor on the
TorchJD direction, why):

| method | TorchJD | mtlsolve | factor | notes |
|---|---|---|---|---|
| mean | ``Mean()`` | ``ls(reduction="mean")`` | 1 | |
| sum | ``Sum()`` | ``ls`` | 1 | |
| imtl_g | ``IMTLG()`` (``pinv``; zero weights when abs(1ᵀK⁺n) < 1e-12) | ``imtl_g`` | 1 | both pseudo-invert K with the cut-off m·ε·λ_max |
| aligned_mtl | ``AlignedMTL(scale_mode=…)`` (preference 1/m) | ``aligned_mtl(scale_mode=…, rank_tol=m·ε_float64)`` | 1 | TorchJD drops λ ≤ λ_max·m·ε of the data dtype; mtlsolve's default uses ε_float32 (the official code), so the test sets ``rank_tol`` to TorchJD's value |
| aligned_mtl sum | ``AlignedMTL()`` | ``aligned_mtl(reduction="sum", rank_tol=m·ε_float64)`` | m | SamsungLabs/LibMTL sum the aligned gradients; TorchJD uses 1/m |
| pcgrad | ``PCGrad()`` (orders from ``torch.randperm``, j = i skipped) | ``pcgrad`` (sum) | 1 | m = 2: order-independent, solver against aggregator. m > 2: TorchJD's orders are reproduced by seeding torch and fed to mtlsolve's kernel. Rank-1 systems (n = 1) are left out for m > 2: there every projected gradient is exactly 0 and the sign of a rounding-level dot product decides the next projection |
| mgda | ``MGDA(epsilon=1e-12, max_iters=100)`` (Frank–Wolfe) | ``mgda`` | 1 | mtlsolve solves the min-norm QP exactly. m = 2: Frank–Wolfe's exact line search is exact, compared to 1e-6. m > 2: Frank–Wolfe is approximate, so the test checks the min-norm inequality ‖d_tj − d*‖² ≤ ‖d_tj‖² − ‖d*‖², which holds for every point of the hull iff d* is the min-norm point |
| upgrad | ``UPGrad(projector=NNLSProjector())`` (norm_eps = reg_eps = 1e-4) | ``upgrad`` (norm_eps = reg_eps = 1e-4) | 1 | TorchJD's default projector needs quadprog (not a dependency here): the test gives TorchJD a projector solving the same QP, min_{v ≥ u} vᵀK'v with K' = K/tr K + reg_eps·I, exactly with scipy's NNLS after a Cholesky factorisation |
| cagrad | ``CAGrad(c=0.4)`` (no rescaling) | ``cagrad(c=0.4, rescale=0)`` | 1 | TorchJD returns d_raw = g_0 + c‖g_0‖g_w/‖g_w‖ (rescale 0); mtlsolve's default is rescale 1. TorchJD solves the dual with Clarabel at its default tolerances (objective to ~1e-8, hence w and d to ~1e-4; even at 1e-12 tolerances Clarabel stops near 1e-5), so directions are compared to 1e-3, and the test checks exactly that mtlsolve's d_raw is on the ball ‖d − g_0‖ = c‖g_0‖ and reaches a max-min value min_i g_i·d at least the reference's |
| nash_mtl | ``NashMTL(n_tasks=m, max_norm=0)`` with Clarabel in place of ECOS | ``nash_mtl`` | 1 | ECOS is not a dependency: the test runs TorchJD's own CCCP problem with Clarabel. ``max_norm=0`` disables TorchJD's clipping (an adapter option in mtlsolve). The reference is approximate: it stops when α changes by < 1e-6 and its conic solves run at Clarabel's default accuracy, leaving α_i(Kα)_i − 1 up to ~3e-5, so it is compared to 1e-5; and it fails silently on a few systems (keeping its warm start; docs/methods.md#nash_mtl), recognised by its own residual max abs(α_i(Kα)_i − 1) > 1e-3 and left out (at most 3 %). Only m ≤ 5 and full-rank K: its 20 CCCP iterations do not reach the fixed point for larger m, each costs a non-DPP cvxpy compile (~40 ms a system), and singular K has no fixed point. Its warm start is reset to 1 before each system |
| dualproj | ``DualProj()`` (its default ``QuadprogProjector``, norm_eps = reg_eps = 1e-4) | ``dualproj`` (norm_eps = reg_eps = 1e-4, the defaults) | 1 | both solve min_{v ≥ 1/m} vᵀK'v with K' = K/tr K + reg_eps·I (Quinton & Rey, Prop. 1); quadprog's active-set solve is exact, so directions are compared to 1e-6 (largest deviation measured: 1.6e-11) |
| fairgrad | ``FairGrad(alpha=α)``, α ∈ {0.5, 1, 2} (scipy ``least_squares`` on Kw − w^{−1/α}, bounds (0, ∞), from 1/m) | ``fairgrad(alpha=α)`` | 1 | weights exist only when 0 ∉ conv{g_i}: the systems are split by an LP feasibility test (HiGHS: w ≥ 0, Σw = 1, Gᵀw = 0). On the well-posed ones (≥ 200) directions are compared to 1e-6 (largest deviation measured: 1.6e-8; the reference stops at scipy's default tolerances, its residual max abs(w_i^{1/α}(Kw)_i − 1) reaching ~1e-7) and mtlsolve's residual is checked to 1e-9. On the others (rank-deficient, n < m) mtlsolve returns w = 0 with ``converged`` False, and the reference's own residual (checked for m ≤ 5; its solve runs 100·m evaluations) confirms that it found no solution either |
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
import torch
from torchjd.aggregation import IMTLG, MGDA, AlignedMTL, CAGrad, DualProj, FairGrad, Mean, PCGrad, Sum, UPGrad
from torchjd.linalg import DualConeProjector

import mtlsolve
from mtlsolve.kernels.pcgrad import pcgrad_coefficients
from torchjd_reference import ClarabelNashMTLWeighting

# some parity systems have 0 ∈ conv{g_i}: FairGrad's certified fallback is expected there
pytestmark = pytest.mark.filterwarnings("ignore::mtlsolve.ConvergenceWarning")

#: systems per number of tasks: 200 in all
SPREAD = {2: 60, 3: 50, 5: 50, 10: 30, 40: 10}
EPS64 = float(np.finfo(np.float64).eps)


def make_systems(
    seed: int, spread: dict[int, int] = SPREAD, deficient: bool = True, min_n: int = 1
) -> list[np.ndarray]:
    """Random G (m x n) with unequal row norms and a shared component of random sign (conflicts and
    agreement both occur); every fourth system with m > 2 is rank-deficient (min_n ≤ n < m) if allowed."""
    rng = np.random.default_rng(seed)
    systems = []
    for m, count in spread.items():
        for k in range(count):
            if deficient and m > 2 and k % 4 == 3:
                n = int(rng.integers(min(min_n, m - 1), m))
            else:
                n = int(m + rng.integers(0, 3 * m))
            shared = rng.standard_normal(n) * rng.choice([-1.0, 1.0], size=(m, 1))
            systems.append(rng.standard_normal((m, n)) * rng.uniform(0.2, 5.0, size=(m, 1)) + shared)
    return systems


def deviations(ours: list[np.ndarray], theirs: list[np.ndarray]) -> np.ndarray:
    """‖d_ours − d_theirs‖ / ‖d_theirs‖ per system (padded into one array, so one vectorised pass)."""
    width = max(len(d) for d in theirs)
    a = np.zeros((len(ours), width))
    b = np.zeros((len(ours), width))
    for k, (x, y) in enumerate(zip(ours, theirs)):
        a[k, : len(x)] = x
        b[k, : len(y)] = y
    return np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(b, axis=1), 1e-300)


def torchjd_directions(aggregator: Callable[[int], Callable], systems: list[np.ndarray]) -> list[np.ndarray]:
    return [aggregator(len(G))(torch.from_numpy(G)).numpy() for G in systems]


def mtlsolve_directions(config: Callable[[int], dict], systems: list[np.ndarray]) -> list[np.ndarray]:
    return [mtlsolve.from_config(config(len(G)))(G).direction for G in systems]


def assert_parity(ours, theirs, tol: float) -> float:
    dev = deviations(ours, theirs)
    worst = int(dev.argmax())
    assert dev[worst] <= tol, f"system {worst}: relative deviation {dev[worst]:.3g} > {tol:g}"
    return float(dev.max())


# ------------------------------------------------------------------ closed forms


@pytest.mark.parametrize(
    ("aggregator", "config"),
    [(Mean, {"name": "ls", "reduction": "mean"}), (Sum, {"name": "ls"})],
    ids=["mean", "sum"],
)
def test_mean_and_sum(aggregator, config):
    systems = make_systems(0)
    theirs = torchjd_directions(lambda m: aggregator(), systems)
    assert_parity(mtlsolve_directions(lambda m: config, systems), theirs, 1e-12)


def test_imtl_g():
    systems = make_systems(1)
    ours = mtlsolve_directions(lambda m: {"name": "imtl_g"}, systems)
    assert_parity(ours, torchjd_directions(lambda m: IMTLG(), systems), 1e-6)


@pytest.mark.parametrize("scale_mode", ["min", "median", "rmse"])
def test_aligned_mtl(scale_mode):
    systems = make_systems(2)
    theirs = torchjd_directions(lambda m: AlignedMTL(scale_mode=scale_mode), systems)
    for reduction in ("mean", "sum"):
        config = {"name": "aligned_mtl", "scale_mode": scale_mode, "reduction": reduction}
        ours = mtlsolve_directions(lambda m: {**config, "rank_tol": m * EPS64}, systems)
        factor = [len(G) if reduction == "sum" else 1 for G in systems]
        assert_parity(ours, [f * d for f, d in zip(factor, theirs)], 1e-6)


# ---------------------------------------------------------------------- pcgrad


def test_pcgrad_two_tasks_solver():
    systems = make_systems(3, {2: 200})
    ours = [mtlsolve.get("pcgrad", seed=k)(G).direction for k, G in enumerate(systems)]
    with torch.random.fork_rng():  # TorchJD draws its orders from torch's global generator
        theirs = torchjd_directions(lambda m: PCGrad(), systems)
    assert_parity(ours, theirs, 1e-12)


def test_pcgrad_shared_orders():
    # TorchJD draws torch.randperm(m) for each task i in turn and skips j = i: seeding torch
    # reproduces its orders, which mtlsolve's kernel takes as input
    systems = make_systems(4, {3: 60, 5: 60, 10: 60, 40: 20}, min_n=2)
    ours, theirs = [], []
    with torch.random.fork_rng():
        for k, G in enumerate(systems):
            m = len(G)
            torch.manual_seed(k)
            perms = [torch.randperm(m).numpy() for _ in range(m)]
            orders = np.array([p[p != i] for i, p in enumerate(perms)], dtype=np.int64)
            torch.manual_seed(k)
            theirs.append(PCGrad()(torch.from_numpy(G)).numpy())
            coefficients, _ = pcgrad_coefficients(G @ G.T, orders)
            ours.append(coefficients.sum(axis=0) @ G)
    assert_parity(ours, theirs, 1e-6)


# ------------------------------------------------------------------------ mgda


def test_mgda():
    systems = make_systems(5)
    ours = mtlsolve_directions(lambda m: {"name": "mgda"}, systems)
    theirs = torchjd_directions(lambda m: MGDA(epsilon=1e-12, max_iters=100), systems)
    two = [len(G) == 2 for G in systems]
    assert_parity([d for d, t in zip(ours, two) if t], [d for d, t in zip(theirs, two) if t], 1e-6)
    # m > 2: Frank–Wolfe's output d_tj is a point of conv{g_i}; d* is the min-norm point iff
    # ‖d_tj − d*‖² ≤ ‖d_tj‖² − ‖d*‖² for every such point
    for G, d, d_tj in zip(systems, ours, theirs):
        scale = (G**2).sum(axis=1).max()
        assert (d_tj - d) @ (d_tj - d) <= d_tj @ d_tj - d @ d + 1e-9 * scale


# ---------------------------------------------------------------------- upgrad


class NNLSProjector(DualConeProjector):
    """TorchJD's dual-cone QP min_{v ≥ u} vᵀK'v with its regularisation, K' = K/tr K + reg_eps·I,
    solved exactly: with K' = LLᵀ and v = u + x it is min_{x ≥ 0} ‖Lᵀx + Lᵀu‖² (NNLS)."""

    def __init__(self, norm_eps: float = 1e-4, reg_eps: float = 1e-4) -> None:
        self.norm_eps, self.reg_eps = norm_eps, reg_eps

    def __call__(self, U: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
        K = G.numpy()
        trace = np.trace(K)
        K = (K / trace if trace >= self.norm_eps else np.zeros_like(K)) + self.reg_eps * np.eye(len(K))
        Lt = scipy.linalg.cholesky(K)  # upper factor: K = LtᵀLt
        u = U.numpy().reshape(-1, len(K))
        V = np.array([row + scipy.optimize.nnls(Lt, -Lt @ row)[0] for row in u])
        return torch.from_numpy(V.reshape(U.shape))


def test_upgrad():
    systems = make_systems(6)
    ours = mtlsolve_directions(lambda m: {"name": "upgrad", "norm_eps": 1e-4, "reg_eps": 1e-4}, systems)
    assert_parity(ours, torchjd_directions(lambda m: UPGrad(projector=NNLSProjector()), systems), 1e-6)


# ---------------------------------------------------------------------- cagrad


def test_cagrad():
    systems = make_systems(7)
    ours = mtlsolve_directions(lambda m: {"name": "cagrad", "c": 0.4, "rescale": 0}, systems)
    theirs = torchjd_directions(lambda m: CAGrad(c=0.4), systems)
    assert_parity(ours, theirs, 1e-3)
    # d_raw = argmax_{‖d − g_0‖ ≤ c‖g_0‖} min_i g_i·d: both lie on the ball's boundary, and mtlsolve's
    # max-min value is at least the reference's (whose conic solve stops at Clarabel's default accuracy)
    for G, d, d_tj in zip(systems, ours, theirs):
        g0 = G.mean(axis=0)
        radius = 0.4 * np.linalg.norm(g0)
        np.testing.assert_allclose(np.linalg.norm([d - g0, d_tj - g0], axis=1), radius, rtol=1e-9)
        assert (G @ d).min() >= (G @ d_tj).min() - 1e-9 * np.linalg.norm(G, axis=1).max() * np.linalg.norm(d)


# -------------------------------------------------------------------- nash_mtl


@pytest.mark.filterwarnings("ignore:You are solving a parameterized problem that is not DPP")
def test_nash_mtl():
    systems = make_systems(8, {2: 120, 3: 50, 5: 30}, deficient=False)
    weightings = {
        m: ClarabelNashMTLWeighting(n_tasks=m, max_norm=0.0, update_weights_every=1, optim_niter=20) for m in (2, 3, 5)
    }
    ours, theirs = [], []
    for G in systems:
        weighting = weightings[len(G)]
        weighting.prvs_alpha = np.ones(len(G), dtype=np.float32)  # the state a fresh instance starts from
        alpha = weighting(torch.from_numpy(G)).numpy()
        # the reference's own fixed-point residual tells its silent solver failures apart
        if np.abs(alpha * (G @ G.T @ alpha) - 1.0).max() < 1e-3:
            theirs.append(alpha @ G)
            ours.append(mtlsolve.get("nash_mtl")(G).direction)
    assert len(theirs) >= 0.97 * len(systems)
    assert_parity(ours, theirs, 1e-5)


# -------------------------------------------------------------------- dualproj


def test_dualproj():
    systems = make_systems(9)
    ours = mtlsolve_directions(lambda m: {"name": "dualproj", "norm_eps": 1e-4, "reg_eps": 1e-4}, systems)
    assert_parity(ours, torchjd_directions(lambda m: DualProj(), systems), 1e-6)


# -------------------------------------------------------------------- fairgrad


def zero_in_hull(G: np.ndarray) -> bool:
    """Whether 0 ∈ conv{g_i}: the LP w ≥ 0, Σw = 1, Gᵀw = 0 is feasible (HiGHS)."""
    m, n = G.shape
    lp = scipy.optimize.linprog(
        np.zeros(m), A_eq=np.vstack([G.T, np.ones(m)]), b_eq=np.r_[np.zeros(n), 1.0], bounds=(0, None), method="highs"
    )
    assert lp.status in (0, 2), lp.message  # 0 feasible, 2 infeasible
    return lp.status == 0


def fairgrad_residual(K: np.ndarray, w: np.ndarray, alpha: float) -> float:
    return float(np.abs(w ** (1.0 / alpha) * (K @ w) - 1.0).max())


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_fairgrad(alpha):
    systems = make_systems(10, {2: 60, 3: 60, 5: 60, 10: 35, 40: 12})
    singular = [zero_in_hull(G) for G in systems]
    posed = [G for G, s in zip(systems, singular) if not s]
    assert len(posed) >= 200 and {len(G) for G in posed} == set(SPREAD)
    results = [mtlsolve.get("fairgrad", alpha=alpha)(G) for G in posed]
    theirs = torchjd_directions(lambda m: FairGrad(alpha=alpha), posed)
    assert_parity([r.direction for r in results], theirs, 1e-6)
    for G, r in zip(posed, results):
        assert r.diagnostics["converged"] and fairgrad_residual(G @ G.T, r.weights, alpha) <= 1e-9
    # no weights exist: mtlsolve says so, and the reference's least squares ends far from a solution
    for G in (G for G, s in zip(systems, singular) if s):
        r = mtlsolve.get("fairgrad", alpha=alpha)(G)
        assert not r.diagnostics["converged"] and not r.weights.any()
        if len(G) <= 5:
            w_tj = FairGrad(alpha=alpha).gramian_weighting(torch.from_numpy(G @ G.T)).numpy()
            assert fairgrad_residual(G @ G.T, w_tj, alpha) > 1e-3

"""The precision model of the gradient system and the output guard every solver passes."""

from __future__ import annotations

import warnings
from typing import ClassVar

import attrs
import numpy as np
import pytest
import torch

import mtlsolve
from mtlsolve import ConvergenceWarning, GradientSystem, InvalidSystemError, NonFiniteError
from mtlsolve.gramian import check_gramian, normalised, numerical_rank, psd_part

RNG = np.random.default_rng(7)


# ------------------------------------------------------------ eps and roundoff
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_eps_and_roundoff_follow_the_input_dtype(dtype):
    G = RNG.standard_normal((3, 400)).astype(dtype)
    s = GradientSystem(G)
    assert s.eps == np.finfo(dtype).eps
    u_acc = min(np.finfo(dtype).eps, np.finfo(np.float32).eps)
    assert s.roundoff == pytest.approx(2 * np.finfo(dtype).eps + 2 * 20 * u_acc)
    assert GradientSystem(gramian=(G @ G.T).astype(np.float64), roundoff=1e-6).roundoff == 1e-6


def test_roundoff_bounds_the_actual_error_of_a_float32_gramian():
    """ρ·n_i·n_j bounds |K32 − K64| entry-wise on systems with rows over many decades."""
    for trial in range(20):
        G = RNG.standard_normal((6, 3000)) * 10.0 ** RNG.uniform(-8, 8, size=(6, 1))
        s = GradientSystem(G.astype(np.float32))
        G32 = G.astype(np.float32).astype(np.float64)
        K = G32 @ G32.T
        n = np.sqrt(np.diag(K))
        assert (np.abs(s.gramian64 - K) <= s.roundoff * np.outer(n, n)).all(), trial


# ------------------------------------------------- Gramian under and overflow
@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("scale", [1e-30, 1e-22, 1e-18, 1e18, 1e25, 1e30])
def test_float32_gramian_neither_underflows_nor_overflows(backend, scale):
    G = RNG.standard_normal((4, 50))
    X = (G * scale).astype(np.float32)
    if backend == "torch":
        X = torch.from_numpy(X)
    K = GradientSystem(X).gramian64
    expected = (G @ G.T) * scale**2
    n = np.sqrt(np.diag(expected))
    assert np.abs(K - expected).max() <= 1e-5 * n.max() ** 2
    # the geometry is intact: the cosines equal those of the unscaled system
    np.testing.assert_allclose(normalised(K)[0], normalised(G @ G.T)[0], atol=1e-5)


def test_mixed_row_scales_keep_every_row():
    G = RNG.standard_normal((3, 40)) * np.array([[1e-25], [1.0], [1e15]])
    K = GradientSystem(G.astype(np.float32)).gramian64
    assert (np.diag(K) > 0).all()
    np.testing.assert_allclose(normalised(K)[0], normalised(G @ G.T)[0], atol=1e-5)


def test_zero_rows_stay_exact_zeros_and_nan_still_raises():
    G = np.zeros((3, 5), dtype=np.float32)
    G[1] = 1e-30
    K = GradientSystem(G).gramian64
    assert K[0].tolist() == [0.0, 0.0, 0.0] and K[1, 1] > 0
    G[2, 0] = np.nan
    with pytest.raises(NonFiniteError):
        GradientSystem(G).gramian64


@pytest.mark.parametrize("name", ["nash_mtl", "imtl_g", "mgda", "cagrad", "aligned_mtl"])
def test_tiny_float32_gradients_give_the_direction_of_the_unscaled_system(name):
    G = np.array([[1.0, 0.2, -0.3], [-0.4, 1.0, 0.5], [0.3, 0.1, 1.0]])
    solver = mtlsolve.get(name)
    d = solver(G.astype(np.float32)).direction.astype(np.float64)
    tiny = mtlsolve.get(name)((G * 1e-22).astype(np.float32)).direction.astype(np.float64)
    assert np.linalg.norm(tiny) > 0
    scale = 1.0 if "scale_invariant" in type(solver).properties else 1e-22
    np.testing.assert_allclose(tiny / scale, d, rtol=1e-4, atol=1e-4 * np.linalg.norm(d))


# --------------------------------------------------- given Gramians are checked
@pytest.mark.parametrize(
    "K, match",
    [
        ([[1.0, 2.0], [2.0, 1.0]], "positive semidefinite"),
        ([[1.0, 0.5], [-0.5, 1.0]], "not symmetric"),
        ([[-1.0, 0.0], [0.0, 1.0]], "negative diagonal"),
        ([[1e6, 0.0, 0.0], [0.0, 1e-6, 2e-6], [0.0, 2e-6, 1e-6]], "positive semidefinite"),
    ],
)
@pytest.mark.parametrize("name", ["upgrad", "mgda", "cagrad", "nash_mtl", "imtl_g", "pcgrad"])
def test_invalid_user_gramians_are_refused(K, match, name):
    with pytest.raises(InvalidSystemError, match=match):
        mtlsolve.get(name)(gramian=np.array(K))


def test_round_off_indefinite_gramians_are_accepted():
    """A Gramian of float32 gradients is indefinite at round-off level: that is not an error."""
    for _ in range(50):
        G = RNG.standard_normal((8, 3)).astype(np.float32)  # rank 3 < m: zero eigenvalues
        K = (G @ G.T).astype(np.float32)
        GradientSystem(gramian=K).gramian64
        GradientSystem(gramian=K.astype(np.float64), roundoff=1e-6).gramian64


def test_check_gramian_is_scale_free():
    G = RNG.standard_normal((4, 6)) * np.array([[1e-12], [1.0], [1e8], [1e-3]])
    check_gramian(G @ G.T, 1e-15)
    bad = G @ G.T
    bad[0, 1] = bad[1, 0] = -2 * np.sqrt(bad[0, 0] * bad[1, 1])  # |cos| = 2: impossible
    with pytest.raises(InvalidSystemError):
        check_gramian(bad, 1e-15)


def test_rank_and_psd_primitives():
    G = RNG.standard_normal((5, 3)) * np.array([[1e-9], [1.0], [1e6], [1.0], [1e-3]])
    K = G @ G.T
    assert numerical_rank(K, 1e-15) == 3
    lam = np.linalg.eigvalsh(psd_part(K - 1e-9 * np.eye(5)))
    assert lam.min() >= -1e-12 * lam.max()


# ---------------------------------------------------------- the losses array
def test_a_call_leaves_the_callers_losses_writable():
    L = np.array([0.3, 1.2])
    mtlsolve.get("ls")(losses=L)
    mtlsolve.get("uw")(losses=L)
    L[0] = 0.5  # still writable
    assert L.flags.writeable


# ------------------------------------------------------------ the output guard
def _third_party(weights, direction=None, diagnostics=None):
    @attrs.define(kw_only=True, eq=False)
    class Plugin(mtlsolve.Solver):
        name: ClassVar[str] = "plugin"
        needs: ClassVar[frozenset] = frozenset({mtlsolve.Need.MATRIX})

        def solve(self, system):
            d = system.matrix.sum(0) if direction is None else direction
            return mtlsolve.Result(direction=d, weights=weights, diagnostics=diagnostics or {})

    return Plugin()


def test_non_finite_output_of_any_solver_raises():
    G = np.ones((2, 3))
    with pytest.raises(NonFiniteError, match="plugin produced non-finite weights"):
        _third_party(np.array([np.nan, 1.0]))(G)
    with pytest.raises(NonFiniteError, match="plugin produced a direction holding NaN or Inf"):
        _third_party(None, direction=np.array([0.0, np.inf, 1.0]))(G)


def test_a_result_of_the_wrong_type_is_a_solver_error():
    @attrs.define(kw_only=True, eq=False)
    class Bare(mtlsolve.Solver):
        name: ClassVar[str] = "bare"
        needs: ClassVar[frozenset] = frozenset({mtlsolve.Need.MATRIX})

        def solve(self, system):
            return system.matrix.sum(0)

    with pytest.raises(mtlsolve.SolverError, match="not a mtlsolve.Result"):
        Bare()(np.ones((2, 3)))


def test_an_uncertified_claim_is_flipped_and_warned_once():
    solver = _third_party(None, diagnostics={"converged": True, "residual": 1e-3, "tolerance": 1e-9})
    with pytest.warns(ConvergenceWarning, match="did not certify"):
        result = solver(np.ones((2, 3)))
    assert result.diagnostics["converged"] is False
    assert result.diagnostics["fallback"].startswith("none")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert solver(np.ones((2, 3))).diagnostics["converged"] is False  # no second warning


def test_a_certified_result_is_left_alone():
    solver = _third_party(None, diagnostics={"converged": True, "residual": 1e-12, "tolerance": 1e-9})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert solver(np.ones((2, 3))).diagnostics["converged"] is True


# ------------------------------------------------------------- state on error
@attrs.define(kw_only=True, eq=False)
class _Counting(mtlsolve.GramianWeighting):
    name: ClassVar[str] = "counting"
    stateful: ClassVar[bool] = True
    state_schema: ClassVar[dict] = {"calls": (), "last": ("m",)}

    def weights_from_gramian(self, K, system):
        state = self._state_for(len(K))
        state["calls"] = state.get("calls", 0) + 1
        state["last"] = np.diag(K).copy()
        return np.full(len(K), np.inf if K[0, 0] > 100 else 0.5), {}


def test_a_failed_call_leaves_the_state_unchanged():
    solver = _Counting()
    solver(np.eye(2))
    before = solver.state_dict()
    with pytest.raises(NonFiniteError):
        solver(np.diag([1e3, 1.0]))
    after = solver.state_dict()
    assert after["calls"] == before["calls"] == 1
    assert torch.equal(after["last"], before["last"])


def test_a_changed_number_of_tasks_is_refused_until_reset():
    solver = _Counting()
    solver(np.eye(2))
    with pytest.raises(InvalidSystemError, match="holds state for 2 tasks and got a system of 3"):
        solver(np.eye(3))
    solver.reset()
    solver(np.eye(3))


def test_state_is_checked_on_load():
    solver = _Counting()
    solver(np.eye(2))
    state = solver.state_dict()
    for bad, match in [
        ({**state, "solver": "other"}, "belongs to solver 'other'"),
        ({**state, "extra": 1}, "unknown keys"),
        ({**state, "last": torch.zeros(3)}, "axis 0 must be 2"),
        ({**state, "last": torch.tensor([np.nan, 1.0])}, "NaN"),
        ({**state, "calls": "many"}, "real 0-D"),
        ([1, 2], "takes a mapping"),
    ]:
        with pytest.raises(mtlsolve.StateError, match=match):
            solver.load_state_dict(bad)
    fresh = _Counting()
    fresh.load_state_dict(state)
    assert fresh.state_dict()["calls"] == 1


@attrs.define(kw_only=True, eq=False)
class _LargeWeightOnZeroRow(mtlsolve.GramianWeighting):
    """Finite float64 weights, one of them too large for half precision, on a zero gradient."""

    name: ClassVar[str] = "large_weight_probe"

    def weights_from_gramian(self, gramian, system):
        return np.array([1e6, 0.5]), {}


@pytest.mark.parametrize("make", [np.asarray, torch.as_tensor], ids=["numpy", "torch"])
def test_weights_that_overflow_the_output_dtype_raise(make):
    """w₁ = 1e6 is finite in float64 but inf in float16; on a zero row wᵀG would then hold 0·inf = NaN,
    which the bound |w|·‖g‖ cannot see: the cast weights are checked, never a NaN direction returned."""
    G = make(np.array([[0.0], [0.4]], dtype=np.float16))
    with pytest.raises(NonFiniteError, match="non-finite weights"):
        _LargeWeightOnZeroRow()(G)
    # the fuzz find: CAGrad on a float16 system with a zero row, scaled by 128
    losses = np.array([3.75, 0.70], dtype=np.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        try:
            result = mtlsolve.get("cagrad")(G * 128, losses=losses)
        except NonFiniteError:
            return
    assert np.isfinite(np.asarray(result.direction, dtype=np.float64)).all()

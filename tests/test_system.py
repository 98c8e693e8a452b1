"""GradientSystem: validation, dtypes, immutability, replace(), the cached Gramian."""

from __future__ import annotations

from typing import ClassVar

import attrs
import numpy as np
import pytest
import torch

import mtlsolve
from mtlsolve import GradientSystem, InvalidSystemError, NonFiniteError
from mtlsolve.system import as_system

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, CUDA])]

G = np.array([[1.0, 0.0, 2.0], [-1.0, 1.0, 0.5]])


# ------------------------------------------------------------------ shapes
def test_fields_of_a_full_system():
    s = GradientSystem(G, losses=[1.0, 2.0], extras={"step": 3}, kind="representation")
    assert (s.m, s.n, s.kind, s.backend) == (2, 3, "representation", "numpy")
    assert s.has_matrix and s.has_gramian and s.has_losses
    assert s.extras == {"step": 3}
    assert s.reference is s.matrix
    assert repr(s) == "GradientSystem(m=2, n=3, backend=numpy, kind='representation')"


def test_gramian_only_and_losses_only_systems():
    s = GradientSystem(gramian=G @ G.T)
    assert (s.m, s.n, s.has_matrix, s.has_gramian, s.has_losses) == (2, None, False, True, False)
    with pytest.raises(InvalidSystemError, match="needs the task-gradient matrix"):
        s.matrix
    with pytest.raises(InvalidSystemError, match="needs the task losses"):
        s.losses
    s = GradientSystem(losses=np.array([1.0, 2.0, 3.0]))
    assert (s.m, s.has_gramian) == (3, False)
    with pytest.raises(InvalidSystemError, match="needs the task-gradient matrix"):
        s.gramian
    with pytest.raises(InvalidSystemError, match="needs the task-gradient matrix"):
        s.check_matrix()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "needs a matrix, a gramian or losses"),
        ({"matrix": np.ones(3)}, r"matrix must be 2-D \(m x n\), got shape \(3,\)"),
        ({"matrix": np.ones((2, 2, 2))}, "matrix must be 2-D"),
        ({"gramian": np.ones((2, 3))}, r"gramian must be square, got shape \(2, 3\)"),
        ({"losses": np.ones((2, 1))}, r"losses must be 1-D \(m\)"),
        ({"matrix": np.ones((0, 3))}, "at least one task"),
        ({"matrix": np.ones((3, 2)), "losses": np.ones(2)}, "inconsistent number of tasks"),
        ({"matrix": np.ones((3, 2)), "gramian": np.eye(2)}, "inconsistent number of tasks"),
        ({"gramian": np.eye(3), "losses": np.ones(4)}, "inconsistent number of tasks"),
        ({"matrix": [[1.0, 2.0], [3.0]]}, "cannot be read as an array"),
        ({"matrix": np.ones((2, 2)), "kind": "parameters"}, "kind must be one of"),
    ],
)
def test_invalid_shapes_give_clear_errors(kwargs, message):
    matrix = kwargs.pop("matrix", None)
    with pytest.raises(InvalidSystemError, match=message):
        GradientSystem(matrix, **kwargs)


def test_inconsistent_m_names_every_source():
    with pytest.raises(InvalidSystemError) as info:
        GradientSystem(np.ones((3, 2)), losses=np.ones(2))
    assert "'matrix rows': 3" in str(info.value) and "'losses': 2" in str(info.value)


# ------------------------------------------------------------------ dtypes
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.bool_])
def test_integer_and_bool_numpy_input_becomes_float64(dtype):
    s = GradientSystem(np.array([[1, 0], [0, 1]], dtype=dtype), losses=np.array([1, 2], dtype=dtype))
    assert s.matrix.dtype == np.float64 and s.losses.dtype == np.float64
    np.testing.assert_array_equal(s.gramian, np.eye(2))


def test_lists_become_float64_arrays():
    s = GradientSystem([[1, 2], [3, 4]], losses=[1, 2])
    assert isinstance(s.matrix, np.ndarray) and s.matrix.dtype == np.float64


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_and_bool_tensors_become_float64(dtype):
    s = GradientSystem(torch.tensor([[1, 0], [0, 1]]).to(dtype))
    assert s.matrix.dtype == torch.float64
    # and a solver returns a float64 tensor for them
    d = mtlsolve.get("ls")(torch.tensor([[1, 0], [-1, 1]])).direction
    assert d.dtype == torch.float64
    torch.testing.assert_close(d, torch.tensor([0.0, 1.0], dtype=torch.float64))


@pytest.mark.parametrize(
    "value",
    [
        np.ones((2, 2), dtype=np.complex128),
        torch.ones((2, 2), dtype=torch.complex64),
        np.array([["a", "b"], ["c", "d"]]),
        np.array([[object(), 1.0]], dtype=object),
    ],
)
@pytest.mark.parametrize("field", ["matrix", "gramian"])
def test_complex_and_non_numeric_input_is_rejected(value, field):
    with pytest.raises(InvalidSystemError, match=f"{field} must hold real numbers"):
        GradientSystem(**{field: value})


def test_complex_losses_are_rejected():
    with pytest.raises(InvalidSystemError, match="losses must hold real numbers"):
        GradientSystem(losses=np.array([1 + 1j, 2.0]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_numpy_input_keeps_its_dtype_and_identity(dtype):
    X = G.astype(dtype)
    s = GradientSystem(X)
    assert s.matrix is X
    assert s.gramian.dtype == dtype
    assert s.gramian64.dtype == np.float64


# --------------------------------------------------------------- immutability
def test_immutable():
    s = GradientSystem(G, losses=[1.0, 2.0], extras={"step": 1})
    with pytest.raises(AttributeError, match="immutable"):
        s.m = 3
    with pytest.raises(AttributeError):
        s._matrix = None
    with pytest.raises(AttributeError):
        s.new_attribute = 1
    with pytest.raises(TypeError):
        s.extras["step"] = 2
    with pytest.raises(ValueError):
        s.gramian64[0, 0] = 5.0
    with pytest.raises(ValueError):
        s.losses64[0] = 5.0


def test_extras_are_copied():
    extras = {"step": 1}
    s = GradientSystem(G, extras=extras)
    extras["step"] = 2
    assert s.extras["step"] == 1


def test_replace():
    s = GradientSystem(G, losses=[1.0, 2.0], extras={"step": 1})
    K = s.gramian64
    t = s.replace(losses=[3.0, 4.0])
    assert t is not s and t.matrix is s.matrix
    np.testing.assert_array_equal(t.losses, [3.0, 4.0])
    np.testing.assert_array_equal(s.losses, [1.0, 2.0])
    np.testing.assert_array_equal(t.gramian64, K)
    # a new matrix drops the old Gramian
    H = 2 * G
    u = s.replace(matrix=H)
    np.testing.assert_allclose(u.gramian64, 4 * K)
    # unless a Gramian is given with it
    v = s.replace(matrix=None, gramian=K)
    assert not v.has_matrix and v.gramian is K
    assert s.replace(kind="representation").kind == "representation"
    assert s.replace(extras={"step": 2}).extras == {"step": 2}
    with pytest.raises(TypeError, match="unknown fields"):
        s.replace(weights=[1, 2])
    with pytest.raises(InvalidSystemError, match="inconsistent number of tasks"):
        s.replace(losses=[1.0, 2.0, 3.0])


# ------------------------------------------------------------------ Gramian
@attrs.define(kw_only=True, eq=False)
class _ReadsGramian(mtlsolve.GramianWeighting):
    name: ClassVar[str] = "reads_gramian"

    def weights_from_gramian(self, gramian, system):
        return np.diag(gramian).copy(), {}


class _CountProducts(torch.overrides.TorchFunctionMode):
    """Counts matrix products of tensors run while it is active."""

    def __init__(self):
        super().__init__()
        self.products = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (torch.matmul, torch.Tensor.__matmul__, torch.Tensor.matmul, torch.mm):
            self.products += 1
        return func(*args, **(kwargs or {}))


def test_gramian_is_computed_once_and_cached():
    X = torch.tensor(G)
    with _CountProducts() as counter:
        s = GradientSystem(X)
        assert counter.products == 0  # lazily
        K = s.gramian
        assert s.gramian is K and counter.products == 1
        K64 = s.gramian64
        assert s.gramian64 is K64 and counter.products == 1
        np.testing.assert_allclose(K64, G @ G.T)
        # a Gramian weighting reads the cached K: only wᵀG is one more product per call
        solver = _ReadsGramian()
        solver(s)
        solver(s)
        assert counter.products == 3


def test_a_given_gramian_is_used_as_is_and_symmetrised_on_the_host():
    K = np.array([[2.0, 1.0], [1.0 + 1e-12, 3.0]])
    s = GradientSystem(gramian=K)
    assert s.gramian is K
    np.testing.assert_array_equal(s.gramian64, s.gramian64.T)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gramian_is_computed_on_the_tensor_device(device, dtype):
    X = torch.tensor(G, dtype=dtype, device=device)
    s = GradientSystem(X)
    assert s.backend == "torch"
    K = s.gramian
    assert torch.is_tensor(K) and K.device == X.device and K.dtype == dtype
    assert s.gramian is K
    assert isinstance(s.gramian64, np.ndarray) and s.gramian64.dtype == np.float64
    np.testing.assert_allclose(s.gramian64, G @ G.T, rtol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_tensor_gramian_accumulates_in_float32(device, dtype):
    # 300² · 4 = 360000 overflows float16 (max 65504); the Gramian must not
    X = torch.full((2, 4), 300.0, dtype=dtype, device=device)
    s = GradientSystem(X)
    assert s.gramian.dtype == torch.float32 and s.gramian.device == X.device
    np.testing.assert_allclose(s.gramian64, np.full((2, 2), 360000.0), rtol=1e-6)
    result = mtlsolve.get("ls")(X)
    assert result.direction.dtype == dtype and result.direction.device == X.device
    torch.testing.assert_close(result.direction.float(), torch.full((4,), 600.0, device=device))


def test_half_precision_numpy_gramian_accumulates_in_float32():
    X = np.full((2, 4), 300.0, dtype=np.float16)
    s = GradientSystem(X)
    assert s.gramian.dtype == np.float32
    np.testing.assert_allclose(s.gramian64, np.full((2, 2), 360000.0))
    assert mtlsolve.get("ls")(X).direction.dtype == np.float16


# --------------------------------------------------------------- finiteness
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_raise_where_read(bad):
    X = G.copy()
    X[1, 2] = bad
    s = GradientSystem(X, losses=[1.0, bad])  # construction does not read values
    with pytest.raises(NonFiniteError, match=r"rows \[1\]"):
        s.gramian64
    with pytest.raises(NonFiniteError, match="matrix holds NaN or Inf"):
        s.check_matrix()
    with pytest.raises(NonFiniteError, match="losses must be finite"):
        s.losses64
    with pytest.raises(NonFiniteError):
        GradientSystem(gramian=np.array([[1.0, bad], [bad, 1.0]])).gramian64


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_overflowing_gramian_is_non_finite():
    with pytest.raises(NonFiniteError, match="overflow"):
        GradientSystem(np.array([[1e200, 1e200], [1.0, 0.0]])).gramian64


def test_check_matrix_on_tensors():
    X = torch.tensor(G)
    GradientSystem(X).check_matrix()
    X[0, 0] = float("nan")
    with pytest.raises(NonFiniteError):
        GradientSystem(X).check_matrix()


# ----------------------------------------------------------------- as_system
def test_as_system_passes_a_system_through_and_refuses_mixing():
    s = GradientSystem(G)
    assert as_system(s) is s
    with pytest.raises(InvalidSystemError, match="either a GradientSystem or arrays"):
        as_system(s, losses=[1.0, 2.0])
    t = as_system(G, losses=[1.0, 2.0], step=4)
    assert t.extras == {"step": 4} and t.m == 2


def test_backend_and_reference_follow_the_arrays():
    s = GradientSystem(gramian=np.eye(2), losses=torch.ones(2))
    assert s.backend == "torch"
    assert isinstance(s.reference, np.ndarray)  # the first given array
    s = GradientSystem(losses=torch.ones(2, dtype=torch.float32))
    assert s.reference.dtype == torch.float32


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_direction_surely_finite_only_from_a_checked_gramian_of_this_matrix(backend):
    G = np.array([[1.0, -2.0, 3.0], [0.5, 0.0, -1.0]], dtype=np.float32)
    G = torch.from_numpy(G) if backend == "torch" else G
    w = np.array([0.3, 0.7])
    system = GradientSystem(G)
    assert not system.direction_surely_finite(w)  # K not computed yet: G unchecked
    system.gramian64
    assert system.direction_surely_finite(w)
    # Σ|w_i|‖g_i‖ beyond float32's range: d may overflow, so it must be looked at
    assert not system.direction_surely_finite(np.array([1e38, 1e38]))
    given = GradientSystem(G, gramian=np.eye(2, dtype=np.float32))
    given.gramian64
    assert not given.direction_surely_finite(w)  # a given K says nothing about G


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # numpy, on the way to the error
def test_an_overflowing_direction_still_raises():
    """Weights whose wᵀG overflows float32 are caught by the check on d."""

    @attrs.define(kw_only=True, eq=False)
    class Huge(mtlsolve.GramianWeighting):
        name: ClassVar[str] = "huge"

        def weights_from_gramian(self, K, system):
            return np.full(len(K), 1e38), {}

    G = np.full((2, 3), 10.0, dtype=np.float32)
    with pytest.raises(NonFiniteError, match="overflows"):
        Huge()(G)

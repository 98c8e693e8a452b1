"""The gradient system: everything one training step hands to a solver."""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import numpy as np

from mtlsolve._array import _torch, is_torch, to_numpy64
from mtlsolve.errors import InvalidSystemError, NonFiniteError
from mtlsolve.gramian import check_gramian

#: Entries of G that :meth:`GradientSystem.check_matrix` tests per block.
CHECK_BLOCK = 1 << 20

#: A given Gramian is refused when its asymmetry or negative eigenvalues exceed this (or ρ) relative
#: to n_i·n_j: √ε of float32, far above the round-off of any float32 accumulation (ρ ≈ 2√n·ε),
#: far below the errors of a wrong sign, a transposed block or an indefinite matrix.
GIVEN_GRAMIAN_SLACK = float(np.sqrt(np.finfo(np.float32).eps))

#: What a system's gradient rows are taken with respect to.
GRADIENT_KINDS = ("shared", "representation")


class GradientSystem:
    """One step's task gradients, Gramian, losses and extras; immutable.

    ``matrix`` is the task-gradient matrix G (m x n, numpy array or torch
    tensor on any device), ``gramian`` K = G Gᵀ (m x m; computed from G once,
    on G's device, when not given), ``losses`` the m task losses, ``extras``
    anything else a solver may ask for (a preference vector, the step index).
    ``kind`` says whether the rows are gradients of the shared parameters or
    of a shared representation.

    Shapes and dtypes are checked on construction; finiteness is checked
    where the values are first read on the host (the Gramian and the losses),
    or by :meth:`check_matrix` for solvers that read G element-wise, so that
    NaN or Inf raise :class:`~mtlsolve.errors.NonFiniteError` instead of
    flowing into the update.

    Precision: :attr:`eps` is the machine epsilon of the dtype the gradients came in and
    :attr:`roundoff` a bound ρ on the Gramian's entry-wise error relative to n_i·n_j
    (:mod:`mtlsolve.gramian`). A given Gramian is checked symmetric and positive
    semidefinite up to max(ρ, ``GIVEN_GRAMIAN_SLACK``) relative to n_i·n_j, which a float32
    accumulation's round-off passes and a wrong sign, a transposed block or an indefinite
    matrix does not;
    ``roundoff=`` states ρ for a Gramian accumulated elsewhere (default: that of a Gramian
    accumulated in the given K's own dtype over m·m terms).
    """

    __slots__ = ("_matrix", "_gramian", "_losses", "_extras", "_kind", "_m", "_roundoff", "_cache")

    def __init__(
        self,
        matrix: Any = None,
        *,
        gramian: Any = None,
        losses: Any = None,
        extras: Mapping[str, Any] | None = None,
        kind: str = "shared",
        roundoff: float | None = None,
    ) -> None:
        if kind not in GRADIENT_KINDS:
            raise InvalidSystemError(f"kind must be one of {GRADIENT_KINDS}, got {kind!r}")
        matrix = _as_float_array(matrix, "matrix", ndim=2)
        gramian = _as_float_array(gramian, "gramian", ndim=2)
        losses = _as_float_array(losses, "losses", ndim=1)
        sizes = {
            "matrix rows": None if matrix is None else matrix.shape[0],
            "gramian size": None if gramian is None else gramian.shape[0],
            "losses": None if losses is None else losses.shape[0],
        }
        given = {k: v for k, v in sizes.items() if v is not None}
        if not given:
            raise InvalidSystemError("a gradient system needs a matrix, a gramian or losses")
        if len(set(given.values())) > 1:
            raise InvalidSystemError(f"inconsistent number of tasks: {given}")
        if gramian is not None and gramian.shape[0] != gramian.shape[1]:
            raise InvalidSystemError(f"gramian must be square, got shape {tuple(gramian.shape)}")
        m = next(iter(given.values()))
        if m < 1:
            raise InvalidSystemError("a gradient system needs at least one task")
        if roundoff is not None:
            try:
                roundoff = float(roundoff)
            except (TypeError, ValueError):
                raise InvalidSystemError(f"roundoff must be a number in [0, 1), got {roundoff!r}") from None
        if roundoff is not None and not (np.isfinite(roundoff) and 0 <= roundoff < 1):
            raise InvalidSystemError(f"roundoff must be a number in [0, 1), got {roundoff!r}")
        setter = object.__setattr__
        setter(self, "_matrix", matrix)
        setter(self, "_gramian", gramian)
        setter(self, "_losses", losses)
        setter(self, "_extras", MappingProxyType(dict(extras or {})))
        setter(self, "_kind", kind)
        setter(self, "_m", int(m))
        setter(self, "_roundoff", None if roundoff is None else float(roundoff))
        setter(self, "_cache", {})

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("GradientSystem is immutable; build a new one with .replace()")

    def __repr__(self) -> str:
        parts = [f"m={self._m}"]
        if self._matrix is not None:
            parts.append(f"n={self._matrix.shape[1]}")
        parts.append("backend=" + self.backend)
        if self._kind != "shared":
            parts.append(f"kind={self._kind!r}")
        return f"GradientSystem({', '.join(parts)})"

    # ----------------------------------------------------------------- fields
    @property
    def m(self) -> int:
        """The number of tasks."""
        return self._m

    @property
    def n(self) -> int | None:
        """The number of gradient coordinates, when G is present."""
        return None if self._matrix is None else int(self._matrix.shape[1])

    @property
    def kind(self) -> str:
        return self._kind

    @property
    def extras(self) -> Mapping[str, Any]:
        return self._extras

    @property
    def has_matrix(self) -> bool:
        return self._matrix is not None

    @property
    def has_gramian(self) -> bool:
        return self._gramian is not None or self._matrix is not None

    @property
    def has_losses(self) -> bool:
        return self._losses is not None

    @property
    def backend(self) -> str:
        """``"torch"`` when any array is a tensor, else ``"numpy"``."""
        arrays = (self._matrix, self._gramian, self._losses)
        return "torch" if any(is_torch(a) for a in arrays) else "numpy"

    @property
    def reference(self) -> Any:
        """The array whose type, dtype and device results should take."""
        for a in (self._matrix, self._gramian, self._losses):
            if a is not None:
                return a
        raise AssertionError("unreachable: a system always holds an array")

    @property
    def eps(self) -> float:
        """The machine epsilon of the dtype the gradients (or the given Gramian, or the losses) came in."""
        return dtype_eps(self.reference)

    @property
    def roundoff(self) -> float:
        """ρ: a bound on |δK_ij|/(n_i·n_j), the Gramian's round-off relative to the gradient norms.

        From G: 2·u + 2·√n·u_acc (u of G's dtype, u_acc of the accumulation dtype, float32 for
        half precision); for a given K: the value passed as ``roundoff=``, else 2·(1 + m)·u of K's
        dtype. Losses-only systems: 2·u of the losses' dtype."""
        if self._roundoff is not None:
            return self._roundoff
        if "roundoff" not in self._cache:
            if self._matrix is not None:
                u = dtype_eps(self._matrix)
                rho = 2.0 * u + 2.0 * math.sqrt(self._matrix.shape[1]) * min(u, _FLOAT32_EPS)
            elif self._gramian is not None:
                rho = 2.0 * (1 + self._m) * dtype_eps(self._gramian)
            else:
                rho = 2.0 * self.eps
            self._cache["roundoff"] = rho
        return self._cache["roundoff"]

    @property
    def matrix(self) -> Any:
        """G, m x n, exactly as given; raises if the system has none."""
        if self._matrix is None:
            raise InvalidSystemError("this solver needs the task-gradient matrix G, and the system has none")
        return self._matrix

    @property
    def gramian(self) -> Any:
        """K = G Gᵀ in G's array type and device, computed once."""
        if self._gramian is not None:
            return self._gramian
        if "gramian" not in self._cache:
            K, host, regular = _gramian_of(self.matrix)
            self._cache["gramian"] = K
            if regular:  # finite, symmetrised and its squared norms in range: gramian64 as it is
                host.setflags(write=False)
                self._cache["gramian64"] = host
            else:
                self._cache["host"] = host
        return self._cache["gramian"]

    @property
    def gramian64(self) -> np.ndarray:
        """K as a symmetric float64 numpy array on the host, checked finite.

        This is where inner m x m problems read the Gramian; for a tensor on
        a GPU it is the one device-to-host copy of a step.
        """
        if "gramian64" not in self._cache:
            gramian = self.gramian  # a regular computed K is gramian64 already
            if "gramian64" in self._cache:
                return self._cache["gramian64"]
            K = self._cache.get("host")  # the float64 host copy _gramian_of made
            K = to_numpy64(gramian) if K is None else K
            if not np.isfinite(K).all():
                # a non-finite g_i makes K_ii non-finite; a bad off-diagonal alone can only come from a given K
                diagonal = ~np.isfinite(np.diag(K))
                bad = np.flatnonzero(diagonal if diagonal.any() else ~np.isfinite(K).all(axis=1)).tolist()
                raise NonFiniteError(
                    f"the Gramian has non-finite entries in rows {bad}: task gradients hold NaN or Inf, "
                    "or are so large that their squared norm overflows"
                )
            if self._gramian is not None:  # gross errors only: a float32 accumulation's round-off passes
                try:
                    check_gramian(K, max(self.roundoff, GIVEN_GRAMIAN_SLACK))
                except InvalidSystemError as exc:
                    tiny = float(
                        _torch().finfo(self._gramian.dtype).tiny
                        if is_torch(self._gramian)
                        else np.finfo(self._gramian.dtype).tiny
                    )
                    if (np.abs(np.diag(K)) < tiny).any() and (np.diag(K) != 0).any():
                        raise InvalidSystemError(
                            f"{exc}; its diagonal holds values below the normal range of {self._gramian.dtype} "
                            "(squared norms that underflowed): pass G itself, or a float64 Gramian"
                        ) from None
                    raise
            K = 0.5 * (K + K.T)
            K.setflags(write=False)
            self._cache["gramian64"] = K
        return self._cache["gramian64"]

    def direction_surely_finite(self, weights: np.ndarray) -> bool:
        """Whether d = Gᵀw is finite without a pass over d: True when K was computed from this G
        and checked finite (so G holds no NaN or Inf) and the bound max_j |d_j| ≤ Σ_i |w_i|·‖g_i‖
        is below the largest value of G's dtype."""
        if self._gramian is not None or self._matrix is None or "gramian64" not in self._cache:
            return False
        norms = np.sqrt(self._cache["gramian64"].diagonal())
        return bool(np.abs(weights) @ norms < 0.5 * dtype_max(self._matrix))

    @property
    def losses(self) -> Any:
        """The task losses as given; raises if the system has none."""
        if self._losses is None:
            raise InvalidSystemError("this solver needs the task losses, and the system has none")
        return self._losses

    @property
    def losses64(self) -> np.ndarray:
        """The losses as a float64 numpy vector, checked finite."""
        if "losses64" not in self._cache:
            L = np.array(to_numpy64(self.losses))  # a copy: the caller's array stays writable
            if not np.isfinite(L).all():
                raise NonFiniteError(f"losses must be finite, got {L.tolist()}")
            L.setflags(write=False)
            self._cache["losses64"] = L
        return self._cache["losses64"]

    def check_matrix(self) -> None:
        """Raise NonFiniteError if G holds NaN or Inf.

        One pass over G in column blocks of about ``CHECK_BLOCK`` entries, so
        the check needs O(block) extra memory rather than a boolean copy of G;
        on a torch device the per-block results stay there until one final sync.
        """
        if self._cache.get("matrix_checked"):
            return
        G = self.matrix
        m, n = G.shape
        width = max(1, CHECK_BLOCK // max(m, 1))
        if is_torch(G):
            import torch

            flags = [G[:, j : j + width].isfinite().all() for j in range(0, n, width)]
            finite = not flags or bool(torch.stack(flags).all())
        else:
            finite = all(np.isfinite(G[:, j : j + width]).all() for j in range(0, n, width))
        if not finite:
            raise NonFiniteError("the task-gradient matrix holds NaN or Inf")
        self._cache["matrix_checked"] = True

    def restrict(self, present: Any, *, batches: int = 1, rules: Mapping[str, str] | None = None) -> GradientSystem:
        """The system of the present tasks only (docs/methods.md#missing-tasks).

        ``present`` is a boolean mask over the m/``batches`` tasks (:func:`task_mask`); for a
        system of b > 1 stacked batches it applies to every batch. The rows of G, the block
        K[present, present] of a given Gramian and the losses keep their order; an extra named
        in ``rules`` (name -> rule of :func:`restrict_entries`) is restricted by that rule.
        """
        if batches < 1 or self._m % batches:
            raise InvalidSystemError(f"a system of {self._m} rows does not hold {batches} batches of tasks")
        mask = task_mask(present, self._m // batches)
        index = np.flatnonzero(np.tile(mask, batches))
        extras = dict(self._extras)
        for name, rule in (rules or {}).items():
            if extras.get(name) is not None:
                extras[name] = restrict_entries(extras[name], mask, rule, f"extras[{name!r}]")
        return GradientSystem(
            _take(self._matrix, index),
            gramian=None if self._gramian is None else _take(_take(self._gramian, index), index, axis=1),
            losses=_take(self._losses, index),
            extras=extras,
            kind=self._kind,
            roundoff=self._roundoff,
        )

    def replace(self, **changes: Any) -> GradientSystem:
        """A new system with some of ``matrix, gramian, losses, extras, kind`` changed."""
        fields = {
            "matrix": self._matrix,
            "gramian": self._gramian,
            "losses": self._losses,
            "extras": self._extras,
            "kind": self._kind,
            "roundoff": self._roundoff,
        }
        unknown = set(changes) - set(fields)
        if unknown:
            raise TypeError(f"unknown fields {sorted(unknown)}; valid: {sorted(fields)}")
        if "matrix" in changes and "gramian" not in changes:
            fields["gramian"] = None
        if "gramian" in changes and "roundoff" not in changes:
            fields["roundoff"] = None
        fields.update(changes)
        return GradientSystem(fields.pop("matrix"), **fields)


def as_system(
    matrix: Any = None,
    *,
    gramian: Any = None,
    losses: Any = None,
    kind: str = "shared",
    roundoff: float | None = None,
    **extras: Any,
) -> GradientSystem:
    """Wrap the arguments of ``solver(...)`` into a system (a system passes through)."""
    if isinstance(matrix, GradientSystem):
        if gramian is not None or losses is not None or extras or roundoff is not None:
            raise InvalidSystemError("pass either a GradientSystem or arrays, not both")
        return matrix
    return GradientSystem(matrix, gramian=gramian, losses=losses, extras=extras, kind=kind, roundoff=roundoff)


#: how :func:`restrict_entries` restricts a per-task value to the present tasks
TASK_RULES = ("entries", "preference", "columns", "index")


def task_mask(present: Any, m: int) -> np.ndarray:
    """``present`` as a boolean numpy mask over m tasks, at least one of them True.

    Accepts a boolean numpy array, torch tensor or sequence of bools of length m; anything
    else (integer indices, a wrong length, no task present) raises InvalidSystemError."""
    if is_torch(present):
        present = present.detach().cpu().numpy()
    try:
        mask = np.asarray(present)
    except Exception:
        raise InvalidSystemError(f"present must be a boolean mask over the {m} tasks, got {present!r}") from None
    if mask.dtype != np.bool_ or mask.ndim != 1:
        raise InvalidSystemError(
            f"present must be a 1-D boolean mask over the {m} tasks, got dtype {mask.dtype} with shape {mask.shape}"
        )
    if mask.shape[0] != m:
        raise InvalidSystemError(f"present has {mask.shape[0]} entries for {m} tasks")
    if not mask.any():
        raise InvalidSystemError("present marks no task present: a step needs at least one task")
    return mask


def restrict_entries(value: Any, present: np.ndarray, rule: str, what: str) -> Any:
    """A per-task value restricted to the ``present`` tasks (a boolean mask over m tasks).

    ``"entries"``: the present entries of a length-m vector. ``"preference"``: the present
    entries rescaled to the vector's total (a preference on the simplex stays on it; a uniform
    one becomes uniform over the present tasks); refused when it is 0 on every present task.
    ``"columns"``: the present columns of a K x m matrix (a population's losses, a set of
    preference rows), refused when a row is 0 on every present task. A tuple stays a tuple,
    a list a list, an array or tensor its type; a value whose last axis is not m is returned
    as it is, for the solver to refuse. ``"index"``: a task index, renumbered among the present
    tasks; refused when that task is absent.
    """
    if rule not in TASK_RULES:
        raise InvalidSystemError(f"unknown restriction rule {rule!r}; valid: {TASK_RULES}")
    m = present.shape[0]
    if rule == "index":
        if not (0 <= value < m):
            return value
        if not present[value]:
            raise InvalidSystemError(f"{what} names task {value}, which is absent from this step")
        return int(present[:value].sum())
    array = to_numpy64(value) if is_torch(value) else np.asarray(value, dtype=np.float64)
    if array.ndim != (2 if rule == "columns" else 1) or array.shape[-1] != m:
        return value
    kept = array[..., present]
    if rule == "preference":
        total, part = array.sum(), kept.sum()
        if not part > 0:
            raise InvalidSystemError(f"{what} is 0 on every present task: {array.tolist()}")
        kept = kept * (total / part)
    if rule == "columns" and not (np.abs(kept).sum(axis=1) > 0).all():
        raise InvalidSystemError(f"{what} has a row that is 0 on every present task")
    if is_torch(value):
        return _torch().as_tensor(kept, dtype=value.dtype, device=value.device)
    if isinstance(value, np.ndarray):
        return kept.astype(value.dtype)
    if isinstance(value, (tuple, list)):
        rows = [tuple(r) for r in kept.tolist()] if kept.ndim == 2 else kept.tolist()
        return type(value)(rows)
    return kept


def _take(x: Any, index: np.ndarray, axis: int = 0) -> Any:
    """Rows (or columns) ``index`` of an array or tensor, on its device; None stays None."""
    if x is None:
        return None
    if is_torch(x):
        return x.index_select(axis, _torch().as_tensor(index, device=x.device))
    return np.take(x, index, axis=axis)


def dtype_eps(x: Any) -> float:
    """The machine epsilon of an array's or tensor's (floating) dtype."""
    eps = _EPS.get(x.dtype)
    if eps is None:
        eps = _EPS[x.dtype] = float(_torch().finfo(x.dtype).eps if is_torch(x) else np.finfo(x.dtype).eps)
    return eps


def dtype_max(x: Any) -> float:
    """The largest finite value of an array's or tensor's (floating) dtype."""
    largest = _MAX.get(x.dtype)
    if largest is None:
        largest = _MAX[x.dtype] = float(_torch().finfo(x.dtype).max if is_torch(x) else np.finfo(x.dtype).max)
    return largest


_EPS: dict[Any, float] = {}  # by dtype (numpy's and torch's dtypes are distinct keys)
_MAX: dict[Any, float] = {}
_FLOAT32_EPS = float(np.finfo(np.float32).eps)


def _gramian_of(G: Any) -> tuple[Any, np.ndarray, bool]:
    """(G Gᵀ on G's device, accumulated in float32 at least (half-precision G); its float64 host
    copy; whether that copy is regular: every entry finite and every squared norm in range, in
    which case the copy is also symmetrised).

    A squared row norm below the accumulation dtype's normal range loses its digits to
    subnormals (float32 ‖g‖ ≲ 1e-19), and above it overflows (‖g‖ ≳ 2e19): then, and only
    then, the rows are scaled by their largest entries s_i and K = S (G̃G̃ᵀ) S is formed in
    float64, so scale-invariant solvers see the right geometry at any gradient scale.
    """
    torch_input = is_torch(G)
    if torch_input:
        torch = _torch()
        if G.dtype == torch.float16 or G.dtype == torch.bfloat16:
            G = G.float()
        K = G @ G.T
        host = K.detach().cpu().numpy().astype(np.float64)
        info = torch.finfo(G.dtype)
    else:
        if G.dtype == np.float16:
            G = G.astype(np.float32)
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):  # handled below
            K = G @ G.T
        host = np.array(K, dtype=np.float64)
        info = np.finfo(G.dtype)
    from mtlsolve.kernels._dense import symmetrise_if_regular

    floor = float(info.tiny) / float(info.eps)
    if host.size and symmetrise_if_regular(host, floor):  # the common case, in one compiled pass
        return K, host, True
    diagonal = host.diagonal()
    # a zero row is exact; a tiny or overflowing one needs scaling; NaN/Inf stay for gramian64 to report
    if torch_input:
        s = to_numpy64(G.abs().amax(dim=1)) if G.shape[1] else np.zeros(G.shape[0])
    else:
        s = np.abs(G).max(axis=1).astype(np.float64) if G.shape[1] else np.zeros(G.shape[0])
    if not np.isfinite(s).all():
        return K, host, False
    ok = (diagonal >= floor) & np.isfinite(diagonal)
    if (ok | (s == 0)).all():
        return K, host, False
    inv = np.divide(1.0, s, out=np.zeros_like(s), where=s > 0)
    if torch_input:
        torch = _torch()
        Gs = G.to(torch.float64) * torch.as_tensor(inv, dtype=torch.float64, device=G.device)[:, None]
        K = (Gs @ Gs.T) * torch.as_tensor(np.outer(s, s), dtype=torch.float64, device=G.device)
        return K, to_numpy64(K), False
    Gs = G.astype(np.float64) * inv[:, None]
    K = (Gs @ Gs.T) * np.outer(s, s)
    return K, K.copy(), False


def _as_float_array(x: Any, what: str, ndim: int) -> Any:
    if x is None:
        return None
    if is_torch(x):
        if x.is_complex():
            raise InvalidSystemError(f"{what} must hold real numbers, got dtype {x.dtype}")
        if not x.is_floating_point():  # integer and bool tensors, like numpy's, become float64
            import torch  # already loaded: x is a tensor

            x = x.to(dtype=torch.float64)
    else:
        try:
            x = np.asarray(x)
        except Exception as exc:  # ragged lists and other non-arrays
            raise InvalidSystemError(f"{what} cannot be read as an array: {exc}") from None
        if x.dtype.kind in "biu":
            x = x.astype(np.float64)
        elif x.dtype.kind != "f":
            raise InvalidSystemError(f"{what} must hold real numbers, got dtype {x.dtype}")
    if x.ndim != ndim:
        shape = "m x n" if ndim == 2 else "m"
        raise InvalidSystemError(f"{what} must be {ndim}-D ({shape}), got shape {tuple(x.shape)}")
    return x

"""GradDrop: gradient sign dropout (docs/methods.md#graddrop)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from mtlsolve._array import is_torch, like
from mtlsolve.errors import InvalidSystemError, NonFiniteError
from mtlsolve.plugins.full_matrix._common import match
from mtlsolve.solver import Need, Result, Solver
from mtlsolve.system import GradientSystem
from mtlsolve.validation import one_of, optional_seed

INPUTS = ("representation", "params")


def _leak(value: Any) -> float | tuple[float, ...]:
    """One leak for every task (a number) or one per task (a sequence), each in [0, 1]."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim > 1 or arr.size == 0 or not ((arr >= 0) & (arr <= 1)).all():
        raise ValueError(f"leak must be a number in [0, 1] or a sequence of them, got {value!r}")
    return float(arr) if arr.ndim == 0 else tuple(float(v) for v in arr)


@attrs.define(kw_only=True, eq=False)
class GradDrop(Solver):
    """GradDrop, Chen, Ngiam, Huang, Luong, Kretzschmar, Chai, Anguelov, "Just Pick a Sign",
    NeurIPS 2020, arXiv 2010.06808, Algorithm 1 (purity, sign masks, leak), f = identity.

    A_i = Σ_batch sign(H) ⊙ ∂L_i/∂H (``on="representation"``, the paper and LibMTL) or
    A_i = g_i (``on="params"``, FAMO and TorchJD); per element of A, the purity is
    P = ½(1 + Σ_i A_i / Σ_i |A_i|) (½ where every A_i is 0) and, with U ~ U(0, 1) drawn
    per element, M_i = 1[P > U]·1[A_i > 0] + 1[P < U]·1[A_i < 0]; the update is
    d = Σ_i (ℓ_i + (1 − ℓ_i) M_i) ⊙ g_i, the mask of an element of A applied to every
    batch entry of that feature. ``leak`` ℓ is one number or one per task
    (SamsungLabs/MTL's ℓ_S converts to ℓ = 1 − ℓ_S).

    In representation mode the rows of G are the flattened per-task gradients of the
    shared features H, and the system extras hold ``features`` (H, numel n). The batch
    axis is H's first axis when H has two or more axes, or ``batch_size`` from the
    extras when H comes flattened; otherwise H is one sample. U is drawn on the host
    from the solver's generator (``seed``) and copied to G's device, so numpy and torch
    give the same masks. Everything else stays on G's device and dtype.
    """

    name: ClassVar[str] = "graddrop"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    family: ClassVar[str] = "FM"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.MATRIX})
    properties: ClassVar[frozenset[str]] = frozenset({"permutation_equivariant", "positive_homogeneous"})
    randomized: ClassVar[bool] = True
    paper: ClassVar[str] = "Chen, Ngiam, Huang, Luong, Kretzschmar, Chai, Anguelov — NeurIPS 2020 — arXiv 2010.06808"
    state_schema: ClassVar[Mapping[str, Any]] = {"rng": None}  # the generator's state

    leak: float | tuple[float, ...] = attrs.field(default=0.0, converter=_leak)
    on: str = attrs.field(default="representation", validator=one_of(*INPUTS))
    seed: int | None = attrs.field(default=None, validator=optional_seed)

    def solve(self, system: GradientSystem) -> Result:
        G = system.matrix
        m, n = G.shape
        leak = np.full(m, self.leak) if isinstance(self.leak, float) else np.array(self.leak)
        if leak.size != m:
            raise InvalidSystemError(f"graddrop was given {leak.size} leak values for {m} tasks")
        Z, A = self._signed_gradients(system)
        if is_torch(A):
            total = A.abs().sum(0)
            ratio = (A.sum(0) / total).where(total > 0, 0.0)
        else:
            total = np.abs(A).sum(0)
            ratio = np.divide(A.sum(0), total, out=np.zeros_like(total), where=total > 0)
        P = 0.5 * (1.0 + ratio)
        gen = self._rng(self.seed)
        U = like(gen.random(A.shape[1]), A)
        self._save_rng(gen)
        keep = ((P > U) & (A > 0)) | ((P < U) & (A < 0))
        leak = like(leak, A)[:, None]
        factor = leak + (1.0 - leak) * keep
        direction = (factor[:, None, :] * Z).sum(0).reshape(n)
        return Result(direction=direction)

    def _signed_gradients(self, system: GradientSystem) -> tuple[Any, Any]:
        """Z (m x batch x features) and A (m x features)."""
        G = system.matrix
        m, n = G.shape
        if self.on == "params":
            return G[:, None, :], G
        H = system.extras.get("features")
        if H is None:
            raise InvalidSystemError(
                "graddrop on representation gradients needs the shared features H: pass features=H "
                "(the adapter's grads='representation' does), or use on='params' for parameter gradients"
            )
        try:
            H = match(H, G)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise InvalidSystemError(f"graddrop: the features H must be an array of numbers ({exc})") from None
        size = int(H.numel()) if is_torch(H) else int(H.size)
        if size != n:
            raise InvalidSystemError(f"graddrop: the features hold {size} values for {n} gradient coordinates")
        batch = system.extras.get("batch_size", H.shape[0] if H.ndim >= 2 else 1)
        if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)):
            raise InvalidSystemError(f"graddrop: batch_size must be an int, got {batch!r}")
        batch = int(batch)
        if batch < 1 or n % batch:
            raise InvalidSystemError(f"graddrop: batch size {batch} does not divide the {n} coordinates")
        S = H.reshape(batch, n // batch)
        finite = bool(S.isfinite().all()) if is_torch(S) else bool(np.isfinite(S).all())
        if not finite:
            raise NonFiniteError("graddrop: the features H hold NaN or Inf")
        S = S.sign() if is_torch(S) else np.sign(S)
        Z = G.reshape(m, batch, n // batch)
        return Z, (Z * S).sum(1)

"""GradNorm: gradient normalisation for adaptive loss balancing (docs/methods.md#gradnorm)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from mtlsolve._array import is_torch, to_numpy64
from mtlsolve.errors import InvalidSystemError
from mtlsolve.gramian import norms as gradient_norms
from mtlsolve.plugins.loss_weighting._common import checked_counts, checked_positive, keep_dtypes
from mtlsolve.solver import Need, Weighting
from mtlsolve.system import GradientSystem
from mtlsolve.validation import non_negative, one_of

PARAMS = ("last_shared", "all_shared")
PARAMETERISATIONS = ("raw", "softmax")
INITIAL_LOSSES = ("first_step", "first_epoch_mean")


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


@attrs.define(kw_only=True, eq=False)
class GradNorm(Weighting):
    """GradNorm, Chen, Badrinarayanan, Lee, Rabinovich, ICML 2018, arXiv 1711.02257, §3.2,
    eqs. (1)–(2) and Algorithm 1.

    The task weights w are a learnable ``torch.nn.Parameter`` p (:meth:`parameters`; the
    training adapter adds it to the user's optimiser, so it is stepped with the main lr).
    Each call returns the current w (d = Gᵀw) and adds to ``p.grad`` the gradient of
    L_grad = Σ_i |w_i‖g_i‖ − Ḡ·r_i^α| with Ḡ·r_i^α held constant, where ‖g_i‖ = √K_ii,
    Ḡ = mean_i w_i‖g_i‖, L̃_i = L_i/L_i(0) and r_i = L̃_i/mean(L̃). Since ∇_W(w_iL_i) = w_ig_i,
    ∂L_grad/∂w_i = sign(w_i‖g_i‖ − Ḡr_i^α)·‖g_i‖: the diagonal of K suffices, no double
    backward. After the optimiser step, :meth:`after_step` clips w at 0 and renormalises it
    to sum m.

    ``params="last_shared"`` (paper, SamsungLabs/MTL) reads K of the last shared layer: the
    class asks the adapter for ``grads="last_shared"`` (the weights still multiply the full
    losses); ``"all_shared"`` (LibMTL) reads whatever Gramian the adapter hands over.
    ``parameterisation="softmax"`` (LibMTL): w = m·softmax(p), p₀ = 0, no renormalisation
    needed; default ``"raw"``: w = p, p₀ = 1. ``initial_loss="first_epoch_mean"`` (LibMTL):
    w stays 1 and p gets no gradient until the first :meth:`end_epoch`, and L(0) is the mean
    loss over that epoch; default ``"first_step"``: L(0) = the losses of the first call.
    ``alpha`` is α (1.5; SamsungLabs/MTL uses 2). ``diagnostics``: ``grad_norms`` ‖g_i‖,
    ``targets`` Ḡr_i^α and ``weight_grad`` ∂L_grad/∂w (absent while warming up).
    """

    name: ClassVar[str] = "gradnorm"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    family: ClassVar[str] = "GW"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.GRAMIAN, Need.LOSSES})
    # w depends on the previous steps only, so for the current G, d = Gᵀw is linear
    properties: ClassVar[frozenset[str]] = frozenset({"permutation_equivariant", "positive_homogeneous", "linear"})
    stateful: ClassVar[bool] = True
    #: docs/methods.md#missing-tasks
    task_state: ClassVar[str] = "its weights are renormalised over all tasks after every step"
    parameter_state: ClassVar[frozenset[str]] = frozenset({"p"})
    #: the weight parameter p, the initial losses L(0), and the first epoch's loss sum and count
    state_schema: ClassVar[Mapping[str, Any]] = {"p": ("m",), "initial": ("m",), "epoch_sum": ("m",), "epoch_count": ()}
    post_step: ClassVar[bool] = True
    post_step_losses: ClassVar[bool] = False
    paper: ClassVar[str] = "Chen, Badrinarayanan, Lee, Rabinovich — ICML 2018 — arXiv 1711.02257"

    alpha: float = attrs.field(default=1.5, converter=float, validator=non_negative)
    params: str = attrs.field(default="last_shared", validator=one_of(*PARAMS))
    parameterisation: str = attrs.field(default="raw", validator=one_of(*PARAMETERISATIONS))
    initial_loss: str = attrs.field(default="first_step", validator=one_of(*INITIAL_LOSSES))

    @property
    def grads(self) -> str | None:  # type: ignore[override]
        return "last_shared" if self.params == "last_shared" else None

    # ------------------------------------------------------- the parameter
    def _parameter(self, m: int, reference: Any) -> Any:
        state = self._state_for(m)
        if "p" not in state:
            import torch

            if is_torch(reference):
                where = {"device": reference.device, "dtype": reference.dtype}
            else:
                where = {"dtype": torch.from_numpy(np.zeros(0, dtype=reference.dtype)).dtype}
            state["p"] = torch.nn.Parameter(torch.full((m,), 1.0 if self.parameterisation == "raw" else 0.0, **where))
        return state["p"]

    def parameters(self) -> list[Any]:
        p = self._state.get("p")
        return [] if p is None else [p]

    def _weights_of(self, p: np.ndarray) -> np.ndarray:
        return p if self.parameterisation == "raw" else len(p) * _softmax(p)

    # ---------------------------------------------------------------- solve
    def weights(self, system: GradientSystem) -> tuple[np.ndarray, Mapping[str, Any]]:
        m = system.m
        K, L = system.gramian64, system.losses64
        p = self._parameter(m, system.reference)
        state = self._state
        theta = to_numpy64(p)
        w = self._weights_of(theta)
        norms = gradient_norms(K)
        if self.initial_loss == "first_epoch_mean" and "initial" not in state:
            state["epoch_sum"] = state.get("epoch_sum", np.zeros(m)) + L
            state["epoch_count"] = state.get("epoch_count", 0) + 1
            return np.ones(m), {"grad_norms": norms}
        if "initial" not in state:
            state["initial"] = self._checked_initial(L.copy())
        ratio = L / state["initial"]
        mean = ratio.mean()
        r = ratio / mean if mean > 0 else np.ones(m)
        targets = np.mean(w * norms) * r**self.alpha
        grad_w = np.sign(w * norms - targets) * norms
        grad_p = grad_w if self.parameterisation == "raw" else m * _softmax(theta) * (grad_w - _softmax(theta) @ grad_w)
        self._accumulate(p, grad_p)
        return w, {"grad_norms": norms, "targets": targets, "weight_grad": grad_w}

    @staticmethod
    def _checked_initial(L0: np.ndarray) -> np.ndarray:
        if (L0 <= 0).any():
            raise InvalidSystemError(
                f"gradnorm divides by the initial losses L(0), which must be > 0; got {L0.tolist()}"
            )
        return L0

    @staticmethod
    def _accumulate(p: Any, grad: np.ndarray) -> None:
        """Add ``grad`` to ``p.grad``, as a backward of L_grad would."""
        import torch

        g = torch.as_tensor(grad).to(device=p.device, dtype=p.dtype)
        if p.grad is None:
            p.grad = g
        else:
            p.grad.add_(g)

    # -------------------------------------------------------- training hooks
    def after_step(self, losses: Any = None) -> None:
        """Renormalise the raw weights to sum m after the optimiser stepped them (clipped at 0 first)."""
        p = self._state.get("p")
        if p is None or self.parameterisation != "raw":
            return
        import torch

        with torch.no_grad():
            p.clamp_(min=0.0)
            total = float(p.sum())
            if total > 0:
                p.mul_(len(p) / total)
            else:
                p.fill_(1.0)

    def end_epoch(self) -> None:
        """Fixes L(0) as the mean loss of the first epoch (``initial_loss="first_epoch_mean"``)."""
        state = self._state
        if self.initial_loss == "first_epoch_mean" and "initial" not in state and state.get("epoch_count"):
            state["initial"] = self._checked_initial(state.pop("epoch_sum") / state.pop("epoch_count"))

    # ------------------------------------------------------------------ state
    # p is a Parameter the user's optimiser holds: checkpoints carry a plain tensor, and
    # loading writes into the existing Parameter so that the optimiser keeps stepping it.
    def _checked_state(self, state: Any) -> dict[str, Any]:
        checked = checked_counts(super()._checked_state(state), self.name, "epoch_count")
        return keep_dtypes(checked_positive(checked, self.name, "the initial losses L(0)", "initial"), state, "p")

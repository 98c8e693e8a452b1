"""Dynamic weight average (docs/methods.md#dwa)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from mtlsolve.errors import InvalidSystemError, StateError
from mtlsolve.plugins.loss_weighting._common import checked_counts, softmax
from mtlsolve.solver import REDUCTIONS, Need, Weighting, reduce_weights
from mtlsolve.system import GradientSystem
from mtlsolve.validation import one_of, positive


def _period(value: Any) -> str | int:
    if value == "epoch":
        return "epoch"
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"period must be 'epoch' or a positive number of iterations, got {value!r}")
    return int(value)


@attrs.define(kw_only=True, eq=False)
class DynamicWeightAverage(Weighting):
    """DWA, Liu, Johns, Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019
    (arXiv 1803.10704), Eq. (1): w = m·softmax(r/T) with r_i the ratio of task i's loss over
    the last two periods (``reduction="sum"``, weights sum to m; ``"mean"`` divides by m).

    ``period="epoch"`` (default; paper, LibMTL, TorchJD 0.18.0): r_i = L̄_i(t−1)/L̄_i(t−2), L̄
    the mean of the losses this solver saw during an epoch; the training loop calls
    :meth:`end_epoch` at each epoch end, and the weights are uniform until two epochs are
    complete. ``period=P`` (an int; nash-mtl, FAMO, SamsungLabs/MTL use 25 with
    ``reduction="mean"``): a buffer of the last 2P losses (initially ones) receives the
    current losses first; once more than P calls came before this one, r is the mean of
    the newest P rows over the mean of the oldest P rows, and otherwise the last weights
    (uniform at the start) are kept.

    Missing tasks (docs/methods.md#missing-tasks): an epoch mean is each task's mean over the
    steps it was present (``seen`` counts them once a step missed a task); a task absent for a
    whole epoch keeps its last mean, and the first epoch closes once every task was seen. In
    period mode the buffer holds each task's last 2P present losses.
    """

    name: ClassVar[str] = "dwa"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {"dynamic_weight_average": {}}
    family: ClassVar[str] = "LW"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.LOSSES})
    properties: ClassVar[frozenset[str]] = frozenset({"positive_homogeneous", "linear"})
    stateful: ClassVar[bool] = True
    #: docs/methods.md#missing-tasks
    #: epoch mode counts each task's steps in ``seen`` once a step missed a task (absent tasks
    #: have seen every step before it); period mode shifts the present tasks' buffer columns
    task_state: ClassVar[Mapping[str, Any]] = {
        "sum": 0.0,
        "seen": lambda state: state.get("count", 0),
        "history": None,
        "buffer": 1.0,
        "weights": 1.0,
    }
    paper: ClassVar[str] = "Liu, Johns, Davison — CVPR 2019 — arXiv 1803.10704"
    #: epoch mode: the last (up to) two epoch means, this epoch's sum and count; period mode:
    #: the 2P x m loss buffer, the last weights and the number of calls
    state_schema: ClassVar[Mapping[str, Any]] = {
        "history": (None, "m"),
        "sum": ("m",),
        "count": (),
        "seen": ("m",),
        "buffer": (None, "m"),
        "weights": ("m",),
        "calls": (),
    }

    temperature: float = attrs.field(default=2.0, converter=float, validator=positive)
    period: str | int = attrs.field(default="epoch", converter=_period)
    reduction: str = attrs.field(default="sum", validator=one_of(*REDUCTIONS))

    def weights(self, system: GradientSystem) -> tuple[np.ndarray, Mapping[str, Any]]:
        L = system.losses64
        state = self._state_for(system.m)
        if self.period == "epoch":
            history = state.get("history", ())
            w = self._from_ratio(history[-1], history[-2]) if len(history) == 2 else np.ones(system.m)
            count = state.get("count", 0)
            state["sum"] = state.get("sum", 0.0) + L
            state["count"] = count + 1
            if "seen" in state or self._restricted is not None:  # a step with missing tasks this epoch
                state["seen"] = np.asarray(state.get("seen", np.full(system.m, float(count)))) + 1
        else:
            P = self.period
            buffer = state.setdefault("buffer", np.ones((2 * P, system.m)))
            buffer[:-1] = buffer[1:]
            buffer[-1] = L
            calls = state.get("calls", 0)
            w = state.get("weights", np.ones(system.m))
            if calls > P:
                w = self._from_ratio(buffer[P:].mean(axis=0), buffer[:P].mean(axis=0))
            state["weights"] = w
            state["calls"] = calls + 1
        return reduce_weights(w / system.m, self.reduction), {}

    def _from_ratio(self, newer: np.ndarray, older: np.ndarray) -> np.ndarray:
        if (older == 0).any():
            raise InvalidSystemError(
                f"dwa: a period's mean loss is 0, so the loss ratio is undefined: {older.tolist()}"
            )
        with np.errstate(over="ignore"):  # a ratio beyond float64 is +inf, where the softmax takes its limit
            return len(newer) * softmax(newer / older / self.temperature)

    def end_epoch(self) -> None:
        """Close the epoch: its mean loss joins the two-epoch history (``period="epoch"`` only)."""
        if self.period != "epoch" or not self._state.get("count"):
            return
        seen = self._state.get("seen")
        history = self._state.get("history")
        if seen is not None and (seen == 0).any() and history is None:
            return  # a task not seen yet: the first epoch mean waits for it
        total, count = self._state.pop("sum"), self._state.pop("count")
        if seen is None:
            mean = total / count
        else:  # each task's mean over the steps it was present; one absent all epoch keeps its last mean
            self._state.pop("seen")
            mean = np.where(seen > 0, total / np.maximum(seen, 1), 0.0 if history is None else history[-1])
        rows = [mean] if history is None else [*history, mean]
        self._state["history"] = np.array(rows[-2:])

    def _checked_state(self, state: Any) -> dict[str, Any]:
        checked = super()._checked_state(state)
        keys = {"history", "sum", "count", "seen"} if self.period == "epoch" else {"buffer", "weights", "calls"}
        other = sorted(set(checked) - keys - {"m"})
        if other:
            raise StateError(f"dwa(period={self.period!r}) state has entries {other} of the other period mode")
        history, buffer = checked.get("history"), checked.get("buffer")
        if history is not None and not 1 <= len(history) <= 2:
            raise StateError(f"dwa state entry 'history' holds {len(history)} epoch means, not 1 or 2")
        if buffer is not None and len(buffer) != 2 * self.period:
            raise StateError(
                f"dwa(period={self.period}) state entry 'buffer' has {len(buffer)} rows, not {2 * self.period}"
            )
        return checked_counts(checked, self.name, "count", "calls")

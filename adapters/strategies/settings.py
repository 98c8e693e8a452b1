"""The settings of the built-in training strategies: plain validated values, no torch.

Each class is what :func:`mtlsolve.get_strategy` returns by name and what the ``register_strategies``
hook of :mod:`mtlsolve.adapters.strategies` registers; ``settings.build(model=..., ...)`` makes the
runtime object (:class:`~mtlsolve.adapters.strategies.cost.COST`,
:class:`~mtlsolve.adapters.strategies.stgu.STGU`, :class:`~mtlsolve.adapters.strategies.mtgd.MTGD`),
whose docstrings describe each setting.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from mtlsolve.errors import InvalidConfigError
from mtlsolve.strategy import StrategySettings, check_solver_spec
from mtlsolve.validation import vector_converter

_in = attrs.validators.in_
_optional = attrs.validators.optional


def _integer(minimum: int) -> Callable[[Any, attrs.Attribute, Any], None]:
    """An int (not a bool) of at least ``minimum``."""

    def check(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{attribute.name} must be an integer ≥ {minimum}, got {value!r}")

    return check


def _positive(instance: Any, attribute: attrs.Attribute, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{attribute.name} must be a positive number, got {value!r}")


def _non_negative(instance: Any, attribute: attrs.Attribute, value: float) -> None:
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{attribute.name} must be a non-negative number, got {value!r}")


def _flag(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{attribute.name} must be True or False, got {value!r}")


def _names(value: Any) -> tuple[str, ...] | None:
    """None, or one or more module/parameter names."""
    if value is None:
        return None
    names = (value,) if isinstance(value, str) else tuple(value)
    if not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"expected one or more names, got {value!r}")
    return names


def _options(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a mapping of MultiTaskBackward keywords, got {value!r}")
    return dict(value)


# ------------------------------------------------------------------------------------------ COST
TRIGGERS = ("dominated_any", "dominated_min_norm", "fraction")
CONTOURS = ("dataset", "batch")
SHARPNESS_GRADS = ("full", "official")
PERTURB = ("shared", "all")
AFTER_TELEPORT = ("step", "skip")


def _fraction(instance: Any, attribute: attrs.Attribute, value: float) -> None:
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{attribute.name} must be in (0, 1], got {value!r}")


@attrs.frozen(kw_only=True)
class COSTSettings(StrategySettings):
    """Settings of COST, continual optimisation with symmetry teleportation (Zhou, Meng, Wu, Zhao, Miao,
    NeurIPS 2025, arXiv 2503.04046); each is described on :class:`~mtlsolve.adapters.strategies.cost.COST`."""

    name: ClassVar[str] = "cost"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {"teleport": {}}
    runtime: ClassVar[str] = "mtlsolve.adapters.strategies.cost:COST"
    paper: ClassVar[str] = "Zhou, Meng, Wu, Zhao, Miao — NeurIPS 2025 — arXiv 2503.04046"

    base: Any = attrs.field(factory=lambda: {"name": "fairgrad", "alpha": 2.0}, validator=check_solver_spec)
    trigger: str = attrs.field(default="dominated_any", validator=_in(TRIGGERS))
    trigger_fraction: float = attrs.field(default=0.5, converter=float, validator=_fraction)
    start_epoch: int = attrs.field(default=0, validator=_integer(0))
    start_step: int = attrs.field(default=0, validator=_integer(0))
    max_teleports_per_epoch: int = attrs.field(default=1, validator=_integer(0))
    lora_rank: int = attrs.field(default=5, validator=_integer(1))
    lora_alpha: float = attrs.field(default=8.0, converter=float, validator=_positive)
    lora_targets: tuple[str, ...] | None = attrs.field(default=None, converter=_names)
    lora_lr: float | None = attrs.field(default=None, validator=_optional(_positive))
    tele_rounds: int = attrs.field(default=2, validator=_integer(1))
    sharp_samples: int = attrs.field(default=5, validator=_integer(1))
    sharp_radius: float = attrs.field(default=1e-4, converter=float, validator=_positive)
    w_inv: float = attrs.field(default=10.0, converter=float, validator=_non_negative)
    w_sharp: float = attrs.field(default=0.5, converter=float, validator=_non_negative)
    sharpness_grad: str = attrs.field(default="full", validator=_in(SHARPNESS_GRADS))
    perturb: str = attrs.field(default="shared", validator=_in(PERTURB))
    contour: str = attrs.field(default="dataset", validator=_in(CONTOURS))
    after_teleport: str = attrs.field(default="step", validator=_in(AFTER_TELEPORT))
    htr: bool = attrs.field(default=True, validator=_flag)
    max_norm: float | None = attrs.field(default=1.0, validator=_optional(_positive))
    backward_options: Mapping[str, Any] = attrs.field(factory=dict, converter=_options)
    monitor: bool = attrs.field(default=False, validator=_flag)
    seed: int | None = attrs.field(default=None, validator=_optional(_integer(0)))

    def __attrs_post_init__(self) -> None:
        clash = {"solver", "shared", "max_norm", "scaler"} & set(self.backward_options)
        if clash:
            raise InvalidConfigError(f"backward_options cannot set {sorted(clash)}; they are COST settings")
        if self.backward_options.get("grads", "shared") != "shared" or self.backward_options.get("accumulation_steps", 1) != 1:
            raise InvalidConfigError("backward_options: COST needs per-task gradients of the shared parameters, one batch per step")


# ------------------------------------------------------------------------------------------ STGU
ATTRIBUTIONS = ("causal", "official")
AP_BACKENDS = ("auto", "sklearn", "numba")

Groups = tuple[tuple[int, ...], ...]


def _groups(value: Any) -> Groups | None:
    if value is None:
        return None
    groups = tuple(sorted(tuple(sorted(int(t) for t in g)) for g in value))
    flat = [t for g in groups for t in g]
    if not groups or any(not g for g in groups) or sorted(flat) != list(range(len(flat))):
        raise ValueError(f"initial_groups must partition the tasks 0..m-1 into non-empty groups, got {value!r}")
    return groups


@attrs.frozen(kw_only=True)
class STGUSettings(StrategySettings):
    """Settings of STGU, selective task group updates (Jeong & Yoon, ICLR 2025, arXiv 2502.11986); each
    is described on :class:`~mtlsolve.adapters.strategies.stgu.STGU`."""

    name: ClassVar[str] = "stgu"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "sel_update": {},
        "selective_task_group_updates": {},
        "task_grouping": {},
    }
    runtime: ClassVar[str] = "mtlsolve.adapters.strategies.stgu:STGU"
    paper: ClassVar[str] = "Jeong & Yoon — ICLR 2025 — arXiv 2502.11986"

    solver: Any = attrs.field(default="ls", validator=check_solver_spec)
    backward_options: Mapping[str, Any] = attrs.field(factory=dict, converter=_options)
    affinity_beta: float = attrs.field(default=1e-3, converter=float, validator=[_positive, attrs.validators.le(1.0)])
    warmup_iters: int = attrs.field(default=100, validator=_integer(0))
    regroup_every: int = attrs.field(default=1, validator=_integer(1))
    attribution: str = attrs.field(default="causal", validator=_in(ATTRIBUTIONS))
    final_forward: bool = attrs.field(default=False, validator=_flag)
    group_norm: bool = attrs.field(default=False, validator=_flag)
    task_specific_lr_mult: float | None = attrs.field(
        default=None, converter=attrs.converters.optional(float), validator=_optional(_positive)
    )
    initial_groups: Groups | None = attrs.field(default=None, converter=_groups)
    loss_weights: tuple[float, ...] | None = attrs.field(default=None, converter=vector_converter("loss_weights"))
    ap_preference: float | None = attrs.field(default=None, converter=attrs.converters.optional(float))
    ap_damping: float = attrs.field(default=0.5, converter=float, validator=[attrs.validators.ge(0.5), attrs.validators.lt(1.0)])
    ap_convergence_iter: int = attrs.field(default=50, validator=_integer(1))
    ap_max_iter: int = attrs.field(default=200, validator=_integer(1))
    ap_retries: int = attrs.field(default=10, validator=_integer(1))
    ap_backend: str = attrs.field(default="auto", validator=_in(AP_BACKENDS))
    eps: float = attrs.field(default=1e-8, converter=float, validator=_positive)
    seed: int | None = attrs.field(default=None, validator=_optional(_integer(0)))

    def __attrs_post_init__(self) -> None:
        if self.initial_groups is not None and self.loss_weights is not None:
            m = sum(map(len, self.initial_groups))
            if len(self.loss_weights) != m:
                raise InvalidConfigError(f"loss_weights has {len(self.loss_weights)} entries, initial_groups covers {m} tasks")


# ------------------------------------------------------------------------------------------ MTGD
LABEL = "MTGD-reconstructed"
SCALARIZATIONS = ("linear", "tchebycheff")


def das_dennis(tasks: int, divisions: int) -> np.ndarray:
    """The Das–Dennis simplex-lattice: every λ ≥ 0 with Σλ = 1 and entries in {0, 1/H, …, 1};
    C(H + m − 1, m − 1) rows, in lexicographic order of (λ_m, …, λ_1) increasing from e_1."""
    if tasks < 1 or divisions < 1:
        raise ValueError(f"das_dennis needs tasks ≥ 1 and divisions ≥ 1, got {tasks}, {divisions}")
    rows = []
    for bars in itertools.combinations(range(divisions + tasks - 1), tasks - 1):
        edges = np.array((-1,) + bars + (divisions + tasks - 1,))
        rows.append(np.diff(edges) - 1)
    return np.array(rows[::-1], dtype=np.float64).reshape(-1, tasks) / divisions


def grid_size(tasks: int, divisions: int) -> int:
    return math.comb(divisions + tasks - 1, tasks - 1)


def _preferences(value: Any) -> tuple[tuple[float, ...], ...] | None:
    if value is None:
        return None
    P = np.atleast_2d(np.asarray(value, dtype=np.float64))
    if P.ndim != 2 or not np.isfinite(P).all() or (P < 0).any() or not (P.sum(axis=1) > 0).all():
        raise ValueError(f"preferences must be K rows of non-negative, non-zero weights, got {value!r}")
    return tuple(tuple(float(v) for v in row) for row in P)


@attrs.frozen(kw_only=True)
class MTGDSettings(StrategySettings):
    """Settings of MTGD-reconstructed, multi-task gradient descent with parameter transfer (Bai, Gupta,
    Ong, arXiv 2403.16162); each is described on :class:`~mtlsolve.adapters.strategies.mtgd.MTGD`."""

    name: ClassVar[str] = "mtgd"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {"mtl_mto": {}, "mgd": {}}
    runtime: ClassVar[str] = "mtlsolve.adapters.strategies.mtgd:MTGD"
    paper: ClassVar[str] = "Bai, Gupta, Ong — arXiv 2403.16162 (2024); Bai et al. — Memetic Computing 12:355–369 (2020)"

    num_tasks: int | None = attrs.field(default=None, validator=_optional(_integer(2)))
    n_models: int | None = attrs.field(default=None, validator=_optional(_integer(1)))
    preferences: tuple[tuple[float, ...], ...] | None = attrs.field(default=None, converter=_preferences)
    scalarization: str = attrs.field(default="linear", validator=_in(SCALARIZATIONS))
    ideal: tuple[float, ...] | None = attrs.field(default=None, converter=vector_converter("ideal"))
    solver: Any = attrs.field(default=None, validator=check_solver_spec)
    alpha: float = attrs.field(default=1.0, converter=float, validator=_non_negative)
    neighbors: int | None = attrs.field(default=2, validator=_optional(_integer(1)))
    transfer_layers: tuple[str, ...] | None = attrs.field(default=None, converter=_names)
    reference: tuple[float, ...] | None = attrs.field(default=None, converter=vector_converter("reference"))
    backward_options: Mapping[str, Any] = attrs.field(factory=dict, converter=_options)

    def __attrs_post_init__(self) -> None:
        m = self.preference_grid().shape[1]
        for what in ("ideal", "reference"):
            value = getattr(self, what)
            if value is not None and len(value) != m:
                raise InvalidConfigError(f"{what} has {len(value)} entries for {m} tasks")
        if self.solver is not None and self.scalarization != "linear":
            raise InvalidConfigError(
                f"{LABEL}: scalarization picks the default inner solver; with solver={self.solver!r} leave it 'linear'"
            )

    def preference_grid(self) -> np.ndarray:
        """The K x m preference vectors: ``preferences``, else the Das–Dennis grid with ``n_models`` points
        (default: the smallest grid with at least 5)."""
        if self.preferences is not None:
            P = np.array(self.preferences)
            if self.num_tasks is not None and P.shape[1] != self.num_tasks:
                raise InvalidConfigError(f"preferences have {P.shape[1]} tasks, num_tasks is {self.num_tasks}")
            if self.n_models is not None and P.shape[0] != self.n_models:
                raise InvalidConfigError(f"{P.shape[0]} preferences given, n_models is {self.n_models}")
            return P
        m = self.num_tasks
        if m is None:
            raise InvalidConfigError(f"{LABEL} needs num_tasks (≥ 2) or explicit preferences")
        if self.n_models is None:
            H = next(h for h in itertools.count(1) if grid_size(m, h) >= 5)
        else:
            sizes = {grid_size(m, h): h for h in range(1, self.n_models + 1) if grid_size(m, h) <= self.n_models}
            if self.n_models not in sizes:
                raise InvalidConfigError(
                    f"n_models: no Das–Dennis grid for {m} tasks has {self.n_models} points; sizes: {sorted(sizes)} …"
                )
            H = sizes[self.n_models]
        return das_dennis(m, H)

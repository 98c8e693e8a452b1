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
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from mtlsolve.errors import InvalidConfigError
from mtlsolve.strategy import StrategySettings, check_solver_spec
from mtlsolve.validation import (
    count,
    flag,
    in_range,
    integer_at_least,
    non_negative,
    non_negative_int,
    one_of,
    optional,
    optional_seed,
    positive,
    vector_converter,
)


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
ON_TRIGGER = ("teleport", "reset")


@attrs.frozen(kw_only=True)
class COSTSettings(StrategySettings):
    """Settings of COST, continual optimisation with symmetry teleportation (Zhou, Meng, Wu, Zhao, Miao,
    NeurIPS 2025, arXiv 2503.04046); each is described on :class:`~mtlsolve.adapters.strategies.cost.COST`."""

    name: ClassVar[str] = "cost"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {"teleport": {}}
    runtime: ClassVar[str] = "mtlsolve.adapters.strategies.cost:COST"
    paper: ClassVar[str] = "Zhou, Meng, Wu, Zhao, Miao — NeurIPS 2025 — arXiv 2503.04046"

    base: Any = attrs.field(factory=lambda: {"name": "fairgrad", "alpha": 2.0}, validator=check_solver_spec)
    trigger: str = attrs.field(default="dominated_any", validator=one_of(*TRIGGERS))
    trigger_fraction: float = attrs.field(default=0.5, converter=float, validator=in_range(0.0, 1.0, closed="right"))
    start_epoch: int = attrs.field(default=0, validator=non_negative_int)
    start_step: int = attrs.field(default=0, validator=non_negative_int)
    max_teleports_per_epoch: int = attrs.field(default=1, validator=non_negative_int)
    on_trigger: str = attrs.field(default="teleport", validator=one_of(*ON_TRIGGER))
    lora_rank: int = attrs.field(default=5, validator=count)
    lora_alpha: float = attrs.field(default=8.0, converter=float, validator=positive)
    lora_targets: tuple[str, ...] | None = attrs.field(default=None, converter=_names)
    lora_lr: float | None = attrs.field(default=None, validator=optional(positive))
    tele_rounds: int = attrs.field(default=2, validator=count)
    sharp_samples: int = attrs.field(default=5, validator=count)
    sharp_radius: float = attrs.field(default=1e-4, converter=float, validator=positive)
    w_inv: float = attrs.field(default=10.0, converter=float, validator=non_negative)
    w_sharp: float = attrs.field(default=0.5, converter=float, validator=non_negative)
    sharpness_grad: str = attrs.field(default="full", validator=one_of(*SHARPNESS_GRADS))
    perturb: str = attrs.field(default="shared", validator=one_of(*PERTURB))
    contour: str = attrs.field(default="dataset", validator=one_of(*CONTOURS))
    after_teleport: str = attrs.field(default="step", validator=one_of(*AFTER_TELEPORT))
    htr: bool = attrs.field(default=True, validator=flag)
    max_norm: float | None = attrs.field(default=1.0, validator=optional(positive))
    backward_options: Mapping[str, Any] = attrs.field(factory=dict, converter=_options)
    monitor: bool = attrs.field(default=False, validator=flag)
    seed: int | None = attrs.field(default=None, validator=optional_seed)

    def __attrs_post_init__(self) -> None:
        clash = {"solver", "shared", "max_norm", "scaler"} & set(self.backward_options)
        if clash:
            raise InvalidConfigError(f"backward_options cannot set {sorted(clash)}; they are COST settings")
        if (
            self.backward_options.get("grads", "shared") != "shared"
            or self.backward_options.get("accumulation_steps", 1) != 1
        ):
            raise InvalidConfigError(
                "backward_options: COST needs per-task gradients of the shared parameters, one batch per step"
            )


# ------------------------------------------------------------------------------------------ STGU
ATTRIBUTIONS = ("causal", "official")
INACTIVE = ("frozen", "momentum")
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
    affinity_beta: float = attrs.field(default=1e-3, converter=float, validator=in_range(0.0, 1.0, closed="right"))
    warmup_iters: int = attrs.field(default=100, validator=non_negative_int)
    regroup_every: int = attrs.field(default=1, validator=count)
    attribution: str = attrs.field(default="causal", validator=one_of(*ATTRIBUTIONS))
    final_forward: bool = attrs.field(default=False, validator=flag)
    group_norm: bool = attrs.field(default=False, validator=flag)
    task_specific_lr_mult: float | None = attrs.field(
        default=None, converter=attrs.converters.optional(float), validator=optional(positive)
    )
    inactive_task_params: str = attrs.field(default="frozen", validator=one_of(*INACTIVE))
    initial_groups: Groups | None = attrs.field(default=None, converter=_groups)
    loss_weights: tuple[float, ...] | None = attrs.field(default=None, converter=vector_converter("loss_weights"))
    ap_preference: float | None = attrs.field(default=None, converter=attrs.converters.optional(float))
    ap_damping: float = attrs.field(default=0.5, converter=float, validator=in_range(0.5, 1.0, closed="left"))
    ap_convergence_iter: int = attrs.field(default=50, validator=count)
    ap_max_iter: int = attrs.field(default=200, validator=count)
    ap_retries: int = attrs.field(default=10, validator=count)
    ap_backend: str = attrs.field(default="auto", validator=one_of(*AP_BACKENDS))
    eps: float = attrs.field(default=1e-8, converter=float, validator=positive)
    seed: int | None = attrs.field(default=None, validator=optional_seed)

    def __attrs_post_init__(self) -> None:
        if self.initial_groups is not None and self.loss_weights is not None:
            m = sum(map(len, self.initial_groups))
            if len(self.loss_weights) != m:
                raise InvalidConfigError(
                    f"loss_weights has {len(self.loss_weights)} entries, initial_groups covers {m} tasks"
                )


# ------------------------------------------------------------------------------------------ MTGD
LABEL = "MTGD-reconstructed"
SCALARIZATIONS = ("linear", "tchebycheff")
INITS = ("independent", "copy")


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

    num_tasks: int | None = attrs.field(default=None, validator=optional(integer_at_least(2)))
    n_models: int | None = attrs.field(default=None, validator=optional(count))
    preferences: tuple[tuple[float, ...], ...] | None = attrs.field(default=None, converter=_preferences)
    scalarization: str = attrs.field(default="linear", validator=one_of(*SCALARIZATIONS))
    ideal: tuple[float, ...] | None = attrs.field(default=None, converter=vector_converter("ideal"))
    solver: Any = attrs.field(default=None, validator=check_solver_spec)
    alpha: float = attrs.field(default=1.0, converter=float, validator=non_negative)
    neighbors: int | None = attrs.field(default=2, validator=optional(count))
    transfer_layers: tuple[str, ...] | None = attrs.field(default=None, converter=_names)
    init: str = attrs.field(default="independent", validator=one_of(*INITS))
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

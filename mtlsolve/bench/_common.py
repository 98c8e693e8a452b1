"""What every bench section shares: solver specs, skip reasons, timing, peak memory, seeds and tables."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import numpy as np

from mtlsolve.errors import InvalidConfigError, InvalidSystemError, MtlsolveError
from mtlsolve.registry import construct, hyperparameters, registry
from mtlsolve.solver import Need, Solver

#: errors a solver run may raise that the bench reports in the table instead of stopping
RUN_ERRORS = (MtlsolveError, ValueError, RuntimeError, ArithmeticError, LookupError, TypeError)


#: values the bench gives hyperparameters that have no default, when a solver is named without them
BENCH_DEFAULTS: Mapping[str, Mapping[str, Any]] = {
    "cosmos": {"penalty": 8.0},  # LibMOON's value; the paper tunes it per data set
    "krum": {"n_byzantine": 0},
    "trimmed_mean": {"trim_number": 0},
}


#: a row's role in a training table: a ranked method, a baseline (ranked, marked), the single-task reference
#: line (not ranked) or a preference-based method (shown as a front)
ROLES = ("method", "baseline", "reference", "preference")


@attrs.frozen
class Spec:
    """One solver configuration to run: a table label and the ``{"name": ..., **kwargs}`` config.

    ``factory`` builds bench-only solvers that are not registered (the baselines of
    :mod:`mtlsolve.bench.baselines`); ``role`` is one of :data:`ROLES`."""

    label: str
    config: Mapping[str, Any]
    factory: type[Solver] | None = attrs.field(default=None, eq=False)
    role: str = "method"

    @classmethod
    def parse(cls, item: str | Mapping[str, Any]) -> Spec:
        """A spec from a name or alias, or from a mapping with ``name``, hyperparameters and an optional ``label``.

        Raises :class:`InvalidConfigError` (one line) for an entry that is neither."""
        if isinstance(item, str):
            entry, preset = registry.resolve(item.strip())
            if entry.name in BENCH_DEFAULTS and not preset:
                return cls.parse({"name": entry.name, **BENCH_DEFAULTS[entry.name]})
            return cls(entry.name if not preset else item.strip(), {"name": item.strip()})
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            raise InvalidConfigError(f"a solver entry must be a name or a mapping with a 'name' key, got {item!r}")
        config = {str(k): v for k, v in item.items()}
        label = config.pop("label", None)
        registry.resolve(config["name"])  # fail early on unknown names
        if label is None:
            args = ", ".join(f"{k}={v}" for k, v in config.items() if k != "name")
            label = f"{config['name']}({args})" if args else config["name"]
        return cls(str(label), config)

    @property
    def cls(self) -> type[Solver]:
        return self.factory or registry.resolve(self.config["name"])[0].cls

    @property
    def name(self) -> str:
        """The canonical solver name."""
        return self.cls.name

    def with_config(self, label: str, role: str | None = None, **changes: Any) -> Spec:
        """The same solver with ``changes`` to its config, under ``label``."""
        return attrs.evolve(self, label=label, config={**self.config, **changes}, role=role or self.role)

    def make(self, seed: int | None = None, **overrides: Any) -> Solver:
        """A fresh solver; randomized solvers with a ``seed`` field get ``seed`` unless the config sets one."""
        kwargs = {k: v for k, v in self.config.items() if k != "name"}
        kwargs.update(overrides)
        if seed is not None and "seed" in hyperparameters(self.cls) and "seed" not in kwargs:
            kwargs["seed"] = seed
        if self.factory is not None:
            return construct(self.factory, kwargs, label=self.label)
        return registry.get(self.config["name"], **kwargs)


def batches(solver: Solver) -> int:
    """How many independent batches the solver reads a step (MoDo, SDMGrad: 3)."""
    return int(getattr(solver, "batches", 1))


def uses_gradients(solver: Solver) -> bool:
    return bool(solver.requirements() & {Need.GRAMIAN, Need.MATRIX})


def deterministic_skip(solver: Solver) -> str | None:
    """Why ``solver`` cannot run on a deterministic (full-batch) problem without shared features, or None."""
    b = batches(solver)
    if b > 1:
        return f"reads {b} independent batches a step; this problem has no batches"
    if getattr(solver, "on", None) == "representation":
        return "works on the shared features (on='representation'); this problem has none"
    return None


def not_applicable(solver: Solver, m: int, n: int = 8) -> str | None:
    """Why ``solver`` cannot solve an ``m``-task system at all (its :class:`InvalidSystemError` on a random
    m x n system with positive losses, e.g. Krum's minimum number of tasks), or None."""
    import torch

    if batches(solver) > 1 or getattr(solver, "on", None) == "representation":
        return None  # their systems are built by the training loop
    gen = torch.Generator().manual_seed(0)
    G = torch.randn(m, n, generator=gen, dtype=torch.float64)
    losses = 1 + torch.rand(m, generator=gen, dtype=torch.float64)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            solver(G, losses=losses)
    except InvalidSystemError as exc:
        return " ".join(str(exc).split())
    except Exception:  # noqa: BLE001 - anything else is the run's to report
        return None
    return None


def short_error(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------- peak memory
class PeakMemory:
    """Peak memory while a block runs, in MiB: the CUDA allocator's peak on a GPU, else the process's
    peak resident set (Linux ``VmHWM``, reset on entry through ``/proc/self/clear_refs``), which
    includes the interpreter, the libraries and the data. ``mib`` is None where neither is available."""

    def __init__(self, device: str = "cpu") -> None:
        self.cuda = str(device).startswith("cuda")
        self.mib: float | None = None

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._ok = True
        else:
            self._ok = _reset_high_water_mark()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self.mib = torch.cuda.max_memory_allocated() / 2**20
        elif self._ok:
            peak = _status_kib("VmHWM")
            self.mib = None if peak is None else peak / 1024


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


# ---------------------------------------------------------------- seeds and tables
def aggregate(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One row from the per-seed rows: numbers become ``{"mean", "std"}`` (sample std; 0 for one seed),
    lists of numbers are averaged element-wise, other values are taken from the first run."""
    out: dict[str, Any] = {}
    for key in dict.fromkeys(k for r in runs for k in r):
        values = [r[key] for r in runs if key in r]
        if all(_is_number(v) for v in values):
            arr = np.asarray(values, dtype=float)
            out[key] = {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0}
        elif all(isinstance(v, (list, tuple)) and v and all(_is_number(x) for x in v) for v in values) and (
            len({len(v) for v in values}) == 1
        ):
            out[key] = np.asarray(values, dtype=float).mean(0).tolist()
        else:
            out[key] = values[0]
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: ``mean ± std`` for aggregated numbers, rounded numbers, plain text otherwise."""
    if value is None or value == "":
        return ""
    if isinstance(value, Mapping) and "mean" in value:
        m, s = value["mean"], value["std"]
        return _num(m, digits) if s == 0 else f"{_num(m, digits)} ± {_num(s, digits)}"
    if _is_number(value):
        return _num(float(value), digits)
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(fmt(v, digits) for v in value) + ")"
    return str(value)


def _num(v: float, digits: int) -> str:
    if not math.isfinite(v):
        return "nan"
    if v != 0 and abs(v) < 10 ** (-digits):
        return f"{v:.2e}"
    return f"{v:.{digits}f}" if abs(v) < 1e4 else f"{v:.4g}"


def markdown(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[tuple[str, str]],
    formats: Mapping[str, Callable[[Any], str]] | None = None,
) -> str:
    """A GitHub Markdown table: ``columns`` is (key, header) pairs; columns nobody fills are dropped."""
    formats = formats or {}
    cols = [(k, h) for k, h in columns if any(r.get(k) not in (None, "") for r in rows)]
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        cells = [formats.get(k, fmt)(r.get(k)) for k, _ in cols]
        lines.append("| " + " | ".join(c.replace("|", "/").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines)


def indistinguishable(best: Sequence[float], other: Sequence[float], level: float = 0.05) -> bool | None:
    """Welch's t-test of two per-seed samples: True when the difference of their means is not significant
    at ``level`` (p ≥ level, two-sided), None when either has fewer than two values."""
    a, b = np.asarray(best, dtype=float), np.asarray(other, dtype=float)
    if len(a) < 2 or len(b) < 2:
        return None
    if a.std() == 0 and b.std() == 0:
        return bool(a.mean() == b.mean())
    from scipy.stats import ttest_ind

    return bool(ttest_ind(a, b, equal_var=False).pvalue >= level)


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None

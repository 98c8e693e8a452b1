"""``mtlsolve warmup``: compile every numba kernel once, so that no solver's first step pays for it.

Every kernel is compiled by :func:`mtlsolve.kernels._numba.kernel` with an on-disk cache, so the
compile happens once per installation (and again after an edit of the kernels' sources); later
processes load the machine code from the cache. Warming up calls every registered solver on small
random systems (float64 and float32, 2 and 3 tasks), which compiles exactly the signatures the
solvers use.
"""

from __future__ import annotations

import importlib
import pkgutil
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs


@attrs.frozen
class WarmupReport:
    """What a warm-up did: seconds, the kernels compiled now or loaded from the disk cache, and the
    solvers whose calls raised (a warm-up only compiles; the bench and the tests judge the solvers)."""

    seconds: float
    compiled: int
    loaded: int
    kernels: int
    failures: tuple[str, ...] = ()

    def line(self) -> str:
        return (
            f"numba kernels: {self.kernels} in use; {self.compiled} signature(s) compiled now, {self.loaded} loaded "
            f"from the disk cache; {self.seconds:.1f} s"
        )


def kernel_dispatchers() -> list[Any]:
    """Every numba dispatcher defined in :mod:`mtlsolve.kernels` (importing its modules)."""
    import numba

    import mtlsolve.kernels as package

    found = []
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        found += [v for v in vars(module).values() if isinstance(v, numba.core.registry.CPUDispatcher)]
    return list({id(d): d for d in found}.values())


def _cache_counts(dispatchers: Sequence[Any]) -> tuple[int, int]:
    hits = sum(sum(d.stats.cache_hits.values()) for d in dispatchers)
    misses = sum(sum(d.stats.cache_misses.values()) for d in dispatchers)
    return hits, misses


def warm_up(specs: Sequence[Any] | None = None, progress: Callable[[str], None] | None = None) -> WarmupReport:
    """Call every solver of ``specs`` (bench specs; default every registered solver) on random 2- and
    3-task systems in float64 and float32, compiling the kernels they use."""
    import torch

    from mtlsolve.bench._common import Spec, batches
    from mtlsolve.registry import registry

    if specs is None:
        specs = [Spec.parse(name) for name in registry.available()]
    dispatchers = kernel_dispatchers()
    hits0, misses0 = _cache_counts(dispatchers)
    t0 = time.perf_counter()
    failures = []
    gen = torch.Generator().manual_seed(0)
    for spec in specs:
        if progress:
            progress(spec.label)
        errors = []
        for m in (2, 3):
            for dtype in (torch.float64, torch.float32):
                try:
                    solver = spec.make(0)
                    rows = batches(solver) * m  # solvers reading several batches get them stacked
                    G = torch.randn(rows, 16, generator=gen, dtype=dtype)
                    losses = 1 + torch.rand(rows, generator=gen, dtype=dtype)
                    solver(G, losses=losses)
                except Exception as exc:  # noqa: BLE001 - e.g. Krum on 2 tasks, or a solver needing features
                    errors.append(type(exc).__name__)
        if len(errors) == 4:  # no call went through
            failures.append(f"{spec.label} ({errors[0]})")
    hits, misses = _cache_counts(dispatchers)
    used = sum(1 for d in dispatchers if d.signatures)
    return WarmupReport(time.perf_counter() - t0, misses - misses0, hits - hits0, used, tuple(failures))

"""Side-by-side cost of mtlsolve against TorchJD 0.18.0 and against the linear-algebra floor.

Run:  .venv/bin/python asv_benchmarks/compare.py [--quick] [--repeats R] [--methods a,b,...]

What is compared, in one process:

* **ours** — the mtlsolve solver called on the *same* torch float32 tensor G (m x n) that TorchJD
  receives, with the hyperparameters that make both compute the same method (the mapping of
  tests/test_torchjd_parity.py; ``SHARED`` below). Our solvers accept torch tensors directly and
  return a torch direction of G's dtype, so both sides do the same job: tensor in, update tensor
  out. Calling ours on a numpy array would compare numpy's BLAS with torch's instead of the
  solvers. Losses (uniform in [0.5, 2]) are passed to ours so that solvers reading them run;
  TorchJD's aggregators take only G.
* **theirs** — the TorchJD aggregator called on G. NashMTL's conic problem is solved with Clarabel
  (ECOS, its default, is not installed), exactly as in the parity test.
* **floor** — ``K = G @ G.T`` and ``d = w @ G`` on the same tensor: what any Gramian method must
  pay. **one pass** — ``G.sum(0)``: reading G once, the floor of a method that needs G itself.

Timing: every cell (m, n) draws one G (standard normal rows plus a shared component of random sign,
row norms spread by 0.2–5x, so that tasks conflict). Each callable is run once untimed (numba
compilation, cvxpy problem construction, state warm-up), then ``R`` rounds in which the floor,
ours and theirs run back to back in a rotating order; the tables report medians. Stateful
solvers (GradVac, ExcessMTL, Nash-MTL's warm start) are timed in their steady state. torch uses
its default thread count on both sides; numba kernels are single-threaded.

Grid: m ∈ {2, 10, 40} x n ∈ {1e5, 1e6, 1e7}, except that n = 1e7 is run only for m ≤ 10
(m = 40 would hold 1.6 GB per copy of G and take minutes per method on a 2-core machine).
``--quick``: n ∈ {1e5, 1e6} and fewer repeats.

Targets (PASS/MISS printed per target):
1. every shared method no slower than TorchJD in any cell (ratio ≤ 1), and the geometric mean of
   ours/theirs over all shared cells ≤ 0.5;
2. every Gramian method (reads K only) ≤ 1.2x the floor at n ≥ 1e6;
3. inner m x m solve (the numba kernel alone, on a float64 K, after compilation) ≤ 100 µs for
   m ≤ 10 and ≤ 1 ms for m = 40;
4. full-matrix methods (graddrop, config, trimmed_mean, excess_mtl) ≤ 2x one pass over G.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script or imported by asv
from bench_solvers import GRAMIAN_STEP_SOLVERS, kernel_calls  # noqa: E402 - the inner kernels, called as the asv suite calls them

M_VALUES = (2, 10, 40)
N_FULL = (100_000, 1_000_000, 10_000_000)
N_QUICK = (100_000, 1_000_000)
MAX_M_AT_1E7 = 10
FULL_MATRIX = ("graddrop", "config", "trimmed_mean", "excess_mtl")


def trim_number(m: int) -> int:
    return (m - 1) // 4


def n_byzantine(m: int) -> int:
    return max(0, (m - 3) // 2) if m < 10 else 2


def _clarabel_nash(m: int):
    """TorchJD's NashMTL with its conic problem solved by Clarabel instead of ECOS (not installed)."""
    import cvxpy as cp
    from torchjd.aggregation import WeightedAggregator, _nash_mtl

    class ClarabelNashMTLWeighting(_nash_mtl._NashMTLWeighting):
        _REQUIRED_DEPS = ["numpy", "cvxpy", "clarabel"]

        def _init_optim_problem(self) -> None:
            super()._init_optim_problem()
            solve = self.prob.solve
            self.prob.solve = lambda **_ecos_options: solve(solver=cp.CLARABEL)

    # NashMTL(...) itself refuses to build without ECOS; its weighting wrapped as NashMTL wraps it
    return WeightedAggregator(ClarabelNashMTLWeighting(n_tasks=m, max_norm=0.0, update_weights_every=1, optim_niter=20))


def shared_methods() -> dict[str, tuple[Callable[[int], Any], Callable[[int], dict]]]:
    """method -> (TorchJD aggregator for m tasks, mtlsolve config for m tasks)."""
    import torchjd.aggregation as tj

    return {
        "mean": (lambda m: tj.Mean(), lambda m: {"name": "ls", "reduction": "mean"}),
        "sum": (lambda m: tj.Sum(), lambda m: {"name": "ls"}),
        "random/rlw": (lambda m: tj.Random(), lambda m: {"name": "rlw", "seed": 0}),
        "mgda": (lambda m: tj.MGDA(), lambda m: {"name": "mgda"}),
        "upgrad": (lambda m: tj.UPGrad(), lambda m: {"name": "upgrad"}),
        "dualproj": (lambda m: tj.DualProj(), lambda m: {"name": "dualproj"}),
        "pcgrad": (lambda m: tj.PCGrad(), lambda m: {"name": "pcgrad", "seed": 0}),
        "imtl_g": (lambda m: tj.IMTLG(), lambda m: {"name": "imtl_g"}),
        "aligned_mtl": (lambda m: tj.AlignedMTL(), lambda m: {"name": "aligned_mtl", "reduction": "mean"}),
        "cagrad": (lambda m: tj.CAGrad(c=0.4), lambda m: {"name": "cagrad", "c": 0.4, "rescale": 0}),
        "nash_mtl": (_clarabel_nash, lambda m: {"name": "nash_mtl"}),
        "gradvac": (lambda m: tj.GradVac(), lambda m: {"name": "gradvac", "seed": 0}),
        "fairgrad": (lambda m: tj.FairGrad(alpha=1.0), lambda m: {"name": "fairgrad", "alpha": 1.0}),
        "krum": (
            lambda m: tj.Krum(n_byzantine=n_byzantine(m)),
            lambda m: {"name": "krum", "n_byzantine": n_byzantine(m)},
        ),
        "config": (lambda m: tj.ConFIG(), lambda m: {"name": "config"}),
        "graddrop": (lambda m: tj.GradDrop(), lambda m: {"name": "graddrop", "on": "params", "seed": 0}),
        "trimmed_mean": (
            lambda m: tj.TrimmedMean(trim_number=trim_number(m)),
            lambda m: {"name": "trimmed_mean", "trim_number": trim_number(m)},
        ),
        "excess_mtl": (
            lambda m: tj.ExcessMTL(robust_step_size=1.0),
            lambda m: {"name": "excess_mtl", "robust_step_size": 1.0, "reduction": "mean", "n_warmup_steps": 0},
        ),
    }


#: required arguments of our solvers that have no default, for the ours/floor table
REQUIRED = {
    "krum": lambda m: {"n_byzantine": n_byzantine(m)},
    "trimmed_mean": lambda m: {"trim_number": trim_number(m)},
    "cosmos": lambda m: {"penalty": 1.0},
    "graddrop": lambda m: {"on": "params", "seed": 0},
}


def make_matrix(m: int, n: int, seed: int = 0):
    import torch

    rng = np.random.default_rng(seed)
    G = rng.standard_normal((m, n), dtype=np.float32)
    G += rng.standard_normal(n, dtype=np.float32)[None, :] * rng.choice([-1.0, 1.0], size=(m, 1)).astype(np.float32)
    G *= rng.uniform(0.2, 5.0, size=(m, 1)).astype(np.float32)
    return torch.from_numpy(G)


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds of each callable, run ``repeats`` rounds in a rotating order after one warm-up."""
    for fn in fns.values():
        fn()
    names = list(fns)
    samples: dict[str, list[float]] = {k: [] for k in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            samples[name].append(timed(fns[name]))
    return {k: statistics.median(v) for k, v in samples.items()}


def cell_repeats(base: int, m: int, n: int) -> int:
    return max(3, base if m * n <= 10_000_000 else base // 2 + 1)


# ------------------------------------------------------------------------------- measurements
def measure_grid(grid, repeats, methods, mtlsolve) -> tuple[dict, dict, dict, dict]:
    """shared[(method, m, n)] = (ours, theirs, floor) seconds; alone[(solver, m, n)] = (ours, floor,
    solver); onepass[(m, n)] = {"pass": G.sum(0), "floor": ...} seconds; notes[(method, m)] = why not run."""
    import torch

    shared, alone, onepass, notes = {}, {}, {}, {}
    specs = shared_methods()
    names = mtlsolve.available()
    for m, n in grid:
        G = make_matrix(m, n)
        losses = torch.from_numpy(np.random.default_rng(1).uniform(0.5, 2.0, m).astype(np.float32))
        w = torch.full((m,), 1.0 / m)

        def floor():
            G @ G.T
            w @ G

        reps = cell_repeats(repeats, m, n)
        onepass[(m, n)] = interleaved({"pass": lambda: G.sum(0), "floor": floor}, reps)
        print(
            f"  m={m:>2} n={n:.0e}: one pass {1e3 * onepass[(m, n)]['pass']:.2f} ms, "
            f"floor {1e3 * onepass[(m, n)]['floor']:.2f} ms",
            file=sys.stderr,
            flush=True,
        )
        for method, (theirs_of, ours_of) in specs.items():
            if methods and method not in methods:
                continue
            try:
                ours = mtlsolve.from_config(ours_of(m))
                theirs = theirs_of(m)
                fns = {"floor": floor, "ours": lambda: ours(G, losses=losses), "theirs": lambda: theirs(G)}
                t = interleaved(fns, reps)
            except Exception as exc:  # noqa: BLE001 - a method undefined for this m is reported, not fatal
                notes[(method, m)] = f"{type(exc).__name__}: {str(exc)[:90]}"
                continue
            shared[(method, m, n)] = (t["ours"], t["theirs"], t["floor"])
        for name in names:
            if methods and name not in methods:
                continue
            try:
                solver = mtlsolve.get(name, **REQUIRED.get(name, lambda m: {})(m))
                if solver.batches != 1:
                    raise ValueError(f"reads {solver.batches} stacked batches")
                if solver.post_step:
                    raise ValueError("needs after_step() between calls (training-loop only)")
                t = interleaved({"floor": floor, "ours": lambda: solver(G, losses=losses)}, reps)
            except Exception as exc:  # noqa: BLE001
                notes[(name, m)] = f"{type(exc).__name__}: {str(exc)[:90]}"
                continue
            alone[(name, m, n)] = (t["ours"], t["floor"], solver)
    return shared, alone, onepass, notes


def conflicting_gramian(m: int, seed: int = 0) -> np.ndarray:
    G = make_matrix(m, 4 * m + 200, seed).double().numpy()
    return G @ G.T


def per_call(fn: Callable[[], Any], budget: float = 0.05, rounds: int = 5) -> float:
    """Median seconds per call over ``rounds`` batches of calls each lasting about ``budget``."""
    fn()
    t = timed(fn)
    loops = max(1, int(budget / max(t, 1e-7)))
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        out.append((time.perf_counter() - t0) / loops)
    return statistics.median(out)


def measure_inner() -> dict[tuple[str, int], float]:
    res = {}
    for name, make in kernel_calls().items():
        for m in M_VALUES:
            K = conflicting_gramian(m)
            try:
                res[(name, m)] = per_call(make(K))
            except Exception as exc:  # noqa: BLE001
                res[(name, m)] = f"{type(exc).__name__}: {exc}"
    return res


def measure_inner_solvers(mtlsolve) -> dict[tuple[str, int], float]:
    """solver(gramian=K): the whole m x m step of a Gramian solver, Python overhead included."""
    res = {}
    for name in (*GRAMIAN_STEP_SOLVERS, "krum"):
        for m in M_VALUES:
            K = conflicting_gramian(m)
            try:
                solver = mtlsolve.get(name, **REQUIRED.get(name, lambda m: {})(m))
                res[(name, m)] = per_call(lambda: solver(gramian=K))
            except Exception as exc:  # noqa: BLE001
                res[(name, m)] = f"{type(exc).__name__}: {str(exc)[:60]}"
    return res


# ------------------------------------------------------------------------------------ report
def limit_threads(threads: int) -> None:
    """torch and numpy's BLAS/LAPACK (our m x m eigh, lstsq) both get ``threads`` threads."""
    import torch

    torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        print("threadpoolctl is not installed: numpy's BLAS keeps its default thread count", file=sys.stderr)
        return
    threadpool_limits(threads)


def print_verdicts(verdicts: list[tuple[str, bool, str]], t_start: float) -> None:
    print("\n### targets\n")
    for text, ok, detail in verdicts:
        print(f"- {'PASS' if ok else 'MISS'}  {text}: {detail}")
    print(f"\n(total {time.perf_counter() - t_start:.0f} s)")


def fmt_cell(v: Any, digits: int = 2) -> str:
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def table(title: str, rows: list[str], cols: list[str], value: Callable[[str, str], Any], digits: int = 2) -> None:
    print(f"\n### {title}\n")
    print("| " + " | ".join(["method"] + cols) + " |")
    print("|" + "---|" * (len(cols) + 1))
    for r in rows:
        print("| " + " | ".join([r] + [fmt_cell(value(r, c), digits) for c in cols]) + " |")


def col_name(m: int, n: int) -> str:
    return f"m={m} n=1e{int(round(math.log10(n)))}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="n ≤ 1e6 and fewer repeats")
    parser.add_argument("--repeats", type=int, default=None, help="rounds per cell (default 7, quick 5)")
    parser.add_argument("--methods", default="", help="comma-separated subset of methods")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for both sides (default 1: on a loaded machine OpenMP barriers, "
        "not the work, dominate multi-threaded timings)",
    )
    args = parser.parse_args(argv)
    repeats = args.repeats or (5 if args.quick else 7)
    methods = {s.strip() for s in args.methods.split(",") if s.strip()}
    warnings.filterwarnings("ignore")

    import torch

    import mtlsolve

    limit_threads(args.threads)
    ns = N_QUICK if args.quick else N_FULL
    grid = [(m, n) for n in ns for m in M_VALUES if not (n >= 10_000_000 and m > MAX_M_AT_1E7)]
    cols = [col_name(m, n) for m, n in grid]
    print(
        f"# mtlsolve vs TorchJD {importlib.metadata.version('torchjd')} and the floor "
        f"(torch {torch.__version__}, {torch.get_num_threads()} threads, float32, median of {repeats} "
        f"interleaved rounds{', quick grid' if args.quick else ''})"
    )
    t_start = time.perf_counter()
    shared, alone, onepass, notes = measure_grid(grid, repeats, methods, mtlsolve)
    inner = measure_inner()
    inner_solvers = measure_inner_solvers(mtlsolve)
    verdicts = []

    # 1. ours / theirs
    shared_rows = [k for k in shared_methods() if any((k, m, n) in shared for m, n in grid)]

    def ratio_vs_theirs(r, c):
        m, n = grid[cols.index(c)]
        v = shared.get((r, m, n))
        return v[0] / v[1] if v else notes.get((r, m), "—")[:40]

    table("ours / TorchJD (time ratio; < 1 means mtlsolve is faster)", shared_rows, cols, ratio_vs_theirs)
    table(
        "TorchJD time per call (ms)",
        shared_rows,
        cols,
        lambda r, c: 1e3 * shared[(r, *grid[cols.index(c)])][1] if (r, *grid[cols.index(c)]) in shared else "—",
    )
    table(
        "mtlsolve time per call (ms)",
        shared_rows,
        cols,
        lambda r, c: 1e3 * shared[(r, *grid[cols.index(c)])][0] if (r, *grid[cols.index(c)]) in shared else "—",
    )
    ratios = {k: v[0] / v[1] for k, v in shared.items()}
    if ratios:
        geo = math.exp(statistics.fmean(math.log(x) for x in ratios.values()))
        slower = sorted(((k, x) for k, x in ratios.items() if x > 1.0), key=lambda kv: -kv[1])
        print(f"\ngeometric mean ours/TorchJD over {len(ratios)} cells: {geo:.3f}")
        for method in shared_rows:
            vals = [x for (k, m, n), x in ratios.items() if k == method]
            print(
                f"  {method:>14}: geo-mean {math.exp(statistics.fmean(map(math.log, vals))):.3f}, worst {max(vals):.3f}"
            )
        verdicts.append(
            (
                "no shared method slower than TorchJD in any cell",
                not slower,
                ", ".join(f"{k[0]}@{col_name(k[1], k[2])}={x:.2f}" for k, x in slower) or "all ≤ 1",
            )
        )
        verdicts.append(("geometric-mean ours/TorchJD ≤ 0.5", geo <= 0.5, f"{geo:.3f}"))

    # 2. ours / floor
    from mtlsolve.solver import Need

    alone_rows = sorted({k for k, _, _ in alone})
    table(
        "ours / floor (K = GGᵀ and wᵀG on the same tensor)",
        alone_rows,
        cols,
        lambda r, c: (
            alone[(r, *grid[cols.index(c)])][0] / alone[(r, *grid[cols.index(c)])][1]
            if (r, *grid[cols.index(c)]) in alone
            else notes.get((r, grid[cols.index(c)][0]), "—")[:40]
        ),
    )
    gramian_misses, gramian_checked = [], 0
    for (name, m, n), (t, fl, solver) in alone.items():
        needs = solver.requirements()
        if Need.GRAMIAN in needs and Need.MATRIX not in needs and n >= 1_000_000:
            gramian_checked += 1
            if t / fl > 1.2:
                gramian_misses.append(f"{name}@{col_name(m, n)}={t / fl:.2f}")
    verdicts.append(
        (
            f"every Gramian method ≤ 1.2x floor at n ≥ 1e6 ({gramian_checked} cells)",
            not gramian_misses,
            ", ".join(gramian_misses) or "all ≤ 1.2",
        )
    )

    # 3. inner solve
    inner_rows = sorted({k for k, _ in inner})
    mcols = [f"m={m}" for m in M_VALUES]
    table(
        "inner m x m kernel alone (µs per call, float64 K, after compilation)",
        inner_rows,
        mcols,
        lambda r, c: (
            1e6 * inner[(r, int(c[2:]))] if isinstance(inner[(r, int(c[2:]))], float) else inner[(r, int(c[2:]))][:40]
        ),
        digits=1,
    )
    inner_misses = []
    for (name, m), t in inner.items():
        limit = 100e-6 if m <= 10 else 1e-3
        if not isinstance(t, float) or t > limit:
            inner_misses.append(f"{name}@m={m}=" + (f"{1e6 * t:.0f}µs" if isinstance(t, float) else "error"))
    verdicts.append(
        ("inner solve ≤ 100 µs (m ≤ 10), ≤ 1 ms (m = 40)", not inner_misses, ", ".join(inner_misses) or "all within")
    )
    solver_rows = sorted({k for k, _ in inner_solvers})
    table(
        "whole Gramian step solver(gramian=K) (µs per call, Python overhead included; informative)",
        solver_rows,
        mcols,
        lambda r, c: (
            1e6 * inner_solvers[(r, int(c[2:]))]
            if isinstance(inner_solvers[(r, int(c[2:]))], float)
            else inner_solvers[(r, int(c[2:]))][:40]
        ),
        digits=1,
    )

    # 4. full-matrix methods vs one pass
    table(
        "full-matrix methods / one pass over G (G.sum(0))",
        list(FULL_MATRIX),
        cols,
        lambda r, c: (
            alone[(r, *grid[cols.index(c)])][0] / onepass[grid[cols.index(c)]]["pass"]
            if (r, *grid[cols.index(c)]) in alone
            else "—"
        ),
    )
    print("\none pass (ms): " + ", ".join(f"{col_name(m, n)} {1e3 * onepass[(m, n)]['pass']:.2f}" for m, n in grid))
    print("floor (ms):    " + ", ".join(f"{col_name(m, n)} {1e3 * onepass[(m, n)]['floor']:.2f}" for m, n in grid))
    fm_misses = [
        f"{r}@{col_name(m, n)}={alone[(r, m, n)][0] / onepass[(m, n)]['pass']:.2f}"
        for r in FULL_MATRIX
        for m, n in grid
        if (r, m, n) in alone and alone[(r, m, n)][0] / onepass[(m, n)]["pass"] > 2.0
    ]
    verdicts.append(("full-matrix methods ≤ 2x one pass", not fm_misses, ", ".join(fm_misses) or "all ≤ 2"))

    if notes:
        print("\nnot measured: " + "; ".join(f"{k}@m={m}: {v}" for (k, m), v in sorted(notes.items())))
    print_verdicts(verdicts, t_start)
    return 0


if __name__ == "__main__":
    sys.exit(main())

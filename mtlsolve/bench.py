"""``mtlsolve bench``: every registered solver on the built-in problems, as a Markdown table.

Two sections:

* **toy**: the two-task toy landscape (problems.md §1) from its five published
  start points with Adam; reports where each run ends relative to the Pareto
  front (x2 = −8.3552, |x1| ≤ 7) and the final losses;
* **cost**: time per solver call on random float32 task-gradient matrices for
  m ∈ {2, 10, 40}, next to the floor every gradient method pays (K = G Gᵀ and
  d = wᵀG), measured side by side in the same run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from mtlsolve.errors import MtlsolveError
from mtlsolve.problems import TOY_FRONT_X2, TOY_SCALES, TOY_STARTS, toy
from mtlsolve.registry import hyperparameters, registry
from mtlsolve.solver import Need


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--solvers", help="comma-separated solver names (default: every registered solver)")
    parser.add_argument("--quick", action="store_true", help="short runs: 3,500 toy steps at lr 1e-2, n = 1e5")
    parser.add_argument("--steps", type=int, help="toy optimisation steps (default 35,000; 3,500 with --quick)")
    parser.add_argument("--toy-scale", choices=sorted(TOY_SCALES), default="samsung", help="toy task scaling")
    parser.add_argument("--seed", type=int, default=0, help="seed for randomized solvers and random matrices")
    parser.add_argument("--out", default="bench-results", help="folder for results.json (default: %(default)s)")


def main(args: argparse.Namespace) -> int:
    names = _solver_names(args.solvers)
    steps = args.steps or (3_500 if args.quick else 35_000)
    lr = 1e-3 * 35_000 / steps  # the same path length as the published 35,000 steps at lr 1e-3
    n = 100_000 if args.quick else 1_000_000

    print(f"# mtlsolve bench ({len(names)} solvers)\n")
    print(f"## Toy landscape: scale {args.toy_scale!r}, Adam lr {lr:.3g}, {steps} steps, 5 starts\n")
    toy_rows = [run_toy(name, steps, lr, args.toy_scale, args.seed) for name in names]
    print(_markdown(toy_rows, ["solver", "on_front", "mean_final_f", "max_front_gap", "ms_per_step", "error"]))
    print(f"\non_front: starts ending within 0.05 of x2 = {TOY_FRONT_X2} with |x1| ≤ 7; "
          "max_front_gap: the largest |x2 − front| over the starts.\n")

    print(f"## Cost per call on random float32 G (n = {n:,}), next to the floor K = GGᵀ + wᵀG\n")
    cost_rows = [row for name in names for row in run_cost(name, n, args.seed)]
    print(_markdown(cost_rows, ["solver", "m", "ms_per_call", "floor_ms", "ratio_to_floor", "error"]))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"toy": toy_rows, "cost": cost_rows, "steps": steps, "lr": lr, "n": n, "toy_scale": args.toy_scale}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\nresults written to {out / 'results.json'}")
    return 0


def _solver_names(spec: str | None) -> list[str]:
    if not spec:
        return registry.available()
    return [registry.resolve(s.strip())[0].name for s in spec.split(",") if s.strip()]


def _make(name: str, seed: int):
    """A solver with its defaults; randomized solvers get ``seed``."""
    fields = hyperparameters(registry.resolve(name)[0].cls)
    return registry.get(name, **({"seed": seed} if "seed" in fields else {}))


def run_toy(name: str, steps: int, lr: float, scale: str, seed: int) -> dict[str, Any]:
    """Optimise the toy from every start with one solver instance per start; returns one table row."""
    import torch

    row: dict[str, Any] = {"solver": name}
    try:
        solvers = [_make(name, seed + i) for i in range(len(TOY_STARTS))]
        x = torch.tensor(TOY_STARTS, dtype=torch.float64, requires_grad=True)
        uses_gradients = bool(solvers[0].requirements() & {Need.GRAMIAN, Need.MATRIX})
        opt = torch.optim.Adam([x], lr=lr)
        solver_params = [p for s in solvers for p in s.parameters()]
        solver_opt = None
        spent = 0.0
        for _ in range(steps):
            f = toy(x, scale)
            opt.zero_grad(set_to_none=False)
            if uses_gradients:
                g1, g2 = (torch.autograd.grad(f[:, k].sum(), x, retain_graph=k == 0)[0] for k in range(2))
                t0 = time.perf_counter()
                x.grad = torch.stack([s(torch.stack((g1[i], g2[i])), losses=f[i].detach()).direction
                                      for i, s in enumerate(solvers)])
                spent += time.perf_counter() - t0
            else:
                t0 = time.perf_counter()
                total = sum(s.objective(f[i]) for i, s in enumerate(solvers))
                spent += time.perf_counter() - t0
                total.backward()
            if solver_params and solver_opt is None:  # learnable solver parameters exist after the first call
                solver_params = [p for s in solvers for p in s.parameters()]
                solver_opt = torch.optim.Adam(solver_params, lr=0.025)
            opt.step()
            if solver_opt is not None:
                solver_opt.step()
                solver_opt.zero_grad()
            if solvers[0].post_step:
                with torch.no_grad():
                    f_after = toy(x, scale)
                for i, s in enumerate(solvers):
                    s.after_step(f_after[i])
            if not torch.isfinite(x).all():
                raise MtlsolveError("the iterate became non-finite")
        final = x.detach()
        gap = (final[:, 1] - TOY_FRONT_X2).abs()
        on_front = int(((gap < 0.05) & (final[:, 0].abs() <= 7.0)).sum())
        f_final = toy(final, "none")
        row.update(on_front=f"{on_front}/5", mean_final_f=[round(v, 3) for v in f_final.mean(0).tolist()],
                   max_front_gap=round(float(gap.max()), 4), ms_per_step=round(1e3 * spent / steps, 4),
                   final_x=final.tolist())
    except (MtlsolveError, ValueError, RuntimeError) as exc:
        row["error"] = f"{type(exc).__name__}: {exc}"
    return row


def run_cost(name: str, n: int, seed: int, ms: tuple[int, ...] = (2, 10, 40)) -> list[dict[str, Any]]:
    """Median time per call on a random float32 G, and the floor K = GGᵀ, d = wᵀG on the same G."""
    rng = np.random.default_rng(seed)
    rows = []
    for m in ms:
        G = rng.standard_normal((m, n), dtype=np.float32)
        losses = rng.uniform(0.5, 2.0, m)
        row: dict[str, Any] = {"solver": name, "m": m}
        try:
            solver = _make(name, seed)
            w = np.full(m, 1.0 / m, dtype=np.float32)

            def floor_step():
                G @ G.T  # the Gramian every Gramian method needs
                return w @ G  # and the combination d = wᵀG

            floor = _median_time(floor_step)
            t = _median_time(lambda: solver(G, losses=losses))
            row.update(ms_per_call=round(1e3 * t, 3), floor_ms=round(1e3 * floor, 3),
                       ratio_to_floor=round(t / floor, 2))
        except (MtlsolveError, ValueError, RuntimeError) as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"
        rows.append(row)
    return rows


def _median_time(fn, repeats: int = 7) -> float:
    fn()  # warm-up: numba compilation, caches
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _markdown(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cols = [c for c in columns if any(c in r for r in rows)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if isinstance(v, float) and not math.isfinite(v):
        return "nan"
    return str(v).replace("|", "/")

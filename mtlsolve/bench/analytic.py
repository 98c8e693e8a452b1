"""The analytic problems: the two-task toy landscape and the Fonseca–Fleming pair (docs/problems.md#toy-landscape, docs/problems.md#fonseca-problems).

A population of points (the five toy starts, or one start per preference vector) is optimised with
Adam; every point has its own solver instance, called directly on its 2 x n task-gradient matrix
(gradient solvers) or through its loss objective (loss weightings), as in the reference repositories.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mtlsolve.bench._common import (
    RUN_ERRORS,
    Spec,
    deterministic_skip,
    not_applicable,
    short_error,
    uses_gradients,
)
from mtlsolve.errors import MtlsolveError
from mtlsolve.metrics import hypervolume
from mtlsolve.problems import TOY_FRONT_X2, TOY_SCALES, TOY_STARTS, fonseca, fonseca_convex, toy
from mtlsolve.registry import hyperparameters

#: the solvers see the toy's losses plus 21 x the task scale, as FAMO's toy (min_losses = (−21·s1, −21·s2)):
#: positive losses for the methods that take their logarithm or ratios; the gradients are unchanged
TOY_LOSS_SHIFT = 21.0

#: Fonseca–Fleming HV reference point and the HV of each exact front (docs/problems.md#fonseca-problems)
FONSECA_REFERENCE = (1.0, 1.0)
FONSECA_EXACT_HV = {"fonseca": 0.34212, "fonseca_convex": 5.0 / 6.0}
FONSECA_PROBLEMS: dict[str, Callable] = {"fonseca": fonseca, "fonseca_convex": fonseca_convex}


def optimise(
    objective: Callable, x0, solvers: Sequence, steps: int, lr: float, *, bounds: float | None = None, record: int = 0
):
    """Adam on a population x (P x n), solver i combining point i's task gradients.

    Returns the final x, the recorded trajectory ((record+1) x P x n; empty when ``record`` is 0)
    and the seconds spent inside the solvers per step, from the second step on (the first pays
    for one-time set-up such as kernel compilation).
    """
    import torch

    x = x0.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    gradient = uses_gradients(solvers[0])
    solver_opt = None
    spent = 0.0
    every = max(steps // record, 1) if record else 0
    trajectory = [x.detach().clone()] if record else []
    for step in range(steps):
        f = objective(x)
        opt.zero_grad(set_to_none=False)
        spent += set_gradient(x, f, solvers, gradient) * (step > 0 or steps == 1)
        if solver_opt is None:  # learnable solver parameters (UW) exist after the first call
            params = [p for s in solvers for p in s.parameters()]
            if params:
                solver_opt = torch.optim.Adam(params, lr=0.025)
        opt.step()
        if solver_opt is not None:
            solver_opt.step()
            solver_opt.zero_grad()
        after_step(objective, x, solvers, bounds)
        if not torch.isfinite(x).all():
            raise MtlsolveError(f"the iterate became non-finite at step {step}")
        if every and ((step + 1) % every == 0 or step + 1 == steps):
            trajectory.append(x.detach().clone())
    traj = torch.stack(trajectory).numpy() if record else np.empty(0)
    return x.detach(), traj, spent / max(steps - 1, 1)


def set_gradient(x, f, solvers: Sequence, gradient: bool) -> float:
    """Set ``x.grad``: solver i's direction from point i's task gradients (``gradient``), or the gradient of
    the sum of the solvers' loss objectives. Returns the seconds spent inside the solvers."""
    import torch

    m = f.shape[1]
    if gradient:
        grads = [torch.autograd.grad(f[:, k].sum(), x, retain_graph=k < m - 1)[0] for k in range(m)]
        G = torch.stack(grads, dim=1)  # P x m x n
        t0 = time.perf_counter()
        x.grad = torch.stack([s(G[i], losses=f[i].detach()).direction for i, s in enumerate(solvers)])
        return time.perf_counter() - t0
    t0 = time.perf_counter()
    total = sum(s.objective(f[i]) for i, s in enumerate(solvers))
    seconds = time.perf_counter() - t0
    total.backward()
    return seconds


def after_step(objective: Callable, x, solvers: Sequence, bounds: float | None) -> None:
    """Clamp x to ``bounds`` and show the solvers that read the losses after a step (``post_step``) the new losses."""
    import torch

    if bounds is not None:
        with torch.no_grad():
            x.clamp_(-bounds, bounds)
    if solvers[0].capabilities.post_step:
        with torch.no_grad():
            f_after = objective(x)
        for i, s in enumerate(solvers):
            s.after_step(f_after[i])


# ------------------------------------------------------------------------- toy
def run_toy(spec: Spec, seed: int, *, steps: int, lr: float, scale: str, record: int = 200) -> dict[str, Any]:
    """The five published starts; one row with where they end relative to the front."""
    import torch

    shift = TOY_LOSS_SHIFT * torch.tensor(TOY_SCALES[scale], dtype=torch.float64)

    row: dict[str, Any] = {"solver": spec.label}
    try:
        solvers = [spec.make(seed + i) for i in range(len(TOY_STARTS))]
    except RUN_ERRORS as exc:
        return {**row, "note": "error: " + short_error(exc)}
    reason = deterministic_skip(solvers[0]) or not_applicable(spec.make(seed), 2)
    if reason:
        return {**row, "note": "not applicable: " + reason}
    try:
        x0 = torch.tensor(TOY_STARTS, dtype=torch.float64)
        final, traj, spent = optimise(lambda x: toy(x, scale) + shift, x0, solvers, steps, lr, record=record)
    except RUN_ERRORS as exc:
        return {**row, "note": "error: " + short_error(exc)}
    gap = (final[:, 1] - TOY_FRONT_X2).abs()
    on_front = int(((gap < 0.05) & (final[:, 0].abs() <= 7.0)).sum())
    f_final = toy(final, "none")
    return {
        **row,
        "on_front": on_front,
        "mean_final_f": [float(v) for v in f_final.mean(0)],
        "max_front_gap": float(gap.max()),
        "ms_per_step": 1e3 * spent,
        "final_x": final.tolist(),
        "trajectory": traj.round(4).tolist(),
    }


# ---------------------------------------------------------------- Fonseca–Fleming
def preference_vectors(count: int) -> np.ndarray:
    """``count`` two-task preferences (t, 1 − t), t evenly spaced in [0.05, 0.95]."""
    t = np.linspace(0.05, 0.95, count)
    return np.stack((t, 1 - t), axis=1)


def front_population(spec: Spec, count: int, seed: int) -> tuple[list, str | None]:
    """One solver per front point, or a reason why the solver traces no front.

    Solvers with a ``preference`` field get one preference vector each; population solvers
    (``index`` + ``n_preferences`` fields, e.g. Pareto MTL) get one index each.
    """
    reason = sweep_reason(spec)
    if reason:
        return [], reason
    return [s.make(seed + i) for i, s in enumerate(preference_specs(spec, count))], None


def sweep_reason(spec: Spec) -> str | None:
    """Why ``spec`` traces no front by a preference sweep, or None."""
    fields = hyperparameters(spec.cls)
    if "preference" in spec.config or "index" in spec.config:
        return "the config fixes the preference; a front needs a sweep"
    if not ("preference" in fields or ("index" in fields and "n_preferences" in fields)):
        return "not preference-based (no preference field)"
    try:
        preference_specs(spec, 2)[0].make(0)
    except MtlsolveError as exc:
        return "no preference sweep in this configuration: " + str(exc).split("; valid fields")[0]
    return None


def preference_specs(spec: Spec, count: int) -> list[Spec]:
    """One spec per front point: preference (t, 1 − t) for every t of :func:`preference_vectors`, or
    index i of ``count`` for population solvers (``index`` + ``n_preferences`` fields)."""
    if "preference" in hyperparameters(spec.cls):
        return [
            spec.with_config(f"{spec.label}[{p[0]:.2f}]", preference=(float(p[0]), float(p[1])))
            for p in preference_vectors(count)
        ]
    return [spec.with_config(f"{spec.label}[{i}/{count}]", index=i, n_preferences=count) for i in range(count)]


def run_fonseca(spec: Spec, seed: int, *, steps: int, lr: float, count: int, n: int = 10) -> dict[str, Any]:
    """Fronts on both problems from one shared random start in [−1, 1]ⁿ; HV with r = (1, 1)."""
    import torch

    row: dict[str, Any] = {"solver": spec.label}
    try:
        solvers, reason = front_population(spec, count, seed)
    except RUN_ERRORS as exc:
        return {**row, "note": "error: " + short_error(exc)}
    if reason is None:
        reason = (
            deterministic_skip(solvers[0]) or not_applicable(spec.make(seed), 2) or not_applicable(spec.make(seed), 2)
        )
    if reason:
        return {**row, "note": "not applicable: " + reason}
    gen = torch.Generator().manual_seed(seed)
    start = torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1
    per_step = []
    try:
        for problem, fn in FONSECA_PROBLEMS.items():
            if problem != "fonseca":
                solvers, _ = front_population(spec, count, seed)  # fresh state per problem
            x0 = start.expand(len(solvers), n)
            final, _, t = optimise(fn, x0, solvers, steps, lr, bounds=1.0)
            per_step.append(t)
            points = fn(final).numpy()
            row[f"front_{problem}"] = points.tolist()
            row[f"hv_{problem}"] = hypervolume(points, FONSECA_REFERENCE)
    except RUN_ERRORS as exc:
        return {**row, "note": "error: " + short_error(exc)}
    row["ms_per_step"] = 1e3 * float(np.mean(per_step)) / len(solvers)
    return row


def exact_front(problem: str, points: int = 201) -> np.ndarray:
    """The exact Pareto front of a Fonseca problem (docs/problems.md#fonseca-problems), for plots."""
    s = np.linspace(-1, 1, points)
    if problem == "fonseca":
        return np.stack((1 - np.exp(-((s - 1) ** 2)), 1 - np.exp(-((s + 1) ** 2))), axis=1)
    return np.stack(((s - 1) ** 2 / 4, (s + 1) ** 2 / 4), axis=1)


def toy_grid(scale: str, lim: float = 10.0, points: int = 160):
    """The toy's summed loss on a grid, for contour plots."""
    import torch

    axis = torch.linspace(-lim, lim, points, dtype=torch.float64)
    X1, X2 = torch.meshgrid(axis, axis, indexing="xy")
    f = toy(torch.stack((X1, X2), dim=-1), scale)
    return X1.numpy(), X2.numpy(), f.sum(-1).numpy()

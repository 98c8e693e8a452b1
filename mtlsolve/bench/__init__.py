"""``mtlsolve bench``: every registered solver on the built-in problems, as Markdown tables.

Sections (``--sections``; docs/problems.md):

* **toy**: the two-task toy landscape (#toy-landscape) from its five published starts; trajectories over the
  loss contours and the Pareto front in ``toy.png``;
* **fonseca**: Fonseca–Fleming and its convex companion (#fonseca-problems), one front per preference-based
  solver, scored by hypervolume with r = (1, 1) (#hypervolume); fronts in ``fonseca.png``;
* **linreg**: many-task linear regression (#linear-regression), time per optimiser step as the number of tasks
  grows to 100; ``linreg.png``;
* **digits** / **mnist**: MultiDigits and MultiMNIST, per-task test accuracy and Δm% (#delta-m) against
  single-task baselines trained by the same loop; ``digits.png`` / ``mnist.png``.

Everything is written to ``--out``: ``results.md`` (the printed tables), ``results.json`` and the
PNGs. ``--seeds N`` repeats every run with N seeds and reports mean ± std.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mtlsolve.bench import analytic, training
from mtlsolve.bench._common import Spec, _is_number, aggregate, fmt, load_average, markdown
from mtlsolve.errors import InvalidConfigError
from mtlsolve.problems import TOY_FRONT_X2, TOY_SCALES, TOY_STARTS
from mtlsolve.registry import registry

SECTIONS = ("toy", "fonseca", "linreg", "digits", "mnist")

#: step counts and learning rates of a full run and of ``--quick``
SETTINGS: Mapping[str, Mapping[str, Any]] = {
    "full": {
        "toy_steps": 35_000,
        "toy_lr": 1e-3,
        "fonseca_steps": 1_000,
        "fonseca_lr": 1e-2,
        "fronts": 11,
        "linreg_tasks": (2, 5, 10, 20, 50, 100),
        "linreg_steps": 100,
        "linreg_warmup": 2,
        "digits_steps": 3_000,
        "digits_batch": 128,
        "mnist_steps": 2_000,
        "mnist_batch": 128,
    },
    "quick": {
        "toy_steps": 500,
        "toy_lr": 0.15,
        "fonseca_steps": 300,
        "fonseca_lr": 2e-2,
        "fronts": 7,
        "linreg_tasks": (2, 10, 100),
        "linreg_steps": 4,
        "linreg_warmup": 1,
        "digits_steps": 300,
        "digits_batch": 64,
        "mnist_steps": 100,
        "mnist_batch": 32,
    },
}
DIGITS_LR = 1e-3
#: runs per section besides one per solver: the two single-task baselines of the training sections
EXTRA_RUNS: Mapping[str, int] = {"toy": 0, "fonseca": 0, "linreg": 0, "digits": 2, "mnist": 2}
#: where the problems, metrics and solvers the report names are documented
DOCS: Mapping[str, str] = {"problems": "docs/problems.md", "methods": "docs/methods.md"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--solvers", help="comma-separated solver names or aliases (default: every registered solver)")
    which.add_argument(
        "--config",
        help="a JSON or YAML file listing solvers: names or mappings "
        "{name: ..., label: ..., hyperparameter: value}, as a list or under a 'solvers' key",
    )
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help="comma-separated sections to run, from %(default)s"
    )
    parser.add_argument("--quick", action="store_true", help="short runs (the whole default run in a few minutes)")
    parser.add_argument("--steps", type=int, help="override every section's number of optimiser steps")
    parser.add_argument("--seeds", type=int, default=1, help="runs per solver, reported as mean ± std (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--toy-scale", choices=sorted(TOY_SCALES), default="samsung", help="toy task scaling")
    parser.add_argument("--device", default="cpu", help="torch device of the training sections (default cpu)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: small models, stable timings on a shared machine)",
    )
    parser.add_argument("--out", default="bench-results", help="output folder (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def load_specs(solvers: str | None, config: str | None) -> list[Spec]:
    """The solver configurations to run: ``--solvers``, ``--config`` or every registered solver."""
    if config:
        path = Path(config)
        try:
            text = path.read_text()
        except OSError as exc:
            raise InvalidConfigError(f"cannot read the config file {config!r}: {exc}") from exc
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
        items = data.get("solvers") if isinstance(data, Mapping) else data
        if not isinstance(items, list) or not items:
            raise InvalidConfigError(f"{config!r} must hold a non-empty list of solvers (or one under 'solvers')")
        return [Spec.parse(item) for item in items]
    if solvers:
        return [Spec.parse(s) for s in solvers.split(",") if s.strip()]
    return [Spec.parse(name) for name in registry.available()]


def main(args: argparse.Namespace) -> int:
    """Run the chosen sections for every solver configuration and write the report (module docstring)."""
    specs = load_specs(args.solvers, args.config)
    sections = checked_sections(args)
    settings = step_settings(args.quick, args.steps)
    check_dependencies(sections)
    seeds = [args.seed + i for i in range(args.seeds)]
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    each = SeedRuns(seeds, total=sum(len(specs) + EXTRA_RUNS[s] for s in sections) * len(seeds), hide=args.no_progress)
    report = Report()
    results = start_results(report, specs, seeds, settings, sections, args)
    t0 = time.perf_counter()
    try:
        for section in sections:
            started = time.perf_counter()
            results[section] = SECTION_RUNNERS[section](section, specs, settings, args, each, report, out)
            results[section]["seconds"] = time.perf_counter() - started
    finally:
        each.close()
    results["wall_s"] = time.perf_counter() - t0
    write_results(results, report, out)
    return 0


def checked_sections(args: argparse.Namespace) -> list[str]:
    """The ``--sections`` to run, after checking them and ``--seeds``, ``--steps`` and ``--threads``."""
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise InvalidConfigError(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    if args.seeds < 1:
        raise InvalidConfigError(f"--seeds must be at least 1, got {args.seeds}")
    if args.steps is not None and args.steps < 1:
        raise InvalidConfigError(f"--steps must be at least 1, got {args.steps}")
    if args.threads < 1:
        raise InvalidConfigError(f"--threads must be at least 1, got {args.threads}")
    return sections


def step_settings(quick: bool, steps: int | None) -> dict[str, Any]:
    """:data:`SETTINGS` for the run; ``--steps`` overrides every section's steps, and the toy keeps its
    path length (steps x lr)."""
    settings = dict(SETTINGS["quick" if quick else "full"])
    if steps:
        settings["toy_lr"] *= settings["toy_steps"] / steps
        settings.update({k: steps for k in settings if k.endswith("_steps")})
    return settings


def check_dependencies(sections: Sequence[str]) -> None:
    """Raise :class:`InvalidConfigError` naming the ``mtlsolve[bench]`` packages that are not installed."""
    needed = ("matplotlib", "tqdm") + (("sklearn",) if "digits" in sections else ())
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise InvalidConfigError(f"mtlsolve bench needs {', '.join(missing)}: pip install 'mtlsolve[bench]'")


class SeedRuns:
    """``each(section, specs, run)``: run(spec, seed) for every spec and seed, one list of per-seed rows
    per spec, with a progress bar on stderr (an int for ``specs``: that many specs skipped)."""

    def __init__(self, seeds: Sequence[int], *, total: int, hide: bool) -> None:
        from tqdm import tqdm

        self.seeds = seeds
        self.bar = tqdm(total=total, file=sys.stderr, unit="run", disable=hide, dynamic_ncols=True)

    def __call__(
        self, section: str, specs: Sequence[Spec] | int, run: Callable[[Spec, int], dict] | None = None
    ) -> list[list[dict]]:
        if isinstance(specs, int):
            self.bar.update(specs * len(self.seeds))
            return []
        return [[self._one(section, spec, seed, run) for seed in self.seeds] for spec in specs]

    def _one(self, section: str, spec: Spec, seed: int, run: Callable[[Spec, int], dict]) -> dict:
        self.bar.set_description(f"{section}: {spec.label}"[:40])
        row = run(spec, seed)
        self.bar.update()
        return row

    def close(self) -> None:
        self.bar.close()


def start_results(report: Report, specs, seeds, settings, sections, args) -> dict[str, Any]:
    """The report's heading and the ``results.json`` fields known before any section runs."""
    report.add(
        f"# mtlsolve bench: {len(specs)} solvers, {len(seeds)} seed(s), "
        f"{'quick' if args.quick else 'full'} settings, device {args.device}, {args.threads} CPU thread(s)"
    )
    load_before = load_average()
    report.add(f"load average at start (1, 5, 15 min): {load_before}")
    report.add(f"problems and metrics: {DOCS['problems']}; solvers: {DOCS['methods']}")
    return {
        "settings": {
            **settings,
            "seeds": seeds,
            "device": args.device,
            "threads": args.threads,
            "toy_scale": args.toy_scale,
            "sections": sections,
        },
        "solvers": [{"label": s.label, "config": dict(s.config)} for s in specs],
        "load_average_start": load_before,
        "docs": dict(DOCS),
    }


def write_results(results: dict[str, Any], report: Report, out: Path) -> None:
    """Close the report with the wall time and load, and write ``results.json`` and ``results.md``."""
    results["load_average_end"] = load_average()
    report.add(f"wall time {results['wall_s']:.1f} s; load average at the end: {results['load_average_end']}")
    (out / "results.json").write_text(json.dumps(results, indent=1, default=_json_default))
    (out / "results.md").write_text(report.text())
    print(f"\nresults written to {out}/ (results.md, results.json, PNGs)")


class Report:
    """The Markdown report: printed as it grows, saved to results.md at the end."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def add(self, text: str) -> None:
        print(text + "\n", flush=True)
        self.parts.append(text)

    def text(self) -> str:
        return "\n\n".join(self.parts) + "\n"


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[tuple[str, str]],
    formats: Mapping[str, Callable[[Any], str]] | None = None,
) -> str:
    """The Markdown table of the rows that ran or failed, then one line per group of skipped solvers."""
    shown = [r for r in rows if not str(r.get("note", "")).startswith("skipped")]
    skipped: dict[str, list[str]] = {}
    for r in rows:
        if str(r.get("note", "")).startswith("skipped"):
            skipped.setdefault(r["note"].removeprefix("skipped: "), []).append(r["solver"])
    text = markdown(shown, columns, formats) if shown else "(no solver ran)"
    for reason, names in skipped.items():
        text += f"\n\nskipped ({reason}): {', '.join(names)}"
    return text


def percent(value: Any) -> str:
    """A fraction (or its mean ± std) as a percentage."""
    if isinstance(value, Mapping) and "mean" in value:
        return fmt({"mean": 100 * value["mean"], "std": 100 * value["std"]}, 2)
    return "" if value is None else fmt(100 * value, 2)


def count(value: Any) -> str:
    """A count: an integer for one seed, mean ± std over several."""
    if isinstance(value, Mapping) and value["std"] == 0:
        value = value["mean"]
    return str(int(value)) if _is_number(value) and float(value).is_integer() else fmt(value, 1)


def mib(value: Any) -> str:
    """Memory in MiB, one decimal."""
    if isinstance(value, Mapping):
        return f"{value['mean']:.1f}" if value["std"] == 0 else f"{value['mean']:.1f} ± {value['std']:.1f}"
    return "" if value is None else f"{value:.1f}"


# ---------------------------------------------------------------- sections
def section_toy(section, specs, settings, args, each, report, out) -> dict[str, Any]:
    steps, lr = settings["toy_steps"], settings["toy_lr"]
    report.add(
        f"## Toy landscape (docs/problems.md#toy-landscape): scale {args.toy_scale!r}, Adam lr {lr:.3g}, {steps} steps, "
        f"{len(TOY_STARTS)} starts"
    )
    runs = each(
        section, specs, lambda spec, seed: analytic.run_toy(spec, seed, steps=steps, lr=lr, scale=args.toy_scale)
    )
    rows = [aggregate(r) for r in runs]
    report.add(
        table(
            rows,
            [
                ("solver", "solver"),
                ("on_front", "on front"),
                ("mean_final_f", "mean final f (unscaled)"),
                ("max_front_gap", "max |x2 − front|"),
                ("ms_per_step", "solver ms/step"),
                ("note", "note"),
            ],
            {
                "on_front": lambda v: f"{count(v)}/{len(TOY_STARTS)}" if v is not None else "",
                "ms_per_step": lambda v: fmt(v, 3),
            },
        )
        + f"\n\non front: starts ending within 0.05 of x2 = {TOY_FRONT_X2} with |x1| ≤ 7; "
        "the solvers see the losses shifted by +21 x the task scale (FAMO's toy), so that they are positive; "
        "solver ms/step: time inside the solvers for all five starts; trajectories in toy.png."
    )
    plot_toy(rows, args.toy_scale, out / "toy.png")
    return {"steps": steps, "lr": lr, "rows": rows, "runs": runs}


def section_fonseca(section, specs, settings, args, each, report, out) -> dict[str, Any]:
    steps, lr, count = settings["fonseca_steps"], settings["fonseca_lr"], settings["fronts"]
    report.add(
        f"## Fonseca–Fleming and its convex companion (docs/problems.md#fonseca-problems): n = 10, {count} preferences, "
        f"Adam lr {lr:g}, {steps} steps; hypervolume with r = {analytic.FONSECA_REFERENCE}"
    )
    runs = each(section, specs, lambda spec, seed: analytic.run_fonseca(spec, seed, steps=steps, lr=lr, count=count))
    rows = [aggregate(r) for r in runs]
    exact = analytic.FONSECA_EXACT_HV
    report.add(
        table(
            rows,
            [
                ("solver", "solver"),
                ("hv_fonseca", "HV Fonseca–Fleming"),
                ("hv_fonseca_convex", "HV convex"),
                ("ms_per_step", "solver ms/step"),
                ("note", "note"),
            ],
            {"hv_fonseca": lambda v: fmt(v, 4), "hv_fonseca_convex": lambda v: fmt(v, 4)},
        )
        + f"\n\nHV of the exact fronts: {exact['fonseca']} and {exact['fonseca_convex']:.5f}; "
        "solver ms/step: per front point; fronts in fonseca.png."
    )
    plot_fonseca(rows, out / "fonseca.png")
    return {
        "steps": steps,
        "lr": lr,
        "preferences": count,
        "reference": analytic.FONSECA_REFERENCE,
        "exact_hv": exact,
        "rows": rows,
        "runs": runs,
    }


def section_linreg(section, specs, settings, args, each, report, out) -> dict[str, Any]:
    tasks, steps = settings["linreg_tasks"], settings["linreg_steps"]
    report.add(
        f"## Many-task linear regression (docs/problems.md#linear-regression): Linear(20, m), 1,000 samples, Adam lr 1e-3, "
        f"ms per optimiser step over {steps} steps (forward, backward, solver, Adam), m = {list(tasks)}"
    )
    runs = each(
        section,
        specs,
        lambda spec, seed: training.run_linreg(
            spec, seed, tasks=tasks, steps=steps, warmup=settings["linreg_warmup"], device=args.device
        ),
    )
    rows = [aggregate(r) for r in runs]
    columns = [("solver", "solver")] + [(f"ms_m{m}", f"m = {m}") for m in tasks] + [("note", "note")]
    report.add(
        table(rows, columns, {f"ms_m{m}": lambda v: fmt(v, 2) for m in tasks}) + "\n\nms per step; plot in linreg.png."
    )
    plot_linreg(rows, tasks, out / "linreg.png")
    return {"tasks": list(tasks), "steps": steps, "rows": rows, "runs": runs}


def section_digits(section, specs, settings, args, each, report, out) -> dict[str, Any]:
    problem = {"digits": "multidigits", "mnist": "multimnist"}[section]
    name = {"digits": "MultiDigits", "mnist": "MultiMNIST"}[section]
    steps, batch = settings[f"{section}_steps"], settings[f"{section}_batch"]
    trunk = "MLP 100-64-64" if section == "digits" else "LeNet-style CNN"
    report.add(
        f"## {name} (docs/problems.md#multidigits-and-multimnist): {trunk} with two linear heads, Adam lr {DIGITS_LR:g}, batch {batch}, {steps} steps"
    )
    try:
        data = training.load_digits_problem(problem)
    except training.DataUnavailable as exc:
        report.add(f"skipped: {exc}")
        each(section, len(specs) + EXTRA_RUNS[section])
        return {"skipped": str(exc)}

    def run(spec, seed):
        return training.train_digits(
            spec, problem, seed, steps=steps, batch_size=batch, lr=DIGITS_LR, device=args.device
        )

    stl_runs = each(section, training.stl_specs(), run)
    base = single_task_baselines(stl_runs, report)
    runs = each(section, specs, run)
    if base is not None:
        for per_seed in runs:
            training.add_delta_m(per_seed, base)
    rows = [aggregate(r) for r in runs]
    base_mean = None if base is None else np.mean(base, axis=0).tolist()
    report.add(digits_table(section, rows, base_mean, f"{len(data[0])} training and {len(data[2])} test images"))
    plot_accuracies(rows, base_mean, name, out / f"{section}.png")
    return {
        "problem": problem,
        "steps": steps,
        "batch": batch,
        "lr": DIGITS_LR,
        "baseline": base_mean,
        "baseline_runs": stl_runs,
        "rows": rows,
        "runs": runs,
    }


def single_task_baselines(stl_runs, report: Report) -> list[list[float]] | None:
    """Per seed, the single-task accuracies Δm% is measured against; None (said in the report) when one failed."""
    try:
        return training.baseline_accuracies(stl_runs)
    except RuntimeError as exc:
        report.add(f"no Δm%: {exc}")
        return None


def digits_table(section: str, rows, base_mean: list[float] | None, sizes: str) -> str:
    """The accuracy table of a training section, led by the single-task baselines when they ran."""
    lead = (
        ""
        if base_mean is None
        else (
            f"single-task baselines (stl, main_task = 0 / 1): task 1 {100 * base_mean[0]:.2f} %, "
            f"task 2 {100 * base_mean[1]:.2f} % ({sizes})\n\n"
        )
    )
    return (
        lead
        + table(
            rows,
            [
                ("solver", "solver"),
                ("acc_task1", "task 1 acc %"),
                ("acc_task2", "task 2 acc %"),
                ("delta_m", "Δm% ↓"),
                ("ms_per_step", "ms/step"),
                ("peak_mib", "peak MiB"),
                ("note", "note"),
            ],
            {
                "acc_task1": percent,
                "acc_task2": percent,
                "delta_m": lambda v: fmt(v, 2),
                "ms_per_step": lambda v: fmt(v, 2),
                "peak_mib": mib,
            },
        )
        + "\n\nΔm% against the single-task baselines (docs/problems.md#delta-m; lower is better, negative beats them); "
        f"peak MiB: the process's peak resident set while training (CPU; libraries and data included) "
        f"or the CUDA allocator's peak (GPU); {section}.png."
    )


#: what runs each section
SECTION_RUNNERS: Mapping[str, Callable[..., dict[str, Any]]] = {
    "toy": section_toy,
    "fonseca": section_fonseca,
    "linreg": section_linreg,
    "digits": section_digits,
    "mnist": section_digits,
}


# ---------------------------------------------------------------- plots
#: styles that tell apart more solvers than the ten default colours
LINES, MARKERS = ("-", "--", ":", "-."), ("o", "s", "^", "D")


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=90, layout="constrained")


def plot_toy(rows, scale: str, path: Path) -> None:
    """One panel per solver: loss contours, the Pareto front, and the five trajectories."""
    ran = [r for r in rows if "trajectory" in r]
    if not ran:
        return
    X1, X2, F = analytic.toy_grid(scale)
    cols = min(len(ran), 6)
    nrows = -(-len(ran) // cols)
    fig = _figure(2.8 * cols, 2.6 * nrows)
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    for ax, row in zip(axes, ran):
        ax.contourf(X1, X2, F, levels=25, cmap="Greys", alpha=0.6)
        ax.plot([-7, 7], [TOY_FRONT_X2] * 2, color="tab:red", lw=2)
        traj = np.asarray(row["trajectory"])  # (T, 5, 2)
        for i in range(traj.shape[1]):
            ax.plot(traj[:, i, 0], traj[:, i, 1], lw=1)
            ax.plot(*traj[0, i], "k.", ms=4)
            ax.plot(*traj[-1, i], "o", ms=3, color="tab:blue")
        ax.set_title(row["solver"], fontsize=8)
        ax.set_xlim(-10, 10)
        ax.set_ylim(-10, 10)
        ax.tick_params(labelsize=6)
    for ax in axes[len(ran) :]:
        ax.set_axis_off()
    fig.suptitle(f"toy landscape ({scale} scaling): trajectories, Pareto front in red")
    fig.savefig(path)


def plot_fonseca(rows, path: Path) -> None:
    fig = _figure(10, 4.5)
    axes = fig.subplots(1, 2)
    for ax, problem in zip(axes, analytic.FONSECA_PROBLEMS):
        front = analytic.exact_front(problem)
        ax.plot(front[:, 0], front[:, 1], "k-", lw=1, label="exact front")
        for i, row in enumerate(r for r in rows if f"front_{problem}" in r):
            pts = np.asarray(row[f"front_{problem}"])
            ax.plot(pts[:, 0], pts[:, 1], MARKERS[i // 10 % len(MARKERS)], ms=4, label=row["solver"])
        ax.set_title(problem)
        ax.set_xlabel("f1")
        ax.set_ylabel("f2")
    axes[1].legend(fontsize=7)
    fig.savefig(path)


def plot_linreg(rows, tasks, path: Path) -> None:
    fig = _figure(10, 5)
    ax = fig.subplots()
    for i, row in enumerate(r for r in rows if f"ms_m{tasks[0]}" in r):
        ms = [(m, row[f"ms_m{m}"]) for m in tasks if f"ms_m{m}" in row]
        ax.plot(
            [m for m, _ in ms],
            [_mean(v) for _, v in ms],
            marker="o",
            ms=3,
            ls=LINES[i // 10 % len(LINES)],
            label=row["solver"],
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tasks m")
    ax.set_ylabel("ms per step")
    ax.legend(fontsize=6, ncol=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.savefig(path)


def plot_accuracies(rows, base, name: str, path: Path) -> None:
    fig = _figure(7, 6)
    ax = fig.subplots()
    for row in rows:
        if "acc_task1" in row:
            x, y = 100 * _mean(row["acc_task1"]), 100 * _mean(row["acc_task2"])
            ax.plot(x, y, "o", ms=4)
            ax.annotate(row["solver"], (x, y), fontsize=6)
    if base is not None:
        ax.plot(100 * base[0], 100 * base[1], "k*", ms=10, label="single-task baselines")
        ax.legend(fontsize=7)
    ax.set_xlabel("task 1 test accuracy %")
    ax.set_ylabel("task 2 test accuracy %")
    ax.set_title(name)
    fig.savefig(path)


def _mean(value: Any) -> float:
    return float(value["mean"]) if isinstance(value, Mapping) else float(value)

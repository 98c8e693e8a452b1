"""``mtlsolve bench``: every registered solver on the built-in problems, as Markdown tables and plots.

Sections (``--sections``; docs/problems.md):

* **toy**: the two-task toy landscape (#toy-landscape) from its five published starts; trajectories over the
  loss contours and the Pareto front in ``toy.png``;
* **fonseca**: Fonseca–Fleming and its convex companion (#fonseca-problems), one front per preference-based
  solver, scored by hypervolume with r = (1, 1) (#hypervolume); fronts in ``fonseca.png``;
* **linreg**: many-task linear regression (#linear-regression), time per optimiser step as the number of tasks
  grows to 100; ``linreg.png``;
* **digits** / **mnist**: MultiDigits and MultiMNIST (#multidigits-and-multimnist): per-task test accuracy and
  Δm% (#delta-m) under two conventions, ranked, with the baselines of :mod:`mtlsolve.bench.baselines`
  (#baselines) and the single-task models as a reference line; preference-based solvers as fronts with
  hypervolume; ``digits_delta_m.png`` / ``digits_fronts.png`` (and ``mnist_*``).

Everything is written to ``--out`` section by section as the sections finish: ``results.md`` (the printed
tables), ``results.json`` (with ``status``: running, complete, interrupted or failed) and the PNGs; the
files of an earlier run there are removed first. The exit status is 0 when every run succeeded, 1 when
a run failed or nothing ran, 2 for invalid options or configs, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mtlsolve.bench import analytic, baselines, training
from mtlsolve.bench._common import (
    Spec,
    _is_number,
    aggregate,
    fmt,
    indistinguishable,
    load_average,
    markdown,
    short_error,
)
from mtlsolve.errors import InvalidConfigError, MtlsolveError
from mtlsolve.metrics import hypervolume
from mtlsolve.problems import TOY_FRONT_X2, TOY_SCALES, TOY_STARTS
from mtlsolve.registry import registry

SECTIONS = ("toy", "fonseca", "linreg", "digits", "mnist", "cost")
#: the training sections: seeds, baselines, Δm% and preference fronts
TRAINING = ("digits", "mnist")

#: step counts, learning rates, sweeps and seeds of a full run and of ``--quick``
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
        "checkpoints": 10,
        "last": 3,
        "training_fronts": 5,
        "ls_grid": baselines.LS_GRID["full"],
        "training_seeds": 3,
        "cost_budgets": (1, 4, 16),
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
        "checkpoints": 4,
        "last": 2,
        "training_fronts": 3,
        "ls_grid": baselines.LS_GRID["quick"],
        "training_seeds": 1,
        "cost_budgets": (1, 4),
    },
}
DIGITS_LR = 1e-3
#: where the problems, metrics and solvers the report names are documented
DOCS: Mapping[str, str] = {"problems": "docs/problems.md", "methods": "docs/methods.md"}
#: the significance level of the "≈ best" mark (Welch's t-test on the per-seed Δm%)
LEVEL = 0.05
#: the files a run writes (patterns under ``--out``); those of an earlier run are removed at the start
OUTPUTS = ("results.md", "results.json", *(f"{s}*.png" for s in SECTIONS))


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
    parser.add_argument("--quick", action="store_true", help="short runs and one seed (a few minutes in all)")
    parser.add_argument("--steps", type=int, help="override every section's number of optimiser steps")
    parser.add_argument(
        "--seeds",
        type=int,
        help="runs per solver, reported as mean ± std (default: 3 in the training sections and 1 elsewhere; "
        "1 everywhere with --quick)",
    )
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
    """The solver configurations to run: ``--solvers``, ``--config`` or every registered solver.

    Raises :class:`InvalidConfigError` with a one-line message for an unreadable or malformed config, an
    empty list, or two entries with the same label."""
    if config:
        specs = [Spec.parse(item) for item in _config_items(config)]
    elif solvers is not None:
        specs = [Spec.parse(s) for s in solvers.split(",") if s.strip()]
        if not specs:
            raise InvalidConfigError("--solvers names no solver; give comma-separated names (see mtlsolve list)")
    else:
        specs = [Spec.parse(name) for name in registry.available()]
    labels = [s.label for s in specs]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise InvalidConfigError(
            f"solver labels must be unique, repeated: {', '.join(twice)} (set 'label' to tell them apart)"
        )
    return specs


def _config_items(config: str) -> list[Any]:
    path = Path(config)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidConfigError(f"cannot read the config file {config!r}: {exc}") from exc
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError as exc:
                raise InvalidConfigError(f"reading {config!r} needs PyYAML: pip install pyyaml") from exc
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except InvalidConfigError:
        raise
    except ValueError as exc:  # json.JSONDecodeError
        raise InvalidConfigError(f"{config!r} is not valid JSON: {exc}") from exc
    except Exception as exc:  # yaml.YAMLError
        problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        reason = problem or (str(exc).splitlines() or [type(exc).__name__])[0]
        raise InvalidConfigError(f"{config!r} is not valid YAML: {reason}{where}") from exc
    items = data.get("solvers") if isinstance(data, Mapping) else data
    if not isinstance(items, list) or not items:
        raise InvalidConfigError(f"{config!r} must hold a non-empty list of solvers (or one under 'solvers')")
    return items


def check_configs(specs: Sequence[Spec]) -> None:
    """Build every solver once; raise one :class:`InvalidConfigError` naming every config that is refused."""
    bad = []
    for spec in specs:
        try:
            spec.make(0)
        except MtlsolveError as exc:
            bad.append(f"{spec.label}: " + " ".join(str(exc).split()))
    if bad:
        raise InvalidConfigError("invalid solver config(s): " + "; ".join(bad))


def main(args: argparse.Namespace) -> int:
    """Run the chosen sections for every solver configuration and write the report (module docstring)."""
    specs = load_specs(args.solvers, args.config)
    sections = checked_sections(args)
    settings = step_settings(args.quick, args.steps)
    check_dependencies(sections)
    check_configs(specs)
    seeds = {s: seeds_for(s, args, settings) for s in sections}
    import torch

    torch.set_num_threads(args.threads)
    out = Output(Path(args.out))
    each = SeedRuns(
        total=sum(planned_runs(s, specs, settings) * len(seeds[s]) for s in sections), hide=args.no_progress
    )
    report = Report()
    results = start_results(report, specs, seeds, settings, sections, args)
    t0 = time.perf_counter()
    status = "complete"
    try:
        compile_kernels(specs, each, report, results)
        for section in sections:
            started = time.perf_counter()
            each.seeds = seeds[section]
            results[section] = SECTION_RUNNERS[section](section, specs, settings, args, each, report, out.path)
            results[section]["seconds"] = time.perf_counter() - started
            results["wall_s"] = time.perf_counter() - t0
            out.save(results, report, f"running: {section} done")
    except KeyboardInterrupt:
        status = "interrupted"
    except BaseException as exc:
        results["wall_s"] = time.perf_counter() - t0
        out.save(results, report, f"failed: {short_error(exc)}")
        raise
    finally:
        each.close()
    results["wall_s"] = time.perf_counter() - t0
    results["load_average_end"] = load_average()
    report.add(f"wall time {results['wall_s']:.1f} s; load average at the end: {results['load_average_end']}")
    out.save(results, report, status)
    print(f"\nresults written to {out.path}/ (results.md, results.json, PNGs); status {status}")
    return exit_status(results, sections, status)


def exit_status(results: Mapping[str, Any], sections: Sequence[str], status: str) -> int:
    """130 when interrupted; 1 (with the reason on stderr) when a run failed or nothing ran; else 0."""
    if status == "interrupted":
        print("mtlsolve bench: interrupted; the finished sections are saved", file=sys.stderr)
        return 130
    failed, ran = [], 0
    for section in sections:
        for row in section_rows(results.get(section, {})):
            note = str(row.get("note", ""))
            if note.startswith("error"):
                failed.append(f"{row['solver']} ({section})")
            elif not note.startswith("not applicable"):
                ran += 1
    if failed:
        print(f"mtlsolve bench: {len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    if ran == 0:
        print("mtlsolve bench: nothing ran (no solver applies to the chosen sections)", file=sys.stderr)
        return 1
    return 0


def section_rows(section: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Every table row of a section's results: methods, baselines, fronts and the single-task reference."""
    rows = [r for key in ("rows", "baseline_rows", "front_rows") for r in section.get(key, [])]
    return rows + ([section["stl"]] if "stl" in section else [])


def checked_sections(args: argparse.Namespace) -> list[str]:
    """The ``--sections`` to run, after checking them and ``--seeds``, ``--steps`` and ``--threads``."""
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    if not sections:
        raise InvalidConfigError(f"--sections names no section; choose from {', '.join(SECTIONS)}")
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise InvalidConfigError(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    if args.seeds is not None and args.seeds < 1:
        raise InvalidConfigError(f"--seeds must be at least 1, got {args.seeds}")
    if args.steps is not None and args.steps < 1:
        raise InvalidConfigError(f"--steps must be at least 1, got {args.steps}")
    if args.threads < 1:
        raise InvalidConfigError(f"--threads must be at least 1, got {args.threads}")
    return list(dict.fromkeys(sections))


def seeds_for(section: str, args: argparse.Namespace, settings: Mapping[str, Any]) -> list[int]:
    """``--seeds`` seeds from ``--seed``; by default the settings' ``training_seeds`` in the training
    sections and one elsewhere."""
    n = args.seeds or (settings["training_seeds"] if section in (*TRAINING, "cost") else 1)
    return [args.seed + i for i in range(n)]


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


def preference_based(spec: Spec) -> bool:
    """Whether a training section sweeps ``spec`` over preference vectors (Pareto family, sweepable)."""
    return spec.cls.family == "PA" and analytic.sweep_reason(spec) is None


def planned_runs(section: str, specs: Sequence[Spec], settings: Mapping[str, Any]) -> int:
    """Runs per seed of a section: one per spec, and in a training section the baselines and a sweep of
    ``training_fronts`` preferences per preference-based spec."""
    if section == "cost":
        return 0  # COST's own sweep, not one run per solver
    if section not in TRAINING:
        return len(specs)
    swept = sum(preference_based(s) for s in specs)
    stl = sum(s.name == "stl" for s in specs)  # the reference line, run as the single-task baselines
    return len(specs) - stl + swept * (settings["training_fronts"] - 1) + 2 + len(settings["ls_grid"]) + 1


def compile_kernels(specs: Sequence[Spec], each: SeedRuns, report: Report, results: dict[str, Any]) -> None:
    """Compile (or load from numba's disk cache) the kernels of the solvers, shown on the progress bar."""
    from mtlsolve.bench.warmup import warm_up

    def progress(label: str) -> None:
        each.bar.set_description(f"numba compile (one-time): {label}"[:40])

    done = warm_up(specs, progress)
    results["numba"] = {"seconds": done.seconds, "compiled": done.compiled, "loaded": done.loaded}
    report.add(f"{done.line()} (one-time: cached on disk; `mtlsolve warmup` does it ahead of a run)")


class SeedRuns:
    """``each(section, specs, run)``: run(spec, seed) for every spec and seed of ``seeds``, one list of
    per-seed rows per spec, with a progress bar on stderr (an int for ``specs``: that many specs skipped)."""

    def __init__(self, *, total: int, hide: bool) -> None:
        from tqdm import tqdm

        self.seeds: Sequence[int] = [0]
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
    kind = "quick" if args.quick else "full"
    report.add(
        f"# mtlsolve bench: {len(specs)} solvers, {kind} settings, device {args.device}, {args.threads} CPU thread(s)"
    )
    counts = ", ".join(f"{s} {len(seeds[s])}" for s in sections)
    note = ""
    if any(len(seeds[s]) < 3 for s in sections if s in TRAINING):
        note = " — fewer than 3 seeds in a training section: no uncertainty estimate and no '≈ best' test" + (
            " (--quick runs 1 seed; the full run 3)" if args.quick else ""
        )
    report.add(f"seeds per section: {counts}{note}")
    load_before = load_average()
    report.add(f"load average at start (1, 5, 15 min): {load_before}")
    report.add(f"problems and metrics: {DOCS['problems']}; solvers: {DOCS['methods']}")
    return {
        "status": "running",
        "settings": {
            **settings,
            "seeds": {s: seeds[s] for s in sections},
            "device": args.device,
            "threads": args.threads,
            "toy_scale": args.toy_scale,
            "sections": sections,
        },
        "solvers": [{"label": s.label, "config": dict(s.config)} for s in specs],
        "load_average_start": load_before,
        "docs": dict(DOCS),
    }


class Output:
    """The output folder: the files of an earlier run (:data:`OUTPUTS`) are removed on entry, and
    ``save`` replaces results.json and results.md atomically, so the folder always holds one run."""

    def __init__(self, path: Path) -> None:
        if path.exists() and not path.is_dir():
            raise InvalidConfigError(f"--out {str(path)!r} is a file, not a folder")
        path.mkdir(parents=True, exist_ok=True)
        for pattern in OUTPUTS:
            for stale in path.glob(pattern):
                stale.unlink()
        self.path = path

    def save(self, results: dict[str, Any], report: Report, status: str) -> None:
        results["status"] = status
        self._write("results.json", json.dumps(results, indent=1, default=_json_default))
        text = report.text()
        if status != "complete":
            text += f"\n(status: {status})\n"
        self._write("results.md", text)

    def _write(self, name: str, text: str) -> None:
        tmp = self.path / f".{name}.{os.getpid()}.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.path / name)


class Report:
    """The Markdown report: printed as it grows, saved to results.md after every section."""

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
    """The Markdown table of the rows that ran or failed, then one line per group of solvers that do not apply."""
    shown = [r for r in rows if not str(r.get("note", "")).startswith("not applicable")]
    skipped: dict[str, list[str]] = {}
    for r in rows:
        if str(r.get("note", "")).startswith("not applicable"):
            skipped.setdefault(r["note"].removeprefix("not applicable: "), []).append(r["solver"])
    text = markdown(shown, columns, formats) if shown else "(no solver ran)"
    for reason, names in skipped.items():
        text += f"\n\nnot applicable ({reason}): {', '.join(names)}"
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


def definition_note(spec: Spec) -> str | None:
    """When ``spec`` is by definition the same method as another row (or is in a limit), what it equals."""
    config = {k: v for k, v in spec.config.items() if k != "name"}
    if spec.name == "fairgrad" and float(config.get("alpha", 1.0)) == 1.0:
        return "same method as nash_mtl by definition (α = 1: K w = 1/w, proportional fairness)"
    if spec.name == "stch" and config.get("mode", "official") == "official":
        return "equals si (Σ log L_i) during its warm-up epochs and in the limit μ → ∞"
    if spec.name == "ls" and not config.get("weights") and config.get("reduction", "sum") == "sum":
        return "the same as ls(w1=0.50) of the weight grid"
    if spec.name == "trimmed_mean" and int(config.get("trim_number", 0)) == 0:
        return "trims nothing: the mean of the gradients, i.e. ls with reduction='mean'"
    if spec.name == "upgrad":
        return (
            "on two tasks the direction of pcgrad up to a factor 1/2 and its ridge "
            "(each gradient projected off a conflicting other)"
        )
    return None


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
    rows = [with_definition(aggregate(r), spec) for r, spec in zip(runs, specs)]
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


def with_definition(row: dict[str, Any], spec: Spec) -> dict[str, Any]:
    """``row`` with :func:`definition_note` added to its note."""
    same = definition_note(spec)
    if same and not str(row.get("note", "")).startswith(("error", "not applicable")):
        row["note"] = "; ".join(filter(None, [row.get("note"), same]))
    return row


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
                ("hv_fonseca", "HV Fonseca–Fleming ↑"),
                ("hv_fonseca_convex", "HV convex ↑"),
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
    for row, spec in zip(rows, specs):
        row["family"] = spec.cls.family
        if row.get("na"):
            at = ", ".join(str(int(m)) for m in row.pop("na"))
            row["note"] = "; ".join(filter(None, [row.get("note"), f"skipped at m = {at}: {row.pop('na_reason')}"]))
    columns = [("solver", "solver"), ("family", "family")] + [(f"ms_m{m}", f"m = {m}") for m in tasks]
    report.add(
        table(rows, columns + [("note", "note")], {f"ms_m{m}": lambda v: fmt(v, 2) for m in tasks})
        + "\n\nms per step; family: LW loss weighting (one backward), GW Gramian weighting, FM full matrix, "
        "RV representation-level, PA Pareto; log-log plot per family in linreg.png."
    )
    plot_linreg(rows, tasks, out / "linreg.png")
    return {"tasks": list(tasks), "steps": steps, "rows": rows, "runs": runs}


def section_training(section, specs, settings, args, each, report, out) -> dict[str, Any]:
    problem = {"digits": "multidigits", "mnist": "multimnist"}[section]
    name = {"digits": "MultiDigits", "mnist": "MultiMNIST"}[section]
    steps, batch = settings[f"{section}_steps"], settings[f"{section}_batch"]
    checkpoints, last, fronts = settings["checkpoints"], settings["last"], settings["training_fronts"]
    trunk = "MLP 100-64-64" if section == "digits" else "LeNet-style CNN"
    report.add(
        f"## {name} (docs/problems.md#multidigits-and-multimnist): {trunk} with two linear heads, Adam lr "
        f"{DIGITS_LR:g}, batch {batch}, {steps} steps, {len(each.seeds)} seed(s), validation and test accuracy "
        f"at {checkpoints} checkpoints"
    )
    try:
        data = training.load_digits_problem(problem)
    except training.DataUnavailable as exc:
        report.add(f"not applicable: {exc}")
        each(section, planned_runs(section, specs, settings))
        return {"skipped": str(exc)}

    def run(spec, seed):
        return training.train_digits(
            spec, problem, seed, steps=steps, batch_size=batch, lr=DIGITS_LR, checkpoints=checkpoints, last=last,
            device=args.device,
        )  # fmt: skip

    stl_runs = each(section, baselines.stl_specs(), run)
    base = single_task_baselines(stl_runs, report)
    grid_specs = baselines.ls_grid(settings["ls_grid"])
    grid_runs = each(section, grid_specs, run)
    norm_spec = baselines.gradnorm_scaled()
    norm_runs = each(section, [norm_spec], run)
    methods = [s for s in specs if not preference_based(s) and s.name != "stl"]
    swept = [s for s in specs if preference_based(s)]
    reference = [s.label for s in specs if s.name == "stl"]
    method_runs = each(section, methods, run)
    sweeps = [each(section, analytic.preference_specs(s, fronts), run) for s in swept]
    if base is not None:
        for runs in (*grid_runs, *norm_runs, *method_runs, *(r for sweep in sweeps for r in sweep)):
            training.add_delta_m(runs, base)
    tuned = tuned_ls(grid_specs, grid_runs)
    baseline_rows = [ranked_row(runs, spec) for spec, runs in ((tuned[0], tuned[1]), (norm_spec, norm_runs[0]))]
    rows = [ranked_row(runs, spec) for spec, runs in zip(methods, method_runs)]
    stl_row = stl_reference(stl_runs)
    mark_best(rows + baseline_rows)
    ranked = sorted(rows + baseline_rows, key=rank_key)
    n_val = len(training.split_validation(data)[2])
    sizes = f"{len(data[0]) - n_val} training, {n_val} validation and {len(data[2])} test images"
    report.add(
        training_table(section, [stl_row, *ranked], base is not None, len(each.seeds), last, sizes)
        + grid_line(grid_specs, grid_runs)
        + (f"\n\n{', '.join(reference)}: the single-task reference line above, not ranked" if reference else "")
        + (
            f"\n\npreference-based (fronts below, not ranked by Δm%): {', '.join(s.label for s in swept)}"
            if swept
            else ""
        )
    )
    front_rows = [front_row(spec, sweep) for spec, sweep in zip(swept, sweeps)]
    if swept:
        grid_front = front_row(Spec("ls weight grid", {"name": "ls"}, role="baseline"), grid_runs)
        report.add(fronts_table(name, [grid_front, *front_rows], fronts, section))
    plot_ranked(stl_row, ranked, name, out / f"{section}_delta_m.png")
    if swept:
        plot_training_fronts(front_rows, grid_front, stl_row, name, out / f"{section}_fronts.png")
    return {
        "problem": problem,
        "steps": steps,
        "batch": batch,
        "lr": DIGITS_LR,
        "checkpoints": checkpoints,
        "last": last,
        "baseline": base,
        "stl": stl_row,
        "baseline_runs": stl_runs,
        "ls_grid": {"weights": list(settings["ls_grid"]), "runs": grid_runs, "selected": tuned[0].label},
        "baseline_rows": baseline_rows,
        "rows": rows,
        "front_rows": front_rows,
        "runs": method_runs,
        "sweeps": sweeps,
    }


def single_task_baselines(stl_runs, report: Report) -> dict[str, list[list[float]]] | None:
    """Per convention and seed, the single-task accuracies Δm% is measured against; None (said in the report) when one failed."""
    try:
        return training.baseline_accuracies(stl_runs)
    except RuntimeError as exc:
        report.add(f"no Δm%: {exc}")
        return None


def tuned_ls(grid_specs: Sequence[Spec], grid_runs: Sequence[Sequence[dict]]) -> tuple[Spec, list[dict]]:
    """The grid point with the best validation score (lowest mean validation Δm%, or highest mean validation
    accuracy without single-task baselines), relabelled as the tuned baseline."""

    def score(runs: Sequence[dict]) -> float:
        ok = [r for r in runs if "acc_task1" in r]
        if len(ok) < len(runs):
            return np.inf
        if all("delta_m_val" in r for r in ok):
            return float(np.mean([r["delta_m_val"] for r in ok]))
        return -float(np.mean([r["val_task1"] + r["val_task2"] for r in ok]))

    best = int(np.argmin([score(r) for r in grid_runs]))
    spec = grid_specs[best]
    label = f"ls tuned ({spec.label.removeprefix('ls(').removesuffix(')')})"
    return spec.with_config(label), [{**r, "solver": label} for r in grid_runs[best]]


def grid_line(grid_specs, grid_runs) -> str:
    cells = []
    for spec, runs in zip(grid_specs, grid_runs):
        val = [r["delta_m_val"] for r in runs if "delta_m_val" in r]
        cells.append(f"{spec.label} {fmt(float(np.mean(val)), 2) if val else '–'}")
    return (
        f"\n\nls tuned: task weights (2w1, 2(1 − w1)) chosen on the validation split, lowest validation Δm%: "
        f"{'; '.join(cells)}"
    )


def ranked_row(runs: Sequence[dict], spec: Spec) -> dict[str, Any]:
    row = with_definition(aggregate(runs), spec)
    row["kind"] = spec.role
    row["delta_m_seeds"] = [r["delta_m"] for r in runs if "delta_m" in r]
    if len(row["delta_m_seeds"]) < len(runs):
        row.pop("delta_m", None)
        row.pop("delta_m_last", None)
    return row


def stl_reference(stl_runs: Sequence[Sequence[dict]]) -> dict[str, Any]:
    """The single-task models as one reference row: task i's accuracies from the model trained on task i alone."""
    row: dict[str, Any] = {"solver": "single-task models (stl)", "kind": "reference, not ranked"}
    for i, runs in enumerate(stl_runs):
        ok = [r for r in runs if f"acc_task{i + 1}" in r]
        if len(ok) < len(runs):
            return {**row, "note": "; ".join(str(r.get("note", "error")) for r in runs if r not in ok)}
        agg = aggregate(ok)
        for key in (f"acc_task{i + 1}", f"acc_task{i + 1}_last"):
            row[key] = agg[key]
    row["delta_m"] = row["delta_m_last"] = 0.0
    return row


def rank_key(row: Mapping[str, Any]) -> tuple[int, float]:
    value = row.get("delta_m")
    return (0, value["mean"]) if isinstance(value, Mapping) else (1, 0.0)


def mark_best(rows: Sequence[dict[str, Any]]) -> None:
    """Mark the lowest mean Δm% (best epoch) "best", and "≈" every row that Welch's t-test at :data:`LEVEL`
    does not tell apart from it (needs ≥ 2 seeds)."""
    scored = [r for r in rows if isinstance(r.get("delta_m"), Mapping)]
    if not scored:
        return
    best = min(scored, key=lambda r: r["delta_m"]["mean"])
    for row in scored:
        if row is best:
            row["vs_best"] = "best"
        else:
            same = indistinguishable(best["delta_m_seeds"], row["delta_m_seeds"], LEVEL)
            row["vs_best"] = "" if same is None else ("≈" if same else "")


def training_table(section: str, rows, has_base: bool, seeds: int, last: int, sizes: str) -> str:
    """The ranked accuracy table of a training section, led by the single-task reference line."""
    shown = rows if has_base else [r for r in rows if r.get("kind") != "reference, not ranked"]
    text = table(
        shown,
        [
            ("solver", "solver"),
            ("kind", "kind"),
            ("acc_task1", "task 1 acc %"),
            ("acc_task2", "task 2 acc %"),
            ("delta_m", "Δm% best-val ↓"),
            ("delta_m_last", f"Δm% last-{last} ↓"),
            ("vs_best", "vs best"),
            ("ms_per_step", "ms/step"),
            ("peak_mib", "peak MiB"),
            ("note", "note"),
        ],
        {
            "acc_task1": percent,
            "acc_task2": percent,
            "delta_m": lambda v: fmt(v, 2),
            "delta_m_last": lambda v: fmt(v, 2),
            "ms_per_step": lambda v: fmt(v, 2),
            "peak_mib": mib,
        },
    )
    rule = (
        f"vs best: '≈' when Welch's t-test on the per-seed Δm% (best-val) does not tell the row apart from the "
        f"best at p < {LEVEL} ({seeds} seeds)"
        if seeds >= 2
        else "vs best: not tested with one seed (use --seeds 3 or more)"
    )
    return (
        text + f"\n\nRanked by Δm% best-val (docs/problems.md#delta-m; lower is better, negative beats the single-task "
        f"models): test accuracy at the checkpoint with the best validation accuracy; Δm% last-{last}: the mean test "
        f"accuracy over the last {last} checkpoints. Values are mean ± sample std over seeds; {rule}. "
        f"The single-task line is the reference Δm% = 0 (task i from the model trained on task i alone), not a "
        f"ranked row; baselines (docs/problems.md#baselines) are ranked with the methods. {sizes}. "
        f"peak MiB: the process's peak resident set while training (CPU; libraries and data included) or the "
        f"CUDA allocator's peak (GPU); {section}_delta_m.png."
    )


def front_row(spec: Spec, sweep: Sequence[Sequence[dict]]) -> dict[str, Any]:
    """A preference sweep as a front: per seed, the test errors of every preference and their hypervolume
    with r = (1, 1); mean front points and HV mean ± std."""
    row: dict[str, Any] = {"solver": spec.label, "kind": spec.role}
    failed = [r for runs in sweep for r in runs if "acc_task1" not in r]
    if failed:
        return {**row, "note": failed[0].get("note", "error")}
    per_seed = list(zip(*sweep))  # seeds x preferences
    hvs = [
        hypervolume([(1 - r["acc_task1"], 1 - r["acc_task2"]) for r in runs], TRAINING_REFERENCE) for runs in per_seed
    ]
    row["hv"] = aggregate([{"hv": h} for h in hvs])["hv"]
    row["front"] = [
        [float(np.mean([1 - r["acc_task1"] for r in runs])), float(np.mean([1 - r["acc_task2"] for r in runs]))]
        for runs in sweep
    ]
    row["points"] = [runs[0]["solver"] for runs in sweep]
    return row


#: the hypervolume reference point of the training fronts: test error rates (1, 1)
TRAINING_REFERENCE = (1.0, 1.0)


def fronts_table(name: str, rows, count: int, section: str) -> str:
    text = table(
        rows,
        [
            ("solver", "solver"),
            ("kind", "kind"),
            ("hv", "HV ↑"),
            ("front", "test error % per preference"),
            ("note", "note"),
        ],
        {
            "hv": lambda v: fmt(v, 4),
            "front": lambda v: "" if not v else ", ".join(f"({100 * a:.1f}, {100 * b:.1f})" for a, b in v),
        },
    )
    return (
        f"### {name}: fronts of the preference-based solvers\n\n"
        + text
        + f"\n\nEach solver trained once per preference: (t, 1 − t) for {count} values of t evenly spaced in "
        "[0.05, 0.95] (population solvers: one index of "
        f"{count}), points listed in that order; HV of the (task 1, task 2) test errors with r = "
        f"{TRAINING_REFERENCE} (docs/problems.md#hypervolume), mean ± std over seeds. The linear-scalarisation "
        f"weight grid is the reference front; {section}_fronts.png."
    )


def section_cost(section, specs, settings, args, each, report, out) -> dict[str, Any]:
    """COST's teleport budget against its loss-contour invariance (:mod:`mtlsolve.bench.cost_tradeoff`)."""
    from mtlsolve.bench import cost_tradeoff

    budgets, seeds = settings["cost_budgets"], each.seeds
    report.add(
        "## COST: teleport budget vs loss-contour invariance (docs/methods.md#cost): one teleport of a trained "
        f"two-task MLP per LoRA learning rate {list(cost_tradeoff.LORA_LRS)} and budget {list(budgets)} "
        f"(passes over an 8-batch teleport set), seeds {seeds}"
    )
    rows = cost_tradeoff.summary(cost_tradeoff.tradeoff(budgets=budgets, seeds=seeds))
    for row in rows:
        for key in ("max_deviation", "conflict_reduction", "displacement"):
            row[key] = {"mean": row[key], "std": row.pop(key + "_std")}
    report.add(
        table(
            rows,
            [
                ("lora_lr", "LoRA lr"),
                ("adapter_steps", "adapter steps"),
                ("max_deviation", "max contour deviation ↓"),
                ("conflict_reduction", "Δ min_i cos(g₀, g_i) ↑"),
                ("displacement", "‖Δθ‖"),
            ],
            {
                "lora_lr": lambda v: f"{v:g}",
                "adapter_steps": lambda v: str(int(v)),
                "max_deviation": lambda v: fmt({"mean": 100 * v["mean"], "std": 100 * v["std"]}, 2) + " %",
            },
        )
        + "\n\nContour deviation: the largest max_i |L_i − L*_i|/L*_i on the teleport set over the adapter steps; "
        "Δ min_i cos: the change of the worst task's cosine with the mean gradient on the triggering batch "
        f"(positive: less conflict); mean ± std over seeds; {section}.png."
    )
    plot_cost(rows, out / f"{section}.png")
    return {"budgets": list(budgets), "lora_lrs": list(cost_tradeoff.LORA_LRS), "rows": rows}


#: what runs each section
SECTION_RUNNERS: Mapping[str, Callable[..., dict[str, Any]]] = {
    "toy": section_toy,
    "fonseca": section_fonseca,
    "linreg": section_linreg,
    "digits": section_training,
    "mnist": section_training,
    "cost": section_cost,
}


# ---------------------------------------------------------------- plots
#: trajectory colours of the toy plot (the front is black; no colour repeats within a panel)
TRAJECTORY_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown")
#: colours of the families in the time plot, and of the kinds of rows in the ranked chart
FAMILY_COLOURS = {"LW": "tab:blue", "GW": "tab:orange", "FM": "tab:green", "RV": "tab:purple", "PA": "tab:red"}
KIND_COLOURS = {"method": "tab:blue", "baseline": "tab:orange"}
LINES, MARKERS = ("-", "--", ":", "-."), ("o", "s", "^", "D", "v", "P")


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=90, layout="constrained")


def plot_toy(rows, scale: str, path: Path) -> None:
    """One panel per solver: loss contours, the Pareto front (black), and the five trajectories in five colours."""
    from matplotlib.lines import Line2D

    ran = [r for r in rows if "trajectory" in r]
    if not ran:
        return
    X1, X2, F = analytic.toy_grid(scale)
    cols = min(len(ran), 5)
    nrows = -(-len(ran) // cols)
    fig = _figure(2.9 * cols, 2.8 * nrows + 0.6)
    axes = fig.subplots(nrows, cols, squeeze=False, sharex=True, sharey=True)
    for ax, row in zip(axes.ravel(), ran):
        ax.contourf(X1, X2, F, levels=25, cmap="Greys", alpha=0.5)
        ax.plot([-7, 7], [TOY_FRONT_X2] * 2, color="black", lw=2.5)
        traj = np.asarray(row["trajectory"])  # (T, 5, 2)
        for i in range(traj.shape[1]):
            colour = TRAJECTORY_COLOURS[i % len(TRAJECTORY_COLOURS)]
            ax.plot(traj[:, i, 0], traj[:, i, 1], lw=1.2, color=colour)
            ax.plot(*traj[0, i], "x", ms=5, color=colour)
            ax.plot(*traj[-1, i], "o", ms=4, color=colour, mec="black", mew=0.5)
        ax.set_title(row["solver"], fontsize=8)
        ax.set_xlim(-10, 10)
        ax.set_ylim(-10, 10)
        ax.tick_params(labelsize=6)
    for ax in axes[-1]:
        ax.set_xlabel("x1", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("x2", fontsize=8)
    for ax in axes.ravel()[len(ran) :]:
        ax.set_axis_off()
    handles = [Line2D([], [], color="black", lw=2.5, label="Pareto front (x2 = −8.3552, |x1| ≤ 7)")]
    handles += [
        Line2D([], [], color=c, marker="x", label=f"start {tuple(s)}") for c, s in zip(TRAJECTORY_COLOURS, TOY_STARTS)
    ]
    handles.append(Line2D([], [], color="grey", marker="o", ls="", mec="black", label="end point"))
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=7)
    fig.suptitle(f"toy landscape ({scale} scaling): Adam trajectories over the summed loss")
    fig.savefig(path)


def plot_cost(rows, path: Path) -> None:
    """Conflict reduction against contour deviation, one line per LoRA learning rate through its budgets."""
    fig = _figure(6.0, 4.2)
    ax = fig.subplots()
    for k, lr in enumerate(sorted({r["lora_lr"] for r in rows})):
        line = sorted((r for r in rows if r["lora_lr"] == lr), key=lambda r: r["adapter_steps"])
        x = [100 * r["max_deviation"]["mean"] for r in line]
        y = [r["conflict_reduction"]["mean"] for r in line]
        ax.plot(x, y, LINES[k % len(LINES)], marker=MARKERS[k % len(MARKERS)], label=f"LoRA lr {lr:g}")
        for xi, yi, r in zip(x, y, line, strict=True):
            ax.annotate(f"{r['adapter_steps']}", (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axvline(2.0, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("max loss-contour deviation (%), log scale")
    ax.set_ylabel("Δ min_i cos(g₀, g_i) (conflict reduction)")
    ax.set_title("COST teleport: invariance vs conflict (labels: adapter steps)")
    ax.legend(loc="best", fontsize=8)
    fig.savefig(path)


def plot_fonseca(rows, path: Path) -> None:
    """One panel per preference-based solver and problem: the exact front and the traced points, HV in the title."""
    ran = [r for r in rows if "front_fonseca" in r]
    if not ran:
        return
    problems = list(analytic.FONSECA_PROBLEMS)
    fig = _figure(max(2.6 * len(ran) + 0.5, 7.0), 5.4)
    axes = fig.subplots(len(problems), len(ran), squeeze=False)
    for j, row in enumerate(ran):
        for i, problem in enumerate(problems):
            ax = axes[i, j]
            front = analytic.exact_front(problem)
            ax.plot(front[:, 0], front[:, 1], "k-", lw=1)
            pts = np.asarray(row[f"front_{problem}"])
            ax.scatter(pts[:, 0], pts[:, 1], c=np.linspace(0, 1, len(pts)), cmap="viridis", s=16, zorder=3)
            ax.set_title(f"{row['solver']}: HV {_mean(row[f'hv_{problem}']):.3f}", fontsize=8)
            ax.set_xlabel("f1", fontsize=8)
            ax.set_ylabel(f"f2 ({problem})", fontsize=8)
            ax.tick_params(labelsize=6)
    fig.suptitle(
        "Fonseca fronts: exact (black); points dark → light: preference (t, 1 − t), t = 0.05 → 0.95", fontsize=9
    )
    fig.savefig(path)


def plot_linreg(rows, tasks, path: Path) -> None:
    """ms per step against m on log axes, one panel per solver family (shared axes)."""
    ran = [r for r in rows if any(f"ms_m{m}" in r for m in tasks)]
    if not ran:
        return
    families = [f for f in FAMILY_COLOURS if any(r["family"] == f for r in ran)]
    fig = _figure(4.2 * len(families), 4.6)
    axes = fig.subplots(1, len(families), squeeze=False, sharex=True, sharey=True)[0]
    for ax, family in zip(axes, families):
        members = [r for r in ran if r["family"] == family]
        for i, row in enumerate(members):
            ms = [(m, _mean(row[f"ms_m{m}"])) for m in tasks if f"ms_m{m}" in row]
            ax.plot(
                [m for m, _ in ms], [v for _, v in ms], color=FAMILY_COLOURS[family], ls=LINES[i % len(LINES)],
                marker=MARKERS[i // len(LINES) % len(MARKERS)], ms=4, lw=1, label=row["solver"],
            )  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{family}: {_family_name(family)}", fontsize=9)
        ax.set_xlabel("number of tasks m (log)")
        ax.legend(fontsize=6, loc="upper left", ncol=1 + len(members) // 9)
    axes[0].set_ylabel("ms per optimiser step (log)")
    fig.suptitle("many-task linear regression: time per step (forward, backward, solver, Adam)")
    fig.savefig(path)


def plot_ranked(stl_row, rows, name: str, path: Path) -> None:
    """Horizontal bars of Δm% (best-val) with ± std error bars, ranked; the last-checkpoints Δm% as a marker,
    the single-task reference as the zero line."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    scored = [r for r in rows if isinstance(r.get("delta_m"), Mapping)]
    if not scored:
        return
    fig = _figure(8, 1.6 + 0.24 * len(scored))
    ax = fig.subplots()
    y = np.arange(len(scored))[::-1]
    means = [r["delta_m"]["mean"] for r in scored]
    stds = [r["delta_m"]["std"] for r in scored]
    colours = [KIND_COLOURS.get(r.get("kind"), "tab:blue") for r in scored]
    ax.barh(y, means, xerr=stds, color=colours, alpha=0.8, error_kw={"lw": 1, "capsize": 2})
    last = [(yy, r["delta_m_last"]["mean"]) for yy, r in zip(y, scored) if isinstance(r.get("delta_m_last"), Mapping)]
    if last:
        ax.plot([v for _, v in last], [yy for yy, _ in last], "k|", ms=8)
    ax.set_yticks(y, [r["solver"] + (" (≈ best)" if r.get("vs_best") == "≈" else "") for r in scored], fontsize=7)
    ax.axvline(0, color="black", lw=1)
    ax.set_xlabel("Δm% vs the single-task models (lower is better; 0 = single-task reference)")
    ax.set_ylim(-0.7, len(scored) - 0.3)
    handles = [
        Patch(color=KIND_COLOURS["method"], label="method: Δm% best-val, mean ± std"),
        Patch(color=KIND_COLOURS["baseline"], label="baseline: Δm% best-val, mean ± std"),
        Line2D([], [], color="black", marker="|", ls="", ms=8, label="Δm% mean of the last checkpoints"),
    ]
    fig.legend(handles=handles, fontsize=7, loc="outside lower center", ncol=3)
    ax.set_title(f"{name}: methods and baselines ranked by Δm%", fontsize=10)
    fig.savefig(path)


def plot_training_fronts(front_rows, grid_front, stl_row, name: str, path: Path) -> None:
    """One panel per preference-based solver: its front of test errors (points coloured by preference, joined
    in preference order), the linear-scalarisation grid front in grey and the single-task errors as a star."""
    ran = [r for r in front_rows if r.get("front")]
    if not ran:
        return
    cols = min(len(ran), 4)
    nrows = -(-len(ran) // cols)
    fig = _figure(max(3.2 * cols, 7.0), 3.1 * nrows + 0.4)
    axes = fig.subplots(nrows, cols, squeeze=False, sharex=True, sharey=True)
    for ax, row in zip(axes.ravel(), ran):
        if grid_front.get("front"):
            g = 100 * np.asarray(grid_front["front"])
            ax.plot(g[:, 0], g[:, 1], "s--", color="grey", ms=4, lw=1, label="ls weight grid")
        pts = 100 * np.asarray(row["front"])
        ax.plot(pts[:, 0], pts[:, 1], "-", color="tab:blue", lw=1)
        ax.scatter(
            pts[:, 0], pts[:, 1], c=np.linspace(0, 1, len(pts)), cmap="viridis", s=22, zorder=3, label=row["solver"]
        )
        if "acc_task1" in stl_row:
            ax.plot(100 * (1 - _mean(stl_row["acc_task1"])), 100 * (1 - _mean(stl_row["acc_task2"])), "k*", ms=9,
                    label="single-task models")  # fmt: skip
        ax.set_title(f"{row['solver']}: HV {_mean(row['hv']):.3f}", fontsize=8)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=6)
    for ax in axes[-1]:
        ax.set_xlabel("task 1 test error %", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("task 2 test error %", fontsize=8)
    for ax in axes.ravel()[len(ran) :]:
        ax.set_axis_off()
    fig.suptitle(f"{name}: preference sweeps (dark → light: preference (t, 1 − t), t = 0.05 → 0.95)", fontsize=9)
    fig.savefig(path)


def _family_name(family: str) -> str:
    from mtlsolve.solver import FAMILIES

    return FAMILIES.get(family, family)


def _mean(value: Any) -> float:
    return float(value["mean"]) if isinstance(value, Mapping) else float(value)

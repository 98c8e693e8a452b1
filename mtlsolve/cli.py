"""The ``mtlsolve`` command line: ``list`` (solvers and strategies), ``info NAME``, ``bench`` and ``warmup``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import attrs

from mtlsolve.registry import hyperparameters, registry
from mtlsolve.solver import FAMILIES, PROPERTIES


def _table(rows: list[Sequence[str]], header: Sequence[str]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def cmd_list(args: argparse.Namespace) -> int:
    """Two Markdown tables: the registered solvers, then the registered training strategies."""
    rows = []
    for e in registry.entries():
        needs = ", ".join(sorted(n.value for n in e.cls.needs)) or "-"
        rows.append((e.name, e.cls.family, needs, e.distribution))
    print(_table(rows, ("name", "family", "needs", "distribution")))
    print()
    strategies = [(e.name, ", ".join(e.cls.aliases) or "-", e.distribution) for e in registry.strategy_entries()]
    print(_table(strategies, ("strategy", "aliases", "distribution")))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from mtlsolve.errors import UnknownSolverError, UnknownStrategyError

    try:
        entry, preset = registry.resolve(args.name)
    except UnknownSolverError as unknown:
        try:
            return strategy_info(args.name)
        except UnknownStrategyError:
            raise unknown from None  # the solver error, with its suggestions
    cls = entry.cls
    doc = " ".join((cls.__doc__ or "").split())
    print(f"{cls.name}  ({FAMILIES.get(cls.family, cls.family)})")
    if preset:
        print(f"  alias {args.name!r} presets {dict(preset)}")
    print(f"  paper:        {cls.paper or '-'}")
    print(f"  summary:      {doc or '-'}")
    print(f"  aliases:      {', '.join(cls.aliases) or '-'}")
    declared = cls.capabilities
    print(f"  needs:        {', '.join(sorted(n.value for n in declared.needs)) or '-'}")
    flags = [f for f in ("stateful", "randomized", "learnable", "post_step") if getattr(declared, f)]
    print(f"  behaviour:    {', '.join(flags) or 'stateless, deterministic'}")
    print(f"  training:     grads {declared.grads or 'any'}, batches {declared.batches}, shards {declared.shards}")
    if declared.stateful or declared.randomized:
        print(f"  state:        {', '.join(sorted(cls.state_schema)) or '(no schema declared)'}")
    print(f"  distribution: {entry.distribution}")
    print("  defaults:")
    for name, default in hyperparameters(cls).items():
        print(f"    {name} = {'(required)' if default is attrs.NOTHING else repr(default)}")
    print("  properties:")
    for p in sorted(cls.properties):
        print(f"    {p}: {PROPERTIES[p]}")
    if not cls.properties:
        print("    (none claimed)")
    return 0


def strategy_info(name: str) -> int:
    """``mtlsolve info`` for a training strategy: paper, summary, aliases, distribution and settings."""
    entry, preset = registry.resolve_strategy(name)
    cls = entry.cls
    print(f"{cls.name}  (training strategy)")
    if preset:
        print(f"  alias {name!r} presets {dict(preset)}")
    print(f"  paper:        {cls.paper or '-'}")
    print(f"  summary:      {' '.join((cls.__doc__ or '').split()) or '-'}")
    print(f"  aliases:      {', '.join(cls.aliases) or '-'}")
    print(f"  distribution: {entry.distribution}")
    print("  settings:")
    for setting, default in hyperparameters(cls).items():
        print(f"    {setting} = {'(required)' if default is attrs.NOTHING else repr(default)}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from mtlsolve import bench

    return bench.main(args)


def cmd_warmup(args: argparse.Namespace) -> int:
    """Compile every numba kernel (cached on disk) by calling every registered solver once; report the time."""
    from mtlsolve.bench.warmup import warm_up

    def progress(label: str) -> None:
        if not args.quiet:
            print(f"  {label}", file=sys.stderr, flush=True)

    done = warm_up(progress=progress)
    print(done.line())
    skipped = sorted({f.split(" (")[0] for f in done.failures})
    if skipped:
        print(f"not called on a bare random system (they need batches, features or more tasks): {', '.join(skipped)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtlsolve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "list", help="every registered solver (name, family, needs, distribution), then every training strategy"
    ).set_defaults(func=cmd_list)
    info = sub.add_parser("info", help="one solver's or strategy's paper, defaults and properties")
    info.add_argument("name", help="a solver or strategy name or alias")
    info.set_defaults(func=cmd_info)
    bench = sub.add_parser("bench", help="run solvers on the built-in problems and print a results table")
    from mtlsolve.bench import add_arguments

    add_arguments(bench)
    bench.set_defaults(func=cmd_bench)
    warmup = sub.add_parser(
        "warmup", help="compile every numba kernel now (cached on disk), so that no solver's first step pays for it"
    )
    warmup.add_argument("--quiet", action="store_true", help="no per-solver progress on stderr")
    warmup.set_defaults(func=cmd_warmup)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from mtlsolve.errors import MtlsolveError

    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below, not at interpreter exit
        return code
    except MtlsolveError as exc:
        print(f"mtlsolve: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader went away (``mtlsolve list | head``): stop quietly, and point stdout at devnull so
        # the interpreter's final flush does not fail on the closed pipe again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())

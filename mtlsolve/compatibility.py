"""Which training set-ups each registered solver runs in, read off its :class:`~mtlsolve.Capabilities`.

>>> print(markdown(rows()))                                     # doctest: +SKIP

The columns are data parallelism (``distributed=``, exact for every solver:
what the solver reads is reduced before it runs), FSDP2 and tensor
parallelism (shared parameters that are DTensors: exact through the m x m
all-reduce of partial Gramians for solvers whose ``shards`` is "gramian", one
backward for "losses" and "none", each rank on its own columns of G for
"coordinate", refused for "matrix" unless G is gathered; Gramian solvers in
representation mode need every rank to hold its own batch rows, which tensor
parallelism does not), mixed precision with
a GradScaler, and gradient accumulation. The adapters refuse exactly the
cells this module marks "refused" or "opt-in" (without the opt-in); tests/test_compatibility.py
checks it.
"""

from __future__ import annotations

import attrs

from mtlsolve.errors import MtlsolveError
from mtlsolve.solver import Capabilities, Need

COLUMNS = ("DDP", "FSDP2", "TP", "AMP", "accumulation")


def sharded_refusal(caps: Capabilities, grads: str | None = None, gather: bool = False) -> str | None:
    """Why shared parameters that are DTensors (FSDP2, tensor parallelism) cannot serve a solver, or None.

    ``gather``: the user opted in to gathering the full G on every rank for solvers that read it."""
    if caps.shards == "matrix" and not gather:
        return (
            "reads the global matrix G (Capabilities.shards='matrix'), which sharded (DTensor) parameters never "
            "gather unless asked (gather_shards=True: m x n numbers on every rank); or use a solver that reads "
            "the Gramian or the losses"
        )
    grads = grads or caps.grads or "shared"
    if grads == "representation" and caps.shards not in ("none", "losses", "gramian"):
        return "reads the matrix of feature gradients; sharded (DTensor) parameters give Gramian solvers only"
    if grads not in ("shared", "representation"):
        return f"needs grads={grads!r}; sharded (DTensor) parameters support the shared and representation gradients"
    if caps.batches > 1:
        return f"reads {caps.batches} batches a step; sharded (DTensor) parameters support one"
    return None


def accumulation_refusal(caps: Capabilities) -> str | None:
    """Why ``accumulation_steps > 1`` is refused for a solver, or None (the adapter's rules)."""
    if caps.post_step and caps.post_step_losses:
        return "updates itself from the losses before and after each step"
    if caps.needs & {Need.GRAMIAN, Need.MATRIX} and caps.grads in ("representation", "last_shared"):
        return f"reads the {caps.grads} gradients of one forward pass"
    return None


@attrs.frozen
class Row:
    """One solver's row: its name, family, what a sharded engine gathers, and one cell per column."""

    solver: str
    family: str
    shards: str
    cells: tuple[str, ...]


def _cells(caps: Capabilities) -> tuple[str, ...]:
    if caps.shards in ("coordinate", "matrix"):
        ddp = "exact: G all-reduced"
    elif caps.shards == "gramian":
        ddp = {"representation": "exact: K of features", "last_shared": "exact: default schedule"}.get(
            caps.grads, "exact: either schedule"
        )
    else:
        ddp = "exact: losses averaged"
    refusal = sharded_refusal(caps)
    if refusal is None:
        sharded = {"gramian": "exact: m x m all-reduce", "coordinate": "exact: own columns of G"}.get(
            caps.shards, "exact: one backward"
        )
        if caps.grads == "representation" and caps.shards == "gramian":
            sharded = "exact: K of features"
    else:
        sharded = "opt-in: G gathered" if caps.shards == "matrix" else "refused: " + refusal.split(";")[0]
    accumulation = accumulation_refusal(caps)
    if accumulation is not None:
        accumulation = "refused"
    elif caps.shards in ("none", "losses"):
        accumulation = "yes: objective per micro-batch"
    else:
        accumulation = "yes: mean of G held"
    tp = sharded
    if sharded == "exact: K of features":  # the engine checks at each step that the ranks' features differ
        tp = "refused at the step: ranks hold the same features"
    return (ddp, sharded, tp, "yes", accumulation)


def rows(registry=None, *, distribution: str | None = None) -> list[Row]:
    """One :class:`Row` per registered solver (of ``registry``, default the process-wide one), by name;
    only those of one ``distribution`` when given ("mtlsolve": the built-ins, as the README shows)."""
    if registry is None:
        from mtlsolve.registry import registry
    out = []
    for entry in registry.entries():
        if distribution is not None and entry.distribution != distribution:
            continue
        try:  # an instance with the paper's defaults declares what a class property leaves open
            caps = registry.get(entry.name).capabilities
        except MtlsolveError:  # a solver without defaults for every hyperparameter
            caps = entry.cls.capabilities
        out.append(Row(solver=entry.name, family=entry.cls.family, shards=caps.shards, cells=_cells(caps)))
    return out


def markdown(table: list[Row]) -> str:
    """The rows as a Markdown table."""
    head = ["solver", "family", "shards", *COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for row in table:
        lines.append("| " + " | ".join([f"`{row.solver}`", row.family, row.shards, *row.cells]) + " |")
    return "\n".join(lines) + "\n"

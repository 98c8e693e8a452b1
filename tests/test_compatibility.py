"""The published compatibility matrix says what the adapters do: every cell marked "refused" is
refused by MultiTaskBackward, every other cell is accepted, for every solver that builds with
its paper's defaults."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.distributed as dist

import mtlsolve
from mtlsolve.adapters import MultiTaskBackward, engines
from mtlsolve.adapters.ddp import ReduceScatter
from mtlsolve.compatibility import COLUMNS, markdown, rows
from mtlsolve.errors import InvalidConfigError, MtlsolveError

TABLE = rows()


#: the adapter with the opt-in to gathering G on every rank, for solvers that read G
Gathering = functools.partial(MultiTaskBackward, gather_shards=True)


def _solvers():
    out = []
    for row in TABLE:
        try:
            mtlsolve.get(row.solver)
        except MtlsolveError:
            continue
        out.append(row)
    return out


def _trunk() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 5))


def _cell(row, column: str) -> str:
    return row.cells[COLUMNS.index(column)]


@pytest.fixture(scope="module")
def one_rank():
    """A one-rank gloo group in this process, for DTensor parameters and distributed=..."""
    if not dist.is_available() or not dist.is_gloo_available() or dist.is_initialized():
        pytest.skip("needs torch.distributed with gloo and no group already set up")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_one_row_per_registered_solver_and_the_markdown_holds_them_all():
    assert [row.solver for row in TABLE] == mtlsolve.available()
    text = markdown(TABLE)
    lines = text.strip().splitlines()
    assert lines[0] == "| solver | family | shards | " + " | ".join(COLUMNS) + " |"
    assert len(lines) == 2 + len(TABLE)
    for row, line in zip(TABLE, lines[2:]):
        assert line.startswith(f"| `{row.solver}` | {row.family} | {row.shards} |")


@pytest.mark.parametrize("row", _solvers(), ids=lambda row: row.solver)
def test_the_accumulation_cell_is_what_the_adapter_does(row):
    refused = _cell(row, "accumulation").startswith("refused")
    try:
        MultiTaskBackward(mtlsolve.get(row.solver), shared=_trunk(), accumulation_steps=2)
    except (ValueError, MtlsolveError) as exc:
        assert refused, f"{row.solver}: accumulation refused ({exc}) but the matrix says {_cell(row, 'accumulation')}"
        return
    assert not refused, f"{row.solver}: accumulation accepted but the matrix says refused"


@pytest.mark.parametrize("row", _solvers(), ids=lambda row: row.solver)
def test_the_sharded_and_ddp_cells_are_what_the_adapter_does(one_rank, row):
    from torch.distributed.fsdp import fully_shard

    trunk = fully_shard(_trunk())
    cell = _cell(row, "FSDP2")
    # one engine serves every DTensor placement; representation mode refuses, at the step, features that
    # several ranks hold alike (tests/adapters/test_sharded.py checks it on a tensor-parallel model)
    replicated = "refused at the step: ranks hold the same features"
    assert _cell(row, "TP") == (replicated if cell == "exact: K of features" else cell)
    for adapter_class, refused in (
        (MultiTaskBackward, cell != "exact" and not cell.startswith("exact:")),
        (Gathering, cell.startswith("refused")),
    ):
        try:
            adapter = adapter_class(mtlsolve.get(row.solver), shared=trunk)
        except InvalidConfigError as exc:
            assert refused, f"{row.solver}: sharding refused ({exc}) but the matrix says {cell}"
        else:
            assert not refused, f"{row.solver}: sharding accepted by {adapter_class.__name__}; the matrix says {cell}"
            assert type(adapter._engine) is engines.ShardedGramianEngine
            if not _cell(row, "accumulation").startswith("refused"):  # accumulation runs under sharding too
                adapter = adapter_class(mtlsolve.get(row.solver), shared=trunk, accumulation_steps=2)
                assert type(adapter._engine) is engines.ShardedGramianEngine
    # DDP: every solver runs; the reduce-scatter schedule serves exactly the cells naming either schedule
    adapter = MultiTaskBackward(mtlsolve.get(row.solver), shared=_trunk(), distributed=ReduceScatter())
    scattered = type(adapter._engine) is engines.ScatteredGramianEngine
    assert scattered == (_cell(row, "DDP") == "exact: either schedule")


def test_the_readme_publishes_the_generated_matrix_of_the_built_ins():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    built_in = rows(distribution="mtlsolve")
    assert built_in and all(row.solver in mtlsolve.available() for row in built_in)
    assert markdown(built_in) in readme, (
        "regenerate the README table: mtlsolve.compatibility.markdown(rows(distribution='mtlsolve'))"
    )

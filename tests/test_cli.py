"""The command line: list, info, bench, and ``python -m mtlsolve``."""

import json
import shlex
import subprocess
import sys

import mtlsolve
from mtlsolve.cli import main


def test_list_shows_every_solver_then_every_strategy(capsys):
    assert main(["list"]) == 0
    solvers, strategies = capsys.readouterr().out.strip().split("\n\n")
    lines = solvers.splitlines()
    assert lines[0] == "| name | family | needs | distribution |"
    names = [line.split("|")[1].strip() for line in lines[2:]]
    assert names == mtlsolve.available()
    lines = strategies.splitlines()
    assert lines[0] == "| strategy | aliases | distribution |"
    names = [line.split("|")[1].strip() for line in lines[2:]]
    assert names == mtlsolve.available_strategies()
    assert "| stgu | sel_update, " in strategies


def test_list_into_a_closed_pipe_exits_quietly():
    """``mtlsolve list | head``: the reader closes the pipe early; no BrokenPipeError traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mtlsolve", "list"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    proc.stdout.close()  # the reader is gone before the first write
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0
    assert err == ""


def test_list_piped_into_head_exits_quietly():
    command = f"{shlex.quote(sys.executable)} -m mtlsolve list | head -1"
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    assert proc.stdout == "| name | family | needs | distribution |\n"
    assert proc.stderr == ""


def test_info_shows_defaults_and_alias_presets(capsys):
    assert main(["info", "Mean"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ls  (loss weighting)")
    assert "presets {'reduction': 'mean'}" in out
    assert "reduction = 'sum'" in out
    assert "positive_homogeneous" in out


def test_unknown_name_is_a_clear_error(capsys):
    assert main(["info", "no-such-method"]) == 2
    err = capsys.readouterr().err
    assert "no solver named 'no-such-method'" in err and "ls" in err


def test_misspelt_name_suggests_the_closest(capsys):
    assert main(["info", "nash-mtll"]) == 2
    assert "did you mean 'nash_mtl'" in capsys.readouterr().err


def test_python_dash_m_works():
    proc = subprocess.run([sys.executable, "-m", "mtlsolve", "list"], capture_output=True, text=True, check=True)
    assert "| ls | LW |" in proc.stdout


def test_bench_is_wired(tmp_path, capsys):
    argv = ["bench", "--solvers", "ls", "--sections", "toy", "--steps", "10", "--out", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    assert "## Toy landscape" in capsys.readouterr().out
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["solver"] for r in results["toy"]["rows"]] == ["ls"]
    assert (tmp_path / "results.md").exists() and (tmp_path / "toy.png").exists()

"""The command line: list, info, bench, warmup, and ``python -m mtlsolve``."""

import json
import shlex
import subprocess
import sys

import pytest

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


def test_info_on_a_strategy_shows_its_paper_and_settings(capsys):
    import mtlsolve

    settings = mtlsolve.get_strategy("cost")
    assert main(["info", "teleport"]) == 0  # an alias of the strategy cost
    out = capsys.readouterr().out
    assert out.startswith("cost  (training strategy)")
    assert f"paper:        {type(settings).paper}" in out
    assert f"lora_rank = {settings.lora_rank!r}" in out


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


def _mtlsolve(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mtlsolve", *args], capture_output=True, text=True, timeout=600, cwd=cwd
    )


def test_bench_exit_statuses_from_the_shell(tmp_path):
    """Bad options and configs: status 2 and one line on stderr; a tiny run: status 0 and its files."""
    proc = _mtlsolve("bench", "--solvers", "", "--out", str(tmp_path / "a"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("mtlsolve: error: --solvers names no solver")
    config = tmp_path / "solvers.yaml"
    config.write_text("solvers: [ls, {name: cagrad, c: -1}]\n")
    proc = _mtlsolve("bench", "--config", str(config), "--out", str(tmp_path / "a"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "cagrad(c=-1)" in proc.stderr
    out = tmp_path / "run"
    argv = ["bench", "--solvers", "ls", "--sections", "toy", "--steps", "3", "--out", str(out), "--no-progress"]
    proc = _mtlsolve(*argv)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "results.json").read_text())["status"] == "complete"
    assert (out / "toy.png").exists() and "## Toy landscape" in (out / "results.md").read_text()


def test_warmup_reports_kernel_compilation():
    """In a fresh process, warming MGDA up compiles its kernel or loads it from numba's disk cache."""
    script = (
        "from mtlsolve.bench._common import Spec; from mtlsolve.bench.warmup import kernel_dispatchers, warm_up; "
        "done = warm_up([Spec.parse('mgda'), Spec.parse('ls')]); "
        "print(done.compiled, done.loaded, done.kernels, len(done.failures)); "
        "print(all(type(d._cache).__name__ == 'PackageCache' for d in kernel_dispatchers()))"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    counts, cached = proc.stdout.split("\n")[:2]
    compiled, loaded, kernels, failures = map(int, counts.split())
    assert compiled + loaded >= 1 and kernels >= 1 and failures == 0
    assert cached == "True"  # every kernel has the package-stamped on-disk cache


@pytest.mark.slow
def test_warmup_command_compiles_once_then_loads_from_the_disk_cache():
    first = _mtlsolve("warmup", "--quiet")
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("numba kernels: ")
    second = _mtlsolve("warmup", "--quiet")
    assert second.returncode == 0
    assert " 0 signature(s) compiled now" in second.stdout  # every kernel came from numba's disk cache

"""The command line: list, info, bench, and ``python -m mtlsolve``."""

import json
import subprocess
import sys

import mtlsolve
from mtlsolve.cli import main


def test_list_shows_every_solver(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "| name | family | needs | distribution |"
    names = [line.split("|")[1].strip() for line in lines[2:]]
    assert names == mtlsolve.available()


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


def test_python_dash_m_works():
    proc = subprocess.run([sys.executable, "-m", "mtlsolve", "list"], capture_output=True, text=True, check=True)
    assert "| ls | LW |" in proc.stdout


def test_bench_writes_results(tmp_path, capsys):
    assert main(["bench", "--quick", "--solvers", "ls,mean", "--steps", "40", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "## Toy landscape" in out and "## Cost per call" in out
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["solver"] for r in results["toy"]] == ["ls", "ls"]
    assert all("error" not in r and len(r["final_x"]) == 5 for r in results["toy"])
    assert {r["m"] for r in results["cost"]} == {2, 10, 40}
    assert all(r["ratio_to_floor"] > 0 for r in results["cost"])

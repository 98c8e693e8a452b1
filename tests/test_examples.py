"""The examples (plain loop, Lightning, DDP, FSDP2, and every training strategy) run on CPU with small arguments, train, and print sound diagnostics."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TIMEOUT = 300  # each runs in well under a minute alone; the margin is for a loaded 2-core machine


#: test name -> the example and its (small) arguments
COMMANDS = {
    "test_plain_loop": ("plain_loop.py", "--solver", "ls", "--solver", "mgda", "--epochs", "3"),
    "test_lightning_module": ("lightning_module.py", "--epochs", "1"),
    "test_ddp_launch": ("ddp_launch.py", "--epochs", "2"),
    "test_cost_example": ("cost_example.py", "--steps", "400"),
    "test_stgu_example": ("stgu_example.py", "--iters", "400"),
    "test_mtgd_example": ("mtgd_example.py", "--steps", "100", "--seeds", "1"),
    "test_auto_lambda_example": ("auto_lambda_example.py", "--steps", "300", "--seeds", "1"),
    "test_moo_svgd_example": ("moo_svgd_example.py", "--steps", "60", "--seeds", "1"),
    "test_rotograd_example": ("rotograd_example.py", "--steps", "100"),
    "test_phn_example": ("phn_example.py", "--steps", "300"),
    "test_moml_example": ("moml_example.py", "--steps", "200", "--seeds", "1"),
    "test_forum_example": ("forum_example.py", "--steps", "100"),
    "test_bayesagg_mtl_example": ("bayesagg_mtl_example.py", "--epochs", "10", "--seeds", "1"),
    "test_fsdp_launch": ("fsdp_launch.py", "--epochs", "2"),
}
HAS_LIGHTNING = importlib.util.find_spec("lightning") is not None


@pytest.fixture(scope="module")
def started(request):
    """Start every selected example at once: independent processes, so their start-ups (imports) overlap."""
    here = Path(__file__).resolve()
    selected = {item.name for item in request.session.items if Path(item.path).resolve() == here}
    if not HAS_LIGHTNING:
        selected.discard("test_lightning_module")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    procs = {
        name: subprocess.Popen(
            [sys.executable, str(EXAMPLES / script), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=EXAMPLES.parent,
        )
        for name, (script, *args) in COMMANDS.items()
        if name in selected
    }
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.fixture
def output(request, started) -> str:
    """The standard output of this test's example, once it exited successfully."""
    proc = started[request.node.name]
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"{COMMANDS[request.node.name][0]} ran past {TIMEOUT} s")
    assert proc.returncode == 0, stderr[-3000:]
    return stdout


def number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in the output:\n{text}"
    return float(match.group(1))


@pytest.mark.slow
def test_plain_loop(output):
    out = output
    sections = out.split("== ")[1:]
    assert [s.split()[0] for s in sections] == ["ls", "mgda"], out
    for section in sections:
        epochs = re.findall(r"epoch (\d+): test loss task 1 ([\d.]+)\s+task 2 ([\d.]+)", section)
        assert len(epochs) == 3, section
        first, last = (float(epochs[0][1]) + float(epochs[0][2])), (float(epochs[-1][1]) + float(epochs[-1][2]))
        assert last < first, section
    # MGDA runs on the Gramian path: the printed diagnostics are a min-norm weighting's and a Gramian's
    assert "path: gramian" in sections[1]
    for w1, w2, cos, g1, g2, cond in re.findall(
        r"weights ([\d.]+) ([\d.]+)  cos\(g1, g2\) ([-+\d.]+)  \|g_i\| ([\d.]+) ([\d.]+)  cond ([\d.]+)", sections[1]
    ):
        assert float(w1) + float(w2) == pytest.approx(1.0, abs=2e-3)
        assert -1.0 <= float(cos) <= 1.0 and float(g1) > 0 and float(g2) > 0 and float(cond) >= 1.0
    assert sections[1].count("cond ") == 3


@pytest.mark.slow
@pytest.mark.skipif(not HAS_LIGHTNING, reason="Lightning is an optional extra")
def test_lightning_module(output):
    out = output
    assert re.search(r"upgrad \(gramian path\), 32 steps", out), out  # the Trainer counted every optimiser step
    # the diagnostics logged with multitask_step(..., log=True)
    assert -1.0 <= number(r"cos_0_1 ([-\d.]+)", out) <= 1.0
    assert number(r"condition_number ([\d.]+)", out) >= 1.0
    assert number(r"weight_0 ([\d.]+)", out) > 0 and number(r"weight_1 ([\d.]+)", out) > 0
    assert number(r"final test loss ([\d.]+)", out) < 0.75 * number(r"initial test loss ([\d.]+)", out)


@pytest.mark.slow
def test_ddp_launch(output):
    out = output
    assert "mgda (gramian path), 2 ranks, 32 steps" in out, out
    assert "ranks hold identical parameters: True" in out, out
    assert number(r"final test loss ([\d.]+)", out) < 0.95 * number(r"initial test loss ([\d.]+)", out)


@pytest.mark.slow
def test_cost_example(output):
    out = output
    deviations = [float(d) for d in re.findall(r"max contour deviation ([\d.]+) %", out)]
    assert deviations and max(deviations) <= 2.0, out  # every teleport keeps the losses on their contour
    for run in ("LS", "LS \\+ COST", "LS \\+ COST, htr=False"):
        assert re.search(rf"^{run}\s+final training losses: task 1 [\d.]+\s+task 2 [\d.]+$", out, re.M), out


@pytest.mark.slow
def test_stgu_example(output):
    out = output
    assert "final groups {1,2,3} {4,5,6}" in out, out  # the planted clusters
    stgu = number(r"STGU \(causal\)\s+([\d.]+)", out)
    assert stgu < number(r"joint, equal batches \(\d+ steps\)\s+([\d.]+)", out), out


@pytest.mark.slow
def test_mtgd_example(output):
    out = output
    width = dict(re.findall(r"^(alpha=\S+)\s+[\d.]+ \([\d.]+\)\s+[\d.]+\s+([\d.]+)$", out, re.M))
    assert {"alpha=0", "alpha=0.95*max_alpha=96.3"} <= set(width), out
    # transfer near its bound collapses the front (docs/problems.md#conflicting-regression)
    assert float(width["alpha=0.95*max_alpha=96.3"]) < 0.5 * float(width["alpha=0"]), out
    assert re.search(r"^pmtl \(alpha=0\)\s+[\d.]+", out, re.M), out  # the Pareto baseline ran


def rows(pattern: str, text: str) -> list[tuple[str, ...]]:
    found = re.findall(pattern, text, re.M)
    assert found, f"{pattern!r} not in the output:\n{text}"
    return found


@pytest.mark.slow
def test_auto_lambda_example(output):
    runs = dict(rows(r"^(primary_only|equal|auto_lambda)\s+([\d.]+) \(", output))
    assert set(runs) == {"primary_only", "equal", "auto_lambda"}, output
    assert all(0 < float(loss) < 10 for loss in runs.values()), output


@pytest.mark.slow
def test_moo_svgd_example(output):
    spread = {alpha: float(l1) for alpha, l1 in rows(r"^alpha=(\S+).*?\s+[\d.]+ \([\d.]+\)\s+([\d.]+)", output)}
    assert set(spread) == {"0", "1,", "0.1,"}, output
    assert spread["1,"] > spread["0"], output  # the kernel's repulsion spreads the particles along the front


@pytest.mark.slow
def test_rotograd_example(output):
    found = rows(r"^(ls|rotate_only|rotograd|rotograd_norm)\b.*?([\d.]+)\s+([\d.]+)\s+([-\d.]+)$", output)
    assert {row[0] for row in found} == {"ls", "rotate_only", "rotograd", "rotograd_norm"}, output
    assert all(-1.0 <= float(row[3]) <= 1.0 for row in found), output


@pytest.mark.slow
def test_phn_example(output):
    # PHN-LS's points lie on the front √f1 + √f2 = 1 of the convex companion problem
    assert number(r"PHN-LS\s+\d+\s+[\d.]+\s+([\d.e+-]+)", output) < 1e-3, output


@pytest.mark.slow
def test_moml_example(output):
    found = dict(rows(r"^(equal|auto_lambda|moml)\s+[\d.]+\s+[\d.]+\s+\[([^\]]+)\]", output))
    assert set(found) == {"equal", "auto_lambda", "moml"}, output
    for run in ("equal", "moml"):  # λ = softmax(a): on the simplex
        assert sum(float(x) for x in found[run].split(",")) == pytest.approx(1.0, abs=0.01), output


@pytest.mark.slow
def test_forum_example(output):
    runs = dict(rows(r"^(equal|forum)\s+([\d.]+)", output))
    assert set(runs) == {"equal", "forum"}, output


@pytest.mark.slow
def test_bayesagg_mtl_example(output):
    found = rows(r"^(equal|bayesagg_mtl\(p=[\d.]+\))\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+) / ([\d.]+)$", output)
    runs = {row[0]: row[1:] for row in found}
    assert set(runs) == {"equal", "bayesagg_mtl(p=0)", "bayesagg_mtl(p=0.5)", "bayesagg_mtl(p=1)"}, output
    assert all(0 < float(r[2]) < 10 for r in runs.values()), output
    assert float(runs["bayesagg_mtl(p=0)"][3]) == pytest.approx(0.5, abs=1e-3), output  # p = 0: equal weights
    # p > 0 moves weight to the low-noise tasks 1-3, more so as p grows
    assert float(runs["bayesagg_mtl(p=1)"][3]) > float(runs["bayesagg_mtl(p=0.5)"][3]) > 0.5, output


@pytest.mark.slow
def test_fsdp_launch(output):
    assert re.search(r"solver upgrad \(ShardedGramianEngine\), 2 ranks, \d+ steps", output), output
    total, local = (int(v) for v in re.search(r"parameters: (\d+) in all, (\d+) on rank 0", output).groups())
    assert local < total, output  # the shared parameters are sharded
    assert number(r"final test loss ([\d.]+)", output) < 0.95 * number(r"initial test loss ([\d.]+)", output)

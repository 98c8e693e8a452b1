"""Solver state: every solver that keeps state (stateful or randomized, built-in or third-party)
round-trips through ``torch.save`` / ``torch.load(weights_only=True)`` and continues bit-identically;
garbled states raise StateError and leave the solver as it was; every built-in declares its schema."""

from __future__ import annotations

import io
from typing import Any

import attrs
import numpy as np
import pytest
import torch

import mtlsolve
from mtlsolve.errors import InvalidSystemError, StateError
from mtlsolve.registry import hyperparameters

pytestmark = pytest.mark.filterwarnings("ignore::mtlsolve.errors.ConvergenceWarning")

REQUIRED: dict[str, dict[str, Any]] = {"cosmos": {"penalty": 1.0}, "graddrop": {"on": "params"}}
CLASSES = {e.name: e.cls for e in mtlsolve.registry.entries()}
WITH_STATE = sorted(name for name, cls in CLASSES.items() if cls.stateful or cls.randomized)
BUILTIN_WITH_STATE = sorted(
    e.name for e in mtlsolve.registry.entries() if e.distribution == "mtlsolve" and (e.cls.stateful or e.cls.randomized)
)
INPUTS = ["numpy-float64", "torch-float32"]


def make(name: str, **kwargs: Any) -> mtlsolve.Solver:
    args = {**REQUIRED.get(name, {}), **kwargs}
    if CLASSES[name].randomized and "seed" in hyperparameters(CLASSES[name]):
        args.setdefault("seed", 0)
    missing = [f for f, d in hyperparameters(CLASSES[name]).items() if d is attrs.NOTHING and f not in args]
    if missing:
        pytest.fail(f"{name} requires {missing}: add them to REQUIRED in tests/test_state.py")
    return mtlsolve.get(name, **args)


def systems(solver: mtlsolve.Solver, count: int, inputs: str, m: int = 3, n: int = 5, seed: int = 0):
    """``count`` steps of a slowly drifting problem: (G, losses), b·m rows for a solver reading b batches."""
    rng = np.random.default_rng(seed)
    rows = m * solver.batches
    G, L = rng.standard_normal((rows, n)), rng.uniform(1.0, 2.0, rows)
    out = []
    for _ in range(count):
        G = G + 0.3 * rng.standard_normal((rows, n))
        L = L * rng.uniform(0.85, 1.0, rows)
        if inputs == "numpy-float64":
            out.append((G.copy(), L.copy()))
        else:
            out.append((torch.tensor(G, dtype=torch.float32), torch.tensor(L, dtype=torch.float32)))
    return out


def step(solver: mtlsolve.Solver, G: Any, L: Any) -> mtlsolve.Result:
    """One training step: solve, the post-step call where asked for, and an epoch end."""
    result = solver(G, losses=L)
    if solver.post_step:
        solver.after_step(None if not solver.post_step_losses else L * 0.9)
    solver.end_epoch()
    return result


def roundtrip(state: dict) -> dict:
    """A state through a checkpoint file, read back as ``torch.load(weights_only=True)`` reads it."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def as_numpy(x: Any) -> Any:
    if torch.is_tensor(x):
        return x.detach().cpu().double().numpy()
    if isinstance(x, dict):
        return {k: as_numpy(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return (
            np.asarray(x, dtype=np.float64) if all(isinstance(v, (int, float)) for v in x) else [as_numpy(v) for v in x]
        )
    return x


def assert_same_state(a: dict, b: dict) -> None:
    """Equal states up to the containers (a list of floats and a tensor of the same numbers agree)."""
    a, b = as_numpy(a), as_numpy(b)
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            assert_same_state(a[key], b[key])
        elif isinstance(a[key], np.ndarray) or isinstance(b[key], np.ndarray):
            np.testing.assert_array_equal(np.asarray(a[key], dtype=np.float64), np.asarray(b[key], dtype=np.float64))
        else:
            assert a[key] == b[key], key


def assert_same_result(a: mtlsolve.Result, b: mtlsolve.Result) -> None:
    for field in ("direction", "weights"):
        x, y = getattr(a, field), getattr(b, field)
        assert (x is None) == (y is None)
        if x is not None:
            assert type(x) is type(y) and x.dtype == y.dtype
            np.testing.assert_array_equal(
                as_numpy(x) if torch.is_tensor(x) else x, as_numpy(y) if torch.is_tensor(y) else y
            )


def trained(name: str, inputs: str, steps: int = 6, **kwargs: Any) -> tuple[mtlsolve.Solver, list]:
    solver = make(name, **kwargs)
    sequence = systems(solver, steps + 3, inputs)
    for G, L in sequence[:steps]:
        step(solver, G, L)
    return solver, sequence[steps:]


# ------------------------------------------------------------- round trips
def test_every_builtin_with_state_declares_its_schema():
    assert len(BUILTIN_WITH_STATE) >= 20
    for name in BUILTIN_WITH_STATE:
        schema = CLASSES[name].state_schema
        assert schema, f"{name} keeps state but declares no state_schema"
        if CLASSES[name].randomized:
            assert "rng" in schema and schema["rng"] is None, name


@pytest.mark.parametrize("inputs", INPUTS)
@pytest.mark.parametrize("name", WITH_STATE)
def test_checkpoint_round_trip_continues_bit_identically(name, inputs):
    solver, tail = trained(name, inputs)
    state = solver.state_dict()
    if name in BUILTIN_WITH_STATE:
        assert state["solver"] == name
        assert set(state) - {"solver", "m", "base"} <= set(CLASSES[name].state_schema), "undeclared state keys"
    fresh = make(name)
    fresh.load_state_dict(roundtrip(state))
    assert [p.dtype for p in fresh.parameters()] == [p.dtype for p in solver.parameters()]
    for G, L in tail:
        assert_same_result(step(fresh, G, L), step(solver, G, L))
    assert_same_state(fresh.state_dict(), solver.state_dict())


@pytest.mark.parametrize(
    "base", [{"name": "gradvac", "seed": 1}, "dwa", "famo", "uw", "modo", {"name": "pcgrad", "seed": 2}]
)
def test_cr_mogm_state_holds_its_base_state(base):
    solver, tail = trained("cr_mogm", "numpy-float64", base=base)
    state = solver.state_dict()
    assert state["base"] == {} or state["base"]["solver"] == solver.base.name
    fresh = make("cr_mogm", base=base)
    fresh.load_state_dict(roundtrip(state))
    for G, L in tail:
        assert_same_result(step(fresh, G, L), step(solver, G, L))
    assert_same_state(fresh.state_dict(), solver.state_dict())


# --------------------------------------------------------- garbled states
def garbled(state: dict) -> list[tuple[str, dict]]:
    """Broken copies of a valid state: the wrong solver, an extra key, and for each entry a wrong
    shape (one more along the last axis, one more axis), NaN and a string where numbers go."""
    out = [("wrong solver", {**state, "solver": "someone_else"}), ("extra key", {**state, "bogus": 1.0})]
    for key, value in state.items():
        if key == "solver" or value is None:
            continue
        if torch.is_tensor(value) and value.ndim >= 1:
            pad = torch.zeros((*value.shape[:-1], 1), dtype=value.dtype)
            out.append((f"{key}: longer last axis", {**state, key: torch.cat([value, pad], dim=-1)}))
            out.append((f"{key}: one more axis", {**state, key: value.unsqueeze(0)}))
            if value.is_floating_point() and value.numel():
                nan = value.clone()
                nan.view(-1)[0] = float("nan")
                out.append((f"{key}: NaN", {**state, key: nan}))
            out.append((f"{key}: a string", {**state, key: "0.5"}))
        elif isinstance(value, list) and value and all(isinstance(v, float) for v in value):  # a list of floats
            out.append((f"{key}: a longer list", {**state, key: [*value, 0.5]}))
            out.append((f"{key}: a nested list", {**state, key: [value]}))
            out.append((f"{key}: NaN", {**state, key: [float("nan"), *value[1:]]}))
            out.append((f"{key}: a string inside", {**state, key: ["0.5", *value[1:]]}))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append((f"{key}: a string", {**state, key: str(value)}))
            out.append((f"{key}: an array", {**state, key: torch.ones(2)}))
            if isinstance(value, float):
                out.append((f"{key}: NaN", {**state, key: float("nan")}))
    return out


@pytest.mark.parametrize("name", BUILTIN_WITH_STATE)
def test_garbled_states_raise_and_leave_the_solver_untouched(name):
    solver, tail = trained(name, "numpy-float64")
    twin, _ = trained(name, "numpy-float64")
    before = solver.state_dict()
    parameters = solver.parameters()
    cases = garbled(before)
    if "base" in before:  # cr_mogm: garble the wrapped solver's state as well
        cases += [(f"base {label}", {**before, "base": broken}) for label, broken in garbled(before["base"])]
    garbled_keys = {label.split(":")[0] for label, _ in cases}
    assert {k for k, v in before.items() if v is not None} - {"solver", "rng", "base"} <= garbled_keys
    for label, state in cases:
        with pytest.raises(StateError):
            solver.load_state_dict(state)
            pytest.fail(f"{name}: the garbled state ({label}) was accepted")
        assert_same_state(solver.state_dict(), before)
        assert all(p is q for p, q in zip(solver.parameters(), parameters))
    for G, L in tail:
        assert_same_result(step(solver, G, L), step(twin, G, L))


@pytest.mark.parametrize("bad", ["not a state", None, 3, ["solver", "dwa"]])
def test_a_state_that_is_not_a_mapping_raises(bad):
    with pytest.raises(StateError):
        make("dwa").load_state_dict(bad)


def test_gradvac_targets_of_another_size_cannot_reach_the_kernel():
    """The numba kernel indexes targets by the system's m: a state for another m must never reach it."""
    solver, tail = trained("gradvac", "numpy-float64")
    state = solver.state_dict()
    small = {**state, "m": 2, "targets": state["targets"][:2, :2]}
    fresh = make("gradvac")
    fresh.load_state_dict(small)  # a valid state for 2 tasks
    with pytest.raises(InvalidSystemError, match="reset"):
        fresh(tail[0][0])  # 3 tasks
    with pytest.raises(StateError):
        make("gradvac").load_state_dict({**state, "targets": state["targets"][:2, :2]})


def test_a_state_without_m_still_fixes_m():
    """Shapes fix m even when the "m" entry is missing, so the state cannot meet a system of another m
    (gradvac's kernel indexes its targets by the system's m without bounds checks)."""
    solver, _ = trained("gradvac", "numpy-float64")
    state = {k: v for k, v in solver.state_dict().items() if k != "m"}
    fresh = make("gradvac")
    fresh.load_state_dict({**state, "targets": state["targets"][:2, :2]})
    assert fresh._state.get("m") == 2  # the next call on 3 tasks then raises instead of reading out of bounds


@pytest.mark.parametrize("bad", ["junk", {}, {"bit_generator": "MT19937"}])
def test_a_garbled_generator_state_raises(bad):
    solver, _ = trained("rlw", "numpy-float64")
    with pytest.raises(StateError, match="rng"):
        solver.load_state_dict({**solver.state_dict(), "rng": bad})


def test_range_checks_of_loaded_states():
    famo, _ = trained("famo", "numpy-float64")
    state = famo.state_dict()
    for key, value in (("adam_v", -state["adam_v"] - 1), ("adam_t", 1.5)):
        with pytest.raises(StateError, match=key):
            make("famo").load_state_dict({**state, key: value})
    dwa, _ = trained("dwa", "numpy-float64", period=2)
    state = dwa.state_dict()
    with pytest.raises(StateError, match="rows"):
        make("dwa", period=3).load_state_dict(state)
    with pytest.raises(StateError, match="other period mode"):
        make("dwa").load_state_dict(state)
    moco, _ = trained("moco", "numpy-float64")
    with pytest.raises(StateError, match="simplex"):
        make("moco").load_state_dict({**moco.state_dict(), "lambda": torch.tensor([0.5, 0.5, 0.5])})


# ------------------------------------------------------ a changed m refused
@pytest.mark.parametrize("name", BUILTIN_WITH_STATE)
def test_a_changed_number_of_tasks_is_refused_until_reset(name):
    solver, _ = trained(name, "numpy-float64")
    if "m" not in solver.state_dict():  # rlw, pcgrad, graddrop: only a generator, valid for any m
        pytest.skip(f"{name}'s state does not depend on m")
    before = solver.state_dict()
    ((G, L),) = systems(make(name), 1, "numpy-float64", m=4, seed=9)
    with pytest.raises(InvalidSystemError, match="reset"):
        step(solver, G, L)
    assert_same_state(solver.state_dict(), before)
    solver.reset()
    assert_same_result(step(solver, G, L), step(make(name), G, L))


@pytest.mark.parametrize("name", ["uw", "imtl_l", "famo"])
def test_objective_with_a_changed_number_of_tasks_is_refused(name):
    solver = make(name)
    L = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    solver.objective(L)
    with pytest.raises(InvalidSystemError, match="reset"):
        solver.objective(torch.tensor([1.0, 2.0], requires_grad=True))


def test_full_matrix_solvers_refuse_another_gradient_length():
    for name in ("moco", "db_mtl", "excess_mtl"):
        solver, tail = trained(name, "numpy-float64")
        G, L = tail[0]
        with pytest.raises(InvalidSystemError, match="coordinates"):
            solver(G[:, :4], losses=L)

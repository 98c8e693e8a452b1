"""Missing tasks per step (docs/methods.md#missing-tasks): a masked solve is the solve of the
present tasks' system built by hand, absent tasks get weight 0 and keep their state, and the
training adapter writes the .grad of the present-only problem."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import mtlsolve
from mtlsolve.adapters import MultiTaskBackward
from mtlsolve.errors import InvalidSystemError, NonFiniteError, SolverError
from mtlsolve.testing.conformance import target

M, N = 7, 5
MASK = np.array([True, False, True, True, False, True, True])  # five present: krum's f = 1 needs 2f + 3
PRESENT = np.flatnonzero(MASK)
ABSENT = np.flatnonzero(~MASK)
SOLVERS = mtlsolve.available()


def _system(t, seed: int):
    """G (b·M x N) and positive losses, b the batches the solver reads."""
    rng = np.random.default_rng(seed)
    b = t.cls.batches
    return rng.normal(size=(b * M, N)), rng.uniform(0.5, 2.0, size=b * M)


def _rows(t) -> np.ndarray:
    return np.flatnonzero(np.tile(MASK, t.cls.batches))


def _call(t, solver, G, L, **kwargs):
    extras = t.extras(M, N) if t.extras else {}
    return solver(G, losses=L, **extras, **kwargs)


def _after(t, solver, L, present=None, rows=None):
    """The post-step call a training loop makes (FAMO), with the losses after the model step
    (each task's loss improved by its own factor; ``rows`` picks the present tasks' entries)."""
    if not solver.post_step:
        return
    improved = L * np.linspace(0.8, 0.95, len(L))
    improved = improved if rows is None else improved[rows]
    if present is None:
        solver.after_step(improved)
    else:
        with solver.tasks(present):
            solver.after_step(improved)


def _np(x):
    return None if x is None else np.asarray(x.detach().cpu() if torch.is_tensor(x) else x, dtype=np.float64)


def _restricted_state(solver, state: dict) -> dict:
    """The documented rule re-written: per-task entries indexed on every "m" axis, "simplex"
    entries renormalised over the present tasks, everything else as it is."""
    out = {}
    for key, value in state.items():
        spec = solver.state_schema.get(key)
        if key == "m":
            out[key] = len(PRESENT)
        elif value is None or not spec or "m" not in spec:
            out[key] = value
        else:
            a = _np(value)
            for axis, size in enumerate(spec):
                if size == "m":
                    a = np.take(a, PRESENT, axis=axis)
            if solver.task_state.get(key) == "simplex":
                a = a / a.sum() if a.sum() > 0 else np.full(a.shape, 1 / len(PRESENT))
            out[key] = torch.as_tensor(a) if torch.is_tensor(value) else a
    return out


def _assert_results_match(full, sub, G, what):
    scale = float(np.abs(_np(sub.weights) if sub.weights is not None else 1).sum() * np.abs(G).max()) + 1.0
    if sub.weights is not None:
        w = _np(full.weights)
        assert len(w) == len(G), what
        np.testing.assert_array_equal(w[np.setdiff1d(np.arange(len(G)), _rows_of(len(G)))], 0.0, err_msg=what)
        np.testing.assert_allclose(w[_rows_of(len(G))], _np(sub.weights), rtol=1e-9, atol=1e-12, err_msg=what)
    else:
        assert full.weights is None, what
    np.testing.assert_allclose(_np(full.direction), _np(sub.direction), rtol=1e-9, atol=1e-12 * scale, err_msg=what)


def _rows_of(rows: int) -> np.ndarray:
    return np.flatnonzero(np.tile(MASK, rows // M))


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mtlsolve.ConvergenceWarning)
        yield


@pytest.mark.parametrize("name", SOLVERS)
def test_masked_solve_is_the_present_tasks_solve(name):
    """Step 1 on all tasks, step 2 with tasks 1 and 4 absent: step 2 equals the solve of the
    hand-built present-only system by a solver holding the hand-restricted state; absent weights
    are 0 and absent state entries are untouched. A solver whose state has no rule refuses."""
    t = target(name)
    solver = t.make()
    G1, L1 = _system(t, 1)
    G2, L2 = _system(t, 2)
    _call(t, solver, G1, L1)
    _after(t, solver, L1)
    before = solver.state_dict()
    refusal = solver.missing_tasks_refusal()
    if refusal is not None:
        assert solver.name in refusal
        with pytest.raises(SolverError, match=solver.name):
            _call(t, solver, G2, L2, present=MASK)
        _assert_same_state(solver.state_dict(), before)
        return
    reference = t.make()
    if before:
        reference.load_state_dict(_restricted_state(solver, before))
    rows = _rows(t)
    extras = t.extras(len(PRESENT), N) if t.extras else {}
    expected = reference(G2[rows], losses=L2[rows], **extras)
    got = _call(t, solver, G2, L2, present=MASK)
    _assert_results_match(got, expected, G2, name)
    assert got.diagnostics["present"] == PRESENT.tolist()
    _after(t, solver, L2, MASK, rows)
    _after(t, reference, L2, rows=rows)
    after, ref_state = solver.state_dict(), reference.state_dict()
    for key, spec in solver.state_schema.items():
        if not spec or "m" not in spec or before.get(key) is None or after.get(key) is None:
            continue
        if key in solver.parameter_state:
            continue  # a parameter changes only through an optimiser: test_learnable_parameter_gets_present_gradients
        old, new = _np(before[key]), _np(after[key])
        axis = spec.index("m")
        np.testing.assert_array_equal(np.take(new, ABSENT, axis=axis), np.take(old, ABSENT, axis=axis), err_msg=key)
        present = np.take(new, PRESENT, axis=axis)
        for other, size in enumerate(spec):
            if size == "m" and other != axis:
                present = np.take(present, PRESENT, axis=other)
        ref = _np(ref_state[key])
        if solver.task_state.get(key) == "simplex":  # merged back with the present tasks' mass kept
            ref = ref * np.take(old, PRESENT, axis=axis).sum()
        np.testing.assert_allclose(present, ref, rtol=1e-9, atol=1e-12, err_msg=key)


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if torch.is_tensor(a[key]):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


@pytest.mark.parametrize("name", ["ls", "mgda", "upgrad", "nash_mtl", "famo", "moco", "modo", "mgda_ub", "epo"])
def test_all_present_mask_is_the_plain_solve(name):
    t = target(name)
    G, L = _system(t, 3)
    a, b = t.make(), t.make()
    full = _call(t, a, G, L, present=np.ones(M, dtype=bool))
    plain = _call(t, b, G, L)
    np.testing.assert_array_equal(_np(full.weights), _np(plain.weights))
    np.testing.assert_array_equal(_np(full.direction), _np(plain.direction))


@pytest.mark.parametrize(
    "present, match",
    [
        (np.zeros(M, dtype=bool), "no task present"),
        (np.ones(M - 1, dtype=bool), f"{M - 1} entries for {M} tasks"),
        (np.arange(M), "boolean mask"),
        ([1, 0, 1, 1, 0, 1, 1], "boolean mask"),
        (np.ones((2, M), dtype=bool), "1-D boolean mask"),
    ],
)
@pytest.mark.parametrize("name", ["upgrad", "nash_mtl", "uw"])
def test_bad_masks_raise_and_change_nothing(name, present, match):
    t = target(name)
    solver = t.make()
    G, L = _system(t, 4)
    solver(G, losses=L)
    before = solver.state_dict()
    with pytest.raises(InvalidSystemError, match=match):
        solver(G, losses=L, present=present)
    _assert_same_state(solver.state_dict(), before)


def test_preference_is_renormalised_over_present_tasks():
    """A preference on the simplex, restricted: the present entries rescaled to sum 1 (the
    uniform preference becomes the uniform one over the present tasks, the solver's default)."""
    G, L = _system(target("tchebycheff"), 5)
    pref = np.array([0.1, 0.3, 0.2, 0.15, 0.05, 0.1, 0.1])
    got = mtlsolve.get("tchebycheff", preference=pref)(losses=L, present=MASK)
    sub = pref[PRESENT] / pref[PRESENT].sum()
    expected = mtlsolve.get("tchebycheff", preference=sub)(losses=L[PRESENT])
    np.testing.assert_allclose(_np(got.weights)[PRESENT], _np(expected.weights), rtol=1e-12)
    uniform = mtlsolve.get("epo", preference=np.full(M, 1 / M))(G, losses=L, present=MASK)
    default = mtlsolve.get("epo")(G[PRESENT], losses=L[PRESENT])
    np.testing.assert_allclose(_np(uniform.weights)[PRESENT], _np(default.weights), rtol=1e-9, atol=1e-12)
    zero = np.array([0.0, 0.5, 0.0, 0.0, 0.5, 0.0, 0.0])  # mass only on absent tasks
    with pytest.raises(InvalidSystemError, match="0 on every present task"):
        mtlsolve.get("epo", preference=zero)(G, losses=L, present=MASK)


def test_stch_raw_mode_restricts_preference_and_ideal():
    _, L = _system(target("stch"), 9)
    pref, ideal = np.linspace(1.0, 2.0, M), np.linspace(0.0, 0.3, M)
    got = mtlsolve.get("stch", mode="raw", preference=pref, ideal=ideal)(losses=L, present=MASK)
    sub = pref[PRESENT] * pref.sum() / pref[PRESENT].sum()
    expected = mtlsolve.get("stch", mode="raw", preference=sub, ideal=ideal[PRESENT])(losses=L[PRESENT])
    np.testing.assert_allclose(_np(got.weights)[PRESENT], _np(expected.weights), rtol=1e-12)
    with pytest.raises(SolverError, match="stch"):
        mtlsolve.get("stch")(losses=L, present=MASK)


def test_single_present_task_and_absent_main_task():
    """m' = 1: every weighting's direction is along the one present gradient (MGDA: the gradient
    itself); stl's main task renumbered among the present ones, refused when absent."""
    G, L = _system(target("mgda"), 6)
    one = np.zeros(M, dtype=bool)
    one[2] = True
    result = mtlsolve.get("mgda")(G, present=one)
    np.testing.assert_allclose(_np(result.direction), G[2], rtol=1e-12)
    np.testing.assert_array_equal(_np(result.weights), np.eye(M)[2])
    stl = mtlsolve.get("stl", main_task=3)(G, present=MASK)
    np.testing.assert_array_equal(_np(stl.weights), np.eye(M)[3])
    with pytest.raises(InvalidSystemError, match="absent"):
        mtlsolve.get("stl", main_task=1)(G, present=MASK)


def test_torch_and_given_gramian():
    """The mask works on tensors (weights keep their dtype) and on a given Gramian (its block)."""
    G, _ = _system(target("upgrad"), 7)
    Gt = torch.tensor(G, dtype=torch.float32)
    got = mtlsolve.get("upgrad")(Gt, present=torch.tensor(MASK))
    assert got.weights.dtype == torch.float32 and got.weights.shape == (M,)
    expected = mtlsolve.get("upgrad")(G[PRESENT])
    np.testing.assert_allclose(_np(got.direction), _np(expected.direction), rtol=1e-4, atol=1e-5)
    K = G @ G.T
    from_k = mtlsolve.get("upgrad")(gramian=K, present=MASK)
    np.testing.assert_allclose(_np(from_k.weights)[PRESENT], _np(expected.weights), rtol=1e-8, atol=1e-12)


def test_famo_after_step_outside_the_mask_is_refused():
    famo = mtlsolve.get("famo")
    L = np.linspace(1.0, 2.0, M)
    famo(losses=L, present=MASK)
    with pytest.raises(SolverError, match="missing tasks"):
        famo.after_step(L * 0.9)


# ------------------------------------------------------------------------------ the adapter
class _Net(torch.nn.Module):
    def __init__(self, tasks: int = M):
        super().__init__()
        torch.manual_seed(0)
        self.trunk = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 6))
        self.heads = torch.nn.ModuleList(torch.nn.Linear(6, 1) for _ in range(tasks))

    def features(self, x):
        return self.trunk(x)


def _losses(net, x, y, tasks, features=None):
    H = net.features(x) if features is None else features
    return [((net.heads[i](H).squeeze(-1) - y[:, i]) ** 2).mean() for i in tasks], H


def _grads(net):
    return [None if p.grad is None else p.grad.clone() for p in net.parameters()]


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(10, 4, generator=g, dtype=torch.float32), torch.randn(10, M, generator=g)


def _masked_and_reference(name, grads=None, **kwargs):
    """.grad after a masked step, and after the hand-built step on the present tasks' losses alone."""
    x, y = _data()
    out = []
    for masked in (True, False):
        net = _Net()
        solver = target(name).make()
        adapter = MultiTaskBackward(solver, net.trunk, grads=grads, **kwargs)
        tasks = range(M) if masked else PRESENT
        losses, H = _losses(net, x, y, tasks)
        features = H if grads == "representation" else None
        diagnostics = adapter.backward(losses, features, present=MASK if masked else None)
        out.append((net, adapter, diagnostics))
    return out


@pytest.mark.parametrize("name", ["ls", "uw", "upgrad", "nash_mtl", "moco", "mgda_ub"])
def test_adapter_writes_the_present_only_grad(name):
    grads = "representation" if name == "mgda_ub" else None
    (net, adapter, diag), (ref_net, ref_adapter, ref_diag) = _masked_and_reference(name, grads)
    for p, q in zip(net.parameters(), ref_net.parameters()):
        if q.grad is None:
            assert p.grad is None  # absent tasks' heads: no backward reached them
        else:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7)
    assert all(net.heads[i].weight.grad is None for i in ABSENT)
    np.testing.assert_array_equal(diag.present, PRESENT)
    assert np.isnan(diag.losses[ABSENT]).all()
    if ref_diag.weights is None:  # a direction, not a weighting (MoCo)
        assert diag.weights is None
        return
    np.testing.assert_array_equal(diag.weights[ABSENT], 0.0)
    np.testing.assert_allclose(diag.weights[PRESENT], ref_diag.weights, rtol=1e-5)
    assert set(diag.scalars()) >= {f"weight_{i}" for i in range(M)}


def test_learnable_parameter_gets_present_gradients():
    """UW: s over all m tasks; the masked step's gradient is 0 on absent entries and equals the
    present-only problem's on the present ones."""
    (net, adapter, _), (_, ref_adapter, _) = _masked_and_reference("uw")
    (s,), (s_ref,) = adapter.parameters(), ref_adapter.parameters()
    assert s.shape == (M,) and s_ref.shape == (len(PRESENT),)
    np.testing.assert_array_equal(_np(s.grad)[ABSENT], 0.0)
    np.testing.assert_allclose(_np(s.grad)[PRESENT], _np(s_ref.grad), rtol=1e-6)


def test_nan_policy_equals_the_mask_and_nan_without_it_raises():
    x, y = _data()
    net, masked_net = _Net(), _Net()
    losses, _ = _losses(masked_net, x, y, range(M))
    MultiTaskBackward("upgrad", masked_net.trunk).backward(losses, present=MASK)
    nan_losses, _ = _losses(net, x, y, range(M))
    for i in ABSENT:
        nan_losses[i] = nan_losses[i] * torch.nan
    MultiTaskBackward("upgrad", net.trunk, missing="nan").backward(nan_losses)
    for p, q in zip(net.parameters(), masked_net.parameters()):
        assert (p.grad is None) == (q.grad is None)
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad)
    plain = _Net()
    losses, _ = _losses(plain, x, y, range(M))
    losses[1] = losses[1] * torch.nan
    with pytest.raises(NonFiniteError):
        MultiTaskBackward("upgrad", plain.trunk).backward(losses)
    assert all(p.grad is None for p in plain.parameters())


@pytest.mark.parametrize("name", ["nash_mtl", "famo"])
def test_adapter_errors_change_nothing(name):
    """An all-absent step, a wrong mask and a refusing solver raise; .grad and the solver state stay."""
    x, y = _data()
    net = _Net()
    adapter = MultiTaskBackward(name, net.trunk, missing="nan")
    losses, _ = _losses(net, x, y, range(M))
    adapter.backward(losses)
    adapter.step(
        torch.optim.SGD(net.parameters(), lr=0.0), closure=lambda: torch.stack(_losses(net, x, y, range(M))[0])
    )
    adapter.backward(_losses(net, x, y, range(M))[0])
    grads, state = _grads(net), adapter.solver.state_dict()
    for present in (np.zeros(M, dtype=bool), np.ones(M + 1, dtype=bool)):
        with pytest.raises(InvalidSystemError):
            adapter.backward(_losses(net, x, y, range(M))[0], present=present)
    nan = [loss * torch.nan for loss in _losses(net, x, y, range(M))[0]]
    with pytest.raises(InvalidSystemError, match="no task present"):
        adapter.backward(nan)
    for a, b in zip(_grads(net), grads):
        assert torch.equal(a, b)
    _assert_same_state(adapter.solver.state_dict(), state)
    refusing = MultiTaskBackward("stch", net.trunk)
    with pytest.raises(SolverError, match="stch"):
        refusing.backward(_losses(net, x, y, range(M))[0], present=MASK)
    for a, b in zip(_grads(net), grads):
        assert torch.equal(a, b)


def test_famo_through_the_adapter_keeps_absent_logits():
    x, y = _data()
    net = _Net()
    adapter = MultiTaskBackward("famo", net.trunk)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    for present in (None, None, MASK):
        adapter.backward(_losses(net, x, y, range(M))[0], present=present)
        before = adapter.solver.state_dict().get("xi")
        adapter.step(optimizer, closure=lambda: torch.stack(_losses(net, x, y, range(M))[0]))
    xi = adapter.solver.state_dict()["xi"]
    torch.testing.assert_close(xi[ABSENT], before[ABSENT], rtol=0, atol=0)
    assert not torch.equal(xi[PRESENT], before[PRESENT])


@pytest.mark.parametrize("name", ["nash_mtl", "moco", "famo"])
def test_absent_rows_are_never_read_and_a_failing_step_changes_nothing(name):
    """NaN in an absent task's gradient and loss is ignored; NaN in a present one raises
    NonFiniteError and leaves the state as it was."""
    t = target(name)
    solver = t.make()
    G, L = _system(t, 8)
    _call(t, solver, G, L)
    _after(t, solver, L)
    bad_G, bad_L = G.copy(), L.copy()
    bad_G[ABSENT[0]] = np.nan
    bad_L[ABSENT[0]] = np.nan
    clean = t.make()
    clean.load_state_dict(solver.state_dict())
    got = _call(t, solver, bad_G, bad_L, present=MASK)
    expected = _call(t, clean, G, L, present=MASK)
    for field in ("weights", "direction"):
        a, b = _np(getattr(got, field)), _np(getattr(expected, field))
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_array_equal(a, b, err_msg=field)
    _after(t, solver, L, MASK, _rows(t))
    before = solver.state_dict()
    bad_G[PRESENT[0]] = np.nan
    bad_L[PRESENT[0]] = np.nan
    with pytest.raises(NonFiniteError):
        _call(t, solver, bad_G, bad_L, present=MASK)
    _assert_same_state(solver.state_dict(), before)


def test_dwa_epoch_means_count_each_task_over_its_present_steps():
    """Liu, Johns, Davison (arXiv 1803.10704) Eq. (1) with per-task epoch means L̄_i = mean of
    task i's losses over the steps it was present; the weights of the present tasks are
    m'·softmax(r/T) over them (weights summing to m', the ``sum`` scale)."""
    dwa = mtlsolve.get("dwa")
    L = np.array([[1.0, 2.0, 3.0], [2.0, 9.0, 1.0], [1.5, 2.5, 3.5], [0.5, 3.5, 2.5]])
    masks = [None, np.array([True, False, True]), None, np.array([False, True, True])]
    epochs = [(0, 1), (2, 3)]
    for steps in epochs:
        for k in steps:
            dwa(losses=L[k], present=masks[k])
        dwa.end_epoch()
    means = []
    for steps in epochs:
        rows = [L[k] for k in steps]
        seen = [np.ones(3, dtype=bool) if masks[k] is None else masks[k] for k in steps]
        means.append(sum(r * s for r, s in zip(rows, seen)) / sum(seen))
    np.testing.assert_allclose(_np(dwa.state_dict()["history"]), np.array(means), rtol=1e-15)
    present = np.array([True, False, True])
    r = means[1][present] / means[0][present]
    expected = 2 * np.exp(r / 2) / np.exp(r / 2).sum()
    got = _np(dwa(losses=L[0], present=present).weights)
    np.testing.assert_allclose(got[present], expected, rtol=1e-12)
    assert got[1] == 0.0


def test_adapter_checkpoint_of_a_masked_step_loads_with_weights_only(tmp_path):
    """A checkpoint taken between a masked backward and step() keeps the mask for after_step."""
    x, y = _data()
    net = _Net()
    adapter = MultiTaskBackward("famo", net.trunk)
    adapter.backward(_losses(net, x, y, range(M))[0], present=MASK)
    torch.save(adapter.state_dict(), tmp_path / "state.pt")
    other = MultiTaskBackward("famo", net.trunk)
    other.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    other.step(torch.optim.SGD(net.parameters(), lr=0.01), closure=lambda: torch.stack(_losses(net, x, y, range(M))[0]))
    xi = other.solver.state_dict()["xi"]
    assert (xi[ABSENT] == 0).all() and (xi[PRESENT] != 0).all()

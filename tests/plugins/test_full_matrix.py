"""Directions needing the full matrix (docs/methods.md#full-matrix-directions): GradDrop, MoCo, DB-MTL, ExcessMTL and the
trimmed mean, against numpy transcriptions of the LibMTL / paper algorithms written here and
against torchjd 0.18.0 (GradDrop, ExcessMTL, TrimmedMean; it has no MoCo or DB-MTL)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchjd.aggregation import ExcessMTLWeighting
from torchjd.aggregation import GradDrop as TorchJDGradDrop
from torchjd.aggregation import TrimmedMean as TorchJDTrimmedMean

import mtlsolve
from mtlsolve import Need
from mtlsolve.plugins.full_matrix import DBMTL, ExcessMTL, GradDrop, MoCo, TrimmedMean

CONFIGS = [("numpy", "float64"), ("numpy", "float32"), ("torch", "float64"), ("torch", "float32")]


def convert(x, backend, dtype):
    return x.astype(dtype) if backend == "numpy" else torch.tensor(x, dtype=getattr(torch, dtype))


def np64(x):
    return x.double().numpy() if torch.is_tensor(x) else np.asarray(x, dtype=np.float64)


def drift(seed, m=4, n=7, steps=6):
    """A few steps of one problem: gradients drifting, positive losses drifting down."""
    rng = np.random.default_rng(seed)
    G, L = rng.standard_normal((m, n)), rng.uniform(0.5, 3.0, m)
    out = []
    for _ in range(steps):
        G = G + 0.4 * rng.standard_normal((m, n))
        L = L * rng.uniform(0.8, 1.0, m)
        out.append((G.copy(), L.copy()))
    return out


def test_registered_with_their_needs():
    expected = {
        "graddrop": (GradDrop, {Need.MATRIX}),
        "moco": (MoCo, {Need.MATRIX, Need.LOSSES}),
        "db_mtl": (DBMTL, {Need.MATRIX, Need.LOSSES}),
        "dual-balancing": (DBMTL, {Need.MATRIX, Need.LOSSES}),
        "DB_MTL": (DBMTL, {Need.MATRIX, Need.LOSSES}),
        "ExcessMTL": (ExcessMTL, {Need.MATRIX}),
        "TrimmedMean": (TrimmedMean, {Need.MATRIX}),
    }
    for name, (cls, needs) in expected.items():
        entry, _ = mtlsolve.registry.resolve(name)
        assert entry.cls is cls and entry.cls.family == "FM" and set(cls.needs) == needs
        assert entry.distribution == "mtlsolve" and entry.plugin == "full_matrix"


# ------------------------------------------------------------------ GradDrop
def graddrop_on_matrix(Z, S, U, leak):
    """Algorithm 1 of Chen et al. (LibMTL form): Z is m x batch x features, S = sign(H) batch x features."""
    A = (Z * S).sum(1)
    total = np.abs(A).sum(0)
    P = 0.5 * (1 + np.divide(A.sum(0), total, out=np.zeros_like(total), where=total > 0))
    M = ((P > U) & (A > 0)) | ((P < U) & (A < 0))
    factor = leak[:, None] + (1 - leak[:, None]) * M
    return (factor[:, None, :] * Z).sum(0).reshape(-1)


def first_uniforms(seed, size):
    """GradDrop draws its U as the first ``size`` uniforms of the solver's PCG64 generator."""
    return np.random.Generator(np.random.PCG64(seed)).random(size)


def test_graddrop_representation_mode_matches_transcription():
    rng = np.random.default_rng(0)
    m, batch, features = 3, 4, 5
    for seed in range(5):
        Z = rng.standard_normal((m, batch, features))
        H = rng.standard_normal((batch, features))
        leak = np.array([0.0, 0.3, 1.0])
        expected = graddrop_on_matrix(Z, np.sign(H), first_uniforms(seed, features), leak)
        G = Z.reshape(m, -1)
        d = GradDrop(seed=seed, leak=leak)(G, features=H).direction
        np.testing.assert_allclose(d, expected, rtol=1e-12, atol=1e-12)
        # H flattened, the batch given separately, is the same thing
        flat = GradDrop(seed=seed, leak=leak)(G, features=H.ravel(), batch_size=batch).direction
        np.testing.assert_array_equal(flat, d)


def test_graddrop_kept_components_share_one_sign():
    rng = np.random.default_rng(1)
    for seed in range(20):
        G = rng.standard_normal((5, 30))
        d = GradDrop(seed=seed, on="params")(G).direction
        positive, negative = np.where(G > 0, G, 0).sum(0), np.where(G < 0, G, 0).sum(0)
        # every element keeps exactly the positive or exactly the negative components
        assert np.all(np.isclose(d, positive, rtol=1e-14, atol=0) | np.isclose(d, negative, rtol=1e-14, atol=0))


def test_graddrop_representation_kept_components_share_one_sign_of_a():
    rng = np.random.default_rng(2)
    m, batch, features = 4, 3, 6
    Z = rng.standard_normal((m, batch, features))
    H = rng.standard_normal((batch, features))
    A = (Z * np.sign(H)).sum(1)
    for seed in range(20):
        d = GradDrop(seed=seed)(Z.reshape(m, -1), features=H).direction.reshape(batch, features)
        keep_pos = np.where(A > 0, 1.0, 0.0)[:, None, :]
        keep_neg = np.where(A < 0, 1.0, 0.0)[:, None, :]
        pos, neg = (keep_pos * Z).sum(0), (keep_neg * Z).sum(0)
        same = np.isclose(d, pos, rtol=1e-13, atol=1e-15).all(0) | np.isclose(d, neg, rtol=1e-13, atol=1e-15).all(0)
        assert same.all()


def test_graddrop_leak_one_is_the_plain_sum_and_all_positive_keeps_all():
    rng = np.random.default_rng(3)
    G = rng.standard_normal((4, 9))
    H = rng.standard_normal((3, 3))
    np.testing.assert_allclose(GradDrop(seed=0, leak=1.0, on="params")(G).direction, G.sum(0), rtol=1e-15)
    np.testing.assert_allclose(GradDrop(seed=0, leak=1.0)(G, features=H).direction, G.sum(0), rtol=1e-15)
    P = np.abs(G)
    P[:, :3] *= -1  # elements 0-2: all negative, also kept (P = 0 < U) as one sign
    for seed in range(10):
        np.testing.assert_allclose(GradDrop(seed=seed, on="params")(P).direction, P.sum(0), rtol=1e-15)
    assert np.all(GradDrop(seed=0, on="params")(np.zeros((3, 4))).direction == 0)


def test_graddrop_keeps_positive_signs_with_probability_p():
    G = np.array([[1.0, 2.0, -1.0], [1.0, -1.0, -1.0], [-1.0, -1.0, -2.0]])
    P = 0.5 * (1 + G.sum(0) / np.abs(G).sum(0))  # (2/3, 0.5, 0)
    positive = np.where(G > 0, G, 0).sum(0)
    picks = np.array([GradDrop(seed=s, on="params")(G).direction == positive for s in range(2000)])
    np.testing.assert_allclose(picks.mean(0), P, atol=0.04)


def test_graddrop_matches_torchjd_with_the_same_uniforms(monkeypatch):
    rng = np.random.default_rng(4)
    for seed in range(5):
        G = rng.standard_normal((4, 8))
        leak = rng.uniform(0, 1, 4)
        U = first_uniforms(seed, 8)
        # torchjd draws U with torch.rand(P.shape, ...): hand it ours
        monkeypatch.setattr(torch, "rand", lambda *args, **kwargs: torch.tensor(U))
        theirs = TorchJDGradDrop(leak=torch.tensor(leak))(torch.tensor(G))
        monkeypatch.undo()
        ours = GradDrop(seed=seed, leak=leak, on="params")(torch.tensor(G)).direction
        torch.testing.assert_close(ours, theirs, rtol=1e-14, atol=1e-14)


def test_graddrop_errors_and_options():
    G = np.random.default_rng(5).standard_normal((3, 6))
    with pytest.raises(mtlsolve.InvalidSystemError, match="features"):
        GradDrop(seed=0)(G)
    with pytest.raises(mtlsolve.InvalidSystemError, match="features hold 5"):
        GradDrop(seed=0)(G, features=np.ones(5))
    with pytest.raises(mtlsolve.InvalidSystemError, match="leak"):
        GradDrop(seed=0, leak=[0.1, 0.2], on="params")(G)
    with pytest.raises(mtlsolve.NonFiniteError):
        GradDrop(seed=0)(G, features=np.array([1.0, np.nan, 1, 1, 1, 1]))
    for bad in ({"leak": 1.5}, {"leak": [0.1, -1]}, {"on": "weights"}):
        with pytest.raises(mtlsolve.InvalidConfigError):
            mtlsolve.get("graddrop", **bad)


@pytest.mark.parametrize(("backend", "dtype"), CONFIGS)
def test_graddrop_backends(backend, dtype):
    rng = np.random.default_rng(6)
    G, H = rng.standard_normal((4, 12)), rng.standard_normal((3, 4))
    expected = GradDrop(seed=1)(G, features=H).direction
    d = GradDrop(seed=1)(convert(G, backend, dtype), features=convert(H, backend, dtype)).direction
    assert type(d) is type(convert(G, backend, dtype)) and str(d.dtype).endswith(dtype)
    np.testing.assert_allclose(np64(d), expected, rtol=1e-5 if dtype == "float32" else 1e-14, atol=1e-6)


# ---------------------------------------------------------------------- MoCo
def moco_on_matrix(steps, beta=0.5, beta_sigma=0.5, gamma=0.1, gamma_sigma=0.5, rho=0.0):
    """LibMTL's MoCo.backward transcribed (without its 1e-8 in the norm): the list of (d, λ)."""
    m, n = steps[0][0].shape
    y, lam, out = np.zeros((m, n)), np.full(m, 1 / m), []
    for k, (G, L) in enumerate(steps, start=1):
        tracked = G / np.linalg.norm(G, axis=1, keepdims=True) * L[:, None]
        y = y - beta / k**beta_sigma * (y - tracked)
        z = lam - gamma / k**gamma_sigma * (y @ y.T + rho * np.eye(m)) @ lam
        lam = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        out.append((y.T @ lam, lam))
    return out


@pytest.mark.parametrize("settings", [{}, {"beta": 0.9, "beta_sigma": 0.0, "gamma": 1.0, "rho": 0.1}])
def test_moco_matches_transcription(settings):
    steps = drift(0)
    solver = MoCo(**settings)
    for (G, L), (d, lam) in zip(steps, moco_on_matrix(steps, **settings)):
        r = solver(G, losses=L)
        np.testing.assert_allclose(r.direction, d, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(r.diagnostics["lambda"], lam, rtol=1e-12)
    assert solver.state_dict()["y"].shape == (4, 7)


@pytest.mark.parametrize("lambda_update", ["softmax", "project"])
def test_moco_lambda_on_the_simplex_and_parallel_gradients(lambda_update):
    solver = MoCo(lambda_update=lambda_update, gamma=5.0)
    for G, L in drift(1, steps=8):
        lam = solver(G, losses=L).diagnostics["lambda"]
        assert (lam >= 0).all() and lam.sum() == pytest.approx(1.0, abs=1e-14)
    # all gradients parallel to v (either sign): every row of Y is too, so is d
    rng = np.random.default_rng(2)
    v = rng.standard_normal(9)
    solver = MoCo(lambda_update=lambda_update)
    for _ in range(4):
        G = np.outer(rng.uniform(0.5, 2.0, 3) * rng.choice([-1, 1], 3), v)
        d = solver(G, losses=rng.uniform(0.5, 2, 3)).direction
        cos = d @ v / np.linalg.norm(d) / np.linalg.norm(v)
        assert abs(abs(cos) - 1) < 1e-12


def test_moco_project_update_is_the_euclidean_projection():
    from mtlsolve.plugins.full_matrix.moco import project_simplex

    rng = np.random.default_rng(3)
    for _ in range(200):
        v = rng.standard_normal(5) * 2
        p = project_simplex(v)
        assert (p >= 0).all() and p.sum() == pytest.approx(1.0)
        # optimality: (v − p)·(q − p) ≤ 0 for the simplex vertices q
        assert ((v - p) @ (np.eye(5) - p).T <= 1e-12).all()


def test_moco_rejects_representation_gradients_and_new_shapes_until_reset():
    G, L = drift(4)[0]
    with pytest.raises(mtlsolve.InvalidSystemError, match="representation"):
        MoCo()(G, losses=L, kind="representation")
    solver = MoCo()
    solver(G, losses=L)
    for X, losses in ((G[:, :5], L), (G[:3], L[:3])):  # n, then m changed: refused, then a fresh start
        before = solver.state_dict()
        with pytest.raises(mtlsolve.InvalidSystemError, match="reset"):
            solver(X, losses=losses)
        assert repr(solver.state_dict()) == repr(before)  # the refused call changed nothing
        solver.reset()
        d, _ = moco_on_matrix([(X, losses)])[0]
        np.testing.assert_allclose(solver(X, losses=losses).direction, d, rtol=1e-12)
        state = solver.state_dict()
        assert state["step"] == 1 and state["y"].shape == X.shape


# -------------------------------------------------------------------- DB-MTL
def db_mtl_on_matrix(steps, beta=0.9, beta_sigma=0.0):
    """LibMTL's DB_MTL.backward transcribed (without its 1e-8 on the norms)."""
    m, n = steps[0][0].shape
    buffer, out = np.zeros((m, n)), []
    for k, (G, L) in enumerate(steps, start=1):
        h = G / (L + 1e-8)[:, None]
        buffer = h + beta / k**beta_sigma * (buffer - h)
        norms = np.linalg.norm(buffer, axis=1)
        out.append((norms.max() / norms) @ buffer)
    return out


@pytest.mark.parametrize("settings", [{}, {"beta": 0.5, "beta_sigma": 0.5}])
def test_db_mtl_matches_transcription_and_balances_norms(settings):
    steps = drift(5)
    solver = DBMTL(**settings)
    for (G, L), d in zip(steps, db_mtl_on_matrix(steps, **settings)):
        r = solver(G, losses=L)
        np.testing.assert_allclose(r.direction, d, rtol=1e-12, atol=1e-14)
        buffer = solver.state_dict()["buffer"].numpy()
        terms = np.linalg.norm(r.diagnostics["alpha"][:, None] * buffer, axis=1)
        np.testing.assert_allclose(terms, np.linalg.norm(buffer, axis=1).max(), rtol=1e-14)


def test_db_mtl_is_invariant_to_loss_scales():
    steps = drift(6)
    c = np.array([1.0, 10.0, 0.1, 3.0])  # exact up to LibMTL's 1e-8 in log(L + 1e-8): ~1e-8/(c·L) relative
    plain, scaled = DBMTL(), DBMTL()
    for G, L in steps:
        # scaling L_i by c_i scales its gradient by c_i too
        np.testing.assert_allclose(
            scaled(G * c[:, None], losses=L * c).direction, plain(G, losses=L).direction, rtol=1e-6
        )


def test_db_mtl_checks():
    G, L = drift(7)[0]
    with pytest.raises(mtlsolve.InvalidSystemError, match="representation"):
        DBMTL()(G, losses=L, kind="representation")
    with pytest.raises(mtlsolve.InvalidSystemError, match="log"):
        DBMTL()(G, losses=-L)
    r = DBMTL()(np.vstack([G[:3], np.zeros(7)]), losses=L)
    assert np.isfinite(r.direction).all() and r.diagnostics["alpha"][3] == 0


# ----------------------------------------------------------------- ExcessMTL
def excess_on_matrix(gradients, step_size=1e-2):
    """LibMTL's ExcessMTL.backward transcribed: the weights after every call."""
    m, n = gradients[0].shape
    weights, sq, baseline, out = np.ones(m), np.zeros((m, n)), None, []
    for G in gradients:
        sq = sq + G**2
        e = (G**2 / np.sqrt(sq + 1e-7)).sum(1)
        if baseline is None:
            baseline = e
        else:
            weights = weights * np.exp(e / baseline * step_size)
            weights = weights / weights.sum() * m
        out.append(weights)
    return out


def test_excess_mtl_matches_transcription_positive_and_sums_to_m():
    gradients = [G for G, _ in drift(8, steps=8)]
    solver = ExcessMTL(robust_step_size=0.5)
    for G, w in zip(gradients, excess_on_matrix(gradients, 0.5)):
        r = solver(G)
        np.testing.assert_allclose(r.weights, w, rtol=1e-12)
        assert (r.weights > 0).all() and r.weights.sum() == pytest.approx(4.0, abs=1e-12)
        np.testing.assert_allclose(r.direction, G.T @ w, rtol=1e-12)


def test_excess_mtl_equal_ratios_keep_and_larger_ratio_gains():
    rng = np.random.default_rng(9)
    G = rng.standard_normal((3, 50)) * 10
    solver = ExcessMTL(robust_step_size=1.0)
    w0 = solver(G).weights
    np.testing.assert_array_equal(w0, 1.0)
    # the same gradients again: e_i/e⁰_i = 1/√2 for every task (up to the 1e-7 AdaGrad shift)
    r = solver(G)
    np.testing.assert_allclose(r.diagnostics["ratio"], 1 / np.sqrt(2), rtol=1e-6)
    np.testing.assert_allclose(r.weights, 1.0, rtol=1e-7)
    bigger = G.copy()
    bigger[1] *= 3.0  # task 1's excess-risk ratio grows
    w = solver(bigger).weights
    assert w[1] > 1.0 > max(w[0], w[2]) and w.sum() == pytest.approx(3.0)


@pytest.mark.parametrize("warmup", [0, 1, 3])
def test_excess_mtl_matches_torchjd(warmup):
    gradients = [G for G, _ in drift(10, steps=8)]
    reference = ExcessMTLWeighting(robust_step_size=1.0, n_warmup_steps=warmup)
    solver = ExcessMTL(robust_step_size=1.0, reduction="mean", n_warmup_steps=warmup)
    deviation = 0.0
    for G in gradients:
        theirs = reference(torch.tensor(G)).numpy()
        deviation = max(deviation, np.abs(solver(G).weights - theirs).max())
    assert deviation < 1e-6, deviation  # torchjd adds 1e-7 to the baseline


def test_excess_mtl_zero_baseline_stays_finite_and_state_round_trips():
    G = np.random.default_rng(11).standard_normal((3, 5))
    Z = G.copy()
    Z[2] = 0
    solver = ExcessMTL()
    solver(Z)
    w = solver(G).weights  # task 2 had zero excess risk at the baseline: its ratio is +∞
    assert np.isfinite(w).all() and w[2] == pytest.approx(3.0)
    gradients = [G for G, _ in drift(12, steps=6)]
    a = ExcessMTL()
    for G in gradients[:3]:
        a(G)
    state = a.state_dict()
    b = ExcessMTL()
    b.load_state_dict(state)
    np.testing.assert_array_equal([a(G).weights for G in gradients[3:]], [b(G).weights for G in gradients[3:]])


# -------------------------------------------------------------- trimmed mean
def test_trimmed_mean_vectors_and_bounds():
    G = np.array([[0.0, 1.0], [1.0, 2.0], [2.0, 100.0], [3.0, -50.0], [4.0, 3.0]])
    np.testing.assert_allclose(TrimmedMean(trim_number=1)(G).direction, [2.0, 2.0], rtol=1e-15)
    np.testing.assert_allclose(TrimmedMean(trim_number=0)(G).direction, G.mean(0), rtol=1e-15)
    rng = np.random.default_rng(13)
    for t in (0, 1, 2, 3):
        for _ in range(20):
            G = rng.standard_normal((2 * t + 1 + int(rng.integers(0, 4)), 6)) * 10
            d = TrimmedMean(trim_number=t)(G).direction
            assert (d >= G.min(0) - 1e-12).all() and (d <= G.max(0) + 1e-12).all()
            torch.testing.assert_close(
                torch.tensor(d), TorchJDTrimmedMean(trim_number=t)(torch.tensor(G)), rtol=1e-14, atol=1e-14
            )


def test_trimmed_mean_checks():
    with pytest.raises(mtlsolve.InvalidSystemError, match="2t \\+ 1"):
        TrimmedMean(trim_number=2)(np.ones((4, 3)))
    for bad in ({}, {"trim_number": -1}, {"trim_number": 1.5}):
        with pytest.raises(mtlsolve.InvalidConfigError):
            mtlsolve.get("trimmed_mean", **bad)


# ------------------------------------------------------ backends and state
FACTORIES = {
    "moco": lambda: MoCo(),
    "db_mtl": lambda: DBMTL(beta_sigma=0.5),
    "excess_mtl": lambda: ExcessMTL(robust_step_size=0.3),
    "trimmed_mean": lambda: TrimmedMean(trim_number=1),
}


@pytest.mark.parametrize(("backend", "dtype"), CONFIGS)
@pytest.mark.parametrize("name", list(FACTORIES))
def test_backends_keep_type_dtype_and_agree(name, backend, dtype):
    steps = drift(14, steps=4)
    reference, solver = FACTORIES[name](), FACTORIES[name]()
    for G, L in steps:
        expected = reference(G, losses=L).direction
        X = convert(G, backend, dtype)
        d = solver(X, losses=convert(L, backend, dtype)).direction
        assert type(d) is type(X) and d.dtype == X.dtype and d.shape == (G.shape[1],)
        tol = 1e-5 if dtype == "float32" else 1e-12
        np.testing.assert_allclose(np64(d), expected, rtol=tol, atol=tol * np.abs(expected).max())
    if name != "trimmed_mean":  # the n-dimensional state lives with G; checkpoints hold a CPU tensor
        key = {"moco": "y", "db_mtl": "buffer", "excess_mtl": "sq_sum"}[name]
        held = solver._state[key]
        assert type(held) is type(X) and held.dtype == X.dtype
        saved = solver.state_dict()[key]
        assert isinstance(saved, torch.Tensor) and saved.device.type == "cpu"


@pytest.mark.parametrize("name", ["moco", "db_mtl", "excess_mtl"])
def test_state_round_trip_mid_run_across_backends(name):
    steps = drift(15, steps=6)
    a = FACTORIES[name]()
    for G, L in steps[:3]:
        a(torch.tensor(G), losses=torch.tensor(L))
    state = a.state_dict()
    tail = [a(G, losses=L).direction for G, L in steps[3:]]  # continues on numpy from torch state
    b = FACTORIES[name]()
    b.load_state_dict(state)
    np.testing.assert_allclose([b(G, losses=L).direction for G, L in steps[3:]], tail, rtol=1e-14)
    b.reset()
    assert b.state_dict() == {}


# ------------------------------------------------ finite output, ranges
def unit(x):
    x = np64(x)
    x = x / np.abs(x).max()  # first by the largest entry: the norm of a huge x overflows
    return x / np.linalg.norm(x)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, "numpy-float16"])
def test_db_mtl_half_precision_with_a_zero_loss_is_finite_and_parallel(dtype):
    """h of a zero loss is g/1e-8: beyond float16, so the buffer is kept in float32 and the
    direction scaled down to fit the half-precision dtype."""
    steps = drift(20, m=3, n=6)
    half, full = DBMTL(), DBMTL()
    for G, L in steps:
        L = L.copy()
        L[0] = 0.0
        X = G.astype(np.float16) if dtype == "numpy-float16" else torch.tensor(G, dtype=dtype)
        r = half(X, losses=L)
        assert r.direction.dtype == X.dtype and np.isfinite(np64(r.direction)).all()
        expected = full(np64(X), losses=L).direction
        np.testing.assert_allclose(unit(r.direction), unit(expected), atol=1e-2)
        assert (
            0 < r.diagnostics["scaled_to_fit"] <= 1
            if dtype == torch.bfloat16
            else 0 < r.diagnostics["scaled_to_fit"] < 1
        )
    assert half._state["buffer"].dtype in (np.float32, torch.float32)


def test_db_mtl_float64_near_the_top_of_its_range_is_finite():
    G, L = drift(21, m=3, n=6)[0]
    r = DBMTL(beta=0.0)(G * 1e299, losses=np.zeros(3))  # ‖h_i‖ ~ 1e307: m of them would overflow
    assert np.isfinite(r.direction).all() and r.diagnostics["scaled_to_fit"] < 1
    np.testing.assert_allclose(unit(r.direction), unit(DBMTL(beta=0.0)(G, losses=np.zeros(3)).direction), rtol=1e-10)


@pytest.mark.parametrize("scale", [1e150, 1e200, 1e300])
def test_moco_with_huge_losses_stays_finite_on_the_simplex(scale):
    solver = MoCo()
    for G, L in drift(22, m=3, n=5):
        r = solver(G, losses=L * scale)
        lam = r.diagnostics["lambda"]
        assert np.isfinite(r.direction).all() and np.isfinite(lam).all()
        assert (lam >= 0).all() and lam.sum() == pytest.approx(1.0)
    with pytest.raises(mtlsolve.NonFiniteError, match="scale the losses down"):
        MoCo()(G.astype(np.float32), losses=np.full(3, 1e39))  # beyond float32: say so


def test_moco_half_precision_is_finite():
    solver = MoCo()
    for G, L in drift(23, m=3, n=5):
        r = solver(torch.tensor(G, dtype=torch.float16), losses=torch.tensor(L * 1e4, dtype=torch.float16))
        assert r.direction.dtype == torch.float16 and torch.isfinite(r.direction).all()


def test_excess_mtl_half_precision_is_finite():
    solver = ExcessMTL()
    reference = ExcessMTL()
    for G, _ in drift(24, m=3, n=5):
        X = torch.tensor(G * 300, dtype=torch.float16)  # squares beyond float16's 65504
        w = solver(X).weights
        assert torch.isfinite(w).all()
        np.testing.assert_allclose(np64(w), reference(np64(X)).weights, rtol=1e-2)


def test_row_norms_do_not_overflow_or_underflow():
    from mtlsolve.plugins.full_matrix._common import row_norms

    for G, expected in (
        (np.full((2, 4), 1e200), 2e200),
        (np.full((2, 4), np.float32(1e30)), 2e30),
        (np.full((2, 4), 1e-200), 2e-200),
        (torch.full((2, 4), 1e30), 2e30),
    ):
        np.testing.assert_allclose(row_norms(G), [expected, expected], rtol=1e-6)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("db_mtl", {"beta": 1.0}),
        ("db_mtl", {"beta": -0.1}),
        ("db_mtl", {"beta_sigma": -1.0}),
        ("moco", {"beta": 0.0}),
        ("moco", {"beta": 1.5}),
        ("moco", {"gamma": -1.0}),
        ("moco", {"rho": np.nan}),
        ("excess_mtl", {"robust_step_size": 0.0}),
        ("graddrop", {"leak": 1.5}),
        ("graddrop", {"seed": -3}),
    ],
)
def test_hyperparameter_ranges(name, kwargs):
    with pytest.raises(mtlsolve.InvalidConfigError, match=next(iter(kwargs))):
        mtlsolve.get(name, **kwargs)

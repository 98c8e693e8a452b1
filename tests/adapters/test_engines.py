"""The engine interface of MultiTaskBackward: one engine per configuration, computing never writes .grad,
and the staged writes are exactly what backward() commits."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import torch

import mtlsolve
from adapter_testing import LearnedScale, NormWeighting, SignMask, TwoTaskNet, data, flat_grad
from mtlsolve.adapters import MultiTaskBackward, engines
from mtlsolve.adapters.engines import Batch, Staged

CONFIGURATIONS = [
    ("ls", {}, engines.LossEngine),
    ("uw", {}, engines.LossEngine),
    ("norm", {}, engines.GramianEngine),
    ("norm", {"path": "matrix"}, engines.MatrixEngine),
    ("norm", {"accumulation_steps": 2}, engines.MatrixEngine),
    ("norm", {"grads": "last_shared"}, engines.FoldedGramianEngine),
    ("sign", {}, engines.MatrixEngine),
    ("norm_ub", {}, engines.RepresentationEngine),
    ("sign", {"grads": "representation"}, engines.RepresentationEngine),
]


class RepresentationNorm(NormWeighting):
    """A weighting defined on feature gradients, as MGDA-UB is: its declaration picks the engine."""

    name: ClassVar[str] = "test_norm_ub"
    grads: ClassVar[str] = "representation"


def _solver(name: str):
    known = {"norm": NormWeighting, "norm_ub": RepresentationNorm, "sign": SignMask, "uw": LearnedScale}
    return known.get(name, lambda: mtlsolve.get(name))()


def _setup(name: str, options: dict):
    torch.manual_seed(0)
    net = TwoTaskNet(dtype=torch.float64)
    x, y = data(dtype=torch.float64)
    adapter = MultiTaskBackward(_solver(name), shared=net.trunk, **options)
    return net, adapter, lambda: net(x, y)


@pytest.mark.parametrize(("name", "options", "engine"), CONFIGURATIONS)
def test_the_configuration_picks_one_engine(name, options, engine):
    _, adapter, _ = _setup(name, options)
    assert type(adapter._engine) is engine
    assert engines.choose(adapter) is engine
    assert [e for e in engines.ENGINES if e.fits(adapter)][0] is engine


@pytest.mark.parametrize(("name", "options", "engine"), [c for c in CONFIGURATIONS if "accumulation_steps" not in c[1]])
def test_compute_writes_nothing_and_backward_commits_its_writes(name, options, engine):
    net, adapter, forward = _setup(name, options)
    params = list(net.parameters())
    losses, h = forward()
    staged = adapter._engine.compute(adapter, Batch(losses=losses, features=h, retain_graph=True))
    assert isinstance(staged, Staged) and staged.poison is None
    assert all(p.grad is None for p in params)
    assert all(p.grad is None for p in adapter.solver.parameters())
    staged_grad = {id(p): torch.zeros_like(p) for p in params}
    for p, g in staged.writes:
        if id(p) in staged_grad:
            staged_grad[id(p)] += g.reshape(p.shape)
    expected = torch.cat([staged_grad[id(p)].reshape(-1) for p in params]).numpy()

    net2, adapter2, forward2 = _setup(name, options)
    diagnostics = adapter2.backward(*forward2())
    np.testing.assert_allclose(flat_grad(list(net2.parameters())), expected, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(diagnostics.losses, staged.losses, rtol=1e-12)
    if staged.weights is not None:
        np.testing.assert_allclose(diagnostics.weights, staged.weights, rtol=1e-12)
    assert diagnostics.engine == staged.engine


def test_compute_between_micro_batches_stages_the_share_of_g():
    net, adapter, forward = _setup("norm", {"accumulation_steps": 2})
    staged = adapter._engine.compute(adapter, Batch(losses=forward()[0], last=False))
    assert staged.matrix is not None and staged.matrix.shape == (2, adapter.n)
    assert staged.losses is None and staged.writes  # the heads' gradients, written once checked
    assert adapter._matrix is None and all(p.grad is None for p in net.parameters())


def test_a_new_engine_is_one_entry_in_the_table(monkeypatch):
    calls = []

    class Recording(engines.LossEngine):
        """A loss engine that records its calls: a stand-in for an engine added ahead of the built-in ones."""

        name = "recording"

        def compute(self, pipe, batch):
            calls.append(batch.losses.detach().clone())
            return super().compute(pipe, batch)

    monkeypatch.setattr(engines, "ENGINES", (Recording, *engines.ENGINES))
    net, adapter, forward = _setup("ls", {})
    assert type(adapter._engine) is Recording
    losses, _ = forward()
    diagnostics = adapter.backward(losses)
    assert len(calls) == 1 and diagnostics.path == "losses"
    np.testing.assert_allclose(diagnostics.weights, [1.0, 1.0])
    _, other, _ = _setup("norm", {})
    assert type(other._engine) is engines.GramianEngine  # the other configurations are untouched


def test_no_engine_fits():
    class Nothing(engines.Engine):
        @classmethod
        def fits(cls, pipe):
            return False

    _, adapter, _ = _setup("ls", {})
    with pytest.raises(ValueError, match="no engine"):
        engines.choose(adapter, (Nothing,))

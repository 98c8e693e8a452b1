"""The Lightning mixin trains exactly like the plain MultiTaskBackward loop, AMP and checkpoints included."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

L = pytest.importorskip("lightning", reason="Lightning is an optional extra (pip install lightning)")

from lightning.pytorch.plugins.precision import MixedPrecision  # noqa: E402

import mtlsolve  # noqa: E402
from adapter_testing import LearnedScale, TwoTaskNet  # noqa: E402
from mtlsolve.adapters import MultiTaskBackward  # noqa: E402
from mtlsolve.adapters.lightning import CHECKPOINT_KEY, MultiTaskLightningMixin  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning",
    "ignore::DeprecationWarning",
    "ignore::lightning.fabric.utilities.warnings.PossibleUserWarning",
)

N, BATCH = 32, 8  # 4 batches per epoch
GEN = torch.Generator().manual_seed(1)
X, Y = torch.randn(N, 5, generator=GEN), torch.randn(N, 2, generator=GEN)


def solver_for(name):
    if name == "learned_scale":
        return LearnedScale(m=2)
    if name == "graddrop":  # a full-matrix solver, randomised: the seed makes both runs draw the same masks
        return mtlsolve.get("graddrop", on="params", seed=0)
    return mtlsolve.get(name)


def make_optimizer(net):
    return torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)


class LitTwoTask(MultiTaskLightningMixin, L.LightningModule):
    def __init__(self, solver: str, log: bool = False, **adapter_kwargs):
        super().__init__()
        torch.manual_seed(0)
        self.net = TwoTaskNet()
        self.configure_multitask(solver_for(solver), shared=self.net.trunk, **adapter_kwargs)
        self.log_diagnostics, self.seen = log, []

    def training_step(self, batch, batch_idx):
        x, y = batch
        losses, h = self.net(x, y)  # h: the shared features, read in representation mode
        features = h if self.multitask.grads == "representation" else None
        diagnostics = self.multitask_step(
            losses, features, closure=lambda: self.net.losses(x, y), log=self.log_diagnostics
        )
        self.seen.append(diagnostics)

    def configure_optimizers(self):
        return make_optimizer(self.net)


def loader(same_batch=False):
    x, y = (X[:BATCH].repeat(N // BATCH, 1), Y[:BATCH].repeat(N // BATCH, 1)) if same_batch else (X, Y)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH, shuffle=False)


def fit(module, max_steps, precision="32-true", plugins=None, ckpt_path=None, callbacks=None, same_batch=False):
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=bool(callbacks),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        precision=None if plugins else precision,
        plugins=plugins,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, loader(same_batch), ckpt_path=ckpt_path)
    return trainer


def plain_loop(solver, steps, accumulation_steps=1, autocast=None, scaler=None):
    """The same training with the adapter in a hand-written loop."""
    torch.manual_seed(0)
    net = TwoTaskNet()
    adapter = MultiTaskBackward(
        solver_for(solver), shared=net.trunk, accumulation_steps=accumulation_steps, scaler=scaler
    )
    representation = adapter.grads == "representation"
    opt = make_optimizer(net)
    adapter.add_parameters_to(opt)  # what on_fit_start does: same param groups
    done = 0
    while done < steps:
        for x, y in loader():
            with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
                losses, h = net(x, y)
            adapter.backward(losses, h if representation else None)
            if adapter.step(opt, closure=lambda: net.losses(x, y)):
                done += 1
            if done == steps:
                break
        else:
            adapter.end_epoch()
    return net, adapter


def full_losses(net):
    with torch.no_grad():
        return net.losses(X, Y)


@pytest.mark.parametrize("solver", ["upgrad", "mgda", "graddrop", "famo", "uw", "learned_scale", "mgda_ub"])
def test_lightning_training_equals_the_plain_loop(solver):
    module = LitTwoTask(solver)
    before = full_losses(module.net).sum()
    trainer = fit(module, max_steps=6)
    assert trainer.global_step == 6
    net, adapter = plain_loop(solver, steps=6)
    for a, b in zip(module.net.parameters(), net.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(module.multitask.parameters(), adapter.parameters()):
        assert torch.equal(a, b)
    assert full_losses(module.net).sum() < before


def test_gradient_accumulation_counts_optimiser_steps():
    module = LitTwoTask("upgrad", accumulation_steps=2)
    trainer = fit(module, max_steps=3)
    assert trainer.global_step == 3 and module.multitask._steps == 3
    net, _ = plain_loop("upgrad", steps=3, accumulation_steps=2)
    for a, b in zip(module.net.parameters(), net.parameters()):
        assert torch.equal(a, b)


def test_bf16_precision_plugin_matches_autocast_in_the_plain_loop():
    module = LitTwoTask("upgrad")
    fit(module, max_steps=4, precision="bf16-mixed")
    net, _ = plain_loop("upgrad", steps=4, autocast=torch.bfloat16)
    for a, b in zip(module.net.parameters(), net.parameters()):
        assert torch.equal(a, b)


def test_the_precision_plugins_grad_scaler_is_used_and_stepped():
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=2)
    module = LitTwoTask("mgda")
    fit(module, max_steps=5, plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    assert module.multitask.scaler is scaler
    reference = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=2)
    net, _ = plain_loop("mgda", steps=5, autocast=torch.float16, scaler=reference)
    assert scaler.get_scale() == reference.get_scale() == 2.0**14  # grown twice: 5 finite steps stepped it
    for a, b in zip(module.net.parameters(), net.parameters()):
        assert torch.equal(a, b)


def test_an_adapter_scaler_is_refused():
    with pytest.raises(ValueError, match="precision plugin"):
        LitTwoTask("upgrad", scaler=torch.amp.GradScaler("cpu"))


@pytest.mark.parametrize("solver", ["famo", "nash_mtl", "gradvac", "uw"])
def test_checkpoint_resume_continues_bit_identically(tmp_path, solver):
    from lightning.pytorch.callbacks import ModelCheckpoint

    # The end-of-epoch checkpoint (after step 4) of an 8-step run, then a fresh module resumed from it.
    # Lightning 2.6 resumes such a checkpoint as if one batch of epoch 0 were left and restarts a
    # non-stateful loader, so every batch is the same one here: the data order cannot differ.
    straight = LitTwoTask(solver)
    saver = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, save_on_train_epoch_end=True)
    fit(straight, max_steps=8, callbacks=[saver], same_batch=True)
    path = tmp_path / "epoch=0-step=4.ckpt"
    saved = torch.load(path, weights_only=True)  # numpy solver state is stored as tensors
    assert saved[CHECKPOINT_KEY]["steps"] == 4

    resumed = LitTwoTask(solver)
    trainer = fit(resumed, max_steps=8, ckpt_path=path, same_batch=True)
    assert trainer.global_step == 8
    assert resumed.multitask._steps == straight.multitask._steps == 8
    for a, b in zip(straight.net.parameters(), resumed.net.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(straight.multitask.parameters(), resumed.multitask.parameters()):
        assert torch.equal(a, b)
    assert repr(straight.multitask.solver.state_dict()) == repr(resumed.multitask.solver.state_dict())


def test_epoch_end_reaches_the_solver():
    module = LitTwoTask("learned_scale")
    fit(module, max_steps=8)  # two epochs of 4 batches
    assert module.multitask.solver.state_dict()["epochs"] == 2


def test_log_records_every_diagnostic_of_the_step():
    module = LitTwoTask("upgrad", log=True)
    trainer = fit(module, max_steps=3)
    last = module.seen[-1]
    logged = {k[len("mtl/") :]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("mtl/")}
    expected = {"loss_0", "loss_1", "weight_0", "weight_1", "grad_norm_0", "grad_norm_1", "cos_0_1"}
    assert set(logged) == expected | {"condition_number", "update_norm", "clip_factor"}
    # the last step's figures, as computed from its Gramian (stored in float32 by the logger)
    assert logged["cos_0_1"] == pytest.approx(last.cosines[0, 1], rel=1e-6)
    assert logged["condition_number"] == pytest.approx(last.condition_number, rel=1e-6)
    for i in range(2):
        assert logged[f"weight_{i}"] == pytest.approx(last.weights[i], rel=1e-6)
        assert logged[f"grad_norm_{i}"] == pytest.approx(np.sqrt(last.gramian[i, i]), rel=1e-6)


#: task 2 has no labels in every other batch
MASKS = (np.array([True, True]), np.array([True, False]))


class LitMasked(LitTwoTask):
    def training_step(self, batch, batch_idx):
        x, y = batch
        losses, _ = self.net(x, y)
        self.seen.append(self.multitask_step(losses, present=MASKS[batch_idx % 2]))


def test_missing_tasks_pass_through_the_mixin():
    module = LitMasked("upgrad")
    fit(module, max_steps=4)
    torch.manual_seed(0)
    net = TwoTaskNet()
    adapter = MultiTaskBackward(solver_for("upgrad"), shared=net.trunk)
    opt = make_optimizer(net)
    adapter.add_parameters_to(opt)
    for i, (x, y) in enumerate(loader()):
        losses, _ = net(x, y)
        adapter.backward(losses, present=MASKS[i % 2])
        adapter.step(opt)
    for a, b in zip(module.net.parameters(), net.parameters(), strict=True):
        assert torch.equal(a, b)
    assert module.seen[1].weights[1] == 0 and module.seen[0].weights[1] > 0

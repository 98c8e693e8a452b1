"""Train a two-task MLP with Lightning and an mtlsolve solver (CPU, well under a minute).

    python examples/lightning_module.py                    # upgrad
    python examples/lightning_module.py --solver famo      # any registered solver name
    python examples/lightning_module.py --precision bf16-mixed

The LightningModule lists :class:`~mtlsolve.adapters.lightning.MultiTaskLightningMixin`
first among its bases, creates the adapter with ``configure_multitask`` (which
switches to manual optimisation) and hands the task losses to
``multitask_step`` in ``training_step``. Lightning's precision plugin, step
counting and checkpoints work as usual; the solver's state travels in the
checkpoint. Needs ``pip install lightning``.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import lightning as L
import torch

from mtlsolve.adapters.lightning import MultiTaskLightningMixin


class TwoTaskMLP(torch.nn.Module):
    def __init__(self, d_in: int = 8, width: int = 32) -> None:
        super().__init__()
        self.trunk = torch.nn.Sequential(
            torch.nn.Linear(d_in, width), torch.nn.ReLU(), torch.nn.Linear(width, width), torch.nn.ReLU()
        )
        self.heads = torch.nn.ModuleList([torch.nn.Linear(width, 1) for _ in range(2)])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.trunk(x)
        return [head(h).squeeze(-1) for head in self.heads]


def make_data(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two related regression targets on different scales."""
    x = torch.randn(n, 8, generator=gen)
    y1 = torch.sin(x @ torch.linspace(-1.0, 1.0, 8))
    y2 = 5.0 * torch.tanh(x[:, :4].sum(1)) + 0.1 * torch.randn(n, generator=gen)
    return x, torch.stack([y1, y2], dim=1)


class MultiTaskModel(MultiTaskLightningMixin, L.LightningModule):
    def __init__(self, solver: str, lr: float = 3e-3) -> None:
        super().__init__()
        self.lr = lr
        self.net = TwoTaskMLP()
        self.configure_multitask(solver, shared=self.net.trunk, max_norm=10.0)

    def task_losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        preds = self.net(x)
        return torch.stack([torch.nn.functional.mse_loss(p.float(), y[:, i]) for i, p in enumerate(preds)])

    def training_step(self, batch, batch_idx):
        x, y = batch
        losses = self.task_losses(x, y)
        # backward through the solver, optimiser step, solver hooks (FAMO's closure), zero_grad
        self.multitask_step(losses, closure=lambda: self.task_losses(x, y), log=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.net.parameters(), lr=self.lr)  # solver parameters (uw) are added for you


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--solver", default="upgrad")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--precision", default="32-true", help="e.g. bf16-mixed")
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")

    gen = torch.Generator().manual_seed(0)
    train = torch.utils.data.TensorDataset(*make_data(2048, gen))
    x_test, y_test = make_data(512, gen)
    loader = torch.utils.data.DataLoader(train, batch_size=64, shuffle=True, generator=gen)
    torch.manual_seed(0)
    model = MultiTaskModel(args.solver)
    with torch.no_grad():
        initial = model.task_losses(x_test, y_test).sum().item()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=args.epochs,
        precision=args.precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.fit(model, loader)
    with torch.no_grad():
        final = model.task_losses(x_test, y_test).sum().item()
    weights = trainer.callback_metrics
    shown = "  ".join(f"{k.split('/')[-1]} {float(v):.3f}" for k, v in sorted(weights.items()) if k.startswith("mtl/"))
    print(f"solver {args.solver} ({model.multitask.path} path), {trainer.global_step} steps, last {shown}")
    print(f"initial test loss {initial:.4f}")
    print(f"final test loss {final:.4f}")
    print(f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
